"""The tensor-core GQSA matmul (batches past the decode GEMV) against the torch reference: odd shapes, the Triton
bit widths and group sizes, sparsity from none to all pruned, several K splits; and its group bitmap table."""

from __future__ import annotations

import pytest
import torch
from sparseflow.kernels.gqsa import gqsa_linear_reference, quantize_rtn
from sparseflow.kernels.testing import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _weight(n, k, bits, g, density, seed=0):
    torch.manual_seed(seed)
    keep = torch.rand(n, k // g) < density
    keep[0] = False  # an empty row gives the bias
    if n > 2:
        keep[2] = True  # a full row
    return quantize_rtn(torch.randn(n, k), bits=bits, group_size=g, keep=keep).to(DEVICE)


def test_group_bitmap_points_at_every_stored_group():
    from sparseflow.kernels.gqsa.tile_matmul import group_bitmap

    w = _weight(9, 64 * 40, 4, 16, 0.5)  # 160 group columns: 5 words, the last partial
    table = group_bitmap(w)
    mask, prefix = table["group_mask"].cpu().long() & 0xFFFFFFFF, table["group_prefix"].cpu().long()
    assert mask.shape == prefix.shape == (9, 5)
    row_ptr, cols = w.row_ptr.cpu().long(), w.group_col.cpu().long()
    for r in range(9):
        for j in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            c = int(cols[j])
            word = int(mask[r, c // 32])
            assert word >> (c % 32) & 1
            assert int(prefix[r, c // 32]) + bin(word & ((1 << (c % 32)) - 1)).count("1") == j
        assert sum(bin(int(v)).count("1") for v in mask[r]) == int(row_ptr[r + 1] - row_ptr[r])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("bits, g", [(4, 16), (4, 8), (2, 32), (8, 16), (4, 128)], ids=str)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("m, n, k", [(5, 37, 384), (17, 70, 256), (33, 16, 640)], ids=str)
def test_tile_matmul_matches_reference(m, n, k, bits, g, density, dtype):
    from sparseflow.kernels.gqsa.tile_matmul import gqsa_tile_matmul

    w = _weight(n, k, bits, g, density)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    y = gqsa_tile_matmul(x, w, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close(y.float(), gqsa_linear_reference(x.float(), w, bias.float()), dtype, name=f"tile matmul {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda v: str(v).replace("torch.", ""))
def test_tile_matmul_zeros_off_the_grid(dtype):
    """Zeros moved by end-to-end tuning: fractional, negative and past the code range (the GPU's fast 4-bit decode
    splits each zero into its integer part, subtracted exactly, and its fraction, folded into the FMA)."""
    from sparseflow.kernels.gqsa.tile_matmul import gqsa_tile_matmul

    w = _weight(40, 512, 4, 16, 0.6)
    torch.manual_seed(3)
    moved = w.zero.float() + torch.empty_like(w.zero.float()).uniform_(-0.5, 0.5)
    moved[::7] = -3.25
    moved[1::7] = 21.5
    w.zero.copy_(moved.to(w.zero.dtype))
    x = torch.randn(24, 512, device=DEVICE).to(dtype)
    assert_close(gqsa_tile_matmul(x, w).float(), gqsa_linear_reference(x.float(), w), dtype,
                 name=f"tile matmul, zeros off the grid, {dtype}")


@pytest.mark.parametrize("g", [8, 16])
def test_tile_matmul_last_step_partly_past_k(g):
    """K = 400: 25 (g16) or 50 (g8) group columns, so the last 128-input step is partial."""
    from sparseflow.kernels.gqsa.tile_matmul import gqsa_tile_matmul

    w = _weight(23, 400, 4, g, 0.6)
    x = torch.randn(9, 400, device=DEVICE).to(torch.float16)
    for split in (1, 2):
        y = gqsa_tile_matmul(x, w, config=dict(BLOCK_M=16, BLOCK_N=16, SPLIT=split, num_warps=4))
        assert_close(y.float(), gqsa_linear_reference(x.float(), w), torch.float16, name=f"partial step g{g}")


@pytest.mark.parametrize("split", [1, 3])
def test_tile_matmul_k_splits_and_small_tiles_agree(split):
    from sparseflow.kernels.gqsa.tile_matmul import gqsa_tile_matmul

    w = _weight(40, 1024, 4, 16, 0.4)
    x = torch.randn(20, 1024, device=DEVICE).to(torch.float16)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, SPLIT=split, num_warps=4)
    y = gqsa_tile_matmul(x, w, config=cfg)
    assert_close(y.float(), gqsa_linear_reference(x.float(), w), torch.float16, name="tile matmul split")


def test_tile_matmul_refuses_a_foreign_bitmap_and_3_bit_codes():
    from sparseflow.kernels.gqsa.tile_matmul import gqsa_tile_matmul, group_bitmap

    w, other = _weight(16, 256, 4, 16, 0.5), _weight(24, 256, 4, 16, 0.5)
    x = torch.randn(8, 256, device=DEVICE).to(torch.float16)
    with pytest.raises(ValueError, match="built for another weight"):
        gqsa_tile_matmul(x, w, bitmap=group_bitmap(other))
    with pytest.raises(ValueError, match="not 3"):
        gqsa_tile_matmul(x, _weight(16, 256, 3, 16, 0.5))
    with pytest.raises(ValueError, match="whole 32-bit words, not 2-bit g8"):
        gqsa_tile_matmul(x, _weight(16, 256, 2, 8, 0.5))


@pytest.mark.skipif(DEVICE != "cuda", reason="gqsa_linear dispatches to Triton on CUDA only")
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 32, 129, 300])
def test_gqsa_linear_dispatch_with_kernel_tables_matches_reference(m):
    from sparseflow.kernels.gqsa import gqsa_linear, kernel_tables

    w = _weight(300, 1024, 4, 16, 0.5)
    tables = kernel_tables(w)
    expected = {"group_mask", "group_prefix", "il_words", "il_col", "il_scale_zero", "il_step_ptr", "il_rows"}
    assert expected <= set(tables)
    x = torch.randn(m, 1024, device=DEVICE, dtype=torch.bfloat16)
    y = gqsa_linear(x, w, tables=tables)
    assert_close(y.float(), gqsa_linear_reference(x.float(), w), torch.bfloat16, name=f"gqsa_linear M={m}")
