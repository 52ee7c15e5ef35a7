"""Triton kernels for the GQSA format: a decode GEMV that reads the compressed weight straight from
memory, and a dequantize kernel that feeds the tensor cores (cuBLAS) for larger batches.

Both walk block-sparse rows: a program owns ``BLOCK_R`` output rows and steps through their stored
groups ``BLOCK_G`` at a time; rows shorter than the longest in the block are masked. Codes of
``BITS`` in {2, 4, 8} are unpacked from bytes in registers (``CPB`` codes per byte).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .format import GQSAWeight

TRITON_BITS = (2, 4, 8)


@triton.jit
def _gqsa_gemv_kernel(
    x_ptr, codes_ptr, col_ptr, rowptr_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr,
    N, stride_xm, stride_ym,
    HAS_BIAS: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
):
    CPB: tl.constexpr = 8 // BITS  # codes per byte
    GB: tl.constexpr = G * BITS // 8  # bytes per group
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_r = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    start = tl.load(rowptr_ptr + rows, mask=rmask, other=0)
    ngroups = tl.load(rowptr_ptr + rows + 1, mask=rmask, other=0) - start  # 0 for masked rows
    max_groups = tl.max(ngroups, axis=0)
    b = tl.arange(0, GB)
    x_row = x_ptr + pid_m.to(tl.int64) * stride_xm
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for j0 in range(0, max_groups, BLOCK_G):
        gj = j0 + tl.arange(0, BLOCK_G)
        gmask = gj[None, :] < ngroups[:, None]  # [BR, BG]
        gidx = (start[:, None] + gj[None, :]).to(tl.int64)
        col = tl.load(col_ptr + gidx, mask=gmask, other=0).to(tl.int32)
        s = tl.load(scale_ptr + gidx, mask=gmask, other=0.0).to(tl.float32)
        z = tl.load(zero_ptr + gidx, mask=gmask, other=0.0).to(tl.float32)
        byt = tl.load(codes_ptr + gidx[:, :, None] * GB + b[None, None, :], mask=gmask[:, :, None], other=0)
        byt = byt.to(tl.int32)
        dot = tl.zeros([BLOCK_R, BLOCK_G], dtype=tl.float32)
        xsum = tl.zeros([BLOCK_R, BLOCK_G], dtype=tl.float32)
        for p in tl.static_range(CPB):
            q = ((byt >> (p * BITS)) & MASK).to(tl.float32)
            k = col[:, :, None] * G + b[None, None, :] * CPB + p
            xv = tl.load(x_row + k, mask=gmask[:, :, None], other=0.0).to(tl.float32)
            dot += tl.sum(q * xv, axis=2)
            xsum += tl.sum(xv, axis=2)
        # sum_i (q_i - z) * s * x_i = s * (sum_i q_i x_i - z * sum_i x_i)
        acc += tl.sum(s * (dot - z * xsum), axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + pid_m.to(tl.int64) * stride_ym + rows, acc.to(y_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _gqsa_dequant_kernel(
    codes_ptr, col_ptr, rowptr_ptr, scale_ptr, zero_ptr, out_ptr,
    N, K,
    G: tl.constexpr, BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
):
    CPB: tl.constexpr = 8 // BITS
    GB: tl.constexpr = G * BITS // 8
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_r = tl.program_id(0)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    start = tl.load(rowptr_ptr + rows, mask=rmask, other=0)
    ngroups = tl.load(rowptr_ptr + rows + 1, mask=rmask, other=0) - start
    max_groups = tl.max(ngroups, axis=0)
    b = tl.arange(0, GB)
    out_rows = out_ptr + rows.to(tl.int64)[:, None, None] * K
    for j0 in range(0, max_groups, BLOCK_G):
        gj = j0 + tl.arange(0, BLOCK_G)
        gmask = gj[None, :] < ngroups[:, None]
        gidx = (start[:, None] + gj[None, :]).to(tl.int64)
        col = tl.load(col_ptr + gidx, mask=gmask, other=0).to(tl.int32)
        s = tl.load(scale_ptr + gidx, mask=gmask, other=0.0).to(tl.float32)
        z = tl.load(zero_ptr + gidx, mask=gmask, other=0.0).to(tl.float32)
        byt = tl.load(codes_ptr + gidx[:, :, None] * GB + b[None, None, :], mask=gmask[:, :, None], other=0)
        byt = byt.to(tl.int32)
        for p in tl.static_range(CPB):
            q = ((byt >> (p * BITS)) & MASK).to(tl.float32)
            w = (q - z[:, :, None]) * s[:, :, None]
            k = col[:, :, None] * G + b[None, None, :] * CPB + p
            tl.store(out_rows + k, w.to(out_ptr.dtype.element_ty), mask=gmask[:, :, None])


def _blocks(w: GQSAWeight) -> tuple[int, int]:
    # ~32 codes bytes per row per step keeps register tiles small for every (g, bits); tuned on H200
    # by benchmarks/gqsa_linear.py (see benchmarks/results/).
    block_g = max(1, 64 // (w.group_size * w.bits // 8))
    return 16, min(block_g, 64)


def gqsa_gemv(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]``, one program per (row block, input row). For small M.

    ``out``: optional ``[M, N]`` tensor (row-contiguous, ``x.dtype``) to write into.
    """
    m = x.shape[0]
    y = out if out is not None else torch.empty(m, w.out_features, dtype=x.dtype, device=x.device)
    block_r, block_g = _blocks(w)
    grid = (triton.cdiv(w.out_features, block_r), m)
    _gqsa_gemv_kernel[grid](
        x, w.codes, w.group_col, w.row_ptr, w.scale, w.zero, bias if bias is not None else y, y,
        w.out_features, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, G=w.group_size, BITS=w.bits, BLOCK_R=block_r, BLOCK_G=block_g,
    )
    return y


def gqsa_dequantize(w: GQSAWeight, dtype: torch.dtype) -> torch.Tensor:
    """Dense ``[N, K]`` weight in ``dtype`` (pruned groups zero)."""
    n, k = w.out_features, w.in_features
    dense_groups = n * w.num_group_columns
    # every group stored: every element gets written, so skip the zero fill
    out = (torch.empty if w.nnz_groups == dense_groups else torch.zeros)(n, k, dtype=dtype, device=w.device)
    block_r, block_g = _blocks(w)
    _gqsa_dequant_kernel[(triton.cdiv(n, block_r),)](
        w.codes, w.group_col, w.row_ptr, w.scale, w.zero, out, n, k,
        G=w.group_size, BITS=w.bits, BLOCK_R=block_r, BLOCK_G=block_g,
    )
    return out
