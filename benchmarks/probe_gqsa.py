"""Quick H200 probe of GQSA W4S50 g16 through ``gqsa_linear`` (the dispatch vLLM runs) on Llama-3-8B's four linear
shapes and the issue's two largest, at the decode batches a serving step sees (M = 1, 8, 32), next to dense bf16;
CUDA-graph replays over rotating weight copies. The README's "where a b1 step goes" quotes its M=1 lines.

    python3 -m sparseflow.benchmarks.probe_gqsa          (GPU only; prints one line per shape and batch)
"""

from __future__ import annotations

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
BATCHES = [1, 8, 32]


def main() -> None:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import gqsa_linear
    from sparseflow.kernels.gqsa.interleaved import interleaved_config

    from .harness import time_graph_ms
    from .peers import gqsa_w4s50, rotating

    for n, k in SHAPES:
        dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        dense_pool = rotating(dense, 2 * n * k)
        w, pool = gqsa_w4s50(dense)
        floor_us = w.storage_bytes() / 4.27e12 * 1e6
        for m in BATCHES:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ours = time_graph_ms([lambda p=p, t=t: gqsa_linear(x, p, tables=t) for p, t in pool]) * 1e3
            base = time_graph_ms([lambda d=d: F.linear(x, d) for d in dense_pool]) * 1e3
            cfg = f"  decode config {interleaved_config(w)}" if m == 1 else ""
            print(f"{n}x{k} M={m}: gqsa {ours:.1f} us ({floor_us / ours:.0%} of floor), dense bf16 {base:.1f} us, "
                  f"{base / ours:.2f}x{cfg}", flush=True)
        del pool, dense_pool
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
