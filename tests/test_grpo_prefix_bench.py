"""The GRPO prefix benchmark runs end to end (CPU, tiny model) and its two paths agree; speed matters only on the
H200."""

import pytest

pytest.importorskip("trl")


def test_grpo_prefix_benchmark_times_stock_and_grouped_and_they_agree():
    from sparseflow.benchmarks.harness import get

    rows = get("grpo_prefix")(quick=True)
    assert [r.impl for r in rows] == ["stock GRPO (sdpa)", "prefix grouper (torch)"] * 2
    assert all(r.ms > 0 for r in rows)
    assert all(r.extra["max_logprob_diff"] < 1e-4 for r in rows)
    stock, grouped = rows[2].extra["tokens"], rows[3].extra["tokens"]
    assert (stock, grouped) == (4 * (64 + 16), 63 + 4 * 16)
