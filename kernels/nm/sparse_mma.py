"""2:4 decode GEMV on the sparse tensor cores (``mma.sp``, sm_80 and newer), written with Triton inline PTX.

Upstream Triton has no sparse-MMA op, so this kernel does what ``tl.dot`` would do by hand: every tensor is a
flat ``[32 * num_warps]`` vector, one element per thread, so element ``e`` *is* lane ``e % 32`` of warp
``e // 32`` and each thread builds its own fragment registers. A warp owns 16 output rows and walks K 32
inputs (one ``mma.sp.m16n8k32``) at a time:

* A (the weight, 16 rows x 32 inputs, 16 kept per row): lane (g = lane // 4, t = lane % 4) holds kept values
  2t, 2t+1 and 2t+8, 2t+9 of rows g and g+8, i.e. straight 32-bit pairs of the ``sparse_nm`` values array
  (bf16), or two bytes of int4 codes widened to bf16 pairs ``128 + q'`` by a LOP3 and shifted to ``q' - 8``
  exactly in the asm;
* the metadata (sparsity selector 0: lanes t = 0 and 1 supply it): our 2-bit positions of a row's 16 kept
  values are one 32-bit word, k 0..15 in the low half and 16..31 in the high half; lane t supplies half t
  of row g in its low 16 bits and half t of row g+8 in its high 16 bits (found on the H200: the other
  arrangements tried gave wrong products);
* B (x, 32 inputs x 8 columns): every column is the same x, so every lane loads its four pairs (inputs 2t, 2t+1
  + 8r) and all eight output columns are equal; lane t = 0 keeps column 0.

Integer codes take their group's scale after the group's chunks (``GROUP`` a multiple of 16 kept values).
GPU only: the Triton interpreter cannot run PTX; ``sparse_mma_supported`` says when it applies.

Two kernels. ``_nm24_sp_gemv_kernel`` reads the ``sparse_nm`` arrays as stored; it is correct on the H200
but **not dispatched to**: it is slower than the CUDA-core 2:4 GEMV (28672x8192, M=1: 0.12 ms int4 / 0.14
ms bf16, against 0.078 / 0.067), because each lane's loads are small and scattered over 16 rows (a byte of
codes, a word of x, two metadata words per chunk), so the load units, not the math, set the time. It
proves the fragment and metadata mapping of our format onto ``mma.sp``. ``_nm24_sp_packed_kernel`` reads
int4 2:4 weights from a copy repacked into fragment order (``pack_int4_for_sparse_mma``: one 16-byte load
of codes and one of metadata per lane per 4 chunks) and is what ``nm_linear`` runs at small M once
``kernel_tables`` made the copy (H200, 28672x8192, M=1: 0.039 ms, 3.4x dense bf16, twice as fast as
the CUDA-core GEMV).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..pdl import pdl_launch, wait_for_earlier_kernels
from ..registers import split4
from ..splitk import splitk_finish, splitk_workspace
from .format import NMWeight

_MMA_SP = (
    "mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
    "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9, $10, $11}, {$12, $13, $14, $15}, $16, 0x0;"
)
# int4 codes arrive as bf16 pairs 128 + q' (q' = q + 8); one fma per pair makes them q exactly (-8..7)
_MMA_SP_INT4 = (
    "{ .reg .b32 a<4>, one, off; mov.b32 one, 0x3F803F80; mov.b32 off, 0xC308C308; "
    "fma.rn.bf16x2 a0, $4, one, off; fma.rn.bf16x2 a1, $5, one, off; "
    "fma.rn.bf16x2 a2, $6, one, off; fma.rn.bf16x2 a3, $7, one, off; "
    "mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
    "{$0, $1, $2, $3}, {a0, a1, a2, a3}, {$8, $9, $10, $11}, {$12, $13, $14, $15}, $16, 0x0; }"
)
_CONSTRAINTS = "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f,r"


@triton.jit
def _mma_sp(a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, meta, ASM: tl.constexpr, CONSTRAINTS: tl.constexpr):
    return tl.inline_asm_elementwise(
        ASM, CONSTRAINTS, [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, meta],
        dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1,
    )


@triton.jit
def _int4_pair(byte):
    """Two 4-bit codes of a byte -> the bf16 pair (128 + low, 128 + high) as a uint32."""
    return (byte & 15) | ((byte & 0xF0) << 12) | 0x43004300


@triton.jit
def _nm24_sp_gemv_kernel(
    x_ptr, values_ptr, indices_ptr, scales_ptr, bias_ptr, y_ptr,
    N, K, KEPT, IDX_BYTES, stride_xm, stride_ym, one, CHUNKS_PER_SPLIT,
    INT4: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
    ASM: tl.constexpr, CONSTRAINTS: tl.constexpr, num_warps_: tl.constexpr,
):
    E: tl.constexpr = 32 * num_warps_
    CHUNKS_PER_GROUP: tl.constexpr = GROUP // 16 if INT4 else 1
    e = tl.arange(0, E)
    lane = e % 32
    g = lane // 4
    # ``one`` (= 1 at run time) keeps Triton from proving these addresses contiguous and regrouping elements
    t = (lane % 4) * one
    row0 = (tl.program_id(0) * num_warps_ + e // 32) * 16
    r_lo = tl.minimum(row0 + g, N - 1).to(tl.int64)
    r_hi = tl.minimum(row0 + g + 8, N - 1).to(tl.int64)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    x_pairs = x_ptr.to(tl.pointer_type(tl.uint32)) + pid_m.to(tl.int64) * (stride_xm // 2)
    idx_words = indices_ptr.to(tl.pointer_type(tl.uint32))
    meta_lo = idx_words + r_lo * (IDX_BYTES // 4)
    meta_hi = idx_words + r_hi * (IDX_BYTES // 4)
    half = ((t & 1) * 16).to(tl.uint32)
    acc_lo = tl.zeros([E], dtype=tl.float32)
    acc_hi = tl.zeros([E], dtype=tl.float32)
    d0 = tl.zeros([E], dtype=tl.float32)
    d1 = tl.zeros([E], dtype=tl.float32)
    d2 = tl.zeros([E], dtype=tl.float32)
    d3 = tl.zeros([E], dtype=tl.float32)
    c_begin = pid_s * CHUNKS_PER_SPLIT
    c_end = tl.minimum(c_begin + CHUNKS_PER_SPLIT, K // 32)
    for c0 in range(c_begin, c_end, CHUNKS_PER_GROUP):
        if INT4:  # a group's chunks accumulate on the tensor cores, then take the group's scale
            d0 = tl.zeros([E], dtype=tl.float32)
            d1 = tl.zeros([E], dtype=tl.float32)
            d2 = tl.zeros([E], dtype=tl.float32)
            d3 = tl.zeros([E], dtype=tl.float32)
        for ci in tl.static_range(CHUNKS_PER_GROUP):
            c = c0 + ci
            xb = x_pairs + c * 16 + t
            b0 = tl.load(xb)
            b1 = tl.load(xb + 4)
            b2 = tl.load(xb + 8)
            b3 = tl.load(xb + 12)
            if INT4:
                codes_lo = values_ptr + r_lo * (KEPT // 2) + c * 8 + t
                codes_hi = values_ptr + r_hi * (KEPT // 2) + c * 8 + t
                a0 = _int4_pair(tl.load(codes_lo).to(tl.uint32))
                a1 = _int4_pair(tl.load(codes_hi).to(tl.uint32))
                a2 = _int4_pair(tl.load(codes_lo + 4).to(tl.uint32))
                a3 = _int4_pair(tl.load(codes_hi + 4).to(tl.uint32))
            else:
                pairs = values_ptr.to(tl.pointer_type(tl.uint32))
                a0 = tl.load(pairs + r_lo * (KEPT // 2) + c * 8 + t)
                a1 = tl.load(pairs + r_hi * (KEPT // 2) + c * 8 + t)
                a2 = tl.load(pairs + r_lo * (KEPT // 2) + c * 8 + t + 4)
                a3 = tl.load(pairs + r_hi * (KEPT // 2) + c * 8 + t + 4)
            # a row's 32 positions bits of the chunk are k 0..15 (low half) and 16..31 (high half); the
            # instruction wants, per supplying lane, one k half of both its rows: row g low, row g + 8 high
            m_lo = (tl.load(meta_lo + c).to(tl.uint32, bitcast=True) >> half) & 0xFFFF
            m_hi = (tl.load(meta_hi + c).to(tl.uint32, bitcast=True) >> half) & 0xFFFF
            meta = m_lo | (m_hi << 16)
            d0, d1, d2, d3 = _mma_sp(a0, a1, a2, a3, b0, b1, b2, b3, d0, d1, d2, d3, meta, ASM, CONSTRAINTS)
        if INT4:
            grp = c0 // CHUNKS_PER_GROUP
            acc_lo += d0 * tl.load(scales_ptr + r_lo * (KEPT // GROUP) + grp).to(tl.float32)
            acc_hi += d2 * tl.load(scales_ptr + r_hi * (KEPT // GROUP) + grp).to(tl.float32)
    if not INT4:  # bf16 values accumulated on the tensor cores over the whole row
        acc_lo = d0
        acc_hi = d2
    rows_lo = row0 + g
    rows_hi = row0 + g + 8
    if HAS_BIAS:
        if pid_s == 0:
            acc_lo += tl.load(bias_ptr + r_lo).to(tl.float32)
            acc_hi += tl.load(bias_ptr + r_hi).to(tl.float32)
    # K is split across programs (a warp walking all of K alone leaves the GPU idle): fp32 atomics into y
    y = y_ptr + pid_m.to(tl.int64) * stride_ym
    keep = t == 0
    tl.atomic_add(y + rows_lo, acc_lo, mask=keep & (rows_lo < N), sem="relaxed")
    tl.atomic_add(y + rows_hi, acc_hi, mask=keep & (rows_hi < N), sem="relaxed")


def sparse_mma_supported(x: torch.Tensor, w: NMWeight) -> bool:
    """2:4, bf16 values or int4 codes in groups of a multiple of 16, bf16 x, K % 32 == 0, a CUDA GPU of sm_80+."""
    if not (x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 8):
        return False
    values_ok = w.value_format == "bf16" or (w.value_format == "int4" and w.group_size % 16 == 0)
    return (w.n, w.m) == (2, 4) and values_ok and x.dtype == torch.bfloat16 and w.in_features % 32 == 0


def _steps_per_split(steps: int, per_group: int, warps: int, warps_total: int) -> int:
    """K steps each program takes: K is split until about ``warps_total`` warps run (``warps`` run without a
    split), each part a whole number of ``per_group`` steps so a scale group never straddles two programs."""
    split = max(1, min(steps // per_group, warps_total // warps))
    return triton.cdiv(triton.cdiv(steps, split), per_group) * per_group


def nm24_sp_gemv(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None, num_warps: int = 4,
                 warps_total: int = 8192) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` on the sparse tensor cores, one pass over the weight per row of x."""
    if not sparse_mma_supported(x, w):
        raise ValueError("the sparse-MMA GEMV needs a 2:4 weight with bf16 values or int4 codes (group size a "
                         f"multiple of 16), bf16 x, K % 32 == 0 and an sm_80+ GPU; got {w.n}:{w.m} "
                         f"{w.value_format} g{w.group_size}, {x.dtype}, K={w.in_features}, {x.device}")
    if x.stride(0) % 2:
        x = x.contiguous()
    m = x.shape[0]
    int4 = w.value_format == "int4"
    y = torch.zeros(m, w.out_features, dtype=torch.float32, device=x.device)
    n_chunks = w.in_features // 32
    per_group = max(16, w.group_size) // 16 if int4 else 1
    row_programs = triton.cdiv(w.out_features, 16 * num_warps)
    chunks_per_split = _steps_per_split(n_chunks, per_group, row_programs * num_warps, warps_total)
    grid = (row_programs, triton.cdiv(n_chunks, chunks_per_split), m)
    _nm24_sp_gemv_kernel[grid](
        x, w.values, w.indices, w.scales if w.scales is not None else w.values, bias if bias is not None else y, y,
        w.out_features, w.in_features, w.kept_per_row, w.indices.shape[1], x.stride(0), y.stride(0), 1,
        chunks_per_split,
        INT4=int4, GROUP=max(16, w.group_size), HAS_BIAS=bias is not None,
        ASM=_MMA_SP_INT4 if int4 else _MMA_SP, CONSTRAINTS=_CONSTRAINTS,
        num_warps_=num_warps, num_warps=num_warps,
    )
    return y.to(x.dtype)


