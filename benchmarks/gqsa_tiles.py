"""Tile sweep for the dense-groups GQSA matmul (sets ``dense_groups_config``): every config, timed
against dense bf16 on the same inputs, for decode-sized batches."""

from __future__ import annotations

import itertools

from tqdm.auto import tqdm

from .gqsa_linear import SHAPES, _copies
from .harness import Row, register, time_ms

SWEEP_BATCHES = [1, 16, 64]


@register("gqsa_tiles")
def run(quick: bool = False) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import quantize_rtn
    from sparseflow.kernels.gqsa.triton_kernels import dense_groups_config, gqsa_dense_matmul

    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows: list[Row] = []
    configs = [dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw, num_stages=st)
               for bn, bk, sk, nw, st in itertools.product((32, 64, 128), (128, 256), (1, 2, 4, 8), (4, 8), (3, 4))]
    shapes = SHAPES[:1] if quick else SHAPES
    for n, k in tqdm(shapes, desc="gqsa_tiles", unit="shape"):
        dense = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        dense_pool = itertools.cycle([dense.clone() for _ in range(_copies(2 * n * k))])
        w = quantize_rtn(dense, bits=4, group_size=16)
        pool = itertools.cycle([w] + [w.clone() for _ in range(_copies(w.storage_bytes()) - 1)])
        for m in SWEEP_BATCHES:
            case = f"N={n} K={k} M={m}"
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            io = 2 * m * k + 2 * m * n
            flops = 2.0 * m * n * k
            rows.append(Row(case, "dense bf16", time_ms(lambda x=x: F.linear(x, next(dense_pool))), 2 * n * k + io,
                            flops))
            default = dense_groups_config(m, n, k, 16)
            rows.append(Row(case, "default " + _name(default), time_ms(lambda x=x: gqsa_dense_matmul(x, next(pool))),
                            w.storage_bytes() + io, flops))
            block_m = default["BLOCK_M"]
            for cfg in configs:
                cfg = {**cfg, "BLOCK_M": block_m}
                try:
                    ms = time_ms(lambda x=x, cfg=cfg: gqsa_dense_matmul(x, next(pool), config=cfg), rep_ms=40)
                except Exception as err:  # a config can exceed shared memory or registers: record, go on
                    rows.append(Row(case, _name(cfg), None, 0, flops, note=str(err).splitlines()[0][:50]))
                    continue
                rows.append(Row(case, _name(cfg), ms, w.storage_bytes() + io, flops))
    return rows


def _name(cfg: dict) -> str:
    return "m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}s{SPLIT_K}w{num_warps}st{num_stages}".format(**cfg)
