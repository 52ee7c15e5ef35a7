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

from ..registers import half_to_f32, split4
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


@triton.jit
def _pick(pair_a, pair_b, p, X_BF16: tl.constexpr):
    """Input ``p`` (0..3) of a block whose four 16-bit inputs are the pairs ``pair_a`` (0, 1) and ``pair_b`` (2, 3):
    a select and a shift in registers instead of a memory access per kept value."""
    pair = tl.where((p & 2) != 0, pair_b, pair_a)
    return half_to_f32(pair >> ((p & 1) * 16).to(tl.uint32), X_BF16)


@triton.jit
def _block_dot(acc, idx, blk: tl.constexpr, v0, v1, pair_a, pair_b, X_BF16: tl.constexpr):
    """``acc + v0 * x[p0] + v1 * x[p1]`` (two FFMAs) for block ``blk`` of a unit, its two positions being nibble
    ``blk`` of ``idx``."""
    nib = (idx >> (4 * blk)) & 15
    acc += v0 * _pick(pair_a, pair_b, nib & 3, X_BF16)
    return acc + v1 * _pick(pair_a, pair_b, nib >> 2, X_BF16)


@triton.jit
def _unit_values(values_ptr, rows64, units, KEPT, KIND: tl.constexpr):
    """The eight kept values of each (row, unit) element (``rows64``, ``units``: ``[E]``) as float32 (integer
    kinds: their codes, unscaled). Callers pass in-bounds elements only (no masks: nothing to zero-fill)."""
    words = values_ptr.to(tl.pointer_type(tl.uint32))
    if KIND == 0:  # bf16 / fp16: four 32-bit pairs, one 16-byte load
        vp = tl.load(words + (rows64 * (KEPT // 2) + units * 4)[:, None] + tl.arange(0, 4)[None, :])
        p0, p1, p2, p3 = split4(vp)
        bf16: tl.constexpr = values_ptr.dtype.element_ty == tl.bfloat16
        return (half_to_f32(p0, bf16), half_to_f32(p0 >> 16, bf16), half_to_f32(p1, bf16),
                half_to_f32(p1 >> 16, bf16), half_to_f32(p2, bf16), half_to_f32(p2 >> 16, bf16),
                half_to_f32(p3, bf16), half_to_f32(p3 >> 16, bf16))
    elif KIND == 1:  # int8: two words of four codes; arithmetic shifts sign-extend each byte
        wp = tl.load(words + (rows64 * (KEPT // 4) + units * 2)[:, None] + tl.arange(0, 2)[None, :])
        w0, w1 = tl.split(wp.to(tl.int32, bitcast=True))
        return ((w0 << 24 >> 24).to(tl.float32), (w0 << 16 >> 24).to(tl.float32),
                (w0 << 8 >> 24).to(tl.float32), (w0 >> 24).to(tl.float32),
                (w1 << 24 >> 24).to(tl.float32), (w1 << 16 >> 24).to(tl.float32),
                (w1 << 8 >> 24).to(tl.float32), (w1 >> 24).to(tl.float32))
    else:  # int4: one word of eight codes q + 8; (nibble | bits(2**23)) - (2**23 + 8) = q exactly, no conversion
        w = tl.load(words + rows64 * (KEPT // 8) + units).to(tl.uint32, bitcast=True)
        off = 8388616.0
        return ((w & 15 | 0x4B000000).to(tl.float32, bitcast=True) - off,
                (w >> 4 & 15 | 0x4B000000).to(tl.float32, bitcast=True) - off,
                (w >> 8 & 15 | 0x4B000000).to(tl.float32, bitcast=True) - off,
                (w >> 12 & 15 | 0x4B000000).to(tl.float32, bitcast=True) - off,
                (w >> 16 & 15 | 0x4B000000).to(tl.float32, bitcast=True) - off,
                (w >> 20 & 15 | 0x4B000000).to(tl.float32, bitcast=True) - off,
                (w >> 24 & 15 | 0x4B000000).to(tl.float32, bitcast=True) - off,
                (w >> 28 | 0x4B000000).to(tl.float32, bitcast=True) - off)


@triton.jit
def _nm24_gemv_kernel(
    x_ptr, values_ptr, indices_ptr, scales_ptr, bias_ptr, y_ptr,
    N, M, K, KEPT, IDX_BYTES, stride_xm, stride_ym,
    KIND: tl.constexpr, GROUP: tl.constexpr, X_BF16: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """2:4 decode GEMV (16-bit x, K a multiple of 16): a program owns ``BLOCK_R`` rows and walks them ``BLOCK_U``
    units at a time. A unit is four blocks of a row (16 inputs, 8 kept values) and one thread's work: its 16
    index bits (one 16-bit load), its values (one load: 16 bytes bf16, 8 int8, 4 int4) and its 16 inputs (two
    16-byte loads, contiguous across threads) come straight from memory; each kept value's input is then picked
    in registers by its 2-bit position. Integer kinds apply the unit's one scale (``GROUP`` is a multiple of 8)
    to the unit's sum. Everything per thread is a flat ``[E = BLOCK_R * BLOCK_U]`` vector (or ``[E, 4]`` with a
    per-thread last axis), so no value changes threads inside the loop. Rows past N and units past the row
    re-read in-bounds data and are weighted by zero."""
    E: tl.constexpr = BLOCK_R * BLOCK_U
    pid_r = tl.program_id(0)
    pid_m = tl.program_id(1)
    e = tl.arange(0, E)
    row = pid_r * BLOCK_R + e // BLOCK_U
    rows64 = tl.minimum(row, N - 1).to(tl.int64)
    n_units = K // 16
    q4 = tl.arange(0, 4)[None, :]
    for i in tl.static_range(BLOCK_M):
        m = pid_m * BLOCK_M + i
        if m < M:
            x_pairs = x_ptr.to(tl.pointer_type(tl.uint32)) + m.to(tl.int64) * (stride_xm // 2)
            acc = tl.zeros([E], dtype=tl.float32)
            for u0 in range(0, n_units, BLOCK_U):
                unit = u0 + e % BLOCK_U
                live = (unit < n_units) & (row < N)
                units = tl.minimum(unit, n_units - 1)
                idx = tl.load(indices_ptr.to(tl.pointer_type(tl.uint16)) + rows64 * (IDX_BYTES // 2) + units)
                idx = idx.to(tl.uint32)
                xa0, xb0, xa1, xb1 = split4(tl.load(x_pairs + (units * 8)[:, None] + q4))
                xa2, xb2, xa3, xb3 = split4(tl.load(x_pairs + (units * 8 + 4)[:, None] + q4))
                v0, v1, v2, v3, v4, v5, v6, v7 = _unit_values(values_ptr, rows64, units, KEPT, KIND)
                if KIND == 0:
                    dot = acc  # float kinds accumulate straight into acc; dead elements keep acc (below)
                else:
                    dot = tl.zeros([E], dtype=tl.float32)
                dot = _block_dot(dot, idx, 0, v0, v1, xa0, xb0, X_BF16)
                dot = _block_dot(dot, idx, 1, v2, v3, xa1, xb1, X_BF16)
                dot = _block_dot(dot, idx, 2, v4, v5, xa2, xb2, X_BF16)
                dot = _block_dot(dot, idx, 3, v6, v7, xa3, xb3, X_BF16)
                if KIND == 0:
                    acc = tl.where(live, dot, acc)
                else:
                    s = tl.load(scales_ptr + rows64 * (KEPT // GROUP) + units * 8 // GROUP).to(tl.float32)
                    acc += tl.where(live, dot * s, 0.0)
            y = tl.sum(tl.reshape(acc, (BLOCK_R, BLOCK_U)), axis=1)
            rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
            rmask = rows < N
            if HAS_BIAS:
                y += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
            tl.store(y_ptr + m.to(tl.int64) * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


def _nm24_problem(x: torch.Tensor, w: NMWeight) -> str | None:
    """Why the 2:4 GEMV cannot run ``x`` against ``w``, or ``None`` when it can."""
    if (w.n, w.m) != (2, 4):
        return f"the 2:4 GEMV needs a 2:4 weight, got {w.n}:{w.m}; use nm_gemv"
    if w.in_features % 16:
        return f"the 2:4 GEMV reads 16 inputs per thread: K={w.in_features} is not a multiple of 16"
    if x.dtype not in (torch.bfloat16, torch.float16):
        return f"the 2:4 GEMV reads 16-bit x (bf16/fp16), got {x.dtype}"
    return None


def nm24_supported(x: torch.Tensor, w: NMWeight) -> bool:
    """The 2:4 GEMV applies: pattern 2:4, K a multiple of 16, 16-bit x."""
    return _nm24_problem(x, w) is None


def nm24_gemv_config(w: NMWeight) -> dict:
    """Tiles of the 2:4 GEMV, from the H200 sweep in benchmarks/results/nm_sparse-NVIDIA_H200.json (M=1): 16-bit
    values run best with one unit per thread over 2 rows x 64 units (28672x8192: 0.069 ms, against 0.073-0.079
    for the other five tiles tried); integer values are instruction-bound and within 5% across tiles, 4 x 64 the
    best or level on four of five shapes."""
    if w.value_format in ("bf16", "fp16"):
        return {"BLOCK_R": 2, "BLOCK_U": 64, "num_warps": 4}
    return {"BLOCK_R": 4, "BLOCK_U": 64, "num_warps": 4}


def nm24_gemv(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None,
              config: dict | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` for a 2:4 weight (``nm24_supported``); for small M."""
    problem = _nm24_problem(x, w)
    if problem is not None:
        raise ValueError(problem)
    if x.stride(0) % 2:
        x = x.contiguous()  # x is read as 32-bit pairs
    m = x.shape[0]
    cfg = dict(config or nm24_gemv_config(w))
    block_m = cfg.pop("BLOCK_M", min(triton.next_power_of_2(m), 4))
    y = torch.empty(m, w.out_features, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(w.out_features, cfg["BLOCK_R"]), triton.cdiv(m, block_m))
    _nm24_gemv_kernel[grid](
        x, w.values, w.indices, w.scales if w.scales is not None else w.values, bias if bias is not None else y, y,
        w.out_features, m, w.in_features, w.kept_per_row, w.indices.shape[1], x.stride(0), y.stride(0),
        KIND=VALUE_KINDS[w.value_format], GROUP=max(1, w.group_size), X_BF16=x.dtype == torch.bfloat16,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, **cfg,
    )
    return y


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
