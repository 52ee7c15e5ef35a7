"""Tensor-core GQSA matmul for batches past the decode GEMV (M = 5 .. a few hundred rows of x).

Each program owns a ``[BLOCK_M, BLOCK_N]`` output tile and steps through K one *column step* (``GPS`` group
columns, 128 inputs) at a time: it decodes the ``[BLOCK_N, 128]`` weight tile in registers (pruned groups are
zeros) and feeds it to ``tl.dot``. The weight is read once per M tile, compressed, so at decode batches the
kernel moves fewer bytes than a dense bf16 GEMM while the tensor cores do the arithmetic.

Finding stored group ``(r, c)`` must not depend on the previous step (a cursor walking each row's groups would
chain one memory latency per step), so a small per-weight table answers it directly (``group_bitmap``):

    group_mask   int32 [N, W]   bit c % 32 of word c // 32 is set if group column c of row r is stored
    group_prefix int32 [N, W]   index (into codes / scale / zero) of row r's first stored group at or after
                                column 32 * (c // 32)

so ``index = group_prefix[r, c // 32] + popcount(group_mask[r, c // 32] & ((1 << c % 32) - 1))``. ``W =
ceil(K / g / 32)``: 8 bytes per 32 groups, under 2% of a W4 g16 weight. Partial sums of the ``SPLIT`` K ranges
go through the split-K workspace (``..splitk``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..splitk import splitk_finish, splitk_workspace
from ..tiles import STEP_INPUTS, add_tile, dot_acc, split_grid, tile_config
from .format import GQSAWeight

TILE_BITS = (2, 4, 8)  # codes that never straddle a byte


def group_bitmap(w: GQSAWeight) -> dict[str, torch.Tensor]:
    """``{"group_mask", "group_prefix"}`` (int32 ``[N, ceil(K/g/32)]``, layout in the module docstring), on
    ``w``'s device, from the format's own ``row_ptr`` / ``group_col``."""
    n, ncols = w.out_features, w.in_features // w.group_size
    words = triton.cdiv(ncols, 32)
    if w.nnz_groups >= 2**31:
        raise ValueError(f"{w.nnz_groups} stored groups: the tile matmul indexes groups with int32; split the layer")
    dev = w.row_ptr.device
    counts = (w.row_ptr[1:] - w.row_ptr[:-1]).long()
    row_of = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    col = w.group_col.long()
    flat = row_of * words + col // 32
    mask = torch.zeros(n * words, dtype=torch.int64, device=dev).index_add_(0, flat, 1 << (col % 32))
    count = torch.zeros(n * words, dtype=torch.int64, device=dev).index_add_(0, flat, torch.ones_like(col))
    count = count.view(n, words)
    prefix = w.row_ptr[:-1].long()[:, None] + count.cumsum(1) - count
    mask = torch.where(mask >= 2**31, mask - 2**32, mask).to(torch.int32).view(n, words)
    return {"group_mask": mask, "group_prefix": prefix.to(torch.int32)}


@triton.jit
def _popcount32(v):
    """Set bits of ``v`` (int64 holding a 32-bit value); plain integer ops, so the interpreter runs it too."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF) >> 24


