"""What the CUDA-graph-timed benchmarks share: weight pools that rotate through HBM, the per-batch inputs and
their byte / FLOP counts, the GQSA W4S50 weight both sparse benchmarks time, and the peers every linear method
is compared with (dense bf16 ``F.linear`` and torch's int4 tinygemm)."""

from __future__ import annotations

from typing import Any

from .gqsa_linear import _copies, _tinygemm
from .harness import Row, time_graph_ms


def rotating(weight: Any, nbytes: int) -> list:
    """``weight`` and enough clones of it (``nbytes`` each) that a pass over them reads HBM, not L2."""
    return [weight] + [weight.clone() for _ in range(_copies(nbytes) - 1)]


def io_and_flops(n: int, k: int, m: int) -> tuple[int, float]:
    """Activation bytes (bf16 x in, y out) and FLOPs of ``x [m, k] @ W.T`` for ``W [n, k]``."""
    return 2 * m * k + 2 * m * n, 2.0 * m * n * k


def batch_inputs(n: int, k: int, m: int, device) -> tuple[str, Any, int, float]:
    """One batch of a shape sweep: its case label, a random bf16 ``x [m, k]``, and ``io_and_flops``."""
    import torch

    io, flops = io_and_flops(n, k, m)
    return f"N={n} K={k} M={m}", torch.randn(m, k, device=device, dtype=torch.bfloat16), io, flops


def gqsa_w4s50(dense) -> tuple[Any, list]:
    """GQSA W4 g16 with a random half of the groups pruned, from ``dense [N, K]``, and its rotating pool of
    ``(weight, kernel_tables(weight))`` pairs."""
    import torch
    from sparseflow.kernels.gqsa import kernel_tables, quantize_rtn

    n, k = dense.shape
    keep = torch.rand(n, k // 16, device=dense.device) >= 0.5
    w = quantize_rtn(dense, bits=4, group_size=16, keep=keep)
    return w, [(p, kernel_tables(p)) for p in rotating(w, w.storage_bytes())]


class GraphPeers:
    """Dense bf16 and torch int4 g128 (tinygemm) for one bf16 weight ``[N, K]``, timed as CUDA-graph replays."""

    def __init__(self, dense) -> None:
        self.n, self.k = dense.shape
        self.dense_pool = rotating(dense, 2 * self.n * self.k)
        packed, scales_zeros = _tinygemm(dense)
        self.tg_pool = [(packed.clone(), scales_zeros.clone()) for _ in range(_copies(self.n * self.k // 2))]

    def rows(self, case: str, x) -> list[Row]:
        import torch
        import torch.nn.functional as F

        n, k, m = self.n, self.k, x.shape[0]
        io, flops = io_and_flops(n, k, m)
        dense_ms = time_graph_ms([lambda d=d: F.linear(x, d) for d in self.dense_pool])
        int4_ms = time_graph_ms([lambda p=p, sz=sz: torch.ops.aten._weight_int4pack_mm(x, p, 128, sz)
                                 for p, sz in self.tg_pool])
        return [Row(case, "dense bf16", dense_ms, 2 * n * k + io, flops),
                Row(case, "torch int4 g128", int4_ms, n * k // 2 + (k // 128) * n * 4 + io, flops)]
