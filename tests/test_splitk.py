"""The split-K workspace comes zeroed and ``splitk_finish`` leaves it zeroed (Triton interpreter on CPU)."""

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
