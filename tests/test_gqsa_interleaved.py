"""The interleaved-rows decode copy of a GQSA weight and its GEMV, against the torch reference.

On CPU the kernel runs in the Triton interpreter (float16/float32); on the GPU natively, bfloat16 included.
"""

from __future__ import annotations

import pytest
import torch
from helpers import uneven_rows_gqsa
from sparseflow.kernels.gqsa import dequantize_reference, gqsa_linear_reference, quantize_rtn
from sparseflow.kernels.gqsa.interleaved import (
    PAD_STEPS,
    InterleavedRows,
    default_block_m,
    dequantize_interleaved,
    interleave,
    interleaved_config,
    interleaved_gemv,
)
from sparseflow.kernels.testing import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _weight(n, k, bits, g, density, seed=0):
    torch.manual_seed(seed)
    keep = torch.rand(n, k // g) < density
    if n > 3:
        keep[0] = False  # an empty row: zeros (or the bias)
        keep[3] = True  # a full row: the longest, so the first block
    return quantize_rtn(torch.randn(n, k), bits=bits, group_size=g, keep=keep).to(DEVICE)


def _id(v):
    return str(v).replace("torch.", "")


@pytest.mark.parametrize("bits, g", [(4, 16), (4, 8), (2, 32), (8, 16), (4, 128)], ids=lambda v: str(v))
@pytest.mark.parametrize("lanes, threads", [(1, 4), (4, 16), (8, 8)], ids=lambda v: str(v))
def test_copy_holds_every_group_once(bits, g, lanes, threads):
    """Dequantizing the copy gives the weight back exactly: every stored group lands in one slot, padding weighs
    nothing, rows map back to their own index."""
    w = _weight(45, 256, bits, g, 0.5)
    il = interleave(w, lanes, threads)
    assert torch.equal(dequantize_interleaved(il, w), dequantize_reference(w, torch.float32))
    steps = int(il.step_ptr[-1])
    assert il.col.shape == (steps + PAD_STEPS, threads)
    block_steps = il.step_ptr[1:] - il.step_ptr[:-1]
    assert bool((block_steps >= 0).all()) and bool((block_steps % 2 == 0).all())  # two steps an iteration
    assert sorted(r for r in il.rows.reshape(-1).tolist() if r >= 0) == list(range(45))
    # rows are sorted longest first, so block b's steps never exceed block b-1's
    assert block_steps.tolist() == sorted(block_steps.tolist(), reverse=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (4, 8), (2, 16), (8, 8), (4, 128)], ids=lambda v: str(v))
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("m, n, k, lanes, threads", [(1, 37, 256, 4, 16), (3, 13, 256, 2, 4), (1, 9, 512, 8, 8)],
                         ids=lambda v: str(v))
