"""The tile-matmul benchmark is registered and its config sweep varies one knob at a time around the default (the
benchmark itself needs the GPU)."""

from sparseflow.benchmarks.harness import available
from sparseflow.benchmarks.tile_matmul import _configs


def test_tile_matmul_benchmark_is_registered_with_a_one_knob_sweep():
    assert "tile_matmul" in available()
    default = dict(BLOCK_M=32, BLOCK_N=64, SPLIT=4, num_warps=4, num_stages=2)
    sweep = _configs(default)
    assert [label for label, _ in sweep] == ["BLOCK_N=32 SPLIT=4 num_warps=4", "BLOCK_N=128 SPLIT=4 num_warps=4",
                                             "BLOCK_N=64 SPLIT=8 num_warps=4", "BLOCK_N=64 SPLIT=2 num_warps=4",
                                             "BLOCK_N=64 SPLIT=4 num_warps=8"]
    assert all(sum(cfg[k] != default[k] for k in default) == 1 for _, cfg in sweep)
