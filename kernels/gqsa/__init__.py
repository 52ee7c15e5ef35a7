"""GQSA linear: group-quantized, group-sparse weights (format in ``format.py``).

Public entry point: ``gqsa_linear(x, w, bias, tables)``. On CUDA it runs Triton: GEMVs that read the compressed
weight for decode (up to 4 rows of x), a tensor-core tile matmul that decodes weight tiles in registers for
decode batches (``tile_matmul.py``), and dequantize + cuBLAS for prefill-sized batches. Elsewhere, or for 3-bit
codes, it runs the torch reference and says so once in the log.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .._log import info_once
from ..linear_inputs import check_linear_inputs
from ..packing import pack_codes, unpack_codes
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SUPPORTED_BITS,
    SUPPORTED_GROUP_SIZES,
    TENSOR_NAMES,
    GQSACheckpointConfig,
    GQSAWeight,
    from_dense_groups,
)
from .quantize import quantize_rtn
from .reference import dequantize_reference, gqsa_linear_reference

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_BITS",
    "SUPPORTED_GROUP_SIZES",
    "TENSOR_NAMES",
    "GQSACheckpointConfig",
    "GQSAWeight",
    "dequantize",
    "dequantize_reference",
    "from_dense_groups",
    "gqsa_linear",
    "gqsa_linear_reference",
    "kernel_tables",
    "pack_codes",
    "quantize_rtn",
    "unpack_codes",
]

# Batch (rows of x) cut-offs between kernels, from the H200 M sweep in
# benchmarks/results/gqsa_linear-NVIDIA_H200.json (commit 5c1dfad): with every group stored, the word
# GEMV wins only at M=1; from M=2 on, dequantize + cuBLAS beat both the GEMV and the fused
# dequantize+tl.dot kernel (e.g. 28672x8192, M=2: 0.41 ms vs 0.46 / 0.49), so the fused kernel is not
# dispatched to until it is faster.
DENSE_GEMV_MAX_M = 1
# Pruned weights whose groups are whole 32-bit words take a decode GEMV up to this M: the interleaved-rows GEMV
# when kernel_tables built its decode copy, else the task GEMV (H200, W4S50 g16, commit f54fb69: at M=4 the task
# GEMV beats dequantize + cuBLAS on every shape, 0.28 vs 0.31-0.45 ms on the largest; at M=16 it is 2.4x slower:
# each input row re-reads the weight). The interleaved GEMV is faster than the task GEMV at M = 1, 2 and 4 on
# every measured shape (benchmarks/NOTES.md item 31).
TASK_GEMV_MAX_M = 4
# Pruned weights past the task GEMV take the tensor-core tile matmul (tile_matmul.py) up to this M, then
# dequantize + cuBLAS. H200, Llama-3-8B shapes, W4S50 g16, with the fast 4-bit decode (commit 4675236,
# results/tile_fast_decode-NVIDIA_H200.json): up to M = 64 the tile matmul beats dequantize + cuBLAS on every
# shape (M=32: 0.024 / 0.017 / 0.089 / 0.049 ms on 6144x4096 / 4096x4096 / 28672x4096 / 4096x14336, against
# 0.073 / 0.053 / 0.252 / 0.145); at M = 128 it loses on the two largest (0.30 against 0.25 on 28672x4096). Dense
# bf16 is still faster: 0.017 / 0.014 / 0.063 / 0.034 ms at M=32.
TILE_MATMUL_MAX_M = 64


def _triton_path(w: GQSAWeight, device: torch.device) -> bool:
    if device.type != "cuda":
        info_once(f"gqsa: input on {device.type}, not CUDA; using the torch reference (dequantize + matmul)")
        return False
    from .triton_kernels import TRITON_BITS

    if w.bits not in TRITON_BITS:
        info_once(f"gqsa: no Triton kernel for {w.bits}-bit codes (have {TRITON_BITS}); using the torch reference")
        return False
    return True


def kernel_tables(w: GQSAWeight) -> dict[str, torch.Tensor]:
    """Per-weight tensors the CUDA kernels read besides the format's own, built once after loading and passed to
    every ``gqsa_linear`` call (building them per call costs several small launches, and vLLM captures CUDA graphs
    after loading): the decode GEMV's interleaved-rows copy (``il_*``, ``interleaved.TENSOR_NAMES``; about as large
    as the weight itself) and the tile matmul's ``group_mask`` / ``group_prefix``. Empty off CUDA or where no
    kernel needs one."""
    from .tile_matmul import group_bitmap, tile_supported

    if w.device.type != "cuda" or not tile_supported(w):
        return {}
    from .interleaved import interleave, interleaved_config
    from .triton_kernels import dense_groups_supported

    if dense_groups_supported(w):
        return {}
    tables = group_bitmap(w)
    if (w.group_size * w.bits) % 32 == 0:
        info_once("gqsa: pruned weights get a decode copy for M <= 4 (rows interleaved across lanes, about as many "
                  "bytes again as the compressed weight; the tile matmul and dequantize still read the format)")
        tables.update(interleave(w, **interleaved_config(w)).tables())
    return tables


def dequantize(w: GQSAWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``[N, K]`` weight; Triton on CUDA, the reference elsewhere."""
    if _triton_path(w, w.device):
        from .triton_kernels import gqsa_dequantize

        return gqsa_dequantize(w, dtype)
    return dequantize_reference(w, dtype)


