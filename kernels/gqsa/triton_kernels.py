"""Triton kernels for the GQSA format: a decode GEMV that reads the compressed weight straight from
memory, and a dequantize kernel that feeds the tensor cores (cuBLAS) for larger batches.

Both walk block-sparse rows: a program owns ``BLOCK_R`` output rows and steps through their stored
groups ``BLOCK_G`` at a time; rows shorter than the longest in the block are masked. Codes of
``BITS`` in {2, 4, 8} are unpacked from bytes in registers (``CPB`` codes per byte).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..splitk import splitk_finish, splitk_workspace
from ..tiles import dot_acc
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


@triton.jit
def _dense_groups_gemv_kernel(
    x_ptr, words_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr,
    N, K, stride_xm, stride_ym,
    HAS_BIAS: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Every group stored, few input rows (decode): CUDA-core GEMV over ``[BLOCK_N, BLOCK_W]`` tiles of
    32-bit words (``CPW`` codes each) read contiguously along K. Per word it forms
    ``sum q*x`` and uses ``sum_i (q_i - z) s x_i = s (sum q_i x_i - z sum x_i)``, so the scale and
    zero (gathered per word; repeats hit L1) are applied once per word, not per code."""
    CPW: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)  # fastest: programs sharing a weight tile run together and share L2
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    rows = offs_n[:, None].to(tl.int64)
    row_words = K // CPW
    ngroups = K // G
    offs_w = tl.arange(0, BLOCK_W)
    x_row = x_ptr + pid_m.to(tl.int64) * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    for w0 in range(0, row_words, BLOCK_W):
        ww = w0 + offs_w
        wmask = ww < row_words
        mask = nmask[:, None] & wmask[None, :]
        word = tl.load(words_ptr + rows * row_words + ww[None, :], mask=mask, other=0)
        sz = rows * ngroups + (ww * CPW // G)[None, :]
        s = tl.load(scale_ptr + sz, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(zero_ptr + sz, mask=mask, other=0.0).to(tl.float32)
        qx = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
        xs = tl.zeros([BLOCK_W], dtype=tl.float32)
        for c in tl.static_range(CPW):
            xv = tl.load(x_row + ww * CPW + c, mask=wmask, other=0.0).to(tl.float32)
            qx += ((word >> (c * BITS)) & MASK).to(tl.float32) * xv[None, :]
            xs += xv
        acc += s * (qx - z * xs[None, :])
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + pid_m.to(tl.int64) * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _dense_groups_matmul_kernel(
    x_ptr, codes_ptr, scale_ptr, zero_ptr, out_ptr,
    M, N, K, stride_xm, stride_os, stride_om,
    G: tl.constexpr, BITS: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_PER_SPLIT: tl.constexpr,
):
    """Every group stored: dequantize a ``[BLOCK_K/CPB, BLOCK_N]`` weight tile per code position in
    registers and feed the tensor cores. The ``CPB`` codes of a byte are multiplied with the matching
    strided columns of x, so nothing is interleaved: sum_k x_k w_k is the same in any order."""
    CPB: tl.constexpr = 8 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    BYTES_K: tl.constexpr = BLOCK_K // CPB
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    row_bytes = K // CPB
    ngroups = K // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = offs_m < M
    nmask = offs_n < N
    cols = offs_n[None, :].to(tl.int64)
    offs_b = tl.arange(0, BYTES_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_start = pid_s * K_PER_SPLIT
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        # K is a multiple of BLOCK_K (the host checks), so only the split's end needs a bound
        if k0 < K:
            bb = k0 // CPB + offs_b
            byt = tl.load(codes_ptr + cols * row_bytes + bb[:, None], mask=nmask[None, :], other=0).to(tl.int32)
            sz = cols * ngroups + (bb * CPB // G)[:, None]  # [BYTES_K, BLOCK_N], repeated per group
            s = tl.load(scale_ptr + sz, mask=nmask[None, :], other=0.0).to(tl.float32)
            z = tl.load(zero_ptr + sz, mask=nmask[None, :], other=0.0).to(tl.float32)
            for p in tl.static_range(CPB):
                q = ((byt >> (p * BITS)) & MASK).to(tl.float32)
                w = ((q - z) * s).to(x_ptr.dtype.element_ty)
                xk = bb * CPB + p
                xt = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + xk[None, :], mask=mmask[:, None],
                             other=0.0)
                acc = dot_acc(xt, w, acc, DOT_IEEE)
    out = out_ptr + pid_s.to(tl.int64) * stride_os + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _dense_groups_dequant_kernel(
    words_ptr, scale_ptr, zero_ptr, out_ptr, N, K,
    G: tl.constexpr, BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Every group stored -> dense ``[N, K]``. A ``[BLOCK_N, BLOCK_W, CPW]`` tile: each 32-bit word
    expands along the last axis into its ``CPW`` consecutive weights, so stores are contiguous."""
    CPW: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ww = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_words = K // CPW
    mask = (offs_n < N)[:, None] & (ww < row_words)[None, :]
    rows = offs_n[:, None].to(tl.int64)
    word = tl.load(words_ptr + rows * row_words + ww[None, :], mask=mask, other=0)
    sz = rows * (K // G) + (ww * CPW // G)[None, :]
    s = tl.load(scale_ptr + sz, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(zero_ptr + sz, mask=mask, other=0.0).to(tl.float32)
    c = tl.arange(0, CPW)
    q = ((word[:, :, None] >> (c * BITS)[None, None, :]) & MASK).to(tl.float32)
    w = (q - z[:, :, None]) * s[:, :, None]
    cols = (ww * CPW)[None, :, None] + c[None, None, :]
    tl.store(out_ptr + rows[:, :, None] * K + cols, w.to(out_ptr.dtype.element_ty), mask=mask[:, :, None])


@triton.jit
def _task_group_rows(rowptr_ptr, task_row_ptr, pid_t, gidx, gmask, CHUNK: tl.constexpr):
    """Row of each stored group ``gidx`` of chunk ``pid_t``: the largest r in [row0, row1] (the chunk's first and
    last rows, precomputed on the host) with ``row_ptr[r] <= gidx``; a few steps of binary search."""
    row0 = tl.load(task_row_ptr + pid_t)
    row1 = tl.load(task_row_ptr + pid_t + 1)
    lo = tl.zeros([CHUNK], dtype=tl.int32) + row0
    hi = tl.zeros([CHUNK], dtype=tl.int32) + row1
    span = row1 - row0
    while span > 0:
        mid = (lo + hi + 1) // 2
        ok = tl.load(rowptr_ptr + mid, mask=gmask, other=0) <= gidx
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
        span = span // 2
    return lo


@triton.jit
def _window_layout(c, BITS: tl.constexpr):
    """Where code ``c`` of a word is decoded: rotated left by ``rot`` so it sits at bit ``pos`` (15 <= pos <=
    23 - BITS) of a float's mantissa. Neighbouring codes share a rotation (4-bit: two, at bits 15 and 19), so a
    word costs a few rotations, not one shift per code."""
    POS_MIN: tl.constexpr = 15
    PER_ROT: tl.constexpr = (23 - BITS - POS_MIN) // BITS + 1
    pos = POS_MIN + (c % PER_ROT) * BITS
    rot = (pos - c * BITS + 32) % 32
    return pos, rot


@triton.jit
def _window_codes(word, z, code_mask, BITS: tl.constexpr):
    """``[BLOCK, codes per word]``: ``(q_c - z) * 2**pos_c`` for every code ``c`` of each thread's word.
    ``(rotl(word) & mask) | 2**23`` is the float ``2**23 + q * 2**pos``; subtracting ``z * 2**pos + 2**23`` (one
    FFMA per group and position) leaves ``(q - z) * 2**pos`` in one FADD, exactly whenever ``z * 2**pos`` is a
    whole number: every float16 zero with |z| >= 2**-5 (pos >= 15), however far tuning moved it from the code
    range, since the operands' low bits are then zero; smaller zeros are off by < 2**-16. A
    code costs a LOP3 and an FADD: no int-to-float conversion (a quarter-rate instruction), no separate
    subtraction of the zero. ``code_mask`` (``2**BITS - 1``) is a runtime value on purpose: as a constant, ptxas
    re-materialises the shifted masks before every LOP3 (an extra MOV per code); from an argument they stay in
    registers."""
    CPW: tl.constexpr = 32 // BITS
    c = tl.arange(0, CPW)
    pos, rot = _window_layout(c, BITS)
    rot_u = rot.to(tl.uint32)[None, :]
    rotated = (word[:, None] << rot_u) | (word[:, None] >> ((32 - rot_u) % 32))
    f = ((rotated & (code_mask << pos.to(tl.uint32))[None, :]) | 0x4B000000).to(tl.float32, bitcast=True)
    return f - (z[:, None] * (1 << pos).to(tl.float32)[None, :] + 8388608.0)


@triton.jit
def _window_scale(BITS: tl.constexpr):
    """``[codes per word]``: ``2**-pos_c``, undoing ``_window_codes``' scaling once per group."""
    pos, _ = _window_layout(tl.arange(0, 32 // BITS), BITS)
    return 1.0 / (1 << pos).to(tl.float32)


@triton.jit
def _x_group_word(x_row, col, wj: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr):
    """``[BLOCK, codes per word]`` float32 x values facing word ``wj`` of each group (contiguous: one vector load
    per thread). bf16 x is read as 32-bit pairs and widened with integer ops (low half shifted up, high half
    masked): one instruction per value instead of two."""
    CPW: tl.constexpr = 32 // BITS
    base = col * G + wj * CPW
    if x_row.dtype.element_ty == tl.bfloat16:
        pj = tl.arange(0, CPW // 2)
        pairs = tl.load(x_row.to(tl.pointer_type(tl.uint32)) + (base // 2)[:, None] + pj[None, :])
        x_lo = (pairs << 16).to(tl.float32, bitcast=True)
        x_hi = (pairs & 0xFFFF0000).to(tl.float32, bitcast=True)
        return tl.reshape(tl.join(x_lo, x_hi), (col.shape[0], CPW))
    else:
        ci = tl.arange(0, CPW)
        return tl.load(x_row + base[:, None] + ci[None, :]).to(tl.float32)


@triton.jit
def _store_row_sums(y_ptr, bias_ptr, r, m0, M, stride_ym, acc0, acc1, acc2, acc3,
                    BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Row ``r``'s complete sums for input rows ``m0 ..`` (+ bias), stored in ``y``'s dtype."""
    b = 0.0
    if HAS_BIAS:
        b = tl.load(bias_ptr + r).to(tl.float32)
    y_r = y_ptr + m0.to(tl.int64) * stride_ym + r
    tl.store(y_r, (tl.sum(acc0, axis=0) + b).to(y_ptr.dtype.element_ty))
    if BLOCK_M > 1:
        if m0 + 1 < M:
            tl.store(y_r + stride_ym, (tl.sum(acc1, axis=0) + b).to(y_ptr.dtype.element_ty))
    if BLOCK_M > 2:
        if m0 + 2 < M:
            tl.store(y_r + 2 * stride_ym, (tl.sum(acc2, axis=0) + b).to(y_ptr.dtype.element_ty))
        if m0 + 3 < M:
            tl.store(y_r + 3 * stride_ym, (tl.sum(acc3, axis=0) + b).to(y_ptr.dtype.element_ty))


@triton.jit
def _task_gemv_kernel(
    x_ptr, words_ptr, col_ptr, rowptr_ptr, scale_ptr, zero_ptr, task_row_ptr, bias_ptr, y_ptr,
    NNZ, M, stride_xm, stride_ym, TASK, code_mask,
    G: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
    OWN_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Task-centric decode GEMV: program ``t`` owns stored groups ``[t*TASK, (t+1)*TASK)`` whatever rows they
    belong to, so every program reads the same number of bytes however uneven the rows are. It walks the rows
    its groups touch (``task_row_ptr`` has the first and last) and each row's share ``BLOCK`` groups at a time,
    one group per thread; a row's sum leaves as one fp32 atomic into a zeroed workspace (``splitk``), so
    nothing per group has to find its row. Each group is read a 32-bit word at a time next to the matching
    contiguous x values; a decoded word serves ``BLOCK_M`` <= 4 input rows. The kernel is instruction-bound
    (ncu: 76% issue utilisation on 28672x8192), hence the few-instruction decode in ``_window_codes``.

    ``OWN_ROWS``: program ``t`` owns whole rows ``[task_row_ptr[t], task_row_ptr[t+1])`` instead (``owned_rows``:
    about ``TASK`` groups each, give or take a row), so each row's sum is complete in one program and is stored
    straight into ``y`` in its dtype with the bias: no atomics, no workspace, no finishing launch."""
    WPG: tl.constexpr = G * BITS // 32  # 32-bit words per group
    CPW: tl.constexpr = 32 // BITS  # codes per word
    pid_t = tl.program_id(0)
    pid_m = tl.program_id(1)
    unscale = _window_scale(BITS)[None, :]
    task_lo = pid_t * TASK
    task_hi = tl.minimum(task_lo + TASK, NNZ)
    row_first = tl.load(task_row_ptr + pid_t)
    row_last = tl.load(task_row_ptr + pid_t + 1)
    m0 = pid_m * BLOCK_M
    # rows past M read row M-1 (in bounds, no mask needed); their sums are not stored
    x0 = x_ptr + m0.to(tl.int64) * stride_xm
    x1 = x_ptr + tl.minimum(m0 + 1, M - 1).to(tl.int64) * stride_xm
    x2 = x_ptr + tl.minimum(m0 + 2, M - 1).to(tl.int64) * stride_xm
    x3 = x_ptr + tl.minimum(m0 + 3, M - 1).to(tl.int64) * stride_xm
    offs = tl.arange(0, BLOCK)
    if OWN_ROWS:
        row_stop = row_last  # the next program's first row
    else:
        row_stop = row_last + 1  # the last row may be shared with the next program
    for r in range(row_first, row_stop):
        if OWN_ROWS:
            lo = tl.load(rowptr_ptr + r)
            hi = tl.load(rowptr_ptr + r + 1)
        else:
            lo = tl.maximum(task_lo, tl.load(rowptr_ptr + r))
            hi = tl.minimum(task_hi, tl.load(rowptr_ptr + r + 1))
        acc0 = tl.zeros([BLOCK], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(lo, hi, BLOCK):
            # int32 indices (the host checks nnz * words per group < 2**31). Threads past the row's end re-read its
            # last group and weigh it by zero: unmasked loads need no zero-filled registers first.
            gidx = tl.minimum(j + offs, hi - 1)
            col = tl.load(col_ptr + gidx).to(tl.int32)
            s = tl.where(j + offs < hi, tl.load(scale_ptr + gidx).to(tl.float32), 0.0)
            z = tl.load(zero_ptr + gidx).to(tl.float32)
            d0 = tl.zeros([BLOCK, CPW], dtype=tl.float32)
            d1 = tl.zeros([BLOCK, CPW], dtype=tl.float32)
            d2 = tl.zeros([BLOCK, CPW], dtype=tl.float32)
            d3 = tl.zeros([BLOCK, CPW], dtype=tl.float32)
            if WPG == 2:  # the common g16 4-bit case: both words in one 64-bit load
                w01 = tl.split(tl.load(words_ptr + gidx[:, None] * 2 + tl.arange(0, 2)[None, :]))
            for wj in tl.static_range(WPG):
                if WPG == 2:
                    word = w01[wj].to(tl.uint32, bitcast=True)
                else:
                    word = tl.load(words_ptr + gidx * WPG + wj).to(tl.uint32, bitcast=True)
                wq = _window_codes(word, z, code_mask, BITS)
                d0 += wq * _x_group_word(x0, col, wj, G, BITS)
                if BLOCK_M > 1:
                    d1 += wq * _x_group_word(x1, col, wj, G, BITS)
                if BLOCK_M > 2:
                    d2 += wq * _x_group_word(x2, col, wj, G, BITS)
                    d3 += wq * _x_group_word(x3, col, wj, G, BITS)
            acc0 += s * tl.sum(d0 * unscale, axis=1)
            if BLOCK_M > 1:
                acc1 += s * tl.sum(d1 * unscale, axis=1)
            if BLOCK_M > 2:
                acc2 += s * tl.sum(d2 * unscale, axis=1)
                acc3 += s * tl.sum(d3 * unscale, axis=1)
        if OWN_ROWS:
            _store_row_sums(y_ptr, bias_ptr, r, m0, M, stride_ym, acc0, acc1, acc2, acc3, BLOCK_M, HAS_BIAS)
        elif hi > lo:
            y_r = y_ptr + m0.to(tl.int64) * stride_ym + r
            tl.atomic_add(y_r, tl.sum(acc0, axis=0), sem="relaxed")
            if BLOCK_M > 1:
                if m0 + 1 < M:
                    tl.atomic_add(y_r + stride_ym, tl.sum(acc1, axis=0), sem="relaxed")
            if BLOCK_M > 2:
                if m0 + 2 < M:
                    tl.atomic_add(y_r + 2 * stride_ym, tl.sum(acc2, axis=0), sem="relaxed")
                if m0 + 3 < M:
                    tl.atomic_add(y_r + 3 * stride_ym, tl.sum(acc3, axis=0), sem="relaxed")


@triton.jit
def _task_dequant_kernel(
    words_ptr, col_ptr, rowptr_ptr, scale_ptr, zero_ptr, task_row_ptr, out_ptr,
    NNZ, K,
    G: tl.constexpr, BITS: tl.constexpr, CHUNK: tl.constexpr,
):
    """Stored groups -> their places in a zero-filled dense ``[N, K]``: the task-centric split of the GEMV, with
    ``[CHUNK, words, codes]`` tiles stored contiguously per group."""
    WPG: tl.constexpr = G * BITS // 32
    CPW: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_t = tl.program_id(0)
    gidx = pid_t * CHUNK + tl.arange(0, CHUNK)
    gmask = gidx < NNZ
    gidx64 = gidx.to(tl.int64)
    rows = _task_group_rows(rowptr_ptr, task_row_ptr, pid_t, gidx, gmask, CHUNK)
    col = tl.load(col_ptr + gidx64, mask=gmask, other=0).to(tl.int64)
    s = tl.load(scale_ptr + gidx64, mask=gmask, other=0.0).to(tl.float32)
    z = tl.load(zero_ptr + gidx64, mask=gmask, other=0.0).to(tl.float32)
    wi = tl.arange(0, WPG)
    ci = tl.arange(0, CPW)
    word = tl.load(words_ptr + gidx64[:, None] * WPG + wi[None, :], mask=gmask[:, None], other=0)
    q = ((word[:, :, None] >> (ci * BITS)[None, None, :]) & MASK).to(tl.float32)
    w = (q - z[:, None, None]) * s[:, None, None]
    dst = rows.to(tl.int64)[:, None, None] * K + col[:, None, None] * G + (wi * CPW)[None, :, None] + ci[None, None, :]
    tl.store(out_ptr + dst, w.to(out_ptr.dtype.element_ty), mask=gmask[:, None, None])


def _all_groups_stored(w: GQSAWeight) -> bool:
    return w.nnz_groups == w.out_features * w.num_group_columns


def _require_all_groups_stored(w: GQSAWeight, kernel: str) -> None:
    if not _all_groups_stored(w):
        raise ValueError(f"{kernel} needs every group stored; use gqsa_gemv for pruned weights")


def _as_words(w: GQSAWeight) -> torch.Tensor:
    """The codes as 32-bit words (little-endian: code c of a word sits at bits c*BITS)."""
    return w.codes.reshape(-1).view(torch.int32)


def _blocks(w: GQSAWeight) -> tuple[int, int]:
    # ~64 code bytes per row per step keeps register tiles small for every (g, bits). Not tuned: this
    # row-block kernel serves pruned weights only, which the GQSA issue re-partitions.
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


def task_rows(w: GQSAWeight, chunk: int) -> torch.Tensor:
    """``[T + 1]`` int32: the row of each chunk's first group, then the row of the last stored group; chunk
    ``t``'s groups lie in rows ``[entry t, entry t+1]``. A few small launches: build it once per weight
    (``kernel_tables``) for decode."""
    nnz = w.nnz_groups
    firsts = torch.arange(0, nnz, chunk, device=w.device, dtype=torch.int64)
    bounds = torch.cat([firsts, torch.full((1,), max(nnz - 1, 0), device=w.device, dtype=torch.int64)])
    rows = torch.searchsorted(w.row_ptr.to(torch.int64), bounds, right=True) - 1
    return rows.to(torch.int32)


def owned_rows(w: GQSAWeight, task: int) -> torch.Tensor:
    """``[T + 1]`` int32 row boundaries for the row-owning task GEMV (``OWN_ROWS``): program ``t`` owns the rows
    whose first stored group lies in ``[t*task, (t+1)*task)``, so each gets about ``task`` groups (a row longer
    than ``task`` leaves the next programs none). ``T = max(1, ceil(nnz / task))``; the last entry is N, so
    trailing empty rows are owned too and get their zero (+ bias)."""
    t = max(1, triton.cdiv(w.nnz_groups, task))
    targets = torch.arange(t + 1, device=w.device, dtype=torch.int64) * task
    bounds = torch.searchsorted(w.row_ptr.to(torch.int64), targets).clamp_(max=w.out_features)
    bounds[0] = 0
    bounds[-1] = w.out_features
    return bounds.to(torch.int32)


def task_table(w: GQSAWeight, config: dict) -> torch.Tensor:
    """The table a task GEMV ``config`` reads: ``owned_rows`` with ``OWN_ROWS``, else ``task_rows``."""
    return (owned_rows if config.get("OWN_ROWS") else task_rows)(w, config["TASK"])


@functools.cache
def _sm_count(device_index: int | None) -> int:
    return torch.cuda.get_device_properties(device_index or 0).multi_processor_count


# 2-warp programs of <= 32 registers: 32 fit on an SM at once (its 64-warp limit)
TASK_PROGRAMS_PER_SM = 32


def task_gemv_config(w: GQSAWeight) -> dict:
    """Groups per program (``TASK``), groups per step (``BLOCK``, one per thread), warps, and ``OWN_ROWS`` for the
    task GEMV.

    Programs own whole rows (one launch, no atomics): about four programs per resident slot, or, where rows are
    longer than that, three quarters of an average row (so a program owns one long row, rarely two), 128 to 1024
    groups. H200, W4S50 g16, M=1 (gqsa_sparse-own-rows-sweep JSON at 2b06868; split tasks of 256 -> owned rows):
    4096x4096 9.9 -> 8.1 us (task 128), 14336x4096 21.1 -> 18.0, 4096x14336 17.5 -> 16.4, 28672x8192 53.3 -> 48.9,
    8192x28672 48.0 -> 46.7 (task 512: one row each). Tasks of one average row (897) let programs own two rows
    and took 53.0 there (gqsa_sparse JSON at 5a85895); one-warp programs are 1.3-1.7x slower."""
    sms = _sm_count(w.device.index) if w.device.type == "cuda" else 132
    per_slot = triton.cdiv(w.nnz_groups, 4 * sms * TASK_PROGRAMS_PER_SM)
    mean_row = triton.cdiv(w.nnz_groups, max(1, w.out_features))
    task = per_slot if per_slot >= mean_row else 3 * mean_row // 4
    return dict(TASK=min(1024, max(128, task)), BLOCK=64, num_warps=2, OWN_ROWS=True)


def gqsa_task_gemv(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None,
                   config: dict | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` for small M with task-centric partitioning (any sparsity).

    ``config``: ``TASK``, ``BLOCK``, ``num_warps`` (default ``task_gemv_config``) and optionally ``BLOCK_M``
    (input rows per program: 1, 2 or 4) and ``OWN_ROWS`` (programs own whole rows and store them: see the kernel).
    ``rows``: ``task_table(w, config)`` if already built."""
    m = x.shape[0]
    if (w.group_size * w.bits) % 32:
        raise ValueError(f"task GEMV needs whole 32-bit words per group (g={w.group_size}, bits={w.bits})")
    words_per_group = w.group_size * w.bits // 32
    if w.nnz_groups * words_per_group >= 2**31:
        raise ValueError(f"task GEMV indexes words with int32: {w.nnz_groups} groups x {words_per_group} words is "
                         "too many; split the layer")
    cfg = dict(config or task_gemv_config(w))
    task = cfg.pop("TASK")
    own_rows = bool(cfg.pop("OWN_ROWS", False))
    block_m = cfg.pop("BLOCK_M", min(triton.next_power_of_2(m), 4))
    if block_m not in (1, 2, 4):
        raise ValueError(f"BLOCK_M={block_m}: the task GEMV takes 1, 2 or 4 input rows per program")
    if x.dtype == torch.bfloat16 and x.stride(0) % 2:
        x = x.contiguous()  # bf16 x is read as 32-bit pairs
    n = w.out_features
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if own_rows:
        programs = max(1, triton.cdiv(w.nnz_groups, task))  # every row is stored, even with no groups stored
    else:
        programs = triton.cdiv(w.nnz_groups, task)  # none without stored groups: splitk_finish writes the bias
        # rows add into a zeroed float32 workspace; splitk_finish casts, adds the bias and zeroes it again
        ws = splitk_workspace(x.device, m * n)
    if programs:
        if rows is None:
            rows = task_table(w, {"TASK": task, "OWN_ROWS": own_rows})
        elif rows.numel() != programs + 1:
            raise ValueError(f"task table has {rows.numel()} entries; TASK={task} over {w.nnz_groups} groups needs "
                             f"{programs + 1}: it was built for another weight or config")
        _task_gemv_kernel[(programs, triton.cdiv(m, block_m))](
            x, _as_words(w), w.group_col, w.row_ptr, w.scale, w.zero, rows,
            bias if bias is not None and own_rows else x, y if own_rows else ws,
            w.nnz_groups, m, x.stride(0), y.stride(0) if own_rows else n, task, (1 << w.bits) - 1,
            G=w.group_size, BITS=w.bits, BLOCK_M=block_m, OWN_ROWS=own_rows, HAS_BIAS=own_rows and bias is not None,
            **cfg,
        )
    return y if own_rows else splitk_finish(ws, y, bias)


def gqsa_task_dequantize(w: GQSAWeight, dtype: torch.dtype, chunk: int = 256, num_warps: int = 4) -> torch.Tensor:
    """Dense ``[N, K]`` from any GQSA weight whose groups are whole 32-bit words (pruned groups: zeros)."""
    if (w.group_size * w.bits) % 32:
        raise ValueError(f"task dequantize needs whole 32-bit words per group (g={w.group_size}, bits={w.bits})")
    out = torch.zeros(w.out_features, w.in_features, dtype=dtype, device=w.device)
    if w.nnz_groups:
        rows = task_rows(w, chunk)
        _task_dequant_kernel[(rows.numel() - 1,)](
            _as_words(w), w.group_col, w.row_ptr, w.scale, w.zero, rows, out, w.nnz_groups, w.in_features,
            G=w.group_size, BITS=w.bits, CHUNK=chunk, num_warps=num_warps,
        )
    return out


def dense_groups_supported(w: GQSAWeight) -> bool:
    """Every group stored and rows a whole number of 32-bit words: the dense-groups GEMV and
    dequantize apply (``gqsa_dense_matmul`` also needs K to be a multiple of its BLOCK_K)."""
    return _all_groups_stored(w) and (w.in_features * w.bits) % 32 == 0


def dense_groups_config(m: int, n: int, k: int, g: int) -> dict:
    """Tiles for ``gqsa_dense_matmul``: the best single config of the H200 sweep at M=16
    (benchmarks/results/gqsa_tiles-NVIDIA_H200.json), on average within 4% of each shape's best."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    return dict(BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=max(256, g), SPLIT_K=4, num_warps=4, num_stages=3)


def gqsa_dense_matmul(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None,
                      config: dict | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` for a weight whose groups are all stored (``w.density() == 1``)."""
    m, k = x.shape
    n = w.out_features
    _require_all_groups_stored(w, "gqsa_dense_matmul")
    cfg = dict(config or dense_groups_config(m, n, k, w.group_size))
    split = cfg.pop("SPLIT_K")
    block_k = cfg["BLOCK_K"]
    if k % block_k:
        raise ValueError(f"K={k} is not a multiple of BLOCK_K={block_k}")
    k_per_split = triton.cdiv(k // block_k, split) * block_k
    out = torch.empty(split, m, n, dtype=torch.float32 if split > 1 else x.dtype, device=x.device)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]), split)
    _dense_groups_matmul_kernel[grid](
        x, w.codes, w.scale, w.zero, out, m, n, k, x.stride(0), out.stride(0), out.stride(1),
        G=w.group_size, BITS=w.bits, DOT_IEEE=x.dtype == torch.float32, K_PER_SPLIT=k_per_split, **cfg,
    )
    y = out[0] if split == 1 else out.sum(0).to(x.dtype)
    return y if bias is None else y + bias


def dense_gemv_config(n: int) -> dict:
    """Tiles for ``gqsa_dense_gemv``: the best single config of the H200 sweep
    (benchmarks/results/gqsa_tiles-NVIDIA_H200.json), on average within 3% of each shape's best."""
    return dict(BLOCK_N=4, BLOCK_W=32, num_warps=4)


def gqsa_dense_gemv(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None,
                    config: dict | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` on CUDA cores for small M, every group stored."""
    m, k = x.shape
    n = w.out_features
    _require_all_groups_stored(w, "gqsa_dense_gemv")
    cfg = config or dense_gemv_config(n)
    if (k * w.bits) % 32:
        raise ValueError(f"gqsa_dense_gemv reads 32-bit words: K*bits={k * w.bits} must be a multiple of 32")
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (m, triton.cdiv(n, cfg["BLOCK_N"]))
    _dense_groups_gemv_kernel[grid](
        x, _as_words(w), w.scale, w.zero, bias if bias is not None else y, y, n, k, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, G=w.group_size, BITS=w.bits, **cfg,
    )
    return y


def gqsa_dequantize(w: GQSAWeight, dtype: torch.dtype) -> torch.Tensor:
    """Dense ``[N, K]`` weight in ``dtype`` (pruned groups zero)."""
    n, k = w.out_features, w.in_features
    if dense_groups_supported(w):
        out = torch.empty(n, k, dtype=dtype, device=w.device)
        row_words = k * w.bits // 32
        _dense_groups_dequant_kernel[(triton.cdiv(n, 16), triton.cdiv(row_words, 32))](
            _as_words(w), w.scale, w.zero, out, n, k,
            G=w.group_size, BITS=w.bits, BLOCK_N=16, BLOCK_W=32,
        )
        return out
    if (w.group_size * w.bits) % 32 == 0:
        return gqsa_task_dequantize(w, dtype)
    # every group stored: every element gets written, so skip the zero fill
    out = (torch.empty if _all_groups_stored(w) else torch.zeros)(n, k, dtype=dtype, device=w.device)
    block_r, block_g = _blocks(w)
    _gqsa_dequant_kernel[(triton.cdiv(n, block_r),)](
        w.codes, w.group_col, w.row_ptr, w.scale, w.zero, out, n, k,
        G=w.group_size, BITS=w.bits, BLOCK_R=block_r, BLOCK_G=block_g,
    )
    return out
