"""Read other tools' 2:4 checkpoints into sparseflow's N:M format, so vLLM serves them through ``sparse_nm`` now
that it has no 2:4 kernels of its own.

Supported: compressed-tensors ``sparse-24-bitmask`` (what llm-compressor writes for 2:4 sparse models without
quantization): per linear ``<m>.compressed [N, K/2]`` (kept values, row-major), ``<m>.bitmask [N, ceil(K/8)]``
(uint8, bit ``j`` of byte ``b`` marks input ``8b + j`` as kept) and ``<m>.shape`` (``[N, K]``). Quantized
compressed-tensors 2:4 (the Marlin-24 W4A16 layout) is refused with a message: its packed 4-bit layout differs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sparseflow.checkpoint import load_state_dict, read_config, save_folder
from sparseflow.kernels.nm import NMCheckpointConfig, NMWeight
from sparseflow.kernels.nm.format import pack_positions

_SUFFIXES = ("compressed", "bitmask", "shape")


def _positions_from_bitmask(bitmask: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
    """``[N, K/2]`` positions (within blocks of 4) of the kept inputs; each block must keep exactly two."""
    rows, k = shape
    if bitmask.dtype not in (torch.uint8, torch.int8) or tuple(bitmask.shape) != (rows, -(-k // 8)):
        raise ValueError(f"{name}.bitmask has shape {tuple(bitmask.shape)} / {bitmask.dtype}; expected "
                         f"({rows}, {-(-k // 8)}) uint8 for a [{rows}, {k}] weight")
    bits = (bitmask.view(torch.uint8).to(torch.int64)[..., None] >> torch.arange(8)) & 1  # [N, K/8, 8]
    keep = bits.reshape(rows, -1)[:, :k].bool().reshape(rows, k // 4, 4)
    per_block = keep.sum(-1)
    if bool((per_block != 2).any()):
        raise ValueError(f"{name}.bitmask marks {int((per_block != 2).sum())} blocks of 4 with other than 2 kept "
                         f"inputs: not 2:4 metadata")
    order = torch.arange(4).expand_as(keep)
    positions = torch.where(keep, order, 4).sort(dim=-1).values[..., :2]
    return positions.reshape(rows, k // 2)


def convert_compressed_tensors_24(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a compressed-tensors ``sparse-24-bitmask`` folder as a ``sparse_nm`` 2:4 folder."""
    config = read_config(src)
    q = config.get("quantization_config") or config.get("compression_config")
    if not q or q.get("quant_method") != "compressed-tensors":
        raise ValueError(f"{src}: not a compressed-tensors checkpoint (quantization_config.quant_method is "
                         f"{(q or {}).get('quant_method')!r})")
    sparsity = q.get("sparsity_config") or {}
    if sparsity.get("format") != "sparse-24-bitmask":
        raise ValueError(f"{src}: sparsity_config.format is {sparsity.get('format')!r}; only 'sparse-24-bitmask' "
                         f"is converted")
    if q.get("config_groups"):
        raise ValueError(f"{src}: the checkpoint is also quantized (config_groups); quantized compressed-tensors "
                         f"2:4 (Marlin-24 layout) is not converted. Re-compress the dense model with `sparseflow "
                         f"compress --method nm --pattern 2:4 --bits 4` instead")
    state = load_state_dict(src)
    modules = sorted({key.rsplit(".", 1)[0] for key in state if key.endswith(".compressed")})
    if not modules:
        raise ValueError(f"{src}: no '<module>.compressed' tensors found")
    dtypes = {state[f"{m}.compressed"].dtype for m in modules}
    value_format = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(next(iter(dtypes))) if len(dtypes) == 1 else None
    if value_format is None:
        raise ValueError(f"{src}: kept values have dtypes {sorted(map(str, dtypes))}; one of bf16 / fp16 is needed")
    for m in modules:
        missing = [f"{m}.{s}" for s in _SUFFIXES if f"{m}.{s}" not in state]
        if missing:
            raise ValueError(f"{src}: incomplete 2:4 tensors: {', '.join(missing)} missing")
        rows, k = (int(v) for v in state.pop(f"{m}.shape").flatten().tolist())
        values = state.pop(f"{m}.compressed")
        if tuple(values.shape) != (rows, k // 2):
            raise ValueError(f"{src}: {m}.compressed has shape {tuple(values.shape)}; expected ({rows}, {k // 2})")
        positions = _positions_from_bitmask(state.pop(f"{m}.bitmask"), (rows, k), m)
        w = NMWeight(values.contiguous(), pack_positions(positions, 4), None, k, 2, 4, value_format).validate()
        for name, tensor in w.tensors().items():
            state[f"{m}.{name}"] = tensor
    dense_linears = sorted(key[: -len(".weight")] for key in state
                           if key.endswith(".weight") and state[key].dim() == 2 and "embed" not in key)
    qcfg = NMCheckpointConfig(n=2, m=4, value_format=value_format, ignore=tuple(dense_linears),
                              recipe={"converted_from": "compressed-tensors sparse-24-bitmask"})
    config.pop("compression_config", None)
    config["quantization_config"] = qcfg.to_dict()
    return save_folder(dst, state, config, source_dir=src)
