"""N:M sparse linear layers, with bf16/fp16 kept values or int8/int4 codes and group scales (``format.py``).

Public entry point: ``nm_linear(x, w, bias)``. On CUDA it runs Triton: for small batches a GEMV that reads the
compressed weight (2:4 int4 weights with their ``kernel_tables``: the sparse tensor cores; other 2:4
weights with 16-bit x: a 2:4-specialised CUDA-core GEMV; other patterns: a generic one), and expand + cuBLAS past
them. A tensor-core tile matmul (``tile_matmul.py``) exists and is tested but is not dispatched: slower than expand
+ cuBLAS on the H200. Elsewhere it runs the torch reference and says so once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .._log import info_once
from ..linear_inputs import check_linear_inputs
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SUPPORTED_M,
    VALUE_FORMATS,
    NMCheckpointConfig,
    NMWeight,
    from_dense,
    parse_pattern,
    tensor_names,
)
from .reference import expand_reference, nm_linear_reference

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GEMV_MAX_M",
    "PACKED_MAX_M",
    "SUPPORTED_M",
    "VALUE_FORMATS",
    "NMCheckpointConfig",
    "NMWeight",
    "expand",
    "expand_reference",
    "from_dense",
    "kernel_tables",
    "nm_linear",
    "nm_linear_reference",
    "parse_pattern",
    "tensor_names",
]

# Input rows up to which the GEMV reads the compressed weight; above, the weight is expanded for cuBLAS.
# H200 (benchmarks/results/nm_sparse-NVIDIA_H200.json, 28672x8192 2:4 bf16): the 2:4 GEMV at M=4 0.26 ms, expand +
# cuBLAS at M=16 0.51 ms (the expand writes and re-reads a dense copy). Both lose to dense bf16 (0.12 ms) between
# M=2 and M~256: the GEMV picks positions per input row, so its cost grows with M.
GEMV_MAX_M = 4
# 2:4 int4 weights with a packed copy (kernel_tables) take the sparse-tensor-core GEMV up to this M: one pass
# over the weight per 8 rows of x. H200, `sparseflow bench run tile_matmul` at commit a1bf631 (Llama-3-8B shapes):
# at M = 8 / 16 / 32 it beats expand + cuBLAS on every shape (6144x4096: 0.013 / 0.022 / 0.040 ms against 0.065;
# 28672x4096: 0.043 / 0.077 / 0.147 against 0.28), and dense bf16 only at M <= 8 (0.016 and 0.069 ms).
PACKED_MAX_M = 32
# Past the decode kernels: expand + cuBLAS. The tensor-core tile matmul (tile_matmul.py) stays tested but is not
# dispatched: in the same run it took 0.13-1.7 ms, 3-6x slower than expand + cuBLAS at every M from 8 to 256.


def kernel_tables(w: NMWeight) -> dict[str, torch.Tensor]:
    """Per-weight tensors the CUDA kernels read besides the format's own, built once after loading and passed to
    every ``nm_linear`` call: for a 2:4 int4 weight on an sm_80+ GPU (K % 128 == 0, group size a multiple of 64),
    a copy packed for the sparse tensor cores (``packed_*``), which small batches then use (about 2x faster than
    the CUDA-core GEMV on the H200). The copy costs as much memory as the weight; the log says so once. Empty for
    every other weight."""
    if w.device.type != "cuda":
        return {}
    from .sparse_mma import pack_int4_for_sparse_mma, packed_supported

    if not packed_supported(w):
        return {}
    info_once("sparse_nm: 2:4 int4 weights get a copy packed for the sparse tensor cores for decode (as many bytes "
              "again as the int4 weight)")
    return pack_int4_for_sparse_mma(w)


def expand(w: NMWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``[N, K]`` weight; Triton on CUDA, the reference elsewhere."""
    if w.device.type == "cuda":
        from .triton_kernels import nm_expand

        return nm_expand(w, dtype)
    return expand_reference(w, dtype)


def nm_linear(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None,
              tables: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``y = x @ W.T + bias`` for an N:M weight.

    Args:
        x: ``[..., K]`` activations, float16 / bfloat16 / float32, on ``w``'s device.
        w: ``NMWeight`` with ``in_features == K``.
        bias: optional ``[N]``.
        tables: ``kernel_tables(w)``, built once (2:4 int4: the sparse-tensor-core copy).
    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    check_linear_inputs(x, w, bias)
    if x.device.type != "cuda":
        info_once(f"sparse_nm: input on {x.device.type}, not CUDA; using the torch reference (expand + matmul)")
        return nm_linear_reference(x, w, bias)
    from .sparse_mma import nm24_sp_packed_gemv
    from .triton_kernels import nm24_gemv, nm24_supported, nm_expand, nm_gemv

    x2 = x.reshape(-1, w.in_features)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    packed = tables if tables and "packed_codes" in tables and x2.dtype == torch.bfloat16 else None
    if x2.shape[0] <= PACKED_MAX_M and packed is not None:
        y = nm24_sp_packed_gemv(x2, w, packed, bias)
    elif x2.shape[0] <= GEMV_MAX_M and nm24_supported(x2, w):
        y = nm24_gemv(x2, w, bias)
    elif x2.shape[0] <= GEMV_MAX_M:
        y = nm_gemv(x2, w, bias)
    else:
        info_once(f"sparse_nm: {x2.shape[0]} rows of x: expand + cuBLAS (past the decode kernels; the tile matmul "
                  "is slower on the H200)")
        y = torch.nn.functional.linear(x2, nm_expand(w, x.dtype), bias)
    return y.reshape(*x.shape[:-1], w.out_features)
