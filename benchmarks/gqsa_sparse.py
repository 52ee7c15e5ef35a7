"""GQSA with pruned groups (W4, 50% of g16 groups pruned) against dense bf16 and torch's int4 tinygemm.

The issue's shapes and batches, every implementation timed as CUDA-graph replays (as vLLM decodes; host
launch cost stays out). At M=1 the interleaved decode GEMV is also timed per lanes-per-row (the sweep behind
``interleaved_config``), next to the task-centric GEMV it replaced, and so is a plain stream read of the format's bytes
(``stream_read``): what any kernel that must read them can reach in this harness. Weights rotate through copies so
each call reads HBM. "% of floor" counts the format's bytes; the decode copy the M <= 4 kernel reads is 1-7%
larger (``decode_copy_bytes``).
"""

from __future__ import annotations

import functools

from .harness import Row, over_shapes, register, time_graph_ms
from .peers import GraphPeers, batch_inputs, gqsa_w4s50
from .stream_read import read_ceiling_us

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
BATCHES = [1, 4, 16, 64, 256, 2048]
# lanes per row of the interleaved decode GEMV at M=1 (64 threads a program); the default is interleaved_config's
SWEEP = [4, 8, 16, 32]


def _bench_shape(n: int, k: int, batches: list[int], sweep: list[int]) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import gqsa_linear, gqsa_linear_reference
    from sparseflow.kernels.gqsa.interleaved import InterleavedRows, interleave, interleaved_config, interleaved_gemv
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_dequantize, gqsa_task_gemv, task_gemv_config, task_table
    from sparseflow.kernels.testing import rel_error

    dev = torch.device("cuda")
    dense = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    peers = GraphPeers(dense)
    w, pool = gqsa_w4s50(dense)
    rows: list[Row] = []
    for m in batches:
        case, x, io, flops = batch_inputs(n, k, m, dev)
        rows += peers.rows(case, x)
        err = rel_error(gqsa_linear(x, w, tables=pool[0][1]), gqsa_linear_reference(x, w))
        il_bytes = InterleavedRows.from_tables(pool[0][1]).storage_bytes()
        extra = {"rel_err_vs_reference": err, "bits_per_weight": w.bits_per_weight(), "density": w.density(),
                 "interleaved_config": interleaved_config(w), "decode_copy_bytes": il_bytes,
                 "format_bytes": w.storage_bytes()}
        floor_bytes = w.storage_bytes() + io
        ms = time_graph_ms([lambda x=x, p=p, t=t: gqsa_linear(x, p, tables=t) for p, t in pool])
        rows.append(Row(case, "gqsa w4s50g16", ms, floor_bytes, flops, note=f"err {err:.1e}", extra=extra))
        if m == 1:
            # the decode GEMV before the interleaved copy (tables built outside the timed graph, as after loading)
            cfg = task_gemv_config(w)
            calls = [functools.partial(gqsa_task_gemv, x, p, config=cfg, rows=task_table(p, cfg)) for p, _ in pool]
            rows.append(Row(case, "task gemv (previous)", time_graph_ms(calls), floor_bytes, flops, extra=cfg))
            ceiling_us, block = read_ceiling_us(w.storage_bytes())
            rows.append(Row(case, "stream read (ceiling)", ceiling_us * 1e-3, floor_bytes, flops,
                            note="reads the format's bytes, computes nothing", extra={"block": block}))
            for lanes in sweep:
                copies = [(p, interleave(p, lanes, 64)) for p, _ in pool]
                ms = time_graph_ms([functools.partial(interleaved_gemv, x, p, il) for p, il in copies])
                rows.append(Row(case, f"interleaved s{lanes}", ms, floor_bytes, flops,
                                extra={"lanes_per_row": lanes, "threads": 64}))
                del copies
        if m >= 16:
            ms = time_graph_ms([lambda x=x, p=p: F.linear(x, gqsa_dequantize(p, x.dtype)) for p, _ in pool[:4]])
            rows.append(Row(case, "gqsa deq+mm", ms, floor_bytes, flops))
    return rows


@register("gqsa_sparse")
def run(quick: bool = False) -> list[Row]:
    """The GQSA issue's benchmark: W4S50 g16 vs dense bf16 and torch int4, shapes x M."""
    batches = [1, 16] if quick else BATCHES
    return over_shapes("gqsa_sparse", SHAPES[:2] if quick else SHAPES,
                       lambda n, k: _bench_shape(n, k, batches, SWEEP[:2] if quick else SWEEP))
