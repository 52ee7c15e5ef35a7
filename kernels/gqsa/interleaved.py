"""Decode copy of a GQSA weight with rows interleaved across lanes, and the M <= 4 GEMV that reads it.

Why a second layout. The row-owning task GEMV (``triton_kernels._task_gemv_kernel``) gives one stored group to
each thread and sums every row across its program: per group it pays row bookkeeping, masked partial steps
and a share of a cross-thread reduction, ~145 issued instructions per group on the H200, where the decode and
the multiply-adds themselves are ~80 (benchmarks/NOTES.md items 28 and 30). Here each thread walks one row's
groups sequentially instead, so the loop body is just loads, decode and FMAs, and a row is reduced once across
its few lanes at the end.

Layout (built once per weight by ``interleave``, kept in ``kernel_tables`` like the N:M sparse-MMA copy):

- rows are sorted by stored groups, longest first, and cut into blocks of ``R`` rows; each row gets ``S`` lanes
  (``T = R * S`` threads per block, one program), lane ``s`` of a row takes the row's groups ``s, s+S, ...``;
- a block runs ``L`` steps, ``L`` = its longest row's ``ceil(len / S)``; step ``p`` of block ``b`` is ``T``
  consecutive *slots* ``(step_ptr[b] + p) * T + r * S + s``, so a warp's loads of one step are contiguous;
- slots past a row's end are padding: column 0, scale 0, zero 0, codes 0 (they weigh x by zero), and so are two
  steps after the last block (``PAD_STEPS``: the GEMV prefetches up to four steps ahead);
- per slot: the group's 32-bit code words ``words [slots, G*BITS/32]``, ``col int16 [slots]``, and
  ``scale_zero float16 [slots, 2]``; per block ``step_ptr int32 [B + 1]``; ``rows int32 [B, R]`` maps a block's
  row slot back to the weight's row (``-1``: none).

Tensor shapes carry ``R`` (``rows.shape[1]``) and ``T`` (``col.shape[1]``), so the copy passes through a custom
op's schema as tensors alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..pdl import pdl_launch, wait_for_earlier_kernels
from ..registers import half_to_f32, split4
from .format import GQSAWeight
from .triton_kernels import _sm_count, _x_group_word

# the GEMV prefetches up to two iterations (four steps) ahead; the copy ends with that many padding steps
MAX_PREFETCH = 2
PAD_STEPS = 2 * MAX_PREFETCH
TENSOR_NAMES = ("il_words", "il_col", "il_scale_zero", "il_step_ptr", "il_rows")


@dataclass
class InterleavedRows:
    """The decode copy (module docstring). ``words [L*T, WPG]`` int32, ``col [L, T]`` int16, ``scale_zero
    [L*T, 2]`` float16, ``step_ptr [B+1]`` int32, ``rows [B, R]`` int32; ``L`` = the blocks' steps plus two
    padding steps (``PAD_STEPS``), ``B`` = blocks."""

    words: torch.Tensor
    col: torch.Tensor
    scale_zero: torch.Tensor
    step_ptr: torch.Tensor
    rows: torch.Tensor

    @property
    def threads(self) -> int:
        return self.col.shape[1]

    @property
    def rows_per_block(self) -> int:
        return self.rows.shape[1]

    @property
    def lanes_per_row(self) -> int:
        return self.threads // self.rows_per_block

    def tables(self) -> dict[str, torch.Tensor]:
        return dict(zip(TENSOR_NAMES, (self.words, self.col, self.scale_zero, self.step_ptr, self.rows), strict=True))

    @classmethod
    def from_tables(cls, tables: dict[str, torch.Tensor]) -> InterleavedRows:
        return cls(*(tables[name] for name in TENSOR_NAMES))

    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tables().values())

    def clone(self) -> InterleavedRows:
        return InterleavedRows(*(t.clone() for t in self.tables().values()))


def interleave(w: GQSAWeight, lanes_per_row: int, threads: int = 64) -> InterleavedRows:
    """Build the decode copy of ``w`` (torch ops on ``w``'s device)."""
    if (w.group_size * w.bits) % 32:
        raise ValueError(f"interleaved GEMV needs whole 32-bit words per group (g={w.group_size}, bits={w.bits})")
    if lanes_per_row < 1 or threads % lanes_per_row or threads & (threads - 1) or lanes_per_row & (lanes_per_row - 1):
        raise ValueError(f"lanes_per_row={lanes_per_row}, threads={threads}: both powers of two, lanes dividing "
                         "threads")
    dev = w.device
    n, s, t = w.out_features, lanes_per_row, threads
    r = t // s
    wpg = w.group_size * w.bits // 32
    lens = (w.row_ptr[1:] - w.row_ptr[:-1]).to(torch.int64)
    order = torch.argsort(lens, descending=True, stable=True)
    blocks = triton.cdiv(n, r)
    rows = torch.full((blocks * r,), -1, dtype=torch.int64, device=dev)
    rows[:n] = order
    sorted_lens = torch.zeros(blocks * r, dtype=torch.int64, device=dev)
    sorted_lens[:n] = lens[order]
    block_steps = ((sorted_lens + s - 1) // s).reshape(blocks, r).amax(dim=1)
    block_steps += block_steps % 2  # the kernel takes two steps per iteration
    step_ptr = torch.zeros(blocks + 1, dtype=torch.int64, device=dev)
    step_ptr[1:] = torch.cumsum(block_steps, 0)
    total = int(step_ptr[-1])
    if (total + PAD_STEPS) * t * wpg >= 2**31:
        raise ValueError(f"interleaved GEMV indexes words with int32: {total * t} slots x {wpg} words is too many")
    # slot of every stored group: its row's rank in the sorted order gives (block, row slot); its place in the row
    # gives (step, lane)
    rank = torch.empty(n, dtype=torch.int64, device=dev)
    rank[order] = torch.arange(n, device=dev)
    row_of_group = torch.repeat_interleave(torch.arange(n, device=dev), lens)
    place = torch.arange(w.nnz_groups, device=dev) - w.row_ptr[:-1].to(torch.int64)[row_of_group]
    g_rank = rank[row_of_group]
    g_block, g_row = g_rank // r, g_rank % r
    slot = (step_ptr[g_block] + place // s) * t + g_row * s + place % s
    # padding steps past the last block: the GEMV prefetches up to 2 * MAX_PREFETCH steps unconditionally
    slots = (total + PAD_STEPS) * t
    words = torch.zeros(slots, wpg, dtype=torch.int32, device=dev)
    words[slot] = w.codes.reshape(w.nnz_groups, -1).view(torch.int32)
    col = torch.zeros(slots, dtype=torch.int16, device=dev)
    col[slot] = w.group_col
    scale_zero = torch.zeros(slots, 2, dtype=torch.float16, device=dev)
    scale_zero[slot, 0] = w.scale
    scale_zero[slot, 1] = w.zero
    return InterleavedRows(words, col.reshape(total + PAD_STEPS, t), scale_zero, step_ptr.to(torch.int32),
                           rows.reshape(blocks, r).to(torch.int32))


def dequantize_interleaved(il: InterleavedRows, w: GQSAWeight) -> torch.Tensor:
    """Dense float32 ``[N, K]`` from the decode copy (torch; tests the layout against ``w``'s own dequantize)."""
    from ..packing import unpack_codes

    t, s = il.threads, il.lanes_per_row
    total = int(il.step_ptr[-1])  # the padding steps after it belong to no block
    slots = torch.arange(total * t, device=il.col.device)
    step, lane = slots // t, slots % t
    block = torch.searchsorted(il.step_ptr.to(torch.int64), step, right=True) - 1
    row = il.rows.to(torch.int64)[block, lane // s]
    sz = il.scale_zero[: total * t].float()
    q = unpack_codes(il.words[: total * t].view(torch.uint8).reshape(total * t, -1), w.bits).float()
    vals = (q - sz[:, 1:]) * sz[:, :1]
    out = torch.zeros(w.out_features, w.in_features, dtype=torch.float32, device=il.col.device)
    keep = (row >= 0) & (sz[:, 0] != 0)
    cols = il.col.reshape(-1)[: total * t].to(torch.int64)[keep, None] * w.group_size + torch.arange(w.group_size,
                                                                                        device=out.device)
    out[row[keep, None], cols] = vals[keep]
    return out


@triton.jit
def _il_layout(c, BITS: tl.constexpr):
    """Code ``c`` of a word is decoded at bit ``pos`` of a float's mantissa, ``POS_MIN <= pos <= 23 - BITS``, after a
    left rotation by ``rot``. Counting from code ``C0 = POS_MIN / BITS``, consecutive codes share a rotation
    ``PER_ROT`` at a time, so the codes already inside the window need none (4-bit: codes 3 and 4 sit at bits 12
    and 16; codes 5-6, 7-0 and 1-2 take one rotation each: three a word, not four). POS_MIN = 12 keeps
    ``z * 2**pos`` a whole number for every float16 zero with |z| >= 2**-2; smaller zeros are off by < 2**-13 of a
    code step."""
    POS_MIN: tl.constexpr = 12
    CPW: tl.constexpr = 32 // BITS
    PER_ROT: tl.constexpr = (23 - BITS - POS_MIN) // BITS + 1
    C0: tl.constexpr = POS_MIN // BITS
    k = (c - C0 + CPW) % CPW
    pos = POS_MIN + (k % PER_ROT) * BITS
    rot = (pos - c * BITS + 32) % 32
    return pos, rot


@triton.jit
def _il_codes(word, code_mask, BITS: tl.constexpr):
    """``[T, CPW]`` floats ``2**23 + q_c * 2**pos_c`` for the codes of each thread's word, in input order: a LOP3
    per code and a rotation per ``PER_ROT`` codes (``_il_layout``)."""
    CPW: tl.constexpr = 32 // BITS
    pos, rot = _il_layout(tl.arange(0, CPW), BITS)
    rot_u = rot.to(tl.uint32)[None, :]
    rotated = (word[:, None] << rot_u) | (word[:, None] >> ((32 - rot_u) % 32))
    return ((rotated & (code_mask << pos.to(tl.uint32))[None, :]) | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def _pairs4(ptr):
    """Four 32-bit words at ``ptr [T]`` (one 16-byte load per thread) -> four ``[T]``."""
    return split4(tl.load(ptr[:, None] + tl.arange(0, 4)[None, :]))


@triton.jit
def _halves(pair, IS_BF16: tl.constexpr):
    """A 32-bit pair of 16-bit floats -> (low, high) as float32: for bf16 one integer op each."""
    return half_to_f32(pair, IS_BF16), half_to_f32(pair >> 16, IS_BF16)


@triton.jit
def _x8(x_row, col, wj: tl.constexpr, G: tl.constexpr):
    """The eight x values facing 4-bit word ``wj`` of each thread's group, as eight float32 ``[T]``."""
    base = col * G + wj * 8
    if x_row.dtype.element_ty == tl.float32:
        x0, x1, x2, x3 = _pairs4(x_row.to(tl.pointer_type(tl.uint32)) + base)
        x4, x5, x6, x7 = _pairs4(x_row.to(tl.pointer_type(tl.uint32)) + base + 4)
        return (x0.to(tl.float32, bitcast=True), x1.to(tl.float32, bitcast=True), x2.to(tl.float32, bitcast=True),
                x3.to(tl.float32, bitcast=True), x4.to(tl.float32, bitcast=True), x5.to(tl.float32, bitcast=True),
                x6.to(tl.float32, bitcast=True), x7.to(tl.float32, bitcast=True))
    IS_BF16: tl.constexpr = x_row.dtype.element_ty == tl.bfloat16
    p0, p1, p2, p3 = _pairs4(x_row.to(tl.pointer_type(tl.uint32)) + base // 2)
    x0, x1 = _halves(p0, IS_BF16)
    x2, x3 = _halves(p1, IS_BF16)
    x4, x5 = _halves(p2, IS_BF16)
    x6, x7 = _halves(p3, IS_BF16)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _rotl(word, r: tl.constexpr):
    # one return: Triton still generates statements after an early return, and a shift by 32 warns
    if r == 0:
        out = word
    else:
        out = (word << r) | (word >> (32 - r))
    return out


@triton.jit
def _code4(word, pos: tl.constexpr, code_mask):
    """``2**23 + q * 2**pos`` for the code of ``word`` (already rotated) at bit ``pos``: one LOP3."""
    return ((word & (code_mask << pos)) | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def _dot_word4(word, xv, m_lo, m_hi, acc_lo, acc_hi, code_mask):
    """Add one 4-bit word's ``(q_c - z) * x_c`` into two FFMA chains, one per decode position (``_il_layout``: odd
    codes at bit 12, even codes at bit 16), so a group is rescaled once per position, not once per code. ``m_lo``
    / ``m_hi``: ``2**23 + z * 2**12`` / ``2**23 + z * 2**16``."""
    x0, x1, x2, x3, x4, x5, x6, x7 = xv
    r8 = _rotl(word, 8)
    r16 = _rotl(word, 16)
    r24 = _rotl(word, 24)
    acc_lo += (_code4(word, 12, code_mask) - m_lo) * x3
    acc_hi += (_code4(word, 16, code_mask) - m_hi) * x4
    acc_lo += (_code4(r24, 12, code_mask) - m_lo) * x5
    acc_hi += (_code4(r24, 16, code_mask) - m_hi) * x6
    acc_lo += (_code4(r16, 12, code_mask) - m_lo) * x7
    acc_hi += (_code4(r16, 16, code_mask) - m_hi) * x0
    acc_lo += (_code4(r8, 12, code_mask) - m_lo) * x1
    acc_hi += (_code4(r8, 16, code_mask) - m_hi) * x2
    return acc_lo, acc_hi


@triton.jit
def _dot_word(word, x_row, col, wj: tl.constexpr, magic, m_lo, m_hi, acc_lo, acc_hi, code_mask,
              G: tl.constexpr, BITS: tl.constexpr):
    """Add word ``wj`` of each thread's group dotted with its x values. Results carry ``2**12``: 4-bit words go
    through ``_dot_word4`` (two chains; ``acc_hi`` carries ``2**16``), other widths through one ``[T, CPW]`` product
    rescaled per code into ``acc_lo``."""
    if BITS == 4:
        acc_lo, acc_hi = _dot_word4(word, _x8(x_row, col, wj, G), m_lo, m_hi, acc_lo, acc_hi, code_mask)
    else:
        CPW: tl.constexpr = 32 // BITS
        pos, _ = _il_layout(tl.arange(0, CPW), BITS)
        wq = _il_codes(word, code_mask, BITS) - magic
        xv = _x_group_word(x_row, col, wj, G, BITS)
        acc_lo += tl.sum(wq * xv * (4096.0 / (1 << pos).to(tl.float32))[None, :], axis=1)
    return acc_lo, acc_hi


@triton.jit
def _il_fetch(wp, cp, szp, WPG: tl.constexpr, WEIGHT_CG: tl.constexpr):
    """One step's per-thread group data: column (int32), scale and zero (float32), and its words (the first two;
    wider groups are read in ``_il_group``). ``WEIGHT_CG``: read them through L2 only (``ld.global.cg``): each
    byte is read once, and in L1 it would only evict the x values every group gathers."""
    CACHE: tl.constexpr = ".cg" if WEIGHT_CG else ""
    col = tl.load(cp, cache_modifier=CACHE).to(tl.int32) & 0xFFFF
    sz = tl.split(tl.load(szp[:, None] + tl.arange(0, 2)[None, :], cache_modifier=CACHE))
    if WPG == 2:  # the common g16 4-bit case: both words in one 64-bit load
        w0, w1 = tl.split(tl.load(wp[:, None] + tl.arange(0, 2)[None, :], cache_modifier=CACHE))
    else:
        w0 = tl.load(wp, cache_modifier=CACHE)
        w1 = w0
    return col, sz[0].to(tl.float32), sz[1].to(tl.float32), w0, w1


@triton.jit
def _il_group(fetched, wp, x0, x1, x2, x3, code_mask,
              G: tl.constexpr, BITS: tl.constexpr, BLOCK_M: tl.constexpr):
    """One step: each thread's group (``_il_fetch``'s values; words past the first two at ``wp``) dotted with
    ``BLOCK_M`` rows of x, times its scale -> up to four ``[T]``."""
    WPG: tl.constexpr = G * BITS // 32
    CPW: tl.constexpr = 32 // BITS
    col, s, z, w0, w1 = fetched
    pos, _ = _il_layout(tl.arange(0, CPW), BITS)
    # 2**23 + z * 2**pos: one FFMA per position class and group; then a code is one FADD from (q - z) * 2**pos
    magic = z[:, None] * (1 << pos).to(tl.float32)[None, :] + 8388608.0
    m_lo = z * 4096.0 + 8388608.0
    m_hi = z * 65536.0 + 8388608.0
    zero = tl.zeros([col.shape[0]], dtype=tl.float32)
    lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3 = zero, zero, zero, zero, zero, zero, zero, zero
    for wj in tl.static_range(WPG):
        if wj == 0:
            word = w0.to(tl.uint32, bitcast=True)
        elif wj == 1 and WPG == 2:
            word = w1.to(tl.uint32, bitcast=True)
        else:
            word = tl.load(wp + wj).to(tl.uint32, bitcast=True)
        lo0, hi0 = _dot_word(word, x0, col, wj, magic, m_lo, m_hi, lo0, hi0, code_mask, G, BITS)
        if BLOCK_M > 1:
            lo1, hi1 = _dot_word(word, x1, col, wj, magic, m_lo, m_hi, lo1, hi1, code_mask, G, BITS)
        if BLOCK_M > 2:
            lo2, hi2 = _dot_word(word, x2, col, wj, magic, m_lo, m_hi, lo2, hi2, code_mask, G, BITS)
            lo3, hi3 = _dot_word(word, x3, col, wj, magic, m_lo, m_hi, lo3, hi3, code_mask, G, BITS)
    # chains carry 2**12 (and 2**16 = 2**12 * 16); the 2**-12 is applied once per row at the end
    r0 = s * (hi0 * 0.0625 + lo0)
    r1 = r0
    r2 = r0
    r3 = r0
    if BLOCK_M > 1:
        r1 = s * (hi1 * 0.0625 + lo1)
    if BLOCK_M > 2:
        r2 = s * (hi2 * 0.0625 + lo2)
        r3 = s * (hi3 * 0.0625 + lo3)
    return r0, r1, r2, r3


@triton.jit
def _il_block(b, x0, x1, x2, x3, words_ptr, col_ptr, sz_ptr, step_ptr, rows_ptr, bias_ptr, y_ptr, m0, M, stride_ym,
              code_mask, G: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, R: tl.constexpr,
              BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr, PREFETCH: tl.constexpr, WEIGHT_CG: tl.constexpr):
    """Block ``b``: every thread sums its lane's share of one row over the block's steps (two per iteration:
    blocks have an even number), then a row's ``S`` lanes are added and the row is stored in y's dtype with the
    bias."""
    S: tl.constexpr = T // R
    WPG: tl.constexpr = G * BITS // 32
    p0 = tl.load(step_ptr + b)
    p1 = tl.load(step_ptr + b + 1)
    acc0 = tl.zeros([T], dtype=tl.float32)
    acc1 = tl.zeros([T], dtype=tl.float32)
    acc2 = tl.zeros([T], dtype=tl.float32)
    acc3 = tl.zeros([T], dtype=tl.float32)
    slot = p0 * T + tl.arange(0, T)
    wp = words_ptr + slot * WPG
    cp = col_ptr + slot
    szp = sz_ptr + slot * 2
    # software pipeline: the words, columns and scales of the next 2 * PREFETCH steps are in flight while these two
    # compute, so a step's x gathers issue at once (the arrays end with 2 * MAX_PREFETCH padding steps, so the
    # last prefetches stay in bounds)
    nxt_a = _il_fetch(wp, cp, szp, WPG, WEIGHT_CG)
    nxt_c = _il_fetch(wp + T * WPG, cp + T, szp + 2 * T, WPG, WEIGHT_CG)
    far_a = nxt_a
    far_c = nxt_c
    if PREFETCH == 2:
        far_a = _il_fetch(wp + 2 * T * WPG, cp + 2 * T, szp + 4 * T, WPG, WEIGHT_CG)
        far_c = _il_fetch(wp + 3 * T * WPG, cp + 3 * T, szp + 6 * T, WPG, WEIGHT_CG)
    for _ in range(p0, p1, 2):
        cur_a = nxt_a
        cur_c = nxt_c
        wp_a = wp
        wp += 2 * T * WPG
        cp += 2 * T
        szp += 4 * T
        if PREFETCH == 2:
            nxt_a = far_a
            nxt_c = far_c
            far_a = _il_fetch(wp + 2 * T * WPG, cp + 2 * T, szp + 4 * T, WPG, WEIGHT_CG)
            far_c = _il_fetch(wp + 3 * T * WPG, cp + 3 * T, szp + 6 * T, WPG, WEIGHT_CG)
        else:
            nxt_a = _il_fetch(wp, cp, szp, WPG, WEIGHT_CG)
            nxt_c = _il_fetch(wp + T * WPG, cp + T, szp + 2 * T, WPG, WEIGHT_CG)
        a0, a1, a2, a3 = _il_group(cur_a, wp_a, x0, x1, x2, x3, code_mask, G, BITS, BLOCK_M)
        c0, c1, c2, c3 = _il_group(cur_c, wp_a + T * WPG, x0, x1, x2, x3, code_mask, G, BITS, BLOCK_M)
        acc0 += a0 + c0
        if BLOCK_M > 1:
            acc1 += a1 + c1
        if BLOCK_M > 2:
            acc2 += a2 + c2
            acc3 += a3 + c3
    rows = tl.load(rows_ptr + b * R + tl.arange(0, R))
    keep = rows >= 0
    m_of = m0 + tl.zeros([R], dtype=tl.int32)  # as a vector: the masks below are vectors too
    bias = tl.zeros([R], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=keep, other=0.0).to(tl.float32)
    # the chains carry 2**12 (_il_group)
    y0 = y_ptr + m0.to(tl.int64) * stride_ym + rows
    out0 = tl.sum(tl.reshape(acc0, (R, S)), axis=1) * (1.0 / 4096.0) + bias
    tl.store(y0, out0.to(y_ptr.dtype.element_ty), mask=keep)
    if BLOCK_M > 1:
        out1 = tl.sum(tl.reshape(acc1, (R, S)), axis=1) * (1.0 / 4096.0) + bias
        tl.store(y0 + stride_ym, out1.to(y_ptr.dtype.element_ty), mask=keep & (m_of + 1 < M))
    if BLOCK_M > 2:
        out2 = tl.sum(tl.reshape(acc2, (R, S)), axis=1) * (1.0 / 4096.0) + bias
        tl.store(y0 + 2 * stride_ym, out2.to(y_ptr.dtype.element_ty), mask=keep & (m_of + 2 < M))
        out3 = tl.sum(tl.reshape(acc3, (R, S)), axis=1) * (1.0 / 4096.0) + bias
        tl.store(y0 + 3 * stride_ym, out3.to(y_ptr.dtype.element_ty), mask=keep & (m_of + 3 < M))


@triton.jit
def _interleaved_gemv_kernel(
    x_ptr, words_ptr, col_ptr, sz_ptr, step_ptr, rows_ptr, bias_ptr, y_ptr,
    BLOCKS, M, stride_xm, stride_ym, code_mask,
    G: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, PREFETCH: tl.constexpr, WEIGHT_CG: tl.constexpr, PDL: tl.constexpr,
):
    """Program ``t`` of ``P`` runs blocks ``t, t + P, ...`` (``_il_block``); by default ``P`` is the number of
    blocks. Fewer, persistent programs were no faster on the H200 (each block's first fetch is exposed again).
    One decoded word serves ``BLOCK_M`` <= 4 input rows."""
    pid_m = tl.program_id(1)
    m0 = pid_m * BLOCK_M
    # rows past M read row M-1 (in bounds, no mask needed); their sums are not stored
    x0 = x_ptr + m0.to(tl.int64) * stride_xm
    x1 = x_ptr + tl.minimum(m0 + 1, M - 1).to(tl.int64) * stride_xm
    x2 = x_ptr + tl.minimum(m0 + 2, M - 1).to(tl.int64) * stride_xm
    x3 = x_ptr + tl.minimum(m0 + 3, M - 1).to(tl.int64) * stride_xm
    # launched early (PDL), the program is resident when the previous kernel ends; it reads nothing before then
    # (x and even the copy may have been written by that kernel)
    wait_for_earlier_kernels(PDL)
    for b in range(tl.program_id(0), BLOCKS, tl.num_programs(0)):
        _il_block(b, x0, x1, x2, x3, words_ptr, col_ptr, sz_ptr, step_ptr, rows_ptr, bias_ptr, y_ptr, m0, M,
                  stride_ym, code_mask, G, BITS, T, R, BLOCK_M, HAS_BIAS, PREFETCH, WEIGHT_CG)


# threads a decode copy aims for, per SM: about 22 warps (H200, W4S50 g16, M=1, probe_interleaved JSON): the best
# lanes per row on every measured shape is the fewest giving that many
THREADS_PER_SM = 704


def interleaved_config(w: GQSAWeight, sms: int | None = None) -> dict:
    """``lanes_per_row`` and ``threads`` for ``interleave(w, ...)``: the fewest lanes per row (a power of two, 1-32)
    that give ``THREADS_PER_SM`` threads per SM, halved while a lane would walk fewer than 4 groups. H200, M=1:
    28672x8192 -> 4 lanes (35.4 us), 8192x28672 -> 16 (35.7), 4096x14336 -> 32 (12.1), 14336x4096 -> 8 (11.9),
    6144x4096 -> 16 (7.2), 4096x4096 -> 32 (6.4); the next power of two either way was 5-40% slower."""
    if sms is None:
        sms = _sm_count(w.device.index) if w.device.type == "cuda" else 132
    lanes = 1
    while lanes < 32 and w.out_features * lanes < sms * THREADS_PER_SM:
        lanes *= 2
    mean_row = w.nnz_groups / max(1, w.out_features)
    while lanes > 1 and mean_row / lanes < 4:
        lanes //= 2
    return dict(lanes_per_row=lanes, threads=64)


def default_block_m(m: int, il: InterleavedRows) -> int:
    """Input rows per program: up to 2 where blocks hold many rows (few lanes each), else up to 4. H200, M=4:
    28672x8192 with 4 lanes 104 us with 2 rows against 128 with 4; 4096x14336 with 16 lanes 29.5 against 38.7."""
    cap = 2 if il.lanes_per_row <= 8 else 4
    return min(triton.next_power_of_2(m), cap)


def interleaved_gemv(x: torch.Tensor, w: GQSAWeight, il: InterleavedRows, bias: torch.Tensor | None = None,
                     block_m: int | None = None, programs: int | None = None, prefetch: int = 1,
                     weight_cg: bool = True) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` for small M, reading the decode copy ``il = interleave(w, ...)``
    (``w`` gives the shape, group size and bits; its own tensors are not read). ``programs``: persistent
    programs per input-row block (default: one per row block); ``prefetch``: iterations of two steps whose
    weight data is loaded ahead (1 or 2); ``weight_cg``: weight loads bypass L1 (``_il_fetch``)."""
    m = x.shape[0]
    block_m = block_m or default_block_m(m, il)
    if block_m not in (1, 2, 4):
        raise ValueError(f"block_m={block_m}: the interleaved GEMV takes 1, 2 or 4 input rows per program")
    wpg = w.group_size * w.bits // 32
    if il.words.shape[1] != wpg or il.rows.numel() < w.out_features:
        raise ValueError(f"decode copy has {il.words.shape[1]} words per group and {il.rows.numel()} row slots; "
                         f"the weight needs {wpg} and {w.out_features}: it was built for another weight")
    if prefetch not in (1, 2):
        raise ValueError(f"prefetch={prefetch}: 1 or 2 iterations ahead")
    if x.dtype != torch.float32 and x.stride(0) % 2:
        x = x.contiguous()  # 16-bit x is read as 32-bit pairs
    y = torch.empty(m, w.out_features, dtype=x.dtype, device=x.device)
    blocks = il.rows.shape[0]
    programs = blocks if programs is None else programs
    _interleaved_gemv_kernel[(max(1, min(blocks, programs)), triton.cdiv(m, block_m))](
        x, il.words, il.col, il.scale_zero, il.step_ptr, il.rows, bias if bias is not None else x, y,
        blocks, m, x.stride(0), y.stride(0), (1 << w.bits) - 1,
        G=w.group_size, BITS=w.bits, T=il.threads, R=il.rows_per_block, BLOCK_M=block_m,
        HAS_BIAS=bias is not None, PREFETCH=prefetch, WEIGHT_CG=weight_cg, num_warps=max(1, il.threads // 32),
        **pdl_launch(x.device),
    )
    return y
