"""What the tensor-core tile matmuls (``gqsa/tile_matmul.py``, ``nm/tile_matmul.py``) share: their default tiles
and K split, the split-K launch grid, and the Triton pieces of the inner step (one ``tl.dot`` into the accumulator)
and of the epilogue (the tile's partial sums added into the split-K workspace, ``splitk.py``)."""

from __future__ import annotations

import triton
import triton.language as tl

STEP_INPUTS = 128  # inputs (K) decoded per step


# Programs a launch aims for: 12 per H200 SM (132). The GQSA tile matmul waits on memory latency, and in the
# H200 sweep (commit a1bf631) more K splits were faster on every Llama-3-8B shape, up to the largest split tried:
# 576-1792 programs, against the 264 of the first guess (28672x4096 M=8: 0.134 ms at 1792, 0.146 at 448).
TARGET_PROGRAMS = 12 * 132


def tile_config(m: int, n: int, k: int) -> dict:
    """Tiles and split: the whole batch in one M tile up to 128 rows (the weight is decoded once per M tile), and
    K splits up to ``TARGET_PROGRAMS`` programs, each with at least 4 steps of K."""
    block_m = min(128, max(16, triton.next_power_of_2(m)))
    block_n = 64
    steps = triton.cdiv(k, STEP_INPUTS)
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    split = max(1, min(triton.cdiv(TARGET_PROGRAMS, tiles), steps // 4 or 1))
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=split, num_warps=8 if block_m >= 128 else 4, num_stages=2)


def split_grid(m: int, n: int, steps: int, split: int, cfg: dict) -> tuple[tuple[int, int, int], int]:
    """``(grid, steps per split)`` of a launch over ``[M, N]`` tiles with its ``steps`` K steps cut ``split`` ways."""
    per_split = triton.cdiv(steps, split)
    return (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(steps, per_split)), per_split


@triton.jit
def tile_start(x_ptr, stride_xm, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's output tile (grid axes 0 and 1: N tiles, M tiles): ``(offs_m [BM], offs_n [BN], m mask,
    n mask, x row pointers [BM, 1])``."""
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, offs_m < M, offs_n < N, x_ptr + offs_m[:, None].to(tl.int64) * stride_xm


@triton.jit
def dot_acc(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b`` on the tensor cores; ``IEEE``: exact float32 products (float32 inputs), not TF32."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def add_tile(ws_ptr, acc, offs_m, offs_n, N, mask):
    """Add a ``[BLOCK_M, BLOCK_N]`` tile of partial sums into the split-K workspace (row-major ``[M, N]``)."""
    out = ws_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.atomic_add(out, acc, mask=mask, sem="relaxed")
