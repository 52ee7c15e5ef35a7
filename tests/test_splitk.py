"""The split-K workspace comes zeroed and ``splitk_finish`` leaves it zeroed (Triton interpreter on CPU; on the GPU
also a large 16-bit output, where a race once lost sums)."""

import pytest
import torch
from sparseflow.kernels.splitk import splitk_finish, splitk_workspace

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_finish_casts_adds_bias_and_zeroes_the_workspace(dtype, with_bias):
    m, n = 3, 37
    ws = splitk_workspace(torch.device(DEVICE), m * n)
    assert ws.numel() >= m * n and not ws.any()
    sums = torch.randn(m, n, device=DEVICE)
    ws[: m * n] += sums.reshape(-1)
    bias = torch.randn(n, device=DEVICE, dtype=dtype) if with_bias else None
    y = torch.full((m, n), 7.0, device=DEVICE, dtype=dtype)
    out = splitk_finish(ws, y, bias)
    assert out is y
    want = sums + (bias.float() if with_bias else 0)
    torch.testing.assert_close(y.float(), want.to(dtype).float())
    assert not ws.any()
    assert splitk_workspace(torch.device(DEVICE), m * n) is ws  # cached, already clean for the next call


def test_workspace_grows_and_keeps_the_outgrown_buffer_alive():
    from sparseflow.kernels import splitk

    small = splitk_workspace(torch.device(DEVICE), 1)
    big = splitk_workspace(torch.device(DEVICE), small.numel() + 1)
    assert big.numel() > small.numel() and not big.any()
    assert any(b is small for b in splitk._RETIRED)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="the race needs the GPU's thread layouts")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, n", [(64, 28672), (1, 2_000_000)])
def test_finish_reads_every_sum_of_a_large_16_bit_output(m, n, dtype):
    """Before the barrier in ``_finish_kernel`` the H200 returned 256-32,384 zeros in 1M-2M-element bf16 outputs:
    threads zeroed workspace sums other threads had not read yet. Repeated, since the race depends on timing."""
    for _ in range(3):
        ws = splitk_workspace(torch.device(DEVICE), m * n)
        sums = torch.randn(m * n, device=DEVICE)
        ws[: m * n] = sums
        y = splitk_finish(ws, torch.empty(m, n, device=DEVICE, dtype=dtype), None)
        assert torch.equal(y.flatten(), sums.to(dtype))
        assert not ws[: m * n].any()