def gqsa_linear(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None,
                tables: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``y = x @ W.T + bias`` for a GQSA weight.

    Args:
        x: ``[..., K]`` activations, float16 / bfloat16 / float32, on ``w``'s device.
        w: ``GQSAWeight`` with ``in_features == K`` and ``out_features == N``.
        bias: optional ``[N]``.
        tables: ``kernel_tables(w)``, built once; without them decode rebuilds its table on every call.
    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    check_linear_inputs(x, w, bias)
    if not _triton_path(w, x.device):
        return gqsa_linear_reference(x, w, bias)
    from .interleaved import InterleavedRows, interleaved_gemv
    from .tile_matmul import gqsa_tile_matmul, tile_supported
    from .triton_kernels import (
        dense_groups_supported,
        gqsa_dense_gemv,
        gqsa_dequantize,
        gqsa_task_gemv,
    )

    x2 = x.reshape(-1, w.in_features)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if dense_groups_supported(w) and m <= DENSE_GEMV_MAX_M:
        y = gqsa_dense_gemv(x2, w, bias)
    elif not dense_groups_supported(w) and m <= TASK_GEMV_MAX_M and (w.group_size * w.bits) % 32 == 0:
        if tables and "il_words" in tables:
            y = interleaved_gemv(x2, w, InterleavedRows.from_tables(tables), bias)
        else:
            # building the decode copy takes a sort and a scatter: not per call. The task GEMV reads the format as is.
            info_once("gqsa: no kernel_tables(w) passed; decode takes the task GEMV (slower than the interleaved "
                      "GEMV kernel_tables enables) and rebuilds its task table on every call")
            y = gqsa_task_gemv(x2, w, bias)
    elif not dense_groups_supported(w) and m <= TILE_MATMUL_MAX_M and tile_supported(w):
        bitmap = None
        if tables and "group_mask" in tables:
            bitmap = {"group_mask": tables["group_mask"], "group_prefix": tables["group_prefix"]}
        else:
            info_once("gqsa: no kernel_tables(w) passed; the tile matmul rebuilds its group bitmap on every call")
        y = gqsa_tile_matmul(x2, w, bias, bitmap=bitmap)
    else:
        if m > TILE_MATMUL_MAX_M:
            info_once(f"gqsa: {m} rows of x (> {TILE_MATMUL_MAX_M}): dequantize + cuBLAS (compute-bound batches)")
        elif not dense_groups_supported(w):
            info_once(f"gqsa: no tile matmul for {w.bits}-bit g{w.group_size} (groups of whole 32-bit words only); "
                      f"{m} rows of x take dequantize + cuBLAS")
        y = torch.nn.functional.linear(x2, gqsa_dequantize(w, x.dtype), bias)
    return y.reshape(*x.shape[:-1], w.out_features)
