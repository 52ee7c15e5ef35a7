"""Tile sweeps for the dense-groups GQSA kernels (they set ``dense_gemv_config`` and
``dense_groups_config``): each config timed against dense bf16 on the same inputs."""

from __future__ import annotations

import itertools

from tqdm.auto import tqdm

from .gqsa_linear import SHAPES, _copies
from .harness import Row, register, time_ms

GEMV_CONFIGS = [dict(BLOCK_N=bn, BLOCK_W=bw, num_warps=nw)
                for bn, bw, nw in itertools.product((4, 8, 16, 32), (16, 32, 64), (4, 8))]
FUSED_CONFIGS = [dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=4, num_stages=3)
                 for bn, bk, sk in itertools.product((32, 64, 128), (128, 256), (1, 2, 4, 8))]


@register("gqsa_tiles")
def run(quick: bool = False) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import quantize_rtn
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_dense_gemv, gqsa_dense_matmul

    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows: list[Row] = []
    for n, k in tqdm(SHAPES[:1] if quick else SHAPES, desc="gqsa_tiles", unit="shape"):
        dense = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        dense_pool = itertools.cycle([dense.clone() for _ in range(_copies(2 * n * k))])
        w = quantize_rtn(dense, bits=4, group_size=16)
        pool = itertools.cycle([w] + [w.clone() for _ in range(_copies(w.storage_bytes()) - 1)])
        for m, kernel, configs in ((1, gqsa_dense_gemv, GEMV_CONFIGS), (16, gqsa_dense_matmul, FUSED_CONFIGS)):
            case = f"N={n} K={k} M={m}"
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            io, flops = 2 * m * k + 2 * m * n, 2.0 * m * n * k
            rows.append(Row(case, "dense bf16", time_ms(lambda x=x: F.linear(x, next(dense_pool))),
                            2 * n * k + io, flops))
            for cfg in configs:
                cfg = {**cfg, "BLOCK_M": 16} if kernel is gqsa_dense_matmul else cfg
                name = kernel.__name__ + " " + " ".join(f"{key}={v}" for key, v in cfg.items())
                try:
                    ms = time_ms(lambda x=x, cfg=cfg, kernel=kernel: kernel(x, next(pool), config=cfg), rep_ms=30)
                except Exception as err:  # a config can exceed shared memory or registers: record, go on
                    rows.append(Row(case, name, None, 0, flops, note=str(err).splitlines()[0][:50]))
                    continue
                rows.append(Row(case, name, ms, w.storage_bytes() + io, flops))
    return rows