def test_gemv_matches_reference(m, n, k, lanes, threads, bits, g, density, dtype):
    """Odd row counts (a partial last block), rows shorter than a step, sparsity 0 / 0.5 / 0.9 / all pruned, every
    whole-word (g, bits), input rows that fill part of a BLOCK_M."""
    if k % g:
        pytest.skip("K not a multiple of g")
    w = _weight(n, k, bits, g, density)
    il = interleave(w, lanes, threads)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    y = interleaved_gemv(x, w, il, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close(y.float(), gqsa_linear_reference(x.float(), w, bias.float()), dtype, name=f"interleaved {dtype}")


def test_uneven_rows_and_empty_rows_get_their_bias():
    """One full row, many empty rows, single-group rows: blocks of very different lengths."""
    w = uneven_rows_gqsa().to(DEVICE)
    x = torch.randn(2, w.in_features, device=DEVICE)
    bias = torch.randn(w.out_features, device=DEVICE)
    for lanes, threads in ((1, 4), (4, 8), (16, 16)):
        y = interleaved_gemv(x, w, interleave(w, lanes, threads), bias)
        assert_close(y, gqsa_linear_reference(x, w, bias), torch.float32, name=f"uneven rows, {lanes} lanes")


@pytest.mark.parametrize("m, block_m", [(5, 4), (3, 2), (4, 2), (2, 1), (4, 4)])
def test_several_input_rows(m, block_m):
    w = _weight(45, 256, 4, 16, 0.5)
    x = torch.randn(m, 256, device=DEVICE)
    y = interleaved_gemv(x, w, interleave(w, 4, 16), block_m=block_m)
    assert_close(y, gqsa_linear_reference(x, w), torch.float32, name=f"M={m} BLOCK_M={block_m}")


def test_persistent_programs_and_deeper_prefetch_give_the_same_sums():
    """Fewer programs than blocks (each strides over several) and prefetching two iterations ahead read past a
    block's end into the next block or the padding steps: the sums must not change."""
    w = _weight(40, 256, 4, 16, 0.6)
    il = interleave(w, 2, 8)
    x = torch.randn(2, 256, device=DEVICE)
    ref = gqsa_linear_reference(x, w)
    for programs, prefetch in ((1, 1), (3, 2), (None, 2)):
        y = interleaved_gemv(x, w, il, programs=programs, prefetch=prefetch)
        assert_close(y, ref, torch.float32, name=f"programs={programs} prefetch={prefetch}")


@pytest.mark.parametrize("bits, g", [(4, 16), (2, 16), (8, 8)], ids=lambda v: str(v))
def test_zero_points_off_the_grid(bits, g):
    """The decode subtracts 2**23 + z * 2**pos (pos >= 12) in one step: exact for |z| >= 2**-2, within 2**-13 of a
    code step below. Zeros that E2E tuning moved anywhere (fractions, negatives, past the code range) must
    still match the reference to float32 precision."""
    w = _weight(33, 256, bits, g, 0.6, seed=5)
    torch.manual_seed(6)
    span = 3 * 2**bits
    w.zero.copy_((torch.rand(w.zero.shape) * span - 2**bits).clamp(-(2**bits) + 0.01, 2 ** (bits + 1) - 0.01))
    w.zero[:8] = torch.tensor([0.0, 1e-3, -1e-3, 0.01, 0.2, -0.3, 2**-7, 0.126], dtype=w.zero.dtype)
    x = torch.randn(2, 256, device=DEVICE)
    y = interleaved_gemv(x, w, interleave(w, 4, 16))
    assert_close(y, gqsa_linear_reference(x, w), torch.float32, name="interleaved, tuned zeros")


def test_bad_input_is_refused():
    w = _weight(8, 64, 4, 16, 0.5)
    il = interleave(w, 2, 8)
    x = torch.randn(1, 64, device=DEVICE)
    with pytest.raises(ValueError, match="32-bit words"):
        interleave(_weight(8, 64, 2, 8, 0.5), 2, 8)
    with pytest.raises(ValueError, match="powers of two"):
        interleave(w, 3, 8)
    with pytest.raises(ValueError, match="powers of two"):
        interleave(w, 16, 8)
    with pytest.raises(ValueError, match="block_m"):
        interleaved_gemv(x, w, il, block_m=3)
    with pytest.raises(ValueError, match="prefetch"):
        interleaved_gemv(x, w, il, prefetch=3)
    other = _weight(40, 64, 4, 16, 0.5)
    with pytest.raises(ValueError, match="another weight"):
        interleaved_gemv(x, other, il)
    with pytest.raises(ValueError, match="another weight"):
        interleaved_gemv(x, _weight(8, 64, 4, 32, 0.5), il)


def test_tables_round_trip():
    w = _weight(20, 128, 4, 16, 0.5)
    il = interleave(w, 4, 16)
    back = InterleavedRows.from_tables(il.tables())
    assert back.threads == 16 and back.rows_per_block == 4 and back.lanes_per_row == 4
    assert back.storage_bytes() == il.storage_bytes()


@pytest.mark.parametrize("n, k, lanes", [(28672, 8192, 4), (8192, 28672, 16), (4096, 14336, 32), (14336, 4096, 8),
                                         (6144, 4096, 16), (4096, 4096, 32)])
def test_config_picks_the_measured_lanes(n, k, lanes):
    """The rule gives the best lanes per row of the H200 sweep (132 SMs) on each measured shape. Only the shape
    and stored-group count matter, so the weight is a stand-in with that many groups."""
    nnz = n * (k // 16) // 2
    stand_in = type("W", (), {"out_features": n, "nnz_groups": nnz, "device": torch.device("cpu")})()
    assert interleaved_config(stand_in, sms=132) == {"lanes_per_row": lanes, "threads": 64}


def test_block_m_default_caps_at_two_for_many_rows_per_block():
    w = _weight(40, 128, 4, 16, 0.5)
    assert default_block_m(4, interleave(w, 4, 16)) == 2
    assert default_block_m(4, interleave(w, 16, 16)) == 4
    assert default_block_m(1, interleave(w, 4, 16)) == 1
    assert default_block_m(3, interleave(w, 16, 16)) == 4


@pytest.mark.gpu
def test_kernel_tables_says_the_decode_copy_costs_memory(caplog):
    """The copy roughly doubles a pruned weight's bytes on the GPU: the log says so once."""
    import sparseflow.kernels._log as log
    from sparseflow.kernels.gqsa import kernel_tables

    log._said.clear()
    log.logger.propagate = True  # let caplog see it
    try:
        with caplog.at_level("INFO", logger="sparseflow"):
            tables = kernel_tables(_weight(45, 256, 4, 16, 0.5))
    finally:
        log.logger.propagate = False
    assert "il_words" in tables
    assert "decode copy" in caplog.text and "bytes again" in caplog.text
