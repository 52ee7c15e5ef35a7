"""The tile-matmul benchmark is registered and its config sweep moves one or two knobs around the default (the
benchmark itself needs the GPU)."""

from sparseflow.benchmarks.harness import available
from sparseflow.benchmarks.tile_matmul import _configs


def test_tile_matmul_benchmark_is_registered_with_a_small_sweep_around_the_default():
    assert "tile_matmul" in available()
    default = dict(BLOCK_M=32, BLOCK_N=64, SPLIT=4, num_warps=4, num_stages=2)
    sweep = _configs(default)
    assert [label for label, _ in sweep] == [
        "BLOCK_N=128 SPLIT=4 num_warps=4", "BLOCK_N=64 SPLIT=8 num_warps=4", "BLOCK_N=64 SPLIT=16 num_warps=4",
        "BLOCK_N=64 SPLIT=2 num_warps=4", "BLOCK_N=64 SPLIT=4 num_warps=8", "BLOCK_N=128 SPLIT=4 num_warps=8",
        "BLOCK_N=128 SPLIT=8 num_warps=4"]
    assert all(1 <= sum(cfg[k] != default[k] for k in default) <= 2 for _, cfg in sweep)
    assert all(cfg["BLOCK_M"] == default["BLOCK_M"] for _, cfg in sweep)
