"""GQSA as a vLLM quantization method: ``GQSAConfig`` (the config) and ``GQSALinearMethod`` (the layer).

vLLM picks it from config.json ``quantization_config.quant_method == "gqsa"`` or from
``--quantization gqsa``, once ``sparseflow.plugins.vllm_entry.register`` has run (vLLM calls it in
every process through the ``vllm.general_plugins`` entry point).

Loading: a GQSA weight has a data-dependent size (the number of stored groups), so
``create_weights`` registers empty placeholders whose ``weight_loader`` only *collects* the
checkpoint tensors of each logical shard (q/k/v, gate/up). ``process_weights_after_loading``
then cuts this rank's tensor-parallel part with the format's own shard arithmetic
(``GQSAWeight.slice_rows`` / ``slice_inputs`` / ``concat_rows``) and keeps the result as buffers.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from sparseflow.kernels.gqsa import (
    FORMAT_NAME,
    TENSOR_NAMES,
    GQSACheckpointConfig,
    GQSAWeight,
    gqsa_linear,
    prepare_for_kernels,
)
from sparseflow.kernels.gqsa.format import TENSOR_DTYPES
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.utils import set_weight_attrs

_SHARDS_ATTR = "_sparseflow_gqsa_shards"


class GQSAConfig(QuantizationConfig):
    """vLLM view of a GQSA checkpoint (wraps the format's ``GQSACheckpointConfig``)."""

    def __init__(self, checkpoint: GQSACheckpointConfig) -> None:
        super().__init__()
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"GQSAConfig({self.checkpoint})"

    def get_name(self) -> str:
        return FORMAT_NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 70  # Triton kernels; no tensor-core-specific instructions

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # read from config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GQSAConfig:
        return cls(GQSACheckpointConfig.from_dict(config))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> LinearMethodBase | None:
        if not isinstance(layer, LinearBase):
            return None
        parts = _logical_parts(layer, prefix)
        quantized = [self.checkpoint.is_quantized(p) for p in parts]
        if all(quantized):
            return GQSALinearMethod(self.checkpoint)
        if not any(quantized):
            return UnquantizedLinearMethod()
        raise ValueError(
            f"{prefix}: vLLM merges {parts} into one layer, but quantization_config.ignore lists only "
            f"some of them; ignore all or none"
        )


def _logical_parts(layer: torch.nn.Module, prefix: str) -> list[str]:
    """Checkpoint module names behind a (possibly merged) vLLM layer prefix."""
    base, _, last = prefix.rpartition(".")
    merged = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    if last in merged:
        return [f"{base}.{p}" if base else p for p in merged[last]]
    return [prefix]


def _shard_order(layer: torch.nn.Module) -> list[Any]:
    if isinstance(layer, QKVParallelLinear):
        return ["q", "k", "v"]
    if isinstance(layer, MergedColumnParallelLinear):
        return list(range(len(layer.output_sizes)))
    return [None]


def _collecting_loader(layer: torch.nn.Module, name: str):
    """A weight_loader that stores the full checkpoint tensor per logical shard for later assembly."""
    # a weak reference: the loader (held by a parameter) must not keep its layer alive
    layer_ref = weakref.ref(layer)

    def load(param: torch.nn.Parameter, loaded_weight: torch.Tensor, loaded_shard_id: Any = None) -> None:
        shards = getattr(layer_ref(), _SHARDS_ATTR)
        expected = TENSOR_DTYPES[name]
        if loaded_weight.dtype != expected:
            raise ValueError(
                f"GQSA tensor {name!r} (shard {loaded_shard_id}) has dtype {loaded_weight.dtype}; "
                f"the format stores {expected}. Is this checkpoint really GQSA format v1?"
            )
        shards.setdefault(loaded_shard_id, {})[name] = loaded_weight

    return load


class GQSALinearMethod(LinearMethodBase):
    """Linear layer whose weight is stored in the GQSA format and multiplied by ``gqsa_linear``."""

    def __init__(self, checkpoint: GQSACheckpointConfig) -> None:
        self.checkpoint = checkpoint

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        g = self.checkpoint.group_size
        if input_size_per_partition % g:
            raise ValueError(
                f"{type(layer).__name__}: {input_size_per_partition} inputs per tensor-parallel rank is not a "
                f"multiple of GQSA group_size={g}; use a smaller tensor-parallel size or group size"
            )
        setattr(layer, _SHARDS_ATTR, {})
        layer.gqsa_input_size = input_size
        layer.gqsa_input_size_per_partition = input_size_per_partition
        layer.gqsa_output_partition_sizes = list(output_partition_sizes)
        for name in TENSOR_NAMES:
            placeholder = torch.nn.Parameter(torch.empty(0, dtype=TENSOR_DTYPES[name]), requires_grad=False)
            layer.register_parameter(name, placeholder)
            set_weight_attrs(placeholder, {"weight_loader": _collecting_loader(layer, name)})

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        shards: dict[Any, dict[str, torch.Tensor]] = getattr(layer, _SHARDS_ATTR)
        order = _shard_order(layer)
        missing = [s for s in order if s not in shards]
        if missing:
            raise ValueError(f"{layer.prefix}: checkpoint has no GQSA tensors for shard(s) {missing}")
        tp_rank, tp_size = layer.tp_rank, layer.tp_size
        parts = []
        for index, shard_id in enumerate(order):
            w = GQSAWeight.from_tensors(shards[shard_id], in_features=layer.gqsa_input_size,
                                        group_size=self.checkpoint.group_size, bits=self.checkpoint.bits)
            if tp_size > 1 and not isinstance(layer, (RowParallelLinear, ReplicatedLinear)):
                rows = layer.gqsa_output_partition_sizes[index]
                rank = tp_rank // layer.num_kv_head_replicas if shard_id in ("k", "v") else tp_rank
                w = w.slice_rows(rank * rows, (rank + 1) * rows)
            parts.append(w)
        w = GQSAWeight.concat_rows(parts)
        if tp_size > 1 and isinstance(layer, RowParallelLinear):
            per_rank = layer.gqsa_input_size_per_partition
            w = w.slice_inputs(tp_rank * per_rank, (tp_rank + 1) * per_rank)
        expected = (sum(layer.gqsa_output_partition_sizes), layer.gqsa_input_size_per_partition)
        if (w.out_features, w.in_features) != expected:
            raise ValueError(
                f"{layer.prefix}: GQSA weight is [{w.out_features}, {w.in_features}] after sharding; the layer "
                f"needs {list(expected)}. Does the checkpoint match the model config?"
            )
        device = layer.codes.device
        for name, tensor in w.tensors().items():
            delattr(layer, name)
            layer.register_buffer(name, tensor.to(device).contiguous(), persistent=False)
        layer.gqsa_in_features = w.in_features
        delattr(layer, _SHARDS_ATTR)
        prepare_for_kernels(self._weight(layer))  # no lookup-table allocation inside CUDA-graph capture

    def _weight(self, layer: torch.nn.Module) -> GQSAWeight:
        return GQSAWeight(layer.codes, layer.group_col, layer.row_ptr, layer.scale, layer.zero,
                          in_features=layer.gqsa_in_features, group_size=self.checkpoint.group_size,
                          bits=self.checkpoint.bits)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return gqsa_linear(x, self._weight(layer), bias)
