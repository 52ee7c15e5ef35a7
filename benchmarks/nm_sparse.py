"""N:M sparse linear (2:4 bf16 and 2:4 + int4) against dense bf16, torch's semi-structured 2:4 (cuSPARSELt /
CUTLASS) and int4 tinygemm, with GQSA W4S50 g16 beside them: the GQSA issue's shapes and batches, CUDA-graph
timed, weights rotating through copies so each call reads HBM."""

from __future__ import annotations

from .gqsa_linear import _copies
from .harness import Row, over_shapes, register, time_graph_ms
from .peers import GraphPeers, batch_inputs, gqsa_w4s50, rotating

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
BATCHES = [1, 4, 16, 64, 256, 2048]
# (BLOCK_R, BLOCK_U, num_warps) of the 2:4 GEMV, timed at M=1 next to the default
SWEEP_24 = [(4, 64, 4), (2, 64, 4), (8, 32, 4), (4, 32, 2), (8, 64, 8), (16, 32, 8)]


def _bench_shape(n: int, k: int, batches: list[int]) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import gqsa_linear
    from sparseflow.kernels.nm import from_dense, kernel_tables, nm_linear, nm_linear_reference
    from sparseflow.kernels.testing import rel_error

    from sparseflow.compressors.baselines import nm_prune

    dev = torch.device("cuda")
    dense = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    peers = GraphPeers(dense)
    pruned = nm_prune(dense.float(), 2, 4).to(torch.bfloat16)
    formats = {"nm 2:4 bf16": from_dense(pruned, 2, 4, "bf16"),
               "nm 2:4 int4 g128": from_dense(pruned, 2, 4, "int4", 128)}
    # (weight, kernel_tables) pairs; int4 2:4 tables: the copy packed for the sparse tensor cores
    pools = {name: [(p, kernel_tables(p)) for p in rotating(w, w.storage_bytes())] for name, w in formats.items()}
    try:
        from torch.sparse import to_sparse_semi_structured

        semi = [to_sparse_semi_structured(pruned.clone()) for _ in range(_copies(n * k + n * k // 8))]
        semi_note = ""
    except Exception as err:  # the backend refuses some shapes / builds
        semi, semi_note = None, f"unavailable: {str(err).splitlines()[0][:60]}"
    gq, gq_pool = gqsa_w4s50(dense)
    rows: list[Row] = []
    for m in batches:
        case, x, io, flops = batch_inputs(n, k, m, dev)
        rows += peers.rows(case, x)
        if semi is not None:
            try:
                ms = time_graph_ms([lambda s=s: F.linear(x, s) for s in semi])
                rows.append(Row(case, "torch semi-structured 2:4", ms, n * k + n * k // 8 + io, flops))
            except Exception as err:
                rows.append(Row(case, "torch semi-structured 2:4", None, 0, flops,
                                note=f"unavailable: {str(err).splitlines()[0][:60]}"))
        else:
            rows.append(Row(case, "torch semi-structured 2:4", None, 0, flops, note=semi_note))
        for name, pool in pools.items():
            w, tables = pool[0]
            err = rel_error(nm_linear(x, w, tables=tables).float(), nm_linear_reference(x.float(), w))
            ms = time_graph_ms([lambda p=p, t=t: nm_linear(x, p, tables=t) for p, t in pool])
            rows.append(Row(case, name, ms, w.storage_bytes() + io, flops, note=f"err {err:.1e}",
                            extra={"rel_err_vs_reference": err, "bits_per_weight": w.bits_per_weight()}))
            if m == 1 and name == "nm 2:4 bf16":
                from sparseflow.kernels.nm.triton_kernels import nm24_gemv

                for block_r, block_u, warps in SWEEP_24:
                    cfg = {"BLOCK_R": block_r, "BLOCK_U": block_u, "num_warps": warps}
                    ms = time_graph_ms([lambda p=p, cfg=cfg: nm24_gemv(x, p, config=cfg) for p, _ in pool])
                    rows.append(Row(case, f"{name} r{block_r} u{block_u} w{warps}", ms, w.storage_bytes() + io,
                                    flops, extra=cfg))
        ms = time_graph_ms([lambda p=p, t=t: gqsa_linear(x, p, tables=t) for p, t in gq_pool])
        rows.append(Row(case, "gqsa w4s50g16", ms, gq.storage_bytes() + io, flops))
    return rows


@register("nm_sparse")
def run(quick: bool = False) -> list[Row]:
    """The N:M issue's benchmark: 2:4 bf16 and 2:4+int4 vs dense, torch 2:4 and int4, GQSA beside them."""
    batches = [1, 16] if quick else BATCHES
    return over_shapes("nm_sparse", SHAPES[:2] if quick else SHAPES, lambda n, k: _bench_shape(n, k, batches))
