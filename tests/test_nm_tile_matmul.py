"""The tensor-core N:M matmul (batches past the decode kernels) against the torch reference: 2:4, 1:4, 2:8, 4:16
and 3:8 (positions straddling bytes), every value format, odd shapes and several K splits."""

from __future__ import annotations

import pytest
import torch
from sparseflow.kernels.nm import from_dense, nm_linear_reference
from sparseflow.kernels.testing import assert_close

from sparseflow.compressors.baselines import nm_prune

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _weight(rows, k, n, m, values, group, seed=0):
    torch.manual_seed(seed)
    return from_dense(nm_prune(torch.randn(rows, k), n, m), n, m, values, group).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("values, group", [("fp16", 0), ("int8", 32), ("int4", 64)], ids=str)
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8), (3, 8), (4, 16)], ids=str)
@pytest.mark.parametrize("rows, k, batch", [(37, 384, 5), (70, 256, 33)], ids=str)
def test_tile_matmul_matches_reference(rows, k, batch, n, m, values, group, dtype):
    from sparseflow.kernels.nm.tile_matmul import nm_tile_matmul

    kept = k * n // m
    if group and kept % group:
        group = 8 if kept % 16 else 16  # 3:8 keeps 144 / 96 values per row
    w = _weight(rows, k, n, m, values, group)
    x = torch.randn(batch, k, device=DEVICE).to(dtype)
    bias = torch.randn(rows, device=DEVICE).to(dtype)
    y = nm_tile_matmul(x, w, bias)
    assert y.dtype == dtype and y.shape == (batch, rows)
    assert_close(y.float(), nm_linear_reference(x.float(), w, bias.float()), dtype, name=f"nm tile {dtype}")


@pytest.mark.parametrize("split", [1, 4])
def test_tile_matmul_k_splits_and_small_tiles_agree(split):
    from sparseflow.kernels.nm.tile_matmul import nm_tile_matmul

    w = _weight(48, 1024, 2, 4, "int4", 128)
    x = torch.randn(20, 1024, device=DEVICE).to(torch.float16)
    y = nm_tile_matmul(x, w, config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_B=8, SPLIT=split, num_warps=4))
    assert_close(y.float(), nm_linear_reference(x.float(), w), torch.float16, name="nm tile split")


def test_tile_matmul_refuses_steps_too_short_for_the_tensor_cores():
    from sparseflow.kernels.nm.tile_matmul import nm_tile_matmul

    w = _weight(16, 256, 2, 4, "fp16", 0)
    with pytest.raises(ValueError, match="at least 16 inputs"):
        nm_tile_matmul(torch.randn(16, 256, device=DEVICE).half(), w,
                       config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_B=2, SPLIT=1))


@pytest.mark.skipif(DEVICE != "cuda", reason="nm_linear dispatches to Triton on CUDA only")
@pytest.mark.parametrize("batch", [5, 9, 32, 33, 129, 300])
def test_nm_linear_dispatch_matches_reference(batch):
    from sparseflow.kernels.nm import kernel_tables, nm_linear

    w = _weight(256, 1024, 2, 4, "int4", 128)
    x = torch.randn(batch, 1024, device=DEVICE, dtype=torch.bfloat16)
    y = nm_linear(x, w, tables=kernel_tables(w))
    assert_close(y.float(), nm_linear_reference(x.float(), w), torch.bfloat16, name=f"nm_linear M={batch}")
