"""Triton GQSA kernels against the torch reference: odd shapes, all Triton bit widths, sparsity, dtypes.

On CPU the kernels run in the Triton interpreter (float16/float32: bf16 loads are broken there);
on the GPU natively, bfloat16 included.
"""

from __future__ import annotations

import pytest
import torch
from helpers import uneven_rows_gqsa
from sparseflow.kernels.gqsa import dequantize_reference, gqsa_linear, gqsa_linear_reference, quantize_rtn
from sparseflow.kernels.testing import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# (M, N, K): odd output counts, a K that is not a power of two, M past the GEMV cut-off on GPU
SHAPES = [(1, 37, 96), (3, 130, 256), (5, 16, 384), (17, 45, 128)]


def _weight(n, k, bits, g, density, seed=0):
    torch.manual_seed(seed)
    keep = torch.rand(n, k // g) < density
    keep[0] = False  # an empty row must produce zeros (or the bias)
    return quantize_rtn(torch.randn(n, k), bits=bits, group_size=g, keep=keep).to(DEVICE)


def _id(v):
    return str(v).replace("torch.", "")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (4, 8), (2, 32), (8, 16), (4, 128)], ids=lambda v: str(v))
@pytest.mark.parametrize("density", [1.0, 0.5])
@pytest.mark.parametrize("m, n, k", SHAPES, ids=lambda v: str(v))
def test_gemv_matches_reference(m, n, k, bits, g, density, dtype):
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_gemv

    if k % g:
        pytest.skip("K not a multiple of g")
    w = _weight(n, k, bits, g, density)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    y = torch.full((m, n), float("nan"), device=DEVICE, dtype=dtype)  # poison: every element must be written
    gqsa_gemv(x, w, bias, out=y)
    assert_close(y.float(), gqsa_linear_reference(x.float(), w, bias.float()), dtype, name=f"gemv {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (2, 8), (8, 64)], ids=lambda v: str(v))
@pytest.mark.parametrize("density", [1.0, 0.4])
def test_dequantize_matches_reference(bits, g, density, dtype):
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_dequantize

    w = _weight(45, 256, bits, g, density, seed=3)
    out = gqsa_dequantize(w, dtype)
    assert out.dtype == dtype
    assert_close(out.float(), dequantize_reference(w, dtype).float(), dtype)
    assert torch.all(out[0] == 0)  # the empty row


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 9, 300])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_public_dispatch_on_gpu(m, dtype):
    w = _weight(256, 512, 4, 16, 0.7)
    x = torch.randn(2, m, 512, device="cuda").to(dtype)  # 3-D input: [..., K]
    y = gqsa_linear(x, w)
    assert y.shape == (2, m, 256) and y.dtype == dtype
    assert_close(y.float(), gqsa_linear_reference(x.float(), w), dtype)


def test_cpu_public_path_is_the_reference_and_says_so(caplog):
    w = quantize_rtn(torch.randn(8, 32), bits=4, group_size=16)
    x = torch.randn(2, 32)
    import sparseflow.kernels._log as log

    log._said.clear()
    log.logger.propagate = True  # let caplog see it
    try:
        with caplog.at_level("INFO", logger="sparseflow"):
            y = gqsa_linear(x, w)
    finally:
        log.logger.propagate = False
    assert torch.equal(y, gqsa_linear_reference(x, w))
    assert "torch reference" in caplog.text


def test_bad_inputs_raise_clear_errors():
    w = quantize_rtn(torch.randn(8, 32), bits=4, group_size=16)
    with pytest.raises(ValueError, match="last dimension"):
        gqsa_linear(torch.randn(2, 31), w)
    with pytest.raises(ValueError, match="dtype"):
        gqsa_linear(torch.randn(2, 32).to(torch.float64), w)
    with pytest.raises(ValueError, match="bias"):
        gqsa_linear(torch.randn(2, 32), w, torch.randn(7))


# Every group stored: the dense-groups kernels (fused tensor-core matmul, tile dequantize).
DENSE_SHAPES = [(1, 37, 256), (3, 130, 384), (17, 45, 512), (70, 33, 256)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (4, 128), (2, 32), (8, 8)], ids=lambda v: str(v))
@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("m, n, k", DENSE_SHAPES, ids=lambda v: str(v))
def test_dense_groups_matmul_matches_reference(m, n, k, bits, g, split_k, dtype):
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_dense_matmul

    w = quantize_rtn(torch.randn(n, k), bits=bits, group_size=g).to(DEVICE)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=max(128, g), SPLIT_K=split_k)
    y = gqsa_dense_matmul(x, w, bias, config=config)
    # the weight tile is rounded to x.dtype before the tensor-core product: one more rounding than
    # the float32 reference, so the tolerance is that of the dtype (REL_TOL), not tighter
    assert_close(y.float(), gqsa_linear_reference(x.float(), w, bias.float()), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (2, 128), (8, 64)], ids=lambda v: str(v))
