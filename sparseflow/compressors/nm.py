"""One-shot N:M compression of every linear layer: pruning by magnitude, Wanda or SparseGPT (OBS), and
optionally the kept values quantized to int8/int4 with group scales (round-to-nearest, or GPTQ-style with OBS
error compensation). Calibrated methods walk the decoder blocks in order, each seeing the inputs that the already
compressed blocks before it produce. Exports ``NMWeight`` (``sparseflow.kernels.nm``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sparseflow.compressors.baselines import NM_METHODS, nm_prune
from sparseflow.compressors.blockwise import capture_block_inputs, input_hessians, linear_children, walk_blocks
from sparseflow.compressors.obs import obs_sweep
from sparseflow.kernels.nm import NMWeight, expand_reference, from_dense
from sparseflow.kernels.nm.format import INT_VALUES, check_pattern, check_values

QUANTIZERS = ("rtn", "gptq")


@dataclass
class NMRecipe:
    """How to compress: ``n:m`` pattern, pruning ``prune`` (magnitude, wanda, sparsegpt), kept values
    ``value_format`` (bf16, fp16, int8, int4; int formats with ``group_size`` kept values per scale, quantized by
    ``quantizer`` rtn or gptq), and the calibration budget."""

    n: int = 2
    m: int = 4
    prune: str = "magnitude"
    value_format: str = "bf16"
    group_size: int = 0
    quantizer: str = "rtn"
    samples: int = 32
    seq_len: int = 512
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_pattern(self.n, self.m)
        check_values(self.value_format, self.group_size)
        if self.prune not in NM_METHODS:
            raise ValueError(f"unknown N:M pruning {self.prune!r}; choose one of {NM_METHODS}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; choose one of {QUANTIZERS}")
        if self.quantizer == "gptq" and self.value_format not in INT_VALUES:
            raise ValueError(f"quantizer='gptq' needs int8 or int4 values, not {self.value_format}")
        if self.samples % self.batch_size:
            raise ValueError(f"samples={self.samples} must be a multiple of batch_size={self.batch_size}")

    @property
    def needs_calibration(self) -> bool:
        return self.prune != "magnitude" or self.quantizer == "gptq"

    def to_dict(self) -> dict:
        return asdict(self)


def _gptq_quantizer(recipe: NMRecipe, scales: list[torch.Tensor]):
    """``make_quantizer`` for ``obs_sweep``: symmetric codes per group of ``group_size`` kept values (``group_size
    * m / n`` inputs); each group's float16 scale is recorded so the format stores exactly this grid."""
    qmax = 127 if INT_VALUES[recipe.value_format] == 8 else 7
    qmin = -qmax - (INT_VALUES[recipe.value_format] == 4)

    def make(cols: torch.Tensor):
        scale = (cols.abs().amax(dim=1) / qmax).to(torch.float16).float()
        scales.append(scale)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)[:, None]
        return lambda x: (x[:, None] / safe).round().clamp(qmin, qmax).squeeze(1) * safe.squeeze(1)

    return make


def compress_linear(weight: torch.Tensor, recipe: NMRecipe, hessian: torch.Tensor | None) -> NMWeight:
    """One ``[N, K]`` weight -> ``NMWeight`` by ``recipe`` (``hessian``: ``sum x x^T`` of its inputs, if calibrated)."""
    n, m = recipe.n, recipe.m
    if recipe.quantizer != "gptq":
        return from_dense(nm_prune(weight, n, m, recipe.prune, hessian), n, m, recipe.value_format, recipe.group_size)
    scales: list[torch.Tensor] = []
    quant_group = recipe.group_size * m // n
    block = quant_group * max(1, 128 // quant_group)
    if recipe.prune == "sparsegpt":
        compressed = obs_sweep(weight, hessian, block=block, prune=(n, m), quant_group=quant_group,
                               make_quantizer=_gptq_quantizer(recipe, scales))
    else:
        keep = nm_prune(weight, n, m, recipe.prune, hessian) != 0
        compressed = obs_sweep(weight, hessian, block=block, keep=keep, quant_group=quant_group,
                               make_quantizer=_gptq_quantizer(recipe, scales))
    return from_dense(compressed, n, m, recipe.value_format, recipe.group_size, scales=torch.stack(scales, dim=1))


def compress_model(model: torch.nn.Module, calibration_ids: torch.Tensor | None, recipe: NMRecipe,
                   is_target=lambda name: not name.endswith("lm_head"), progress: bool = True) -> dict[str, NMWeight]:
    """Compress every target linear of ``model`` (its weights are replaced by the compressed ones, expanded) and
    return the N:M weights by module name. ``calibration_ids [samples, seq]``: when ``recipe.needs_calibration``."""
    model.eval()
    weights: dict[str, NMWeight] = {}

    def compress_in(prefix: str, block: torch.nn.Module, hessians: dict[str, torch.Tensor] | None) -> None:
        for name, linear in linear_children(block).items():
            full = f"{prefix}{name}"
            if not is_target(full):
                continue
            if linear.in_features % recipe.m:
                raise ValueError(f"{full}: N:M pattern {recipe.n}:{recipe.m} does not divide its "
                                 f"in_features={linear.in_features}; add it to ignore")
            w = compress_linear(linear.weight.detach(), recipe, None if hessians is None else hessians[name])
            linear.weight.data = expand_reference(w, linear.weight.dtype).to(linear.weight.device)
            weights[full] = w

    if not recipe.needs_calibration:
        compress_in("", model, None)
        return weights
    if calibration_ids is None:
        raise ValueError(f"N:M pruning by {recipe.prune} / {recipe.quantizer} quantization needs calibration data")
    streams = capture_block_inputs(model, calibration_ids, recipe.batch_size)

    def compress_block(i: int, block: torch.nn.Module, s, target: torch.Tensor) -> None:
        names = [n for n in linear_children(block) if is_target(f"model.layers.{i}.{n}")]
        compress_in(f"model.layers.{i}.", block, input_hessians(block, s.q, s, names))

    walk_blocks(model, streams, compress_block, desc=f"N:M {recipe.n}:{recipe.m} blocks")
    return weights
