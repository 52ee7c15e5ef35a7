"""GQSA as a vLLM quantization method: ``GQSAConfig`` (the config) and ``GQSALinearMethod`` (the layer).

vLLM picks it from config.json ``quantization_config.quant_method == "gqsa"`` or from ``--quantization gqsa``,
once ``sparseflow.plugins.vllm_entry.register`` has run (vLLM calls it in every process through the
``vllm.general_plugins`` entry point). Loading and tensor-parallel cutting: ``_collected``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sparseflow.kernels.ops  # noqa: F401  (registers torch.ops.sparseflow.*)
import torch
from sparseflow.kernels.gqsa import FORMAT_NAME, GQSACheckpointConfig, GQSAWeight, kernel_tables
from sparseflow.kernels.gqsa.format import TENSOR_DTYPES
from sparseflow.kernels.gqsa.interleaved import TENSOR_NAMES as IL_TENSOR_NAMES

from ._collected import CollectedLinearMethod, CollectedQuantConfig, keep_tables


class GQSALinearMethod(CollectedLinearMethod):
    """Linear layer whose weight is stored in the GQSA format and multiplied by ``gqsa_linear``."""

    format_label = "GQSA"

    def tensor_dtypes(self) -> Mapping[str, torch.dtype]:
        return TENSOR_DTYPES

    def input_step(self) -> int:
        return self.checkpoint.group_size

    def build(self, tensors: Mapping[str, torch.Tensor], in_features: int) -> GQSAWeight:
        return GQSAWeight.from_tensors(tensors, in_features=in_features, group_size=self.checkpoint.group_size,
                                       bits=self.checkpoint.bits)

    def weight(self, layer: torch.nn.Module) -> GQSAWeight:
        return GQSAWeight(layer.codes, layer.group_col, layer.row_ptr, layer.scale, layer.zero,
                          in_features=layer.sf_in_features, group_size=self.checkpoint.group_size,
                          bits=self.checkpoint.bits)

    def after_loading(self, layer: torch.nn.Module) -> None:
        # before CUDA-graph capture: no table is built inside the captured step
        keep_tables(layer, kernel_tables(self.weight(layer)), _TABLES)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        c = self.checkpoint
        return torch.ops.sparseflow.gqsa_linear(x, layer.codes, layer.group_col, layer.row_ptr, layer.scale,
                                                layer.zero, bias, layer.sf_group_mask,
                                                layer.sf_group_prefix, layer.sf_il_words, layer.sf_il_col,
                                                layer.sf_il_scale_zero, layer.sf_il_step_ptr, layer.sf_il_rows,
                                                layer.sf_in_features, c.group_size, c.bits)


# every kernel_tables entry the op takes (the decode copy's il_* five among them)
_TABLES = ("group_mask", "group_prefix", *IL_TENSOR_NAMES)


class GQSAConfig(CollectedQuantConfig):
    """vLLM view of a GQSA checkpoint (wraps the format's ``GQSACheckpointConfig``)."""

    format_name = FORMAT_NAME
    method_cls = GQSALinearMethod

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GQSAConfig:
        return cls(GQSACheckpointConfig.from_dict(config))