# --- int4 codes repacked into fragment order: 16-byte loads per lane ------------------------------------------

PACK_CHUNKS = 4  # 32-input chunks per lane load: 4 x 4 bytes of codes, 4 x 4 bytes of metadata
_PAD_META = 0x44444444  # positions (0, 1) in every block: a valid pattern for padded rows (codes there are 0)


def pack_int4_for_sparse_mma(w: NMWeight) -> dict[str, torch.Tensor]:
    """Kernel-private copy of a 2:4 int4 weight in ``mma.sp`` fragment order (rows padded to 16, K % 128 == 0).

    ``packed_codes [T, K/128, 32 lanes, 4]`` int32: per 16-row tile, 4-chunk step and lane (g, t), one word per chunk
    holding code bytes t and t+4 of rows g and g+8 (order: row g byte t, row g+8 byte t, row g byte t+4, row
    g+8 byte t+4); ``packed_meta [T, K/128, 16, 4]`` int32: per lane (g, t < 2), chunk c, the metadata word
    (k-half t of row g in the low 16 bits, of row g+8 in the high 16); ``packed_scales [T*16, K/2/group]`` padded.
    A derived layout (like Marlin's), rebuilt from ``w`` whenever needed; the checkpoint format is unchanged."""
    if (w.n, w.m, w.value_format) != (2, 4, "int4") or w.in_features % 128 or w.group_size % 64:
        raise ValueError("packing for the sparse tensor cores needs a 2:4 int4 weight, K % 128 == 0 and a group "
                         f"size that is a multiple of 64; got {w.n}:{w.m} {w.value_format} K={w.in_features} "
                         f"g{w.group_size}")
    n, k = w.out_features, w.in_features
    n_pad = -n % 16
    tiles = (n + n_pad) // 16
    chunks = k // 32
    codes = torch.nn.functional.pad(w.values.view(n, chunks, 8), (0, 0, 0, 0, 0, n_pad), value=0x88)
    half = codes.view(tiles, 2, 8, chunks, 8)  # [tile, lo/hi, g, chunk, byte]
    lo, hi = half[:, 0], half[:, 1]
    words = torch.stack([lo[..., :4], hi[..., :4], lo[..., 4:], hi[..., 4:]], dim=-1)  # [T, g, c, t, 4 bytes]
    words = words.view(tiles, 8, chunks // PACK_CHUNKS, PACK_CHUNKS, 4, 4).permute(0, 2, 1, 4, 3, 5)
    codes_packed = words.contiguous().view(torch.int32).view(tiles, chunks // PACK_CHUNKS, 32, PACK_CHUNKS)
    idx = w.indices.view(torch.int32).view(n, chunks)
    idx = torch.nn.functional.pad(idx, (0, 0, 0, n_pad), value=_PAD_META)
    idx = idx.view(tiles, 2, 8, chunks).to(torch.int64) & 0xFFFFFFFF
    meta = torch.stack([(idx[:, 0] & 0xFFFF) | ((idx[:, 1] & 0xFFFF) << 16),
                        (idx[:, 0] >> 16) | ((idx[:, 1] >> 16) << 16)], dim=-1)  # [T, g, c, t2]
    meta = meta.view(tiles, 8, chunks // PACK_CHUNKS, PACK_CHUNKS, 2).permute(0, 2, 1, 4, 3)
    meta = torch.where(meta >= 2**31, meta - 2**32, meta).to(torch.int32).contiguous()
    scales = torch.nn.functional.pad(w.scales, (0, 0, 0, n_pad))
    return {"packed_codes": codes_packed, "packed_meta": meta.view(tiles, chunks // PACK_CHUNKS, 16, PACK_CHUNKS),
            "packed_scales": scales}


@triton.jit
def _x_block_mma(a0, a1, a2, a3, x_pairs, d0, d1, d2, d3, meta, ASM: tl.constexpr, CONSTRAINTS: tl.constexpr,
                 PERM_X: tl.constexpr):
    """One ``mma.sp`` of the decoded weight fragment against the 8 x rows at ``x_pairs`` (this lane's pairs).
    ``PERM_X``: x is in ``permute_x_for_sparse_mma`` order, the lane's four pairs one 16-byte load; else four
    4-byte loads 16 bytes apart."""
    if PERM_X:
        b0, b1, b2, b3 = split4(tl.load(x_pairs[:, None] + tl.arange(0, 4)[None, :]))
    else:
        b0, b1, b2, b3 = tl.load(x_pairs), tl.load(x_pairs + 4), tl.load(x_pairs + 8), tl.load(x_pairs + 12)
    return _mma_sp(a0, a1, a2, a3, b0, b1, b2, b3, d0, d1, d2, d3, meta, ASM, CONSTRAINTS)


@triton.jit
def _x_block_rows(x_ptr, m0, g, M, stride_xm):
    """32-bit pair pointer to the x row this lane loads for B column g of the block at ``m0``; columns past M
    repeat row M - 1 (in bounds; their outputs are never stored)."""
    row = tl.minimum(m0 + g, M - 1).to(tl.int64)
    return x_ptr.to(tl.pointer_type(tl.uint32)) + row * (stride_xm // 2)


@triton.jit
def _block_out(y_ptr, bias_ptr, ws_ptr, acc0, acc1, acc2, acc3, rows_lo, rows_hi, live, m0, t, N, M, stride_ym,
               SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """This lane's four outputs of one 8-row block of x: (rows g, g+8) x (x rows m0+2t, m0+2t+1). ``SPLIT``:
    add them into the float32 workspace ``ws [M, N]``; else store them (+ bias) to y in its dtype."""
    m_a = m0 + 2 * t
    m_b = m_a + 1
    oks = (live & (rows_lo < N) & (m_a < M), live & (rows_lo < N) & (m_b < M),
           live & (rows_hi < N) & (m_a < M), live & (rows_hi < N) & (m_b < M))
    rows = (rows_lo, rows_lo, rows_hi, rows_hi)
    ms = (m_a, m_b, m_a, m_b)
    accs = (acc0, acc1, acc2, acc3)
    for i in tl.static_range(4):
        if SPLIT:
            tl.atomic_add(ws_ptr + ms[i].to(tl.int64) * N + rows[i], accs[i], mask=oks[i], sem="relaxed")
        else:
            v = accs[i]
            if HAS_BIAS:
                v += tl.load(bias_ptr + rows[i], mask=oks[i], other=0.0).to(tl.float32)
            tl.store(y_ptr + ms[i].to(tl.int64) * stride_ym + rows[i], v.to(y_ptr.dtype.element_ty), mask=oks[i])


@triton.jit
def _nm24_sp_packed_kernel(
    x_ptr, codes_ptr, meta_ptr, scales_ptr, bias_ptr, y_ptr, ws_ptr,
    N, K, M, stride_xm, stride_ym, one, STEPS_PER_SPLIT,
    GROUP: tl.constexpr, MB: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, ASM: tl.constexpr,
    CONSTRAINTS: tl.constexpr, num_warps_: tl.constexpr, PERM_X: tl.constexpr, PDL: tl.constexpr,
):
    """``_nm24_sp_gemv_kernel`` for int4 codes in the packed layout (``pack_int4_for_sparse_mma``): each lane
    reads its codes and metadata for 4 chunks in one 16-byte load each. B's 8 columns carry 8 rows of x (lane
    group g loads row g) and each decoded fragment meets ``MB`` <= 4 such blocks, so a batch of up to 32 costs
    one pass over the weight; lane t owns output columns 2t and 2t+1 of every block.

    With ``SPLIT``, K is split over ``tl.num_programs(1)`` programs that add their float32 partials into the
    zeroed workspace ``ws [M, N]`` (``splitk``); without, the program stores y (+ bias) in y's dtype. ``PERM_X``:
    x comes in ``permute_x_for_sparse_mma`` order."""
    wait_for_earlier_kernels(PDL)  # (kernels/pdl.py) x, the workspace, even the copy may come from that kernel
    E: tl.constexpr = 32 * num_warps_
    e = tl.arange(0, E)
    lane = e % 32
    g = lane // 4
    t = (lane % 4) * one
    tile = tl.program_id(0) * num_warps_ + e // 32
    tiles = tl.cdiv(N, 16)
    tile_c = tl.minimum(tile, tiles - 1).to(tl.int64)
    r_lo = tile_c * 16 + g
    r_hi = r_lo + 8
    pid_s = tl.program_id(1)
    m0 = tl.program_id(2) * 8 * MB
    x0 = _x_block_rows(x_ptr, m0, g, M, stride_xm)
    x1 = _x_block_rows(x_ptr, m0 + 8, g, M, stride_xm)
    x2 = _x_block_rows(x_ptr, m0 + 16, g, M, stride_xm)
    x3 = _x_block_rows(x_ptr, m0 + 24, g, M, stride_xm)
    steps = K // 128
    scale_cols = K // 2 // GROUP
    codes_lane = codes_ptr + (tile_c * steps * 32 + lane) * 4
    meta_lane = meta_ptr + (tile_c * steps * 16 + g * 2 + t % 2) * 4
    q4 = tl.arange(0, 4)[None, :]
    # acc<b><i>: x block b; i = (row g, col 2t), (row g, col 2t+1), (row g+8, col 2t), (row g+8, col 2t+1)
    acc00 = tl.zeros([E], dtype=tl.float32)
    acc01 = tl.zeros([E], dtype=tl.float32)
    acc02 = tl.zeros([E], dtype=tl.float32)
    acc03 = tl.zeros([E], dtype=tl.float32)
    acc10 = tl.zeros([E], dtype=tl.float32)
    acc11 = tl.zeros([E], dtype=tl.float32)
    acc12 = tl.zeros([E], dtype=tl.float32)
    acc13 = tl.zeros([E], dtype=tl.float32)
    acc20 = tl.zeros([E], dtype=tl.float32)
    acc21 = tl.zeros([E], dtype=tl.float32)
    acc22 = tl.zeros([E], dtype=tl.float32)
    acc23 = tl.zeros([E], dtype=tl.float32)
    acc30 = tl.zeros([E], dtype=tl.float32)
    acc31 = tl.zeros([E], dtype=tl.float32)
    acc32 = tl.zeros([E], dtype=tl.float32)
    acc33 = tl.zeros([E], dtype=tl.float32)
    s_begin = pid_s * STEPS_PER_SPLIT
    s_end = tl.minimum(s_begin + STEPS_PER_SPLIT, steps)
    for step in range(s_begin, s_end):
        cws = split4(tl.load(codes_lane[:, None] + step * 128 + q4))
        mws = split4(tl.load(meta_lane[:, None] + step * 64 + q4))
        d00 = tl.zeros([E], dtype=tl.float32)
        d01 = tl.zeros([E], dtype=tl.float32)
        d02 = tl.zeros([E], dtype=tl.float32)
        d03 = tl.zeros([E], dtype=tl.float32)
        d10 = tl.zeros([E], dtype=tl.float32)
        d11 = tl.zeros([E], dtype=tl.float32)
        d12 = tl.zeros([E], dtype=tl.float32)
        d13 = tl.zeros([E], dtype=tl.float32)
        d20 = tl.zeros([E], dtype=tl.float32)
        d21 = tl.zeros([E], dtype=tl.float32)
        d22 = tl.zeros([E], dtype=tl.float32)
        d23 = tl.zeros([E], dtype=tl.float32)
        d30 = tl.zeros([E], dtype=tl.float32)
        d31 = tl.zeros([E], dtype=tl.float32)
        d32 = tl.zeros([E], dtype=tl.float32)
        d33 = tl.zeros([E], dtype=tl.float32)
        for ci in tl.static_range(4):
            off = (step * 4 + ci) * 16 + (4 * t if PERM_X else t)  # 32-bit words: 16 per 32-input chunk
            word = cws[ci].to(tl.uint32, bitcast=True)
            meta = mws[ci].to(tl.uint32, bitcast=True)
            a0 = _int4_pair(word & 0xFF)
            a1 = _int4_pair((word >> 8) & 0xFF)
            a2 = _int4_pair((word >> 16) & 0xFF)
            a3 = _int4_pair(word >> 24)
            d00, d01, d02, d03 = _x_block_mma(a0, a1, a2, a3, x0 + off, d00, d01, d02, d03, meta, ASM, CONSTRAINTS,
                                              PERM_X)
            if MB > 1:
                d10, d11, d12, d13 = _x_block_mma(a0, a1, a2, a3, x1 + off, d10, d11, d12, d13, meta, ASM,
                                                  CONSTRAINTS, PERM_X)
            if MB > 2:
                d20, d21, d22, d23 = _x_block_mma(a0, a1, a2, a3, x2 + off, d20, d21, d22, d23, meta, ASM,
                                                  CONSTRAINTS, PERM_X)
                d30, d31, d32, d33 = _x_block_mma(a0, a1, a2, a3, x3 + off, d30, d31, d32, d33, meta, ASM,
                                                  CONSTRAINTS, PERM_X)
        # one scale per step (a step is 64 kept values, GROUP a multiple of 64): splits need not align to groups
        grp = step * 64 // GROUP
        s_lo = tl.load(scales_ptr + r_lo * scale_cols + grp).to(tl.float32)
        s_hi = tl.load(scales_ptr + r_hi * scale_cols + grp).to(tl.float32)
        acc00 += d00 * s_lo
        acc01 += d01 * s_lo
        acc02 += d02 * s_hi
        acc03 += d03 * s_hi
        if MB > 1:
            acc10 += d10 * s_lo
            acc11 += d11 * s_lo
            acc12 += d12 * s_hi
            acc13 += d13 * s_hi
        if MB > 2:
            acc20 += d20 * s_lo
            acc21 += d21 * s_lo
            acc22 += d22 * s_hi
            acc23 += d23 * s_hi
            acc30 += d30 * s_lo
            acc31 += d31 * s_lo
            acc32 += d32 * s_hi
            acc33 += d33 * s_hi
    rows_lo = tile * 16 + g
    rows_hi = rows_lo + 8
    live = tile < tiles
    # one program along K stores y (+ bias) directly; split K adds into the zeroed workspace (splitk_finish)
    _block_out(y_ptr, bias_ptr, ws_ptr, acc00, acc01, acc02, acc03, rows_lo, rows_hi, live, m0, t, N, M,
               stride_ym, SPLIT, HAS_BIAS)
    if MB > 1:
        _block_out(y_ptr, bias_ptr, ws_ptr, acc10, acc11, acc12, acc13, rows_lo, rows_hi, live, m0 + 8, t, N,
                   M, stride_ym, SPLIT, HAS_BIAS)
    if MB > 2:
        _block_out(y_ptr, bias_ptr, ws_ptr, acc20, acc21, acc22, acc23, rows_lo, rows_hi, live, m0 + 16, t,
                   N, M, stride_ym, SPLIT, HAS_BIAS)
        _block_out(y_ptr, bias_ptr, ws_ptr, acc30, acc31, acc32, acc33, rows_lo, rows_hi, live, m0 + 24, t,
                   N, M, stride_ym, SPLIT, HAS_BIAS)


# warps in flight the packed GEMV aims for (K split until then). H200, M=1, with splitk_finish: 28672x8192
# 0.0421 / 0.0361 / 0.0365 ms at 8192 / 16384 / 32768, 8192x28672 0.0387 / 0.0352 / 0.0357 (fewer warps do not
# hide HBM latency: ncu at 8192 saw 1.5 eligible of 9 active warps per scheduler, waiting on loads); 4096x14336
# 0.0127 / 0.0130 / 0.0152 (more splits, more partial traffic)
PACKED_WARPS_TOTAL = 16384
# when the packed GEMV reads x through a permuted copy (nm24_sp_packed_gemv): from 8 rows of x, and from 4 rows on
# weights of at least 2^27 entries. H200 (nm_permute_sweep JSON, ms stored -> permuted): M=1 and 2 the copy's launch
# loses everywhere (28672x8192 M=1 0.0375 -> 0.0393; 4096x4096 0.0067 -> 0.0088); M=4 it wins on the 235M-entry
# weights (28672x8192 0.0497 -> 0.0399, 8192x28672 0.0503 -> 0.0404), ties on 14336x4096 and 4096x14336 and loses
# on 4096x4096 (0.0077 -> 0.0097); M=8 it wins (0.0825 -> 0.0413, 0.0247 -> 0.0166) or ties (4096x4096); M=16 and
# 32 it wins on every shape (28672x4096 M=32 0.148 -> 0.058)
PERMUTE_X_MIN_M = 8
PERMUTE_X_MIN_M_LARGE = 4
PERMUTE_X_LARGE_WEIGHT = 1 << 27


def permute_x_by_default(m: int, n: int, k: int) -> bool:
    """Whether ``m`` rows of x against an ``[n, k]`` weight go through the permuted copy (measured rule above)."""
    return m >= PERMUTE_X_MIN_M or (m >= PERMUTE_X_MIN_M_LARGE and n * k >= PERMUTE_X_LARGE_WEIGHT)


def permute_x_for_sparse_mma(x: torch.Tensor) -> torch.Tensor:
    """``x [M, K]`` (K % 32 == 0) with every 32-input chunk reordered so that the four B pairs of ``mma.sp`` lane t
    (inputs 2t, 2t+1 + 8j, j = 0..3) are 16 contiguous bytes: position 8t + 2j + i holds input 8j + 2t + i. A new
    contiguous ``[M, K]`` tensor (one copy kernel)."""
    m, k = x.shape
    return x.reshape(m, k // 32, 4, 4, 2).transpose(2, 3).reshape(m, k)


def nm24_sp_packed_gemv(x: torch.Tensor, w: NMWeight, packed: dict[str, torch.Tensor],
                        bias: torch.Tensor | None = None, num_warps: int = 4,
                        warps_total: int = PACKED_WARPS_TOTAL, permute_x: bool | None = None) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias) -> [M, N]`` in x's dtype for a 2:4 int4 weight from its packed copy
    (``pack_int4_for_sparse_mma``); one pass over the weight per 32 rows of x, plus ``splitk_finish``
    when K is split.

    ``permute_x`` (default: ``permute_x_by_default``, from 8 rows or 4 on large weights): read x through a copy in
    ``permute_x_for_sparse_mma`` order, one 16-byte load per lane and x block instead of four 4-byte loads that
    use half of each 32-byte sector they fetch. x traffic grows with the rows of x while the weight's does not,
    so with more rows it is what the kernel waits on; at one or two rows the copy's extra launch costs more."""
    if x.dtype != torch.bfloat16 or not x.is_cuda:
        raise ValueError(f"the packed sparse-MMA GEMV reads bf16 x on a GPU, got {x.dtype} on {x.device}")
    if x.stride(0) % 2 or x.stride(1) != 1:
        x = x.contiguous()
    m, n = x.shape[0], w.out_features
    permute_x = permute_x_by_default(m, n, w.in_features) if permute_x is None else permute_x
    if permute_x:
        x = permute_x_for_sparse_mma(x)
    steps = w.in_features // 128
    blocks = min(4, triton.next_power_of_2(triton.cdiv(m, 8)))  # 8-row blocks of x per program
    programs = triton.cdiv(triton.cdiv(n, 16), num_warps)
    m_programs = triton.cdiv(m, 8 * blocks)
    steps_per_split = _steps_per_split(steps, 1, programs * num_warps * m_programs, warps_total)
    splits = triton.cdiv(steps, steps_per_split)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    ws = splitk_workspace(x.device, m * n) if splits > 1 else y
    _nm24_sp_packed_kernel[(programs, splits, m_programs)](
        x, packed["packed_codes"], packed["packed_meta"], packed["packed_scales"], bias if bias is not None else y,
        y, ws,
        n, w.in_features, m, x.stride(0), y.stride(0), 1, steps_per_split, GROUP=w.group_size, MB=blocks,
        SPLIT=splits > 1, HAS_BIAS=bias is not None, ASM=_MMA_SP_INT4, CONSTRAINTS=_CONSTRAINTS,
        num_warps_=num_warps, PERM_X=permute_x, num_warps=num_warps, **pdl_launch(x.device),
    )
    return splitk_finish(ws, y, bias) if splits > 1 else y


def packed_supported(w: NMWeight) -> bool:
    """The packed sparse-MMA GEMV applies to this weight: 2:4 int4, K % 128 == 0, group size a multiple of 64,
    on a CUDA GPU of compute capability 8.0 or newer."""
    return ((w.n, w.m, w.value_format) == (2, 4, "int4") and w.in_features % 128 == 0 and w.group_size % 64 == 0
            and w.device.type == "cuda" and torch.cuda.get_device_capability(w.device)[0] >= 8)
