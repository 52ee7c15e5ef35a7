"""Triton N:M kernels against the torch reference: every pattern family, value format, odd sizes, dtypes.

On CPU the kernels run in the Triton interpreter (float16/float32); on the GPU natively, bfloat16 included.
"""

from __future__ import annotations

import pytest
import torch
from sparseflow.kernels.nm import expand_reference, from_dense, nm_linear, nm_linear_reference
from sparseflow.kernels.testing import assert_close

from sparseflow.compressors.baselines import nm_prune

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8)]
VALUES = [("bf16", 0), ("fp16", 0), ("int8", 8), ("int4", 16)]
SMALL = {"BLOCK_N": 8, "BLOCK_P": 16, "num_warps": 1}  # small tiles: partial row and value tiles


def _weight(rows, k, n, m, values, group, seed=0):
    torch.manual_seed(seed)
    return from_dense(nm_prune(torch.randn(rows, k), n, m), n, m, values, group).to(DEVICE)


def _id(v):
    return str(v).replace("torch.", "")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("values, group", VALUES, ids=lambda v: str(v))
@pytest.mark.parametrize("n, m", PATTERNS, ids=lambda v: str(v))
@pytest.mark.parametrize("rows, k, batch", [(37, 128, 1), (13, 256, 3)], ids=lambda v: str(v))
def test_gemv_matches_reference(rows, k, batch, n, m, values, group, dtype):
    from sparseflow.kernels.nm.triton_kernels import nm_gemv

    w = _weight(rows, k, n, m, values, group)
    x = torch.randn(batch, k, device=DEVICE).to(dtype)
    bias = torch.randn(rows, device=DEVICE).to(dtype)
    y = nm_gemv(x, w, bias, config=dict(SMALL))
    assert y.dtype == dtype
    assert_close(y.float(), nm_linear_reference(x.float(), w, bias.float()), dtype, name=f"nm gemv {n}:{m} {values}")


HALF_DTYPES = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=_id)
@pytest.mark.parametrize("values, group", [*VALUES, ("int4", 128), ("int8", 24)], ids=lambda v: str(v))
@pytest.mark.parametrize("rows, k, batch, block_m", [(37, 16 * 24, 1, 1), (13, 16 * 9, 3, 4), (5, 16 * 48, 2, 1)],
                         ids=lambda v: str(v))
def test_2_4_gemv_matches_reference(rows, k, batch, block_m, values, group, dtype):
    """The 2:4 GEMV: odd row counts (partial row tiles), unit counts that leave a partial last step, integer
    groups spanning several units or one and a half (24), batches above and below BLOCK_M."""
    from sparseflow.kernels.nm.triton_kernels import nm24_gemv

    if k * 2 // 4 % max(group, 1):
        pytest.skip("group size does not divide the kept values per row")
    w = _weight(rows, k, 2, 4, values, group, seed=3)
    x = torch.randn(batch, k, device=DEVICE).to(dtype)
    bias = torch.randn(rows, device=DEVICE).to(dtype)
    y = nm24_gemv(x, w, bias, config={"BLOCK_R": 4, "BLOCK_U": 8, "num_warps": 1, "BLOCK_M": block_m})
    assert y.dtype == dtype
    assert_close(y.float(), nm_linear_reference(x.float(), w, bias.float()), dtype, name=f"2:4 gemv {values}")


def test_2_4_gemv_rejects_what_it_cannot_run():
    from sparseflow.kernels.nm.triton_kernels import nm24_gemv

    with pytest.raises(ValueError, match="needs a 2:4 weight"):
        nm24_gemv(torch.randn(1, 64, device=DEVICE, dtype=torch.float16), _weight(4, 64, 1, 4, "bf16", 0))
    with pytest.raises(ValueError, match="not a multiple of 16"):
        nm24_gemv(torch.randn(1, 72, device=DEVICE, dtype=torch.float16), _weight(4, 72, 2, 4, "bf16", 0))
    with pytest.raises(ValueError, match="16-bit x"):
        nm24_gemv(torch.randn(1, 64, device=DEVICE), _weight(4, 64, 2, 4, "bf16", 0))


@pytest.mark.parametrize("values, group", VALUES, ids=lambda v: str(v))
@pytest.mark.parametrize("n, m", [*PATTERNS, (1, 8), (3, 16)], ids=lambda v: str(v))
def test_expand_matches_reference(n, m, values, group):
    from sparseflow.kernels.nm.triton_kernels import nm_expand

    w = _weight(19, 48 * m, n, m, values, group, seed=2)  # 48 blocks: a partial second tile of 32
    for dtype in DTYPES:
        out = nm_expand(w, dtype, config={"BLOCK_N": 8, "BLOCK_B": 32, "num_warps": 1})
        assert torch.equal(out.float(), expand_reference(w, dtype).float()), (n, m, values, dtype)


