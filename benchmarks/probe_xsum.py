"""H200 probe: does taking the zero-point offset off once per group (``x_group_sums``, one small launch before the
GEMV) beat subtracting it from every code? W4S50 g16, M = 1-4, CUDA-graph replays over rotating copies.

Per shape it times, in one process: the interleaved GEMV as dispatched today; the same with ``x_group_sums``
(its launch timed in, and alone); the same reading x converted to float32 by that launch (no per-value
conversion in the GEMV, twice the x bytes through L1); and the stream-read ceiling of the copy's bytes
(``stream_read``). Every variant is checked against the reference.

    python3 -m sparseflow.benchmarks.probe_xsum [--out DIR] [--shapes NxK,...] [--batches 1,4]   (GPU only)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPES = [(28672, 8192), (8192, 28672), (4096, 14336), (14336, 4096), (4096, 4096), (6144, 4096), (28672, 4096)]


def main(argv: list[str] | None = None) -> None:
    import torch
    from sparseflow.kernels.gqsa import gqsa_linear_reference
    from sparseflow.kernels.gqsa.interleaved import interleave, interleaved_config, interleaved_gemv, x_group_sums
    from sparseflow.kernels.testing import rel_error

    from .harness import environment, time_graph_ms
    from .peers import GraphPeers, gqsa_w4s50, rotating
    from .stream_read import read_ceiling_us

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="NxK,NxK,...")
    p.add_argument("--batches", default="1,4")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")]
    results = []
    for n, k in shapes:
        torch.manual_seed(0)
        dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        w, pool = gqsa_w4s50(dense)
        del pool
        floor_us = w.storage_bytes() / 4.27e12 * 1e6
        peers = GraphPeers(dense)
        il = interleave(w, **interleaved_config(w))
        copies = rotating(il, il.storage_bytes())
        ceiling_us, ceiling_block = read_ceiling_us(il.storage_bytes())
        for m in [int(v) for v in args.batches.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = gqsa_linear_reference(x.float(), w)
            dense_us, int4_us = (r.ms * 1e3 for r in peers.rows(f"{n}x{k} M={m}", x))
            xs, xf = x_group_sums(x, 16, write_f32=True)

            def with_sums(c, f32):
                s, xf32 = x_group_sums(x, 16, write_f32=f32)
                return interleaved_gemv(xf32 if f32 else x, w, c, xsum=s, out_dtype=x.dtype)

            variants = {
                "base": lambda c: interleaved_gemv(x, w, c),
                "xsum": lambda c: with_sums(c, False),
                "xsum gemv only": lambda c: interleaved_gemv(x, w, c, xsum=xs),
                "xsum f32": lambda c: with_sums(c, True),
                "xsum f32 gemv only": lambda c: interleaved_gemv(xf, w, c, xsum=xs, out_dtype=x.dtype),
            }
            row = dict(n=n, k=k, m=m, dense_us=dense_us, int4_us=int4_us, floor_us=floor_us,
                       read_ceiling_us=ceiling_us, read_ceiling_block=ceiling_block,
                       il_bytes=il.storage_bytes(), csr_bytes=w.storage_bytes(),
                       prepass_us=time_graph_ms([lambda: x_group_sums(x, 16)] * 8) * 1e3)
            for name, fn in variants.items():
                err = rel_error(fn(il).float(), ref)
                us = time_graph_ms([lambda c=c, fn=fn: fn(c) for c in copies]) * 1e3
                row[name] = dict(us=us, err=err)
            results.append(row)
            print(f"{n}x{k} M={m}: dense {dense_us:6.1f} int4 {int4_us:6.1f} floor {floor_us:5.1f} "
                  f"read-ceiling {ceiling_us:5.1f} ({floor_us / ceiling_us:.0%})  prepass {row['prepass_us']:4.1f} | "
                  + " | ".join(f"{name} {row[name]['us']:6.1f} ({dense_us / row[name]['us']:.2f}x dense, "
                               f"{int4_us / row[name]['us']:.2f}x int4, {floor_us / row[name]['us']:.0%} floor, "
                               f"err {row[name]['err']:.0e})" for name in variants), flush=True)
        del copies, il, peers
        torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "probe_xsum.json"
        path.write_text(json.dumps({"environment": environment(), "rows": results}, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
