"""H200 probe of the interleaved-rows GQSA decode GEMV (``kernels/gqsa/interleaved.py``) against the row-owning
task GEMV it would replace, dense bf16 and torch int4, W4S50 g16, CUDA-graph replays over rotating copies.

Sweeps lanes per row and threads per program at M = 1 (and times the chosen config at M = 2 and 4), checks
every config against the dequantized reference, prints one line per case and writes JSON to ``--out``.

    python3 -m sparseflow.benchmarks.probe_interleaved [--out DIR]     (GPU only)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPES = [(28672, 8192), (8192, 28672), (4096, 14336), (14336, 4096), (4096, 4096), (6144, 4096), (28672, 4096)]


def main(argv: list[str] | None = None) -> None:
    import torch
    from sparseflow.kernels.gqsa import gqsa_linear, gqsa_linear_reference
    from sparseflow.kernels.gqsa.interleaved import interleave, interleaved_config, interleaved_gemv
    from sparseflow.kernels.testing import rel_error

    from .harness import environment, time_graph_ms
    from .peers import GraphPeers, gqsa_w4s50, rotating

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="NxK,NxK,...")
    p.add_argument("--lanes", default="4,8,16,32", help="lanes per row to sweep at M=1")
    p.add_argument("--threads", default="64", help="threads per program to sweep")
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--cg", default="1", help="weight loads through L2 only: 1, 0 or 0,1")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")]
    lanes = [int(v) for v in args.lanes.split(",")]
    threads = [int(v) for v in args.threads.split(",")]
    cgs = [bool(int(v)) for v in args.cg.split(",")]
    results = []
    for n, k in shapes:
        torch.manual_seed(0)
        dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        w, pool = gqsa_w4s50(dense)
        floor_us = w.storage_bytes() / 4.27e12 * 1e6
        peers = GraphPeers(dense)
        default = interleaved_config(w)
        for m in [int(v) for v in args.batches.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = gqsa_linear_reference(x.float(), w)
            peer_rows = peers.rows(f"{n}x{k} M={m}", x)
            dense_us, int4_us = (r.ms * 1e3 for r in peer_rows)
            old_us = time_graph_ms([lambda q=q, t=t: gqsa_linear(x, q, tables=t) for q, t in pool]) * 1e3
            configs = [(s, t) for s in lanes for t in threads if s <= t]
            variants = {1: [(None, 1)], 2: [(None, 1)], 4: [(None, 1), (2, 1)]}[m]
            for (s, t), (bm, pf), cg in [(c, v, cg) for c in configs for v in variants for cg in cgs]:
                if w.nnz_groups / n / s < 1:
                    continue
                il = interleave(w, s, t)
                err = rel_error(interleaved_gemv(x, w, il, block_m=bm, prefetch=pf, weight_cg=cg).float(), ref)
                copies = rotating(il, il.storage_bytes())
                us = time_graph_ms([lambda c=c: interleaved_gemv(x, w, c, block_m=bm, prefetch=pf, weight_cg=cg)
                                     for c in copies]) * 1e3
                row = dict(n=n, k=k, m=m, lanes=s, threads=t, block_m=bm or min(m, 4), prefetch=pf, weight_cg=cg, us=us,
                           task_us=old_us, dense_us=dense_us,
                           int4_us=int4_us, floor_us=floor_us, il_bytes=il.storage_bytes(),
                           csr_bytes=w.storage_bytes(), rel_err=err, default=(s, t) == (default["lanes_per_row"],
                                                                                          default["threads"]))
                results.append(row)
                print(f"{n}x{k} M={m} S={s:2d} T={t:3d} BM={row['block_m']} CG={int(cg)}: {us:6.1f} us  "
                      f"task {old_us:6.1f}  dense {dense_us:6.1f} "
                      f"({dense_us / us:.2f}x)  int4 {int4_us:6.1f} ({int4_us / us:.2f}x)  "
                      f"{floor_us / us:.0%} of floor  bytes x{il.storage_bytes() / w.storage_bytes():.3f}  "
                      f"err {err:.1e}{'  *default' if row['default'] else ''}", flush=True)
                del copies, il
            ref = None
        del pool, peers
        torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "probe_interleaved.json"
        path.write_text(json.dumps({"environment": environment(), "rows": results}, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