def test_dispatch_and_input_errors():
    w = _weight(8, 64, 2, 4, "bf16", 0)
    x = torch.randn(2, 64, device=DEVICE)
    assert_close(nm_linear(x, w), nm_linear_reference(x, w), torch.float32)
    with pytest.raises(ValueError, match="features"):
        nm_linear(torch.randn(2, 32, device=DEVICE), w)
    with pytest.raises(ValueError, match="dtype"):
        nm_linear(x.to(torch.int32), w)
    with pytest.raises(ValueError, match="bias"):
        nm_linear(x, w, torch.zeros(3, device=DEVICE))


@pytest.mark.skipif(DEVICE != "cuda", reason="the CUDA dispatch (GEMV vs expand + cuBLAS) needs a GPU")
@pytest.mark.parametrize("batch", [1, 4, 5, 64])
def test_cuda_dispatch_every_batch(batch):
    w = _weight(96, 256, 2, 4, "int4", 16)
    x = torch.randn(batch, 256, device=DEVICE, dtype=torch.bfloat16)
    assert_close(nm_linear(x, w).float(), nm_linear_reference(x.float(), w), torch.bfloat16)


@pytest.mark.skipif(DEVICE != "cuda", reason="inline PTX (mma.sp) runs on the GPU only, not in the interpreter")
@pytest.mark.parametrize("values, group", [("bf16", 0), ("int4", 16), ("int4", 128)], ids=lambda v: str(v))
def test_sparse_tensor_core_gemv_matches_reference(values, group):
    """The experimental mma.sp GEMV: our positions words map onto the instruction's metadata exactly."""
    from sparseflow.kernels.nm.sparse_mma import nm24_sp_gemv

    w = _weight(70, 32 * 16, 2, 4, values, group, seed=5)  # 70 rows: a partial 16-row warp tile
    x = torch.randn(3, 32 * 16, device=DEVICE, dtype=torch.bfloat16)
    bias = torch.randn(70, device=DEVICE, dtype=torch.bfloat16)
    for warps_total in (64, 8192):  # one K split per warp, and K split across many programs
        y = nm24_sp_gemv(x, w, bias, warps_total=warps_total)
        assert_close(y.float(), nm_linear_reference(x.float(), w, bias.float()), torch.bfloat16,
                     name=f"mma.sp {values}")


def test_sparse_tensor_core_gemv_refuses_what_it_cannot_run():
    from sparseflow.kernels.nm.sparse_mma import nm24_sp_gemv

    with pytest.raises(ValueError, match="sparse-MMA"):
        nm24_sp_gemv(torch.randn(1, 64, device=DEVICE, dtype=torch.float16), _weight(4, 64, 2, 4, "bf16", 0))


