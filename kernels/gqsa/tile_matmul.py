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

import os

import torch
import triton
import triton.language as tl

from ..pdl import pdl_launch, wait_for_earlier_kernels
from ..splitk import splitk_finish, splitk_workspace
from ..tiles import STEP_INPUTS, add_tile, dot_acc, split_grid, tile_config, tile_start
from .format import GQSAWeight

TILE_BITS = (2, 4, 8)  # codes that never straddle a 32-bit word


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
def _step_codes(scale_ptr, zero_ptr, words_ptr, idx, stored, WPG: tl.constexpr):
    """Scales and zeros (float32 ``[BN, GPS]``) and code words (int32 ``[BN, GPS, WPG]``) of the groups at ``idx``;
    zeros where not ``stored``."""
    s = tl.load(scale_ptr + idx, mask=stored, other=0.0).to(tl.float32)
    z = tl.load(zero_ptr + idx, mask=stored, other=0.0).to(tl.float32)
    wd = tl.load(words_ptr + idx[:, :, None] * WPG + tl.arange(0, WPG)[None, None, :], mask=stored[:, :, None],
                 other=0)
    return s, z, wd


@triton.jit
def _popcount32(v):
    """Set bits of ``v`` (int64 holding a 32-bit value); plain integer ops, so the interpreter runs it too."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF) >> 24


@triton.jit
def _step_lookup(mask_ptr, prefix_ptr, rows, nmask, c0, WORDS, GPS: tl.constexpr, POPC: tl.constexpr):
    """Where the ``GPS`` groups of column step ``c0`` of ``rows`` are: ``(stored [BN, GPS], index [BN, GPS])``;
    none stored where ``nmask`` is off. A
    step never crosses a 32-column bitmap word (``GPS`` divides 32 and steps start at multiples of it), so each row
    reads one mask word and one prefix count. ``POPC``: count bits with the hardware's POPC (GPU; the interpreter
    has no libdevice), else with plain integer ops (~12 instructions a group). sm_90 SASS of the bf16 kernel's
    loop: 646 instructions with the plain count in 64-bit ops, 493 with POPC and 32-bit lookup arithmetic."""
    where = rows.to(tl.int32) * WORDS + c0 // 32  # the table has N * K / g / 32 words: int32 holds it
    if POPC:  # 32-bit integer ops throughout; the index widens to 64 bits only at the end (codes pointers)
        word = tl.load(mask_ptr + where, mask=nmask, other=0)[:, None]
        bit = ((c0 + tl.arange(0, GPS)) % 32)[None, :]
        stored = ((word >> bit) & 1) != 0
        below = word & ((tl.full([1, GPS], 1, tl.int64) << bit) - 1).to(tl.int32)  # bits 0..30: int32 holds it
        count = tl.extra.cuda.libdevice.popc(below)
    else:
        word = tl.load(mask_ptr + where, mask=nmask, other=0).to(tl.int64)[:, None] & 0xFFFFFFFF
        bit = ((c0 + tl.arange(0, GPS)) % 32).to(tl.int64)[None, :]
        stored = ((word >> bit) & 1) != 0
        count = _popcount32(word & ((1 << bit) - 1))
    base = tl.load(prefix_ptr + where, mask=nmask, other=0)
    return stored, (base[:, None] + count).to(tl.int64)


# Fast 4-bit decode on the GPU (FAST = 1 for bfloat16 x, 2 for float16): per 32-bit word of eight codes c0..c7,
# four pairs (c_j, c_j+4) are masked into the low mantissa bits of a magic half-precision pair (bf16 0x4300: 128 + c;
# fp16 0x6400: 1024 + c, both exact), the magic plus the zero's integer part is subtracted (exact: small integers),
# and one packed FMA applies the scale and the zero's fraction: w = (c - round(z)) * s - frac(z) * s. About 2
# instructions per weight instead of ~13 (shift, mask, I2F, FFMA, pack). Pairs come out as (c_j, c_j+4), so x is
# loaded in that order (``_word_order``). Exact up to the half-precision rounding of s and frac(z) * s (bf16: 2**-9
# relative), where the plain path rounds (c - z) * s once; zeros' integer parts are clamped to [-128, 127].
def _decode_ptx(magic: str, kind: str) -> str:
    """The per-pair decode for one half-precision kind: mask a pair of codes into ``magic`` (bf16 128 + c, fp16
    1024 + c), subtract ``$3`` (the magic plus the zero's integer part), then ``* $4 + $5`` (scale, -frac(z) * s)."""
    return f"""{{
.reg .b32 r;
lop3.b32 r, $2, 0x000F000F, {magic}, 0xea;
add.rn.{kind} r, r, $3;
fma.rn.{kind} r, r, $4, $5;
mov.b32 {{$0, $1}}, r;
}}"""


_DECODE_PTX = {1: _decode_ptx("0x43004300", "bf16x2"), 2: _decode_ptx("0x64006400", "f16x2")}


def decode_asm(fast: int) -> str:
    """The kernel's ``DECODE_ASM`` for its ``FAST`` value (empty for the plain decode)."""
    return _DECODE_PTX.get(fast, "")


@triton.jit
def _half_pair(v):
    """A 16-bit float tensor as int32 holding it in both halves (a packed x2 operand)."""
    b = v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return b | (b << 16)


@triton.jit
def _decode_int4_fast(wd, s, z, FAST: tl.constexpr, ASM: tl.constexpr, BLOCK_N: tl.constexpr, STEP_K: tl.constexpr):
    """``wd [BN, GPS, WPG]`` int32 words of 4-bit codes, ``s``, ``z [BN, GPS]`` float32 -> ``[BN, STEP_K]`` weights
    in ``_word_order``, bfloat16 (FAST = 1) or float16 (FAST = 2); ``ASM``: ``decode_asm(FAST)`` (a kernel
    constexpr: jitted code cannot read module strings)."""
    DT: tl.constexpr = tl.bfloat16 if FAST == 1 else tl.float16
    OFFSET: tl.constexpr = 128.0 if FAST == 1 else 1024.0
    zi = tl.minimum(tl.maximum(tl.floor(z + 0.5), -128.0), 127.0)
    a = _half_pair((-(OFFSET + zi)).to(DT))[:, :, None, None]
    sc = _half_pair(s.to(DT))[:, :, None, None]
    b = _half_pair((-(z - zi) * s).to(DT))[:, :, None, None]
    t = wd[:, :, :, None] >> (tl.arange(0, 4) * 4)[None, None, None, :]  # [BN, GPS, WPG, 4]: pair j in bits j*4
    if FAST == 1:  # (a literal dtype: a constexpr-held one is not unwrapped inside the tuple)
        lo, hi = tl.inline_asm_elementwise(ASM, "=h,=h,r,r,r,r", [t, a, sc, b], dtype=(tl.bfloat16, tl.bfloat16),
                                           is_pure=True, pack=1)
    else:
        lo, hi = tl.inline_asm_elementwise(ASM, "=h,=h,r,r,r,r", [t, a, sc, b], dtype=(tl.float16, tl.float16),
                                           is_pure=True, pack=1)
    return tl.reshape(tl.join(lo, hi), [BLOCK_N, STEP_K])


@triton.jit
def _word_order(xt, BLOCK_M: tl.constexpr, STEP_K: tl.constexpr):
    """``xt [BM, STEP_K]`` with each 8 inputs of a code word put in the pair order of ``_decode_int4_fast``:
    0, 4, 1, 5, 2, 6, 3, 7 (loaded contiguously, reordered in registers)."""
    x4 = tl.reshape(xt, [BLOCK_M, STEP_K // 8, 2, 4])
    return tl.reshape(tl.permute(x4, (0, 1, 3, 2)), [BLOCK_M, STEP_K])


@triton.jit
def _gqsa_tile_matmul_kernel(
    x_ptr, words_ptr, scale_ptr, zero_ptr, mask_ptr, prefix_ptr, ws_ptr,
    M, N, K, stride_xm, WORDS, STEPS_PER_SPLIT,
    G: tl.constexpr, BITS: tl.constexpr, GPS: tl.constexpr, DOT_IEEE: tl.constexpr, FAST: tl.constexpr,
    DECODE_ASM: tl.constexpr, POPC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_earlier_kernels(PDL)  # (kernels/pdl.py) x and the workspace may come from the kernel before
    CPW: tl.constexpr = 32 // BITS  # codes per 32-bit word
    WPG: tl.constexpr = G // CPW  # words per group
    STEP_K: tl.constexpr = GPS * G
    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    pid_s = tl.program_id(2)
    ncols = K // G
    offs_m, offs_n, mmask, nmask, x_rows = tile_start(x_ptr, stride_xm, M, N, BLOCK_M, BLOCK_N)
    rows = offs_n.to(tl.int64)
    shifts = (tl.arange(0, CPW) * BITS)[None, None, None, :]
    c_first = pid_s * STEPS_PER_SPLIT * GPS
    c_end = tl.minimum(c_first + STEPS_PER_SPLIT * GPS, ncols)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # Software pipeline, one step deep: a step's codes, scales and zeros are loaded while the step before is
    # decoded and multiplied, and its bitmap lookup one step earlier still, so no step waits on a chain of
    # dependent loads (lookup -> codes), the limit of the first version (0.2-0.4 ms where dense bf16 took 0.017)
    # (a row mask for "this step exists" is built by comparison: the interpreter refuses tensor & scalar masks)
    stored, idx = _step_lookup(mask_ptr, prefix_ptr, rows, offs_n < tl.where(c_first < c_end, N, 0), c_first,
                               WORDS, GPS, POPC)
    s, z, wd = _step_codes(scale_ptr, zero_ptr, words_ptr, idx, stored, WPG)
    for c0 in range(c_first, c_end, GPS):
        c1 = c0 + GPS
        stored1, idx1 = _step_lookup(mask_ptr, prefix_ptr, rows, offs_n < tl.where(c1 < c_end, N, 0), c1, WORDS,
                                     GPS, POPC)
        k = c0 * G + tl.arange(0, STEP_K)
        xt = tl.load(x_rows + k[None, :], mask=mmask[:, None] & (k < K)[None, :], other=0.0)  # [BM, STEP_K]
        if FAST:
            xt = _word_order(xt, BLOCK_M, STEP_K)
            wt = _decode_int4_fast(wd, s, z, FAST, DECODE_ASM, BLOCK_N, STEP_K)
        else:
            q = ((wd[:, :, :, None] >> shifts) & CODE_MASK).to(tl.float32)  # [BN, GPS, WPG, CPW]
            wt = tl.reshape((q * s[:, :, None, None] - (z * s)[:, :, None, None]).to(x_ptr.dtype.element_ty),
                            [BLOCK_N, STEP_K])
        acc = dot_acc(wt, tl.trans(xt), acc, DOT_IEEE)
        s, z, wd = _step_codes(scale_ptr, zero_ptr, words_ptr, idx1, stored1, WPG)
    add_tile(ws_ptr, tl.trans(acc), offs_m, offs_n, N, mmask[:, None] & nmask[None, :])


# The fast decode's inline PTX runs on the GPU only (the Triton interpreter cannot run it); off: the plain decode.
FAST_DECODE = os.environ.get("SPARSEFLOW_TILE_FAST_DECODE", "1") != "0"
# The bitmap lookup's bit count with the hardware POPC on the GPU (the interpreter has no libdevice); off: plain
# integer ops, for comparison (tile_matmul benchmark)
POPC_LOOKUP = os.environ.get("SPARSEFLOW_TILE_POPC", "1") != "0"
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read once: fast_decode runs on every call


def fast_decode(x: torch.Tensor, bits: int) -> int:
    """``FAST`` for the kernel: 1 (bfloat16 x) or 2 (float16 x) for 4-bit codes on CUDA, else 0 (plain decode)."""
    if not (FAST_DECODE and x.is_cuda and bits == 4 and not _INTERPRETED):
        return 0
    return {torch.bfloat16: 1, torch.float16: 2}.get(x.dtype, 0)


def gqsa_tile_config(m: int, n: int, k: int) -> dict:
    """``tile_config``'s tiles without software pipelining (``num_stages=1``): the kernel already loads one step
    ahead by hand, and Triton's extra stage only added registers. H200, W4S50 g16, bf16 (bb8970d, one run): 28672x4096
    M=8 69.4 -> 66.5 us, M=32 81.6 -> 77.4; 4096x14336 M=32 42.8 -> 40.8; 6144x4096 M=8 20.9 -> 20.0. Smaller
    tiles (``BLOCK_N=32``, 1-4 warps) were 1.3-2.7x slower and twice the split no better."""
    return {**tile_config(m, n, k), "num_stages": 1}


def tile_supported(w: GQSAWeight) -> bool:
    """The tile matmul reads whole 32-bit words of codes: ``bits`` in ``TILE_BITS`` and groups of whole words."""
    return w.bits in TILE_BITS and (w.group_size * w.bits) % 32 == 0


def gqsa_tile_matmul(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None,
                     bitmap: dict[str, torch.Tensor] | None = None, config: dict | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` on the tensor cores, any sparsity.

    ``bitmap``: ``group_bitmap(w)`` if already built (it is part of ``kernel_tables``); built here otherwise.
    ``config``: ``BLOCK_M``, ``BLOCK_N`` (powers of two, at least 16), ``SPLIT`` and launch options."""
    if not tile_supported(w):
        raise ValueError(f"tile matmul decodes {TILE_BITS}-bit codes in groups of whole 32-bit words, not "
                         f"{w.bits}-bit g{w.group_size}")
    m, k = x.shape
    n = w.out_features
    if bitmap is None:
        bitmap = group_bitmap(w)
    mask, prefix = bitmap["group_mask"], bitmap["group_prefix"]
    words = triton.cdiv(k // w.group_size, 32)
    if mask.shape != (n, words) or prefix.shape != (n, words):
        raise ValueError(f"group bitmap is {tuple(mask.shape)}, this weight needs ({n}, {words}): it was built for "
                         "another weight")
    cfg = dict(config or gqsa_tile_config(m, n, k))
    split = cfg.pop("SPLIT")
    gps = max(1, STEP_INPUTS // w.group_size)
    grid, per_split = split_grid(m, n, triton.cdiv(k // w.group_size, gps), split, cfg)
    ws = splitk_workspace(x.device, m * n)
    fast = fast_decode(x, w.bits)
    if w.nnz_groups:
        _gqsa_tile_matmul_kernel[grid](
            x, w.codes.view(torch.int32), w.scale, w.zero, mask, prefix, ws, m, n, k, x.stride(0), words, per_split,
            G=w.group_size, BITS=w.bits, GPS=gps, DOT_IEEE=x.dtype == torch.float32, FAST=fast,
            DECODE_ASM=decode_asm(fast), POPC=POPC_LOOKUP and x.is_cuda and not _INTERPRETED, **cfg,
            **pdl_launch(x.device),
        )
    return splitk_finish(ws, torch.empty(m, n, dtype=x.dtype, device=x.device), bias)