def test_dense_groups_dequantize_matches_reference(bits, g, dtype):
    from sparseflow.kernels.gqsa.triton_kernels import dense_groups_supported, gqsa_dequantize

    w = quantize_rtn(torch.randn(45, 384), bits=bits, group_size=g).to(DEVICE)
    assert dense_groups_supported(w)
    assert_close(gqsa_dequantize(w, dtype).float(), dequantize_reference(w, dtype).float(), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (4, 128), (2, 32), (8, 8)], ids=lambda v: str(v))
@pytest.mark.parametrize("m, n, k", [(1, 37, 256), (3, 130, 384), (2, 9, 640)], ids=lambda v: str(v))
def test_dense_groups_gemv_matches_reference(m, n, k, bits, g, dtype):
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_dense_gemv

    w = quantize_rtn(torch.randn(n, k), bits=bits, group_size=g).to(DEVICE)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    y = gqsa_dense_gemv(x, w, bias, config=dict(BLOCK_N=8, BLOCK_W=16))  # 16-word steps: partial last steps
    assert_close(y.float(), gqsa_linear_reference(x.float(), w, bias.float()), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (4, 8), (4, 32), (8, 16), (2, 64)], ids=lambda v: str(v))
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("task, own_rows", [(8, False), (24, False), (8, True), (None, None)],
                         ids=["task8", "task24", "own8", "default"])
@pytest.mark.parametrize("m, n, k", [(1, 37, 256), (2, 130, 384)], ids=lambda v: str(v))
def test_task_gemv_matches_reference(m, n, k, bits, g, density, task, own_rows, dtype):
    """Task-centric GEMV: tasks of stored groups cross row boundaries (8 and 24 groups: many rows per task,
    rows split across tasks, partial steps), empty rows, full rows, sparsity 0 / 0.5 / 0.9 / all pruned. With
    ``own_rows`` programs own whole rows instead (rows longer than a task, programs with no rows)."""
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_gemv, task_gemv_config

    w = _weight(n, k, bits, g, density)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    config = None if task is None else {**task_gemv_config(w), "TASK": task, "BLOCK": 8, "OWN_ROWS": own_rows}
    y = gqsa_task_gemv(x, w, bias, config=config)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close(y.float(), gqsa_linear_reference(x.float(), w, bias.float()), dtype, name=f"task gemv {dtype}")


def test_task_gemv_uneven_rows():
    """One full row, many empty rows, single-group rows: the work split ignores row boundaries."""
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_gemv

    w = uneven_rows_gqsa().to(DEVICE)
    x = torch.randn(1, w.in_features, device=DEVICE)
    bias = torch.randn(w.out_features, device=DEVICE)  # rows 41-49 are empty: owned, they must still get their bias
    for own_rows in (False, True):
        for task, block in ((8, 8), (16, 4), (64, 16)):
            config = {"TASK": task, "BLOCK": block, "num_warps": 1, "OWN_ROWS": own_rows}
            y = gqsa_task_gemv(x, w, bias, config=config)
            assert_close(y, gqsa_linear_reference(x, w, bias), torch.float32,
                         name=f"uneven rows task {task} own {own_rows}")


