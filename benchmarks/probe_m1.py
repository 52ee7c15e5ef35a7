"""Quick H200 probe of the M=1 decode GEMVs (the numbers the N:M and GQSA notes quote between full benchmark runs):
2:4 int4 from its packed copy at several split-K widths, GQSA W4S50 g16, dense bf16, as CUDA-graph replays over
rotating weight copies.

    python3 -m sparseflow.benchmarks.probe_m1          (GPU only; prints one line per measurement)
"""

from __future__ import annotations

SHAPES = [(28672, 8192), (8192, 28672), (4096, 14336)]
WIDTHS = [(4, 8192), (4, 16384), (4, 32768), (8, 32768)]  # (warps per program, warps in flight)


def main() -> None:
    import torch
    from sparseflow.kernels.gqsa import gqsa_linear
    from sparseflow.kernels.nm import from_dense, kernel_tables, nm_linear_reference
    from sparseflow.kernels.nm.sparse_mma import nm24_sp_packed_gemv
    from sparseflow.kernels.testing import rel_error

    from sparseflow.compressors.baselines import nm_prune

    from .harness import time_graph_ms
    from .peers import gqsa_w4s50, rotating

    for n, k in SHAPES:
        dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        dense_ms = time_graph_ms([lambda d=d: torch.nn.functional.linear(x, d) for d in rotating(dense, 2 * n * k)])
        w = from_dense(nm_prune(dense.float(), 2, 4).to(torch.bfloat16), 2, 4, "int4", 128)
        pool = [(p, kernel_tables(p)) for p in rotating(w, w.storage_bytes())]
        floor = w.storage_bytes() / 4.27e12 * 1e3
        ref = nm_linear_reference(x.float(), w)
        for warps, total in WIDTHS:
            err = rel_error(nm24_sp_packed_gemv(x, w, pool[0][1], num_warps=warps, warps_total=total).float(), ref)
            ms = time_graph_ms([lambda p=p, t=t: nm24_sp_packed_gemv(x, p, t, num_warps=warps, warps_total=total)
                                for p, t in pool])
            print(f"2:4 int4 {n}x{k} M=1 w{warps} total {total}: {ms:.4f} ms, {100 * floor / ms:.0f}% of floor, "
                  f"{dense_ms / ms:.2f}x dense ({dense_ms:.4f}), rel err {err:.1e}", flush=True)
        del pool
        gw, gpool = gqsa_w4s50(dense)
        floor = gw.storage_bytes() / 4.27e12 * 1e3
        # the decode gqsa_linear dispatches to (the interleaved copy from kernel_tables)
        ms = time_graph_ms([lambda p=p, t=t: gqsa_linear(x, p, tables=t) for p, t in gpool])
        print(f"GQSA W4S50 g16 {n}x{k} M=1: {ms:.4f} ms, {100 * floor / ms:.0f}% of floor, {dense_ms / ms:.2f}x dense",
              flush=True)
        del gpool
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