def test_int4_packing_puts_each_lanes_bytes_where_the_kernel_reads_them():
    """The packed copy for the sparse tensor cores, checked against the fragment rules on CPU: lane (g, t) of
    tile T, chunk c reads code bytes t and t+4 of rows 16T+g and 16T+g+8, and (t < 2) k-half t of both rows'
    positions word. 21 rows: the second tile is padded."""
    from sparseflow.kernels.nm.sparse_mma import pack_int4_for_sparse_mma

    w = _weight(21, 256, 2, 4, "int4", 64, seed=6).to("cpu")
    packed = pack_int4_for_sparse_mma(w)
    codes = packed["packed_codes"].view(torch.uint8).view(2, 2, 32, 4, 4)  # [tile, step, lane, chunk, byte]
    meta = packed["packed_meta"].view(2, 2, 16, 4)
    values = torch.nn.functional.pad(w.values, (0, 0, 0, 11), value=0x88).view(32, 8, 8)  # [row, chunk, byte]
    words = torch.nn.functional.pad(w.indices.view(torch.int32), (0, 0, 0, 11), value=0x44444444)
    words = words.to(torch.int64) & 0xFFFFFFFF
    for tile in range(2):
        for c in range(8):
            for g in range(8):
                lo, hi = tile * 16 + g, tile * 16 + g + 8
                for t in range(4):
                    expect = [values[lo, c, t], values[hi, c, t], values[lo, c, t + 4], values[hi, c, t + 4]]
                    got = codes[tile, c // 4, g * 4 + t, c % 4]
                    assert got.tolist() == [int(v) for v in expect], (tile, c, g, t)
                for t in range(2):
                    half_lo = (int(words[lo, c]) >> (16 * t)) & 0xFFFF
                    want = half_lo | (((int(words[hi, c]) >> (16 * t)) & 0xFFFF) << 16)
                    assert int(meta[tile, c // 4, g * 2 + t, c % 4]) & 0xFFFFFFFF == want, (tile, c, g, t)
    with pytest.raises(ValueError, match="2:4 int4"):
        pack_int4_for_sparse_mma(_weight(16, 256, 2, 4, "bf16", 0).to("cpu"))


def test_x_permutation_puts_each_lanes_b_pairs_in_one_16_byte_load():
    """permute_x_for_sparse_mma, checked against the B-fragment rule on CPU: lane t of chunk c needs the x pairs
    (as 32-bit words of the row) c*16 + t + 4j, j = 0..3, and reads words c*16 + 4t .. c*16 + 4t + 3 of the copy."""
    from sparseflow.kernels.nm.sparse_mma import permute_x_for_sparse_mma

    x = torch.randn(3, 128, dtype=torch.bfloat16)
    natural, permuted = x.view(torch.int32), permute_x_for_sparse_mma(x).view(torch.int32)
    assert permute_x_for_sparse_mma(x).is_contiguous()
    for c in range(4):
        for t in range(4):
            want = [natural[:, c * 16 + t + 4 * j] for j in range(4)]
            assert torch.equal(permuted[:, c * 16 + 4 * t: c * 16 + 4 * t + 4], torch.stack(want, 1)), (c, t)


@pytest.mark.skipif(DEVICE != "cuda", reason="inline PTX (mma.sp) runs on the GPU only, not in the interpreter")
@pytest.mark.parametrize("group", [64, 128])
def test_packed_sparse_tensor_core_gemv_matches_reference(group):
    from sparseflow.kernels.nm.sparse_mma import nm24_sp_packed_gemv, pack_int4_for_sparse_mma

    w = _weight(70, 512, 2, 4, "int4", group, seed=7)
    bias = torch.randn(70, device=DEVICE, dtype=torch.bfloat16)
    packed = pack_int4_for_sparse_mma(w)
    # x rows ride in B's 8 columns, up to 4 such blocks per program: partial, full, 2, 3 and 4 blocks, and a
    # second program along M
    for batch in (1, 3, 8, 11, 24, 32, 40):
        x = torch.randn(batch, 512, device=DEVICE, dtype=torch.bfloat16)
        want = nm_linear_reference(x.float(), w, bias.float())
        for warps_total, permute in ((64, False), (8192, False), (64, True), (8192, True)):
            # one program along K, and K split with the reduction done in-kernel; x as it is and permuted
            for call in range(2):  # the second call finds the split-K scratch zeroed again by the first
                y = nm24_sp_packed_gemv(x, w, packed, bias, warps_total=warps_total, permute_x=permute)
                assert y.dtype == torch.bfloat16 and y.shape == (batch, 70)
                assert_close(y.float(), want, torch.bfloat16, name=f"packed mma.sp g{group} M={batch} "
                             f"warps_total={warps_total} permuted x {permute} call {call}")


@pytest.mark.skipif(DEVICE != "cuda", reason="the packed sparse-tensor-core path needs a GPU")
@pytest.mark.parametrize("batch", [1, 5, 8, 9, 32, 33])
def test_nm_linear_uses_the_packed_copy_from_kernel_tables(batch):
    """kernel_tables gives an eligible 2:4 int4 weight its packed copy; nm_linear takes it up to PACKED_MAX_M rows
    (past it: expand + cuBLAS) and agrees with the reference either way, with or without the tables."""
    from sparseflow.kernels.nm import PACKED_MAX_M, kernel_tables

    w = _weight(40, 256, 2, 4, "int4", 64, seed=8)
    tables = kernel_tables(w)
    assert sorted(tables) == ["packed_codes", "packed_meta", "packed_scales"]
    x = torch.randn(batch, 256, device=DEVICE, dtype=torch.bfloat16)
    assert PACKED_MAX_M == 32
    want = nm_linear_reference(x.float(), w)
    assert_close(nm_linear(x, w, tables=tables).float(), want, torch.bfloat16, name=f"M={batch} packed")
    assert_close(nm_linear(x, w).float(), want, torch.bfloat16, name=f"M={batch} without tables")


def test_kernel_tables_are_empty_where_no_kernel_reads_them():
    from sparseflow.kernels.nm import kernel_tables

    assert kernel_tables(_weight(16, 256, 2, 4, "int4", 64).to("cpu")) == {}  # off the GPU
    assert kernel_tables(_weight(16, 256, 2, 4, "bf16", 0).to("cpu")) == {}


def test_permute_x_default_rule():
    """The packed GEMV's measured rule for reading x through the permuted copy: never at 1-2 rows, from 4 rows on
    weights of 2^27+ entries, from 8 rows on any weight."""
    from sparseflow.kernels.nm.sparse_mma import permute_x_by_default

    assert not permute_x_by_default(2, 28672, 8192)
    assert permute_x_by_default(4, 28672, 8192) and permute_x_by_default(4, 8192, 28672)
    assert not permute_x_by_default(4, 14336, 4096) and not permute_x_by_default(7, 4096, 4096)
    assert permute_x_by_default(8, 4096, 4096) and permute_x_by_default(32, 4096, 4096)
