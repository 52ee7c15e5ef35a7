"""GQSA with pruned groups (W4, 50% of g16 groups pruned) against dense bf16 and torch's int4 tinygemm.

The issue's shapes and batches, every implementation timed as CUDA-graph replays (as vLLM decodes; host
launch cost stays out). At M=1 the task-centric GEMV is also timed per configuration (the sweep behind
``task_gemv_config``). Weights rotate through copies so each call reads HBM.
"""

from __future__ import annotations

import functools
import itertools

from .harness import Row, over_shapes, register, time_graph_ms
from .peers import GraphPeers, batch_inputs, gqsa_w4s50

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
BATCHES = [1, 4, 16, 64, 256, 2048]
# (TASK, BLOCK, num_warps) of the task GEMV, next to the default (task_gemv_config). The last three go below 256
# groups, the default's floor until 2b06868: on 4096x4096 (ab0794d) time still fell with the task size (1024:
# 19.6 us, 512: 13.4, 256: 10.9; torch int4 6.8), and 128-group owned rows are now the default there
SWEEP = [(512, 64, 2), (1024, 64, 2), (256, 64, 2), (1024, 32, 1), (512, 32, 1), (1024, 128, 4),
         (128, 64, 2), (128, 128, 4), (64, 64, 2)]
# Each also with OWN_ROWS (programs own whole rows and store them: no atomics, no finishing launch)


def _bench_shape(n: int, k: int, batches: list[int], sweep: list[tuple[int, int, int]]) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import gqsa_linear, gqsa_linear_reference
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
        extra = {"rel_err_vs_reference": err, "bits_per_weight": w.bits_per_weight(), "density": w.density(),
                 "task_gemv_config": task_gemv_config(w)}
        floor_bytes = w.storage_bytes() + io
        ms = time_graph_ms([lambda x=x, p=p, t=t: gqsa_linear(x, p, tables=t) for p, t in pool])
        rows.append(Row(case, "gqsa w4s50g16", ms, floor_bytes, flops, note=f"err {err:.1e}", extra=extra))
        if m == 1:
            for (task, block, warps), own in itertools.product(sweep, (False, True)):
                cfg = {"TASK": task, "BLOCK": block, "num_warps": warps, "OWN_ROWS": own}
                # tables built outside the timed graph, as kernel_tables does after loading
                calls = [functools.partial(gqsa_task_gemv, x, p, config=cfg, rows=task_table(p, cfg)) for p, _ in pool]
                ms = time_graph_ms(calls)
                name = f"{'own' if own else 'task'} t{task} b{block} w{warps}"
                rows.append(Row(case, name, ms, floor_bytes, flops, extra=cfg))
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
