"""GQSA linear (sparsity 0, round-to-nearest) against dense bf16 and torch's int4 weight-only GEMM.

Every implementation runs in this process on the same inputs. Weights rotate among enough copies
that each call reads them from HBM, not from the 60 MB L2 (a 4096x4096 int4 weight is 8 MB).
"""

from __future__ import annotations

import itertools

from .harness import Row, over_shapes, register, time_ms

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]
BATCHES = [1, 2, 4, 8, 16, 32, 128, 512, 2048]
ROTATE_BYTES = 512 << 20  # > 8x the L2


def _copies(nbytes: int) -> int:
    return max(2, min(64, ROTATE_BYTES // max(1, nbytes)))


def _tinygemm(w, group_size: int = 128):
    """torch's int4 weight-only path (tinygemm), as torchao builds it; None if this torch lacks it."""
    import torch

    n, k = w.shape
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device=w.device)
    packed_u8 = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(packed_u8, 8)
    scales_zeros = torch.rand(k // group_size, n, 2, dtype=torch.bfloat16, device=w.device)
    return packed, scales_zeros


def _bench_shape(n: int, k: int, batches: list[int]) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from sparseflow.kernels.gqsa import gqsa_linear, gqsa_linear_reference, quantize_rtn
    from sparseflow.kernels.gqsa.triton_kernels import gqsa_dense_gemv, gqsa_dense_matmul, gqsa_dequantize
    from sparseflow.kernels.testing import rel_error

    from .peers import batch_inputs  # peers imports this module: import at call time

    dev = torch.device("cuda")
    dense = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    dense_pool = itertools.cycle([dense.clone() for _ in range(_copies(2 * n * k))])
    formats = {}
    for g in (16, 128):
        w = quantize_rtn(dense, bits=4, group_size=g)
        formats[g] = (w, itertools.cycle([w] + [w.clone() for _ in range(_copies(w.storage_bytes()) - 1)]))
    try:
        packed, scales_zeros = _tinygemm(dense)
        tg_pool = itertools.cycle([(packed.clone(), scales_zeros.clone()) for _ in range(_copies(n * k // 2))])
        tg_note = ""
    except (RuntimeError, AttributeError) as err:
        tg_pool, tg_note = None, f"unavailable: {str(err).splitlines()[0][:60]}"

    rows: list[Row] = []
    for m in batches:
        case, x, io, flops = batch_inputs(n, k, m, dev)
        rows.append(Row(case, "dense bf16", time_ms(lambda x=x: F.linear(x, next(dense_pool))), 2 * n * k + io, flops))
        if tg_pool is not None:
            def tinygemm_call(x=x):
                packed, scales_zeros = next(tg_pool)
                return torch.ops.aten._weight_int4pack_mm(x, packed, 128, scales_zeros)

            tg_bytes = n * k // 2 + (k // 128) * n * 4
            rows.append(Row(case, "torch int4 g128", time_ms(tinygemm_call), tg_bytes + io, flops))
        else:
            rows.append(Row(case, "torch int4 g128", None, 0, flops, note=tg_note))
        for g, (w0, pool) in formats.items():
            err = rel_error(gqsa_linear(x, w0), gqsa_linear_reference(x, w0))
            floor_bytes = w0.storage_bytes() + io
            extra = {"rel_err_vs_reference": err, "bits_per_weight": w0.bits_per_weight()}
            auto_ms = time_ms(lambda pool=pool, x=x: gqsa_linear(x, next(pool)))
            rows.append(Row(case, f"gqsa w4g{g}", auto_ms, floor_bytes, flops, note=f"err {err:.1e}", extra=extra))
            if m <= 16:
                gemv_ms = time_ms(lambda pool=pool, x=x: gqsa_dense_gemv(x, next(pool)))
                rows.append(Row(case, f"gqsa w4g{g} gemv", gemv_ms, floor_bytes, flops))
            if m <= 128:
                fused_ms = time_ms(lambda pool=pool, x=x: gqsa_dense_matmul(x, next(pool)))
                rows.append(Row(case, f"gqsa w4g{g} fused-mm", fused_ms, floor_bytes, flops))
            mm_ms = time_ms(lambda pool=pool, x=x: F.linear(x, gqsa_dequantize(next(pool), x.dtype)))
            rows.append(Row(case, f"gqsa w4g{g} deq+mm", mm_ms, floor_bytes, flops))
    return rows


@register("gqsa_linear")
def run(quick: bool = False) -> list[Row]:
    """Every shape x batch: dense bf16, torch int4 (g128), GQSA w4 g16/g128 (dispatch and each path)."""
    batches = [1, 16, 512] if quick else BATCHES
    return over_shapes("gqsa_linear", SHAPES[:2] if quick else SHAPES, lambda n, k: _bench_shape(n, k, batches))
