"""N:M sparse linear layers, with bf16/fp16 kept values or int8/int4 codes and group scales (``format.py``).

Public entry point: ``nm_linear(x, w, bias)``. On CUDA it runs Triton: a GEMV that reads the compressed weight
for small batches (a 2:4-specialised one for 2:4 weights with 16-bit x), and expand + cuBLAS for larger
ones. Elsewhere it runs the torch reference and says so once.
"""

from __future__ import annotations

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
    "SUPPORTED_M",
    "VALUE_FORMATS",
    "NMCheckpointConfig",
    "NMWeight",
    "expand",
    "expand_reference",
    "from_dense",
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


def expand(w: NMWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``[N, K]`` weight; Triton on CUDA, the reference elsewhere."""
    if w.device.type == "cuda":
        from .triton_kernels import nm_expand

        return nm_expand(w, dtype)
    return expand_reference(w, dtype)


def nm_linear(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W.T + bias`` for an N:M weight.

    Args:
        x: ``[..., K]`` activations, float16 / bfloat16 / float32, on ``w``'s device.
        w: ``NMWeight`` with ``in_features == K``.
        bias: optional ``[N]``.
    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    check_linear_inputs(x, w, bias)
    if x.device.type != "cuda":
        info_once(f"sparse_nm: input on {x.device.type}, not CUDA; using the torch reference (expand + matmul)")
        return nm_linear_reference(x, w, bias)
    from .triton_kernels import nm24_gemv, nm24_supported, nm_expand, nm_gemv

    x2 = x.reshape(-1, w.in_features)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if x2.shape[0] <= GEMV_MAX_M and nm24_supported(x2, w):
        y = nm24_gemv(x2, w, bias)
    elif x2.shape[0] <= GEMV_MAX_M:
        y = nm_gemv(x2, w, bias)
    else:
        y = torch.nn.functional.linear(x2, nm_expand(w, x.dtype), bias)
    return y.reshape(*x.shape[:-1], w.out_features)
