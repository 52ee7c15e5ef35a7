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
from ..tiles import STEP_INPUTS, add_tile, dot_acc, split_grid, tile_config, tile_start
from .format import NMWeight
from .triton_kernels import _kept_tile, _meta


@triton.jit
def _nm_tile_matmul_kernel(
    x_ptr, values_ptr, indices_ptr, scales_ptr, ws_ptr,
    M, N, K, KEPT, IDX_BYTES, stride_xm, STEPS_PER_SPLIT,
    N_KEEP: tl.constexpr, M_BLOCK: tl.constexpr, IB: tl.constexpr, KIND: tl.constexpr, GROUP: tl.constexpr,
    DOT_IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
):
    BLOCK_K: tl.constexpr = BLOCK_B * M_BLOCK
    pid_s = tl.program_id(2)
    nblocks = K // M_BLOCK
    offs_m, rows, mmask, nmask, x_rows = tile_start(x_ptr, stride_xm, M, N, BLOCK_M, BLOCK_N)
    c = tl.arange(0, M_BLOCK)
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
            acc = dot_acc(xt, tl.trans(wt), acc, DOT_IEEE)
    add_tile(ws_ptr, acc, offs_m, rows, N, mmask[:, None] & nmask[None, :])


def tile_matmul_config(m: int, n: int, k: int, block: int) -> dict:
    """The shared first-guess tiles (``..tiles.tile_config``) plus ``BLOCK_B``: blocks of ``block`` inputs per
    step."""
    return {**tile_config(m, n, k), "BLOCK_B": STEP_INPUTS // block}


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
    grid, per_split = split_grid(m, n, triton.cdiv(k // w.m, cfg["BLOCK_B"]), split, cfg)
    ws = splitk_workspace(x.device, m * n)
    _nm_tile_matmul_kernel[grid](
        x, w.values, w.indices, w.scales if w.scales is not None else w.values, ws, m, n, k, w.kept_per_row,
        w.indices.shape[1], x.stride(0), per_split, DOT_IEEE=x.dtype == torch.float32, **_meta(w), **cfg,
    )
    return splitk_finish(ws, torch.empty(m, n, dtype=x.dtype, device=x.device), bias)
