"""Tensor-core N:M matmul for batches past the decode kernels (any N:M pattern and value format).

Each program owns a ``[BLOCK_M, BLOCK_N]`` output tile and steps through K ``BLOCK_B`` blocks of ``M`` inputs at a
time: it rebuilds the dense ``[BLOCK_N, BLOCK_B * M]`` weight tile in registers from the kept values and their
positions (the expand kernel's tile, ``_kept_tile``) and feeds it to ``tl.dot``. The weight is read once per M
tile in its compressed form (2:4 int4: 0.38 bytes per weight against 2 for bf16), so at decode batches the kernel
moves far fewer bytes than expand + cuBLAS, which writes and re-reads the dense weight. Partial sums of the
``SPLIT`` K ranges go through the split-K workspace (``..splitk``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..splitk import splitk_finish, splitk_workspace
from .format import NMWeight
from .triton_kernels import _kept_tile, _meta

STEP_INPUTS = 128  # inputs (K) per step


@triton.jit
def _nm_tile_matmul_kernel(
    x_ptr, values_ptr, indices_ptr, scales_ptr, ws_ptr,
    M, N, K, KEPT, IDX_BYTES, stride_xm, STEPS_PER_SPLIT,
    N_KEEP: tl.constexpr, M_BLOCK: tl.constexpr, IB: tl.constexpr, KIND: tl.constexpr, GROUP: tl.constexpr,
    DOT_IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
):
    BLOCK_K: tl.constexpr = BLOCK_B * M_BLOCK
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    nblocks = K // M_BLOCK
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = offs_m < M
    nmask = rows < N
    c = tl.arange(0, M_BLOCK)
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    b_first = pid_s * STEPS_PER_SPLIT * BLOCK_B
    for step in range(STEPS_PER_SPLIT):
        b0 = b_first + step * BLOCK_B
        if b0 < nblocks:
            blocks = b0 + tl.arange(0, BLOCK_B)
            mask = nmask[:, None] & (blocks < nblocks)[None, :]
            tile = tl.zeros([BLOCK_N, BLOCK_B, M_BLOCK], dtype=tl.float32)
            for t in tl.static_range(N_KEEP):
                v, cols = _kept_tile(values_ptr, indices_ptr, scales_ptr, rows, blocks * N_KEEP + t, mask, KEPT,
                                     IDX_BYTES, N_KEEP, M_BLOCK, IB, KIND, GROUP)
                pos = cols - (blocks * M_BLOCK)[None, :]
                tile += tl.where(pos[:, :, None] == c[None, None, :], v[:, :, None], 0.0)
            wt = tl.reshape(tile.to(x_ptr.dtype.element_ty), [BLOCK_N, BLOCK_K])
            k = b0 * M_BLOCK + tl.arange(0, BLOCK_K)
            xt = tl.load(x_rows + k[None, :], mask=mmask[:, None] & (k < K)[None, :], other=0.0)
            if DOT_IEEE:
                acc = tl.dot(xt, tl.trans(wt), acc, input_precision="ieee")
            else:
                acc = tl.dot(xt, tl.trans(wt), acc)
    out = ws_ptr + offs_m[:, None].to(tl.int64) * N + rows[None, :]
    tl.atomic_add(out, acc, mask=mmask[:, None] & nmask[None, :], sem="relaxed")


def tile_matmul_config(m: int, n: int, k: int, block: int) -> dict:
    """Tiles and split: the whole batch in one M tile up to 128 rows (the weight is decoded once per M tile), and
    enough K splits for ~2 programs per H200 SM. A first guess, to be replaced by an H200 sweep."""
    block_m = min(128, max(16, triton.next_power_of_2(m)))
    block_n = 64
    steps = triton.cdiv(k, STEP_INPUTS)
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    split = max(1, min(triton.cdiv(264, tiles), steps // 4 or 1))
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_B=STEP_INPUTS // block, SPLIT=split,
                num_warps=8 if block_m >= 128 else 4, num_stages=2)


def nm_tile_matmul(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None,
                   config: dict | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` on the tensor cores for any N:M weight.

    ``config``: ``BLOCK_M``, ``BLOCK_N`` (powers of two, at least 16), ``BLOCK_B`` (blocks of ``w.m`` inputs per
    step; ``BLOCK_B * w.m`` at least 16), ``SPLIT`` and launch options."""
    m, k = x.shape
    n = w.out_features
    cfg = dict(config or tile_matmul_config(m, n, k, w.m))
    split = cfg.pop("SPLIT")
    if cfg["BLOCK_B"] * w.m < 16:
        raise ValueError(f"BLOCK_B={cfg['BLOCK_B']} blocks of {w.m} inputs: tl.dot needs at least 16 inputs per step")
    steps = triton.cdiv(k // w.m, cfg["BLOCK_B"])
    per_split = triton.cdiv(steps, split)
    ws = splitk_workspace(x.device, m * n)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(steps, per_split))
    _nm_tile_matmul_kernel[grid](
        x, w.values, w.indices, w.scales if w.scales is not None else w.values, ws, m, n, k, w.kept_per_row,
        w.indices.shape[1], x.stride(0), per_split, DOT_IEEE=x.dtype == torch.float32, **_meta(w), **cfg,
    )
    return splitk_finish(ws, torch.empty(m, n, dtype=x.dtype, device=x.device), bias)
