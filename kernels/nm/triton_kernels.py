"""Triton kernels for the N:M format: a decode GEMV that reads kept values, packed positions (and integer codes
with their scales) straight from memory, and an expand kernel that writes the dense weight for cuBLAS (larger
batches; upstream Triton cannot issue sparse tensor-core instructions).

Both walk ``[BLOCK_N rows, BLOCK_P kept values]`` tiles. A kept value ``j`` of a row sits in block ``j // N`` at
the position read from bits ``j*IB .. j*IB+IB-1`` of the row's packed indices (``IB = log2(M)``; a position can
straddle two bytes at ``IB = 3``, so two bytes are read).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .format import INDEX_BITS, NMWeight

# value format -> kernel code
VALUE_KINDS = {"bf16": 0, "fp16": 0, "int8": 1, "int4": 2}


@triton.jit
def _kept_tile(values_ptr, indices_ptr, scales_ptr, rows, j, mask, KEPT, IDX_BYTES, N_KEEP: tl.constexpr,
               M_BLOCK: tl.constexpr, IB: tl.constexpr, KIND: tl.constexpr, GROUP: tl.constexpr):
    """Values (float32) and input columns of kept values ``j [BLOCK_P]`` of ``rows [BLOCK_N]``: two
    ``[BLOCK_N, BLOCK_P]`` tiles."""
    r64 = rows.to(tl.int64)[:, None]
    bit = j * IB
    byte_ptr = indices_ptr + r64 * IDX_BYTES + (bit // 8)[None, :]
    lo = tl.load(byte_ptr, mask=mask, other=0).to(tl.int32)
    hi = tl.load(byte_ptr + 1, mask=mask & ((bit // 8 + 1) < IDX_BYTES)[None, :], other=0).to(tl.int32)
    pos = ((lo | (hi << 8)) >> (bit % 8)[None, :]) & (M_BLOCK - 1)
    cols = (j // N_KEEP * M_BLOCK)[None, :] + pos
    if KIND == 0:
        v = tl.load(values_ptr + r64 * KEPT + j[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        if KIND == 1:
            q = tl.load(values_ptr + r64 * KEPT + j[None, :], mask=mask, other=0).to(tl.float32)
        else:
            byt = tl.load(values_ptr + r64 * (KEPT // 2) + (j // 2)[None, :], mask=mask, other=0).to(tl.int32)
            q = ((byt >> ((j % 2) * 4)[None, :]) & 15).to(tl.float32) - 8.0
        s = tl.load(scales_ptr + r64 * (KEPT // GROUP) + (j // GROUP)[None, :], mask=mask, other=0.0)
        v = q * s.to(tl.float32)
    return v, cols


@triton.jit
def _nm_gemv_kernel(
    x_ptr, values_ptr, indices_ptr, scales_ptr, bias_ptr, y_ptr,
    N, M, KEPT, IDX_BYTES, stride_xm, stride_ym,
    N_KEEP: tl.constexpr, M_BLOCK: tl.constexpr, IB: tl.constexpr, KIND: tl.constexpr, GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """``y[m, rows] = sum_j value[rows, j] * x[m, column[rows, j]]`` for ``BLOCK_M`` input rows per program (the
    decoded tile is reused for each)."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    offs = tl.arange(0, BLOCK_P)
    for i in tl.static_range(BLOCK_M):
        m = pid_m * BLOCK_M + i
        if m < M:
            acc = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
            x_row = x_ptr + m.to(tl.int64) * stride_xm
            for j0 in range(0, KEPT, BLOCK_P):
                j = j0 + offs
                mask = rmask[:, None] & (j < KEPT)[None, :]
                v, cols = _kept_tile(values_ptr, indices_ptr, scales_ptr, rows, j, mask, KEPT, IDX_BYTES, N_KEEP,
                                     M_BLOCK, IB, KIND, GROUP)
                acc += v * tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            y = tl.sum(acc, axis=1)
            if HAS_BIAS:
                y += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
            tl.store(y_ptr + m.to(tl.int64) * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _nm_expand_kernel(
    values_ptr, indices_ptr, scales_ptr, out_ptr, N, K, KEPT, IDX_BYTES,
    N_KEEP: tl.constexpr, M_BLOCK: tl.constexpr, IB: tl.constexpr, KIND: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """Dense ``[N, K]`` from ``[BLOCK_N rows, BLOCK_B blocks, M]`` tiles: each block's ``M`` outputs are built in
    registers from its ``N`` kept values (zeros elsewhere) and stored contiguously, so every element is written
    once, in order (no zero fill, no scattered stores)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    blocks = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask = (rows < N)[:, None] & (blocks < K // M_BLOCK)[None, :]
    c = tl.arange(0, M_BLOCK)
    tile = tl.zeros([BLOCK_N, BLOCK_B, M_BLOCK], dtype=tl.float32)
    for t in tl.static_range(N_KEEP):
        v, cols = _kept_tile(values_ptr, indices_ptr, scales_ptr, rows, blocks * N_KEEP + t, mask, KEPT, IDX_BYTES,
                             N_KEEP, M_BLOCK, IB, KIND, GROUP)
        pos = cols - (blocks * M_BLOCK)[None, :]
        tile += tl.where(pos[:, :, None] == c[None, None, :], v[:, :, None], 0.0)
    dst = out_ptr + rows.to(tl.int64)[:, None, None] * K + (blocks * M_BLOCK)[None, :, None] + c[None, None, :]
    tl.store(dst, tile.to(out_ptr.dtype.element_ty), mask=mask[:, :, None])


def _meta(w: NMWeight) -> dict:
    return dict(N_KEEP=w.n, M_BLOCK=w.m, IB=INDEX_BITS[w.m], KIND=VALUE_KINDS[w.value_format],
                GROUP=max(1, w.group_size))


def nm_gemv(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` reading the N:M weight directly; for small M."""
    m = x.shape[0]
    cfg = dict(config or {"BLOCK_N": 16, "BLOCK_P": 64, "num_warps": 4})
    block_m = cfg.pop("BLOCK_M", min(triton.next_power_of_2(m), 4))
    y = torch.empty(m, w.out_features, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(w.out_features, cfg["BLOCK_N"]), triton.cdiv(m, block_m))
    _nm_gemv_kernel[grid](
        x, w.values, w.indices, w.scales if w.scales is not None else w.values, bias if bias is not None else y, y,
        w.out_features, m, w.kept_per_row, w.indices.shape[1], x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, **_meta(w), **cfg,
    )
    return y


def nm_expand(w: NMWeight, dtype: torch.dtype, config: dict | None = None) -> torch.Tensor:
    """Dense ``[N, K]`` weight in ``dtype`` (pruned entries zero)."""
    cfg = dict(config or {"BLOCK_N": 8, "BLOCK_B": max(1, 256 // w.m), "num_warps": 4})
    out = torch.empty(w.out_features, w.in_features, dtype=dtype, device=w.device)  # every element is written
    grid = (triton.cdiv(w.out_features, cfg["BLOCK_N"]), triton.cdiv(w.in_features // w.m, cfg["BLOCK_B"]))
    _nm_expand_kernel[grid](
        w.values, w.indices, w.scales if w.scales is not None else w.values, out, w.out_features, w.in_features,
        w.kept_per_row, w.indices.shape[1], **_meta(w), **cfg,
    )
    return out