def test_owned_rows_cover_every_row_once():
    """Row boundaries of the row-owning GEMV: start at 0, end at N, never decrease, and a program's rows start
    within its share of groups."""
    from sparseflow.kernels.gqsa.triton_kernels import owned_rows

    n, k, g = 50, 512, 16
    keep = torch.zeros(n, k // g, dtype=torch.bool)
    keep[3] = True
    keep[10:20, 5] = True
    w = quantize_rtn(torch.randn(n, k), bits=4, group_size=g, keep=keep).to(DEVICE)
    for task in (1, 8, 40, 1000):
        bounds = owned_rows(w, task).cpu()
        assert bounds[0] == 0 and bounds[-1] == n and bool((bounds[1:] >= bounds[:-1]).all())
        starts = w.row_ptr.cpu()[bounds[:-1].long()]
        owners = torch.arange(bounds.numel() - 1)
        has_rows = bounds[1:] > bounds[:-1]
        assert bool((starts[has_rows] >= owners[has_rows] * task).all())
        assert bool((starts[has_rows] < (owners[has_rows] + 1) * task).all())


def test_task_gemv_reads_a_prebuilt_task_table_and_refuses_a_foreign_one():
    """The table kernel_tables builds once is what the GEMV would build per call; one built for another TASK
    (or weight) is refused rather than read out of bounds."""
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_gemv, task_table

    w = _weight(37, 256, 4, 16, 0.5)
    x = torch.randn(1, 256, device=DEVICE)
    for own_rows in (False, True):
        config = {"TASK": 8, "BLOCK": 8, "num_warps": 1, "OWN_ROWS": own_rows}
        y = gqsa_task_gemv(x, w, config=config, rows=task_table(w, config))
        assert_close(y, gqsa_linear_reference(x, w), torch.float32, name="prebuilt task table")
        with pytest.raises(ValueError, match="another weight or config"):
            gqsa_task_gemv(x, w, config=config, rows=task_table(w, {**config, "TASK": 16}))


def test_kernel_tables_off_the_gpu_are_empty():
    from sparseflow.kernels.gqsa import kernel_tables

    assert kernel_tables(_weight(8, 64, 4, 16, 0.5).to("cpu")) == {}


def test_task_gemv_rejects_partial_words():
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_gemv

    w = _weight(8, 64, 2, 8, 1.0)
    with pytest.raises(ValueError, match="32-bit words"):
        gqsa_task_gemv(torch.randn(1, 64, device=DEVICE), w)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (2, 16), (8, 8), (4, 128)], ids=lambda v: str(v))
@pytest.mark.parametrize("density", [0.5, 0.1, 0.0])
@pytest.mark.parametrize("chunk", [8, 256])
def test_task_dequantize_matches_reference(bits, g, density, chunk, dtype):
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_dequantize

    w = _weight(37, 256, bits, g, density)
    out = gqsa_task_dequantize(w, dtype, chunk=chunk)
    assert out.dtype == dtype
    assert torch.equal(out.float(), dequantize_reference(w, dtype).float())


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("own_rows", [False, True], ids=["split", "own"])
@pytest.mark.parametrize("m, block_m", [(5, 4), (3, 2), (3, 4), (8, 4), (2, 1)])
def test_task_gemv_several_input_rows(m, block_m, own_rows, dtype):
    """One decoded weight word serves BLOCK_M input rows; M not a multiple of BLOCK_M masks the tail."""
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_gemv

    w = _weight(45, 256, 4, 16, 0.5)
    x = torch.randn(m, 256, device=DEVICE).to(dtype)
    config = {"TASK": 16, "BLOCK": 8, "num_warps": 1, "BLOCK_M": block_m, "OWN_ROWS": own_rows}
    y = gqsa_task_gemv(x, w, config=config)
    assert_close(y.float(), gqsa_linear_reference(x.float(), w), dtype, name=f"task gemv M={m}")


def test_task_gemv_rejects_unsupported_block_m():
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_gemv

    w = _weight(8, 64, 4, 16, 0.5)
    with pytest.raises(ValueError, match="BLOCK_M"):
        gqsa_task_gemv(torch.randn(8, 64, device=DEVICE), w, config={"TASK": 16, "BLOCK": 8, "BLOCK_M": 8})


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("bits, g", [(4, 16), (2, 16), (8, 8)], ids=lambda v: str(v))
def test_task_gemv_zero_points_off_the_grid(bits, g, dtype):
    """The decode subtracts 2**23 + z * 2**pos in one step: exact for |z| >= 1, within 2**-11 below. Zeros that
    E2E tuning moved anywhere in (-2**bits, 2**(bits+1)) (fractions, negatives, past the code range) must still
    match the reference to precision."""
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_task_gemv

    w = _weight(33, 256, bits, g, 0.6, seed=5)
    torch.manual_seed(6)
    span = 3 * 2**bits
    w.zero.copy_((torch.rand(w.zero.shape) * span - 2**bits).clamp(-(2**bits) + 0.01, 2 ** (bits + 1) - 0.01))
    x = torch.randn(2, 256, device=DEVICE).to(dtype)
    y = gqsa_task_gemv(x, w, config={"TASK": 24, "BLOCK": 8, "num_warps": 1})
    assert_close(y.float(), gqsa_linear_reference(x.float(), w), dtype, name="task gemv, tuned zeros")