@triton.jit
def _gqsa_tile_matmul_kernel(
    x_ptr, codes_ptr, scale_ptr, zero_ptr, mask_ptr, prefix_ptr, ws_ptr,
    M, N, K, stride_xm, WORDS, STEPS_PER_SPLIT,
    G: tl.constexpr, BITS: tl.constexpr, GPS: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    CPB: tl.constexpr = 8 // BITS  # codes per byte
    GB: tl.constexpr = G // CPB  # bytes per group
    BYTES_K: tl.constexpr = GPS * GB
    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    ncols = K // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = offs_m < M
    nmask = offs_n < N
    rows = offs_n.to(tl.int64)
    gl = tl.arange(0, GPS)
    e = tl.arange(0, GB)
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    c_first = pid_s * STEPS_PER_SPLIT * GPS
    for step in range(STEPS_PER_SPLIT):
        c0 = c_first + step * GPS
        if c0 < ncols:
            c = c0 + gl  # [GPS] group columns of this step
            ok = nmask[:, None] & (c < ncols)[None, :]
            where = rows[:, None] * WORDS + (c // 32)[None, :]
            word = tl.load(mask_ptr + where, mask=ok, other=0).to(tl.int64) & 0xFFFFFFFF
            bit = (c % 32).to(tl.int64)[None, :]
            stored = ((word >> bit) & 1) != 0  # [BN, GPS]
            idx = tl.load(prefix_ptr + where, mask=ok, other=0).to(tl.int64) + _popcount32(word & ((1 << bit) - 1))
            s = tl.load(scale_ptr + idx, mask=stored, other=0.0).to(tl.float32)[:, :, None]
            z = tl.load(zero_ptr + idx, mask=stored, other=0.0).to(tl.float32)[:, :, None]
            byt = tl.load(codes_ptr + idx[:, :, None] * GB + e[None, None, :], mask=stored[:, :, None],
                          other=0).to(tl.int32)  # [BN, GPS, GB]
            # input of byte (group l, byte b), code position p: (c0 + l) * G + b * CPB + p
            k_of = tl.reshape((c0 + gl)[:, None] * G + e[None, :] * CPB, [BYTES_K])
            for p in tl.static_range(CPB):
                q = ((byt >> (p * BITS)) & CODE_MASK).to(tl.float32)
                wt = tl.reshape(((q - z) * s).to(x_ptr.dtype.element_ty), [BLOCK_N, BYTES_K])
                xk = k_of + p
                xt = tl.load(x_rows + xk[None, :], mask=mmask[:, None] & (xk < K)[None, :], other=0.0)
                acc = dot_acc(xt, tl.trans(wt), acc, DOT_IEEE)
    add_tile(ws_ptr, acc, offs_m, offs_n, N, mmask[:, None] & nmask[None, :])


def gqsa_tile_matmul(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None,
                     bitmap: dict[str, torch.Tensor] | None = None, config: dict | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` on the tensor cores, any sparsity.

    ``bitmap``: ``group_bitmap(w)`` if already built (it is part of ``kernel_tables``); built here otherwise.
    ``config``: ``BLOCK_M``, ``BLOCK_N`` (powers of two, at least 16), ``SPLIT`` and launch options."""
    if w.bits not in TILE_BITS:
        raise ValueError(f"tile matmul decodes {TILE_BITS}-bit codes, not {w.bits}")
    m, k = x.shape
    n = w.out_features
    if bitmap is None:
        bitmap = group_bitmap(w)
    mask, prefix = bitmap["group_mask"], bitmap["group_prefix"]
    words = triton.cdiv(k // w.group_size, 32)
    if mask.shape != (n, words) or prefix.shape != (n, words):
        raise ValueError(f"group bitmap is {tuple(mask.shape)}, this weight needs ({n}, {words}): it was built for "
                         "another weight")
    cfg = dict(config or tile_config(m, n, k))
    split = cfg.pop("SPLIT")
    gps = max(1, STEP_INPUTS // w.group_size)
    grid, per_split = split_grid(m, n, triton.cdiv(k // w.group_size, gps), split, cfg)
    ws = splitk_workspace(x.device, m * n)
    if w.nnz_groups:
        _gqsa_tile_matmul_kernel[grid](
            x, w.codes, w.scale, w.zero, mask, prefix, ws, m, n, k, x.stride(0), words, per_split,
            G=w.group_size, BITS=w.bits, GPS=gps, DOT_IEEE=x.dtype == torch.float32, **cfg,
        )
    return splitk_finish(ws, torch.empty(m, n, dtype=x.dtype, device=x.device), bias)
