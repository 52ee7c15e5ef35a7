"""The N:M format: round trips, packing, shard arithmetic and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from sparseflow.kernels.nm import NMCheckpointConfig, NMWeight, expand_reference, from_dense, parse_pattern
from sparseflow.kernels.testing import assert_close

from sparseflow.compressors.baselines import nm_prune

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 8), (3, 16)]


def _sparse(n_rows, k, n, m, seed=0):
    torch.manual_seed(seed)
    return nm_prune(torch.randn(n_rows, k), n, m)


@pytest.mark.parametrize("n, m", PATTERNS, ids=lambda v: str(v))
@pytest.mark.parametrize("values", ["bf16", "fp16"])
def test_float_values_round_trip_exactly(n, m, values):
    w_dense = _sparse(9, 4 * m, n, m)
    w = from_dense(w_dense, n, m, values).validate()
    dtype = torch.bfloat16 if values == "bf16" else torch.float16
    assert torch.equal(expand_reference(w, torch.float32), w_dense.to(dtype).float())
    assert w.values.shape == (9, 4 * n)
    assert w.indices.dtype == torch.uint8


@pytest.mark.parametrize("values, group, tol", [("int8", 8, 1e-2), ("int4", 16, 0.12)])
def test_int_values_quantize_within_their_precision(values, group, tol):
    w_dense = _sparse(17, 128, 2, 4)
    w = from_dense(w_dense, 2, 4, values, group).validate()
    back = expand_reference(w)
    assert torch.all(back[w_dense == 0] == 0)  # pruned entries stay pruned
    assert_close(back, w_dense, rel_tol=tol, name=f"{values} round trip")  # RTN error of that width


def test_explicit_scales_keep_values_on_their_grid():
    """GPTQ hands its scales over: values already on that grid must come back bit for bit."""
    torch.manual_seed(1)
    kept = torch.randint(-7, 8, (4, 32)).float()
    scales = torch.rand(4, 2) + 0.5
    values = kept * scales.to(torch.float16).float().repeat_interleave(16, 1)
    dense = torch.zeros(4, 64)
    dense[:, 0::2] = values  # 2:4 with positions 0 and 2
    w = from_dense(dense, 2, 4, "int4", 16, scales=scales)
    assert torch.equal(expand_reference(w), dense)


def test_blocks_with_fewer_nonzeros_are_padded_with_zeros():
    dense = torch.zeros(2, 8)
    dense[0, 3] = 1.5  # one non-zero in the first block, none in the second
    w = from_dense(dense, 2, 4, "fp16")
    assert torch.equal(expand_reference(w), dense)
    assert w.positions().tolist()[0][:2] == [0, 3]


@pytest.mark.parametrize("values, group", [("bf16", 0), ("int8", 8), ("int4", 16)])
def test_shard_arithmetic(values, group):
    w_dense = _sparse(12, 256, 2, 4, seed=3)
    w = from_dense(w_dense, 2, 4, values, group)
    full = expand_reference(w)
    assert torch.equal(expand_reference(w.slice_rows(3, 9)), full[3:9])
    assert torch.equal(expand_reference(w.slice_inputs(64, 192).validate()), full[:, 64:192])
    both = NMWeight.concat_rows([w.slice_rows(0, 5), w.slice_rows(5, 12)])
    assert torch.equal(expand_reference(both), full)


def test_pattern_errors():
    with pytest.raises(ValueError, match="does not divide"):
        from_dense(torch.zeros(2, 10), 2, 4)
    with pytest.raises(ValueError, match="0 < N < M"):
        from_dense(torch.zeros(2, 8), 4, 4)
    with pytest.raises(ValueError, match="M must be one of"):
        parse_pattern("2:6")
    with pytest.raises(ValueError, match="form 'N:M'"):
        parse_pattern("2-4")
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        from_dense(torch.ones(2, 8), 2, 4)
    with pytest.raises(ValueError, match="multiple of group_size"):
        from_dense(_sparse(2, 48, 2, 4), 2, 4, "int4", 16)
    with pytest.raises(ValueError, match="not supported"):
        from_dense(_sparse(2, 16, 2, 4), 2, 4, "int3", 8)


def test_corrupt_metadata_is_caught():
    w = from_dense(_sparse(4, 64, 2, 4), 2, 4, "bf16")
    bad = w.clone()
    bad.indices[0, 0] = 0b0000  # both positions of the first block 0: not ascending
    with pytest.raises(ValueError, match="ascending"):
        bad.validate()
    short = w.clone()
    short.indices = short.indices[:, :-1]
    with pytest.raises(ValueError, match="shape"):
        short.validate()
    wrong = w.clone()
    wrong.values = wrong.values.float()
    with pytest.raises(ValueError, match="dtype"):
        wrong.validate()
    with pytest.raises(ValueError, match="missing tensors"):
        NMWeight.from_tensors({"x.values": w.values}, prefix="x.", in_features=64, n=2, m=4, value_format="bf16")


def test_checkpoint_config_round_trip_and_errors():
    cfg = NMCheckpointConfig(n=2, m=4, value_format="int4", group_size=128, ignore=("lm_head",))
    assert NMCheckpointConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.is_quantized("model.layers.0.mlp.up_proj") and not cfg.is_quantized("lm_head")
    with pytest.raises(ValueError, match="unknown N:M"):
        NMCheckpointConfig.from_dict({**cfg.to_dict(), "sparsity": 0.5})
    with pytest.raises(ValueError, match="format_version"):
        NMCheckpointConfig.from_dict({**cfg.to_dict(), "format_version": 9})
    with pytest.raises(ValueError, match="carry no scales"):
        NMCheckpointConfig(value_format="bf16", group_size=128)


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("values, group", [("bf16", 0), ("int4", 16)])
def test_tensor_parallel_ranks_cover_the_weight(tp, values, group):
    """Column-parallel ranks take row slices, row-parallel ranks input slices; together they are the weight."""
    w = from_dense(_sparse(16, 512, 2, 4, seed=4), 2, 4, values, group)
    dense = expand_reference(w)
    rows, cols = 16 // tp, 512 // tp
    for rank in range(tp):
        col_part = w.slice_rows(rank * rows, (rank + 1) * rows).validate()
        assert torch.equal(expand_reference(col_part), dense[rank * rows:(rank + 1) * rows])
        row_part = w.slice_inputs(rank * cols, (rank + 1) * cols).validate()
        assert torch.equal(expand_reference(row_part), dense[:, rank * cols:(rank + 1) * cols])


def test_merged_qkv_and_bad_cuts():
    q, k, v = (from_dense(_sparse(r, 64, 2, 4, seed=s), 2, 4, "bf16") for r, s in ((8, 1), (4, 2), (4, 3)))
    merged = NMWeight.concat_rows([q, k, v]).validate()
    assert torch.equal(expand_reference(merged), torch.cat([expand_reference(x) for x in (q, k, v)]))
    with pytest.raises(ValueError, match="differ"):
        NMWeight.concat_rows([q, from_dense(_sparse(4, 64, 1, 4), 1, 4, "bf16")])
    with pytest.raises(ValueError, match="multiples of 4"):
        q.slice_inputs(0, 30)
    int4 = from_dense(_sparse(4, 256, 2, 4), 2, 4, "int4", 32)
    with pytest.raises(ValueError, match="multiples of 64"):  # a scale group of 32 kept values spans 64 inputs
        int4.slice_inputs(0, 96)
