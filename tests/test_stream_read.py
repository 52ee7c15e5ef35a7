"""The benchmarks' read ceiling (``benchmarks/stream_read.py``) really reads every word (Triton interpreter on CPU)."""

import functools

import pytest
import torch
from sparseflow.benchmarks.stream_read import stream_read

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n", [1, 4096, 5000])
def test_one_xor_per_block_of_every_word(n):
    buf = torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, device=DEVICE)
    out = stream_read(buf, block=1024, num_warps=4)
    padded = torch.zeros(out.numel() * 1024, dtype=torch.int32, device=DEVICE)
    padded[:n] = buf
    want = [functools.reduce(lambda a, b: a ^ b, chunk.tolist()) for chunk in padded.reshape(-1, 1024)]
    assert out.tolist() == want


def test_refuses_other_dtypes():
    with pytest.raises(ValueError, match="int32"):
        stream_read(torch.zeros(8, dtype=torch.int64, device=DEVICE))
