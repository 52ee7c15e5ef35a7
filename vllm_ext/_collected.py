"""What every sparseflow vLLM linear method shares: weights whose tensors are collected at load time and cut
into this rank's tensor-parallel part by the format's own shard arithmetic.

A compressed weight's tensors do not follow vLLM's dense shapes (GQSA's size depends on the data; N:M packs
positions into bits), so ``create_weights`` registers empty placeholders whose ``weight_loader`` only *collects*
the checkpoint tensors of each logical shard (q/k/v, gate/up). ``process_weights_after_loading`` builds one format
object per shard, slices rows (column-parallel) or inputs (row-parallel) with the format's ``slice_rows`` /
``slice_inputs``, joins merged layers with ``concat_rows``, and keeps the tensors as buffers.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
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

_SHARDS_ATTR = "_sparseflow_shards"
_MERGED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def logical_parts(prefix: str) -> list[str]:
    """Checkpoint module names behind a (possibly merged) vLLM layer prefix."""
    base, _, last = prefix.rpartition(".")
    if last in _MERGED:
        return [f"{base}.{p}" if base else p for p in _MERGED[last]]
    return [prefix]


def shard_order(layer: torch.nn.Module) -> list[Any]:
    if isinstance(layer, QKVParallelLinear):
        return ["q", "k", "v"]
    if isinstance(layer, MergedColumnParallelLinear):
        return list(range(len(layer.output_sizes)))
    return [None]


class CollectedQuantConfig(QuantizationConfig):
    """A vLLM quantization config over a sparseflow checkpoint config (``checkpoint``: has ``is_quantized``)."""

    format_name: str = ""
    method_cls: type[CollectedLinearMethod]

    def __init__(self, checkpoint: Any) -> None:
        super().__init__()
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.checkpoint})"

    def get_name(self) -> str:
        return self.format_name

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 70  # Triton kernels; no tensor-core-specific instructions

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # read from config.json's quantization_config

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> LinearMethodBase | None:
        if not isinstance(layer, LinearBase):
            return None
        parts = logical_parts(prefix)
        quantized = [self.checkpoint.is_quantized(p) for p in parts]
        if all(quantized):
            return self.method_cls(self.checkpoint)
        if not any(quantized):
            return UnquantizedLinearMethod()
        raise ValueError(
            f"{prefix}: vLLM merges {parts} into one layer, but quantization_config.ignore lists only "
            f"some of them; ignore all or none"
        )


class CollectedLinearMethod(LinearMethodBase):
    """Base of the sparseflow linear methods. Subclasses say which tensors the format has (``tensor_dtypes``),
    how to build the format object (``build``), the input granularity of a row-parallel cut (``input_step``)
    and the product (``apply``, over ``weight(layer)``)."""

    format_label = ""

    def __init__(self, checkpoint: Any) -> None:
        self.checkpoint = checkpoint

    # -- what a format provides --------------------------------------------------------------------
    def tensor_dtypes(self) -> Mapping[str, torch.dtype]:
        raise NotImplementedError

    def input_step(self) -> int:
        raise NotImplementedError

    def build(self, tensors: Mapping[str, torch.Tensor], in_features: int) -> Any:
        raise NotImplementedError

    def attributes(self, w: Any) -> dict[str, Any]:
        """Non-tensor fields that ``weight`` needs again (kept on the layer)."""
        return {"in_features": w.in_features}

    def weight(self, layer: torch.nn.Module) -> Any:
        raise NotImplementedError

    # -- vLLM's protocol ------------------------------------------------------------------------------
    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        step = self.input_step()
        if input_size_per_partition % step:
            raise ValueError(
                f"{type(layer).__name__}: {input_size_per_partition} inputs per tensor-parallel rank is not a "
                f"multiple of {step} ({self.format_label} block or group); use a smaller tensor-parallel size"
            )
        setattr(layer, _SHARDS_ATTR, {})
        layer.sf_input_size = input_size
        layer.sf_input_size_per_partition = input_size_per_partition
        layer.sf_output_partition_sizes = list(output_partition_sizes)
        for name, dtype in self.tensor_dtypes().items():
            placeholder = torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
            layer.register_parameter(name, placeholder)
            set_weight_attrs(placeholder, {"weight_loader": self._collecting_loader(layer, name, dtype)})

    def _collecting_loader(self, layer: torch.nn.Module, name: str, expected: torch.dtype):
        """A weight_loader that stores the full checkpoint tensor per logical shard for later assembly."""
        layer_ref = weakref.ref(layer)  # the loader (held by a parameter) must not keep its layer alive
        label = self.format_label

        def load(param: torch.nn.Parameter, loaded_weight: torch.Tensor, loaded_shard_id: Any = None) -> None:
            if loaded_weight.dtype != expected:
                raise ValueError(
                    f"{label} tensor {name!r} (shard {loaded_shard_id}) has dtype {loaded_weight.dtype}; the "
                    f"format stores {expected}. Does the checkpoint match its quantization_config?"
                )
            getattr(layer_ref(), _SHARDS_ATTR).setdefault(loaded_shard_id, {})[name] = loaded_weight

        return load

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        shards: dict[Any, dict[str, torch.Tensor]] = getattr(layer, _SHARDS_ATTR)
        order = shard_order(layer)
        missing = [s for s in order if s not in shards]
        if missing:
            raise ValueError(f"{layer.prefix}: checkpoint has no {self.format_label} tensors for shard(s) {missing}")
        tp_rank, tp_size = layer.tp_rank, layer.tp_size
        parts = []
        for index, shard_id in enumerate(order):
            w = self.build(shards[shard_id], layer.sf_input_size)
            if tp_size > 1 and not isinstance(layer, (RowParallelLinear, ReplicatedLinear)):
                rows = layer.sf_output_partition_sizes[index]
                rank = tp_rank // layer.num_kv_head_replicas if shard_id in ("k", "v") else tp_rank
                w = w.slice_rows(rank * rows, (rank + 1) * rows)
            parts.append(w)
        w = type(parts[0]).concat_rows(parts)
        if tp_size > 1 and isinstance(layer, RowParallelLinear):
            per_rank = layer.sf_input_size_per_partition
            w = w.slice_inputs(tp_rank * per_rank, (tp_rank + 1) * per_rank)
        expected = (sum(layer.sf_output_partition_sizes), layer.sf_input_size_per_partition)
        if (w.out_features, w.in_features) != expected:
            raise ValueError(
                f"{layer.prefix}: {self.format_label} weight is [{w.out_features}, {w.in_features}] after sharding; "
                f"the layer needs {list(expected)}. Does the checkpoint match the model config?"
            )
        device = next(iter(layer.parameters())).device
        for name, tensor in w.tensors().items():
            delattr(layer, name)
            layer.register_buffer(name, tensor.to(device).contiguous(), persistent=False)
        for key, value in self.attributes(w).items():
            setattr(layer, f"sf_{key}", value)
        delattr(layer, _SHARDS_ATTR)
        self.after_loading(layer)

    def after_loading(self, layer: torch.nn.Module) -> None:
        """Hook: per-weight tables the kernels need, built before CUDA-graph capture (``keep_tables``)."""


def keep_tables(layer: torch.nn.Module, tables: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> None:
    """Keep a weight's ``kernel_tables`` on its layer as buffers ``sf_<name>`` (``None`` where absent), so the
    layer's op receives them as tensors: tensors reach a torch.compile'd op as graph inputs, and nothing keyed
    by object identity survives that."""
    unknown = set(tables) - set(names)
    if unknown:
        raise ValueError(f"{layer.prefix}: kernel tables {sorted(unknown)} have no slot on the layer")
    for name in names:
        if name in tables:
            layer.register_buffer(f"sf_{name}", tables[name], persistent=False)
        else:
            setattr(layer, f"sf_{name}", None)
