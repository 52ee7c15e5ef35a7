"""The tensor-core tile matmuls (GQSA W4S50 g16 and N:M 2:4 int4 g128) at decode batches, against dense bf16 and
the paths they replaced (GQSA dequantize + cuBLAS; 2:4 int4 on the packed sparse-MMA GEMV and expand + cuBLAS),
CUDA-graph timed with rotating weights; plus a sweep of tile configs (``BLOCK_N``, ``SPLIT``, warps) next to the
default tiles (``kernels/tiles.py``) so their first guess can be replaced by measured choices. Llama-3-8B linear
shapes."""

from __future__ import annotations

from .harness import Row, over_shapes, register, time_graph_ms
from .peers import GraphPeers, batch_inputs, gqsa_w4s50, rotating

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
BATCHES = [8, 16, 32, 64, 128, 256]
SWEEP = [dict(BLOCK_N=128), dict(SPLIT_SCALE=2), dict(SPLIT_SCALE=4), dict(SPLIT_SCALE=0.5), dict(num_warps=8),
         dict(BLOCK_N=128, num_warps=8), dict(BLOCK_N=128, SPLIT_SCALE=2)]
SWEEP_NM = False  # the N:M tile matmul is not worth sweeping yet: 5-15x slower than dense bf16 on the H200


def _configs(default: dict) -> list[tuple[str, dict]]:
    out = []
    for change in SWEEP:
        cfg = dict(default)
        change = dict(change)
        if "SPLIT_SCALE" in change:
            cfg["SPLIT"] = max(1, round(cfg["SPLIT"] * change.pop("SPLIT_SCALE")))
        cfg.update(change)
        if cfg != default:
            out.append((" ".join(f"{k}={v}" for k, v in cfg.items() if k in ("BLOCK_N", "SPLIT", "num_warps")), cfg))
    return out


def _timed(case: str, impl: str, calls, floor: int, flops: int, **extra) -> Row:
    """One timed row; a config that does not compile (or fails) gives a row saying so instead of ending the run."""
    try:
        return Row(case, impl, time_graph_ms(calls), floor, flops, **extra)
    except Exception as e:  # a Triton compile error names the config; keep measuring the others
        print(f"[tile_matmul] {case} {impl}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return Row(case, impl, None, floor, flops, note=f"failed: {type(e).__name__}")


def _bench_shape(n: int, k: int, batches: list[int], sweep: bool) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import gqsa_linear_reference
    from sparseflow.kernels.gqsa import tile_matmul as gtile
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_dequantize
    from sparseflow.kernels.nm import PACKED_MAX_M, from_dense, kernel_tables, nm_linear_reference
    from sparseflow.kernels.nm import tile_matmul as ntile
    from sparseflow.kernels.nm.sparse_mma import nm24_sp_packed_gemv
    from sparseflow.kernels.nm.triton_kernels import nm_expand
    from sparseflow.kernels.testing import rel_error
    from sparseflow.kernels.tiles import tile_config

    from sparseflow.compressors.baselines import nm_prune

    dev = torch.device("cuda")
    dense = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    peers = GraphPeers(dense)
    gw, gpool = gqsa_w4s50(dense)
    nw = from_dense(nm_prune(dense.float(), 2, 4), 2, 4, "int4", 128)
    npool = [(p, kernel_tables(p)) for p in rotating(nw, nw.storage_bytes())]
    rows: list[Row] = []
    for m in batches:
        case, x, io, flops = batch_inputs(n, k, m, dev)
        rows += [r for r in peers.rows(case, x) if "dense" in r.impl]
        # GQSA
        bitmaps = [{"group_mask": t["group_mask"], "group_prefix": t["group_prefix"]} for _, t in gpool]
        err = rel_error(gtile.gqsa_tile_matmul(x, gw, bitmap=bitmaps[0]), gqsa_linear_reference(x, gw))
        floor = gw.storage_bytes() + io
        default = gtile.gqsa_tile_config(m, n, k)
        tile_calls = [lambda x=x, p=p, b=b: gtile.gqsa_tile_matmul(x, p, bitmap=b)
                      for (p, _), b in zip(gpool, bitmaps, strict=True)]
        rows.append(_timed(case, "gqsa w4s50 tile", tile_calls, floor, flops, note=f"err {err:.1e}",
                           extra={"config": default}))
        # the same calls with one of the kernel's module switches off (read at each call): the plain decode, the
        # decode's share of the time; the bitmap's bits counted with integer ops instead of POPC
        for switch, label in (("FAST_DECODE", "plain decode"), ("POPC_LOOKUP", "plain bit count")):
            saved = getattr(gtile, switch)
            setattr(gtile, switch, False)
            rows.append(_timed(case, f"gqsa w4s50 tile, {label}", tile_calls, floor, flops))
            setattr(gtile, switch, saved)
        rows.append(_timed(case, "gqsa w4s50 deq+mm", [lambda x=x, p=p: F.linear(x, gqsa_dequantize(p, x.dtype))
                                                       for p, _ in gpool[:4]], floor, flops))
        for label, cfg in _configs(default) if sweep else []:
            rows.append(_timed(case, f"gqsa tile {label}",
                               [lambda x=x, p=p, b=b, cfg=cfg: gtile.gqsa_tile_matmul(x, p, bitmap=b, config=cfg)
                                for (p, _), b in zip(gpool, bitmaps, strict=True)], floor, flops,
                               extra={"config": cfg}))
        # N:M 2:4 int4
        err = rel_error(ntile.nm_tile_matmul(x, nw), nm_linear_reference(x, nw))
        floor = nw.storage_bytes() + io
        default = ntile.tile_matmul_config(m, n, k, 4)
        rows.append(_timed(case, "nm 2:4 int4 tile", [lambda x=x, p=p: ntile.nm_tile_matmul(x, p) for p, _ in npool],
                           floor, flops, note=f"err {err:.1e}", extra={"config": default}))
        if m <= PACKED_MAX_M and npool[0][1]:
            for permute in (False, True):  # x as stored, and through the per-call permuted copy
                err = rel_error(nm24_sp_packed_gemv(x, nw, npool[0][1], permute_x=permute), nm_linear_reference(x, nw))
                rows.append(_timed(case, f"nm 2:4 int4 packed sparse-MMA, x {'permuted' if permute else 'as stored'}",
                                   [lambda x=x, p=p, t=t, q=permute: nm24_sp_packed_gemv(x, p, t, permute_x=q)
                                    for p, t in npool], floor, flops, note=f"err {err:.1e}"))
        rows.append(_timed(case, "nm 2:4 int4 expand+mm", [lambda x=x, p=p: F.linear(x, nm_expand(p, x.dtype))
                                                           for p, _ in npool[:4]], floor, flops))
        for label, cfg in _configs(tile_config(m, n, k)) if sweep and SWEEP_NM else []:
            rows.append(_timed(case, f"nm tile {label}",
                               [lambda x=x, p=p, cfg=cfg: ntile.nm_tile_matmul(x, p, config=cfg) for p, _ in npool],
                               floor, flops, extra={"config": cfg}))
    return rows


@register("tile_matmul")
def run(quick: bool = False) -> list[Row]:
    """Tile matmuls vs dense bf16 and the previous paths, Llama-3-8B shapes, M = 8 .. 256, with a config sweep."""
    return over_shapes("tile_matmul", SHAPES[:1] if quick else SHAPES,
                       lambda n, k: _bench_shape(n, k, [8, 32] if quick else BATCHES, sweep=not quick))
