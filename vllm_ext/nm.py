"""N:M sparse linear layers (bf16/fp16 values, or int8/int4 codes with group scales) as a vLLM quantization
method: picked from config.json ``quantization_config.quant_method == "sparse_nm"`` or ``--quantization
sparse_nm``. vLLM removed its own 2:4 kernels in 2026; this serves such checkpoints (``sparseflow convert``
reads compressed-tensors 2:4 ones). Loading and tensor-parallel cutting: ``_collected``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sparseflow.kernels.ops  # noqa: F401  (registers torch.ops.sparseflow.*)
import torch
from sparseflow.kernels.nm import FORMAT_NAME, NMCheckpointConfig, NMWeight, kernel_tables, tensor_names
from sparseflow.kernels.nm.format import FLOAT_VALUES, INT_VALUES

from ._collected import CollectedLinearMethod, CollectedQuantConfig, keep_tables


class NMLinearMethod(CollectedLinearMethod):
    """Linear layer whose weight is stored in the N:M format and multiplied by ``nm_linear``."""

    format_label = "N:M"

    def tensor_dtypes(self) -> Mapping[str, torch.dtype]:
        fmt = self.checkpoint.value_format
        values = FLOAT_VALUES.get(fmt, torch.int8 if fmt == "int8" else torch.uint8)
        dtypes = {"values": values, "indices": torch.uint8, "scales": torch.float16}
        return {name: dtypes[name] for name in tensor_names(fmt)}

    def input_step(self) -> int:
        c = self.checkpoint
        return max(c.m, c.group_size * c.m // c.n) if c.value_format in INT_VALUES else c.m

    def build(self, tensors: Mapping[str, torch.Tensor], in_features: int) -> NMWeight:
        c = self.checkpoint
        return NMWeight.from_tensors(tensors, in_features=in_features, n=c.n, m=c.m, value_format=c.value_format,
                                     group_size=c.group_size)

    def weight(self, layer: torch.nn.Module) -> NMWeight:
        c = self.checkpoint
        return NMWeight(layer.values, layer.indices, getattr(layer, "scales", None), layer.sf_in_features, c.n, c.m,
                        c.value_format, c.group_size)

    def after_loading(self, layer: torch.nn.Module) -> None:
        # 2:4 int4: the sparse-tensor-core copy, built before CUDA-graph capture
        keep_tables(layer, kernel_tables(self.weight(layer)), _TABLES)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        c = self.checkpoint
        return torch.ops.sparseflow.nm_linear(x, layer.values, layer.indices, getattr(layer, "scales", None), bias,
                                              layer.sf_packed_codes, layer.sf_packed_meta, layer.sf_packed_scales,
                                              layer.sf_in_features, c.n, c.m, c.value_format, c.group_size)


_TABLES = ("packed_codes", "packed_meta", "packed_scales")


class NMConfig(CollectedQuantConfig):
    """vLLM view of an N:M checkpoint (wraps the format's ``NMCheckpointConfig``)."""

    format_name = FORMAT_NAME
    method_cls = NMLinearMethod

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NMConfig:
        return cls(NMCheckpointConfig.from_dict(config))
