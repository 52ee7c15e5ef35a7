"""Compile a Triton kernel for sm_90 here (no GPU needed) and count its SASS instructions.

Used to judge decode-kernel variants before spending device time on them: the GQSA and N:M GEMVs are
instruction-bound, so instructions per loop iteration predict their speed. Pointer and stride arguments
get the 16-divisibility hint the runtime specialisation would give them.

    python -m benchmarks.sass gqsa_task [--dump]      (or nm24, nm24sp, nm24sp_packed, gqsa_tile, splitk_finish;
                                                       --help for options)

The GPU machine runs an older Triton (3.6) than this venv may: a kernel that compiles here can fail there, and
counts differ. To compile with the device's version, install it aside and put it first on the path:

    pip install --no-deps --target /tmp/tri36 triton==3.6.0
    PYTHONPATH=/tmp/tri36 python -m sparseflow.benchmarks.sass gqsa_tile
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_sass(fn, signature: dict, constexprs: dict, divisible: list[str], num_warps: int) -> str:
    """SASS text of ``fn`` compiled for sm_90 with ``divisible`` arguments marked multiples of 16."""
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in divisible}
    src = ASTSource(fn, signature, constexprs, attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, opcode) of every instruction."""
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            out.append((int(m.group(1), 16), m.group(3)))
    return out


def loops(sass: str) -> list[tuple[int, int]]:
    """(start, end) addresses of backward branches: the loop bodies."""
    spans = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", line)
        if m:
            src, dst = int(m.group(1), 16), int(m.group(3), 16)
            if dst < src:
                spans.append((dst, src))
    return spans


def report(sass: str) -> None:
    ins = instructions(sass)
    print(f"total instructions: {len(ins)}")
    for start, end in loops(sass):
        body = [op for addr, op in ins if start <= addr <= end]
        hist = collections.Counter(op.split(".")[0] for op in body)
        top = " ".join(f"{k}:{v}" for k, v in hist.most_common(14))
        print(f"loop {start:#x}-{end:#x}: {len(body)} instructions  {top}")


def _gqsa_task(args):
    from sparseflow.kernels.gqsa import triton_kernels as tk
    fn = tk._task_gemv_kernel
    xdt = "*" + args.x
    # owned rows store y in x's dtype with the bias; split tasks add float32 partials into the workspace
    sig = dict(x_ptr=xdt, words_ptr="*u32", col_ptr="*i16", rowptr_ptr="*i32", scale_ptr="*fp16",
               zero_ptr="*fp16", task_row_ptr="*i32", bias_ptr=xdt, y_ptr=xdt if args.own_rows else "*fp32",
               NNZ="i32", M="i32", stride_xm="i32", stride_ym="i32", TASK="i32", code_mask="u32",
               G="constexpr", BITS="constexpr", BLOCK="constexpr", BLOCK_M="constexpr", OWN_ROWS="constexpr",
               HAS_BIAS="constexpr")
    const = dict(G=16, BITS=4, BLOCK=args.block_u, BLOCK_M=1, OWN_ROWS=args.own_rows, HAS_BIAS=False)
    div = ["x_ptr", "words_ptr", "col_ptr", "rowptr_ptr", "scale_ptr", "zero_ptr", "task_row_ptr", "bias_ptr",
           "y_ptr", "stride_xm", "stride_ym"]
    return compile_sass(fn, sig, const, div, num_warps=2)


def _gqsa_il(args):
    from sparseflow.kernels.gqsa import interleaved as il
    fn = il._interleaved_gemv_kernel
    xdt = "*" + args.x
    sig = dict(x_ptr=xdt, words_ptr="*u32", col_ptr="*i16", sz_ptr="*fp16", step_ptr="*i32", rows_ptr="*i32",
               bias_ptr=xdt, y_ptr=xdt, BLOCKS="i32", M="i32", stride_xm="i32", stride_ym="i32", code_mask="u32",
               G="constexpr", BITS="constexpr", T="constexpr", R="constexpr", BLOCK_M="constexpr",
               HAS_BIAS="constexpr", PREFETCH="constexpr", WEIGHT_CG="constexpr", PDL="constexpr")
    const = dict(G=16, BITS=4, T=args.block_u, R=args.block_u // args.lanes, BLOCK_M=args.block_m_gemv,
                 HAS_BIAS=False, PREFETCH=args.prefetch, WEIGHT_CG=True, PDL=args.pdl)
    div = ["x_ptr", "words_ptr", "col_ptr", "sz_ptr", "step_ptr", "rows_ptr", "bias_ptr", "y_ptr", "stride_xm",
           "stride_ym"]
    return compile_sass(fn, sig, const, div, num_warps=max(1, args.block_u // 32))


def _nm24(args):
    from sparseflow.kernels.nm import triton_kernels as tk
    fn = tk._nm24_gemv_kernel
    kind = {"bf16": 0, "int8": 1, "int4": 2}[args.values]
    vdt = {"bf16": "*bf16", "int8": "*i8", "int4": "*u8"}[args.values]
    sig = dict(x_ptr="*" + args.x, values_ptr=vdt, indices_ptr="*u8", scales_ptr="*fp16", bias_ptr="*bf16",
               y_ptr="*bf16", N="i32", M="i32", K="i32", KEPT="i32", IDX_BYTES="i32", stride_xm="i32",
               stride_ym="i32", KIND="constexpr", GROUP="constexpr", X_BF16="constexpr", HAS_BIAS="constexpr",
               BLOCK_R="constexpr", BLOCK_U="constexpr", BLOCK_M="constexpr")
    const = dict(KIND=kind, GROUP=128, X_BF16=args.x == "bf16", HAS_BIAS=False, BLOCK_R=args.block_r,
                 BLOCK_U=args.block_u, BLOCK_M=1)
    div = ["x_ptr", "values_ptr", "indices_ptr", "scales_ptr", "bias_ptr", "y_ptr", "K", "KEPT", "IDX_BYTES",
           "stride_xm", "stride_ym"]
    return compile_sass(fn, sig, const, div, num_warps=args.warps)


def _nm24sp(args):
    from sparseflow.kernels.nm import sparse_mma as sm
    fn = sm._nm24_sp_gemv_kernel
    int4 = args.values == "int4"
    sig = dict(x_ptr="*bf16", values_ptr="*u8" if int4 else "*bf16", indices_ptr="*u8", scales_ptr="*fp16",
               bias_ptr="*bf16", y_ptr="*bf16", N="i32", K="i32", KEPT="i32", IDX_BYTES="i32", stride_xm="i32",
               stride_ym="i32", one="i32", CHUNKS_PER_SPLIT="i32", INT4="constexpr", GROUP="constexpr",
               HAS_BIAS="constexpr", ASM="constexpr", CONSTRAINTS="constexpr", num_warps_="constexpr")
    const = dict(INT4=int4, GROUP=128, HAS_BIAS=False,
                 ASM=sm._MMA_SP_INT4 if int4 else sm._MMA_SP,
                 CONSTRAINTS=sm._CONSTRAINTS, num_warps_=args.warps)
    div = ["x_ptr", "values_ptr", "indices_ptr", "scales_ptr", "bias_ptr", "y_ptr", "K", "KEPT", "IDX_BYTES",
           "stride_xm", "stride_ym"]
    return compile_sass(fn, sig, const, div, num_warps=args.warps)


def _nm24sp_packed(args):
    from sparseflow.kernels.nm import sparse_mma as sm
    sig = dict(x_ptr="*bf16", codes_ptr="*i32", meta_ptr="*i32", scales_ptr="*fp16", bias_ptr="*bf16",
               y_ptr="*bf16", ws_ptr="*fp32", N="i32", K="i32", M="i32", stride_xm="i32",
               stride_ym="i32", one="i32", STEPS_PER_SPLIT="i32", GROUP="constexpr", MB="constexpr",
               SPLIT="constexpr", HAS_BIAS="constexpr", ASM="constexpr", CONSTRAINTS="constexpr",
               num_warps_="constexpr", PERM_X="constexpr", PDL="constexpr")
    const = dict(GROUP=128, MB=args.blocks, SPLIT=True, HAS_BIAS=False, ASM=sm._MMA_SP_INT4,
                 CONSTRAINTS=sm._CONSTRAINTS, num_warps_=args.warps, PERM_X=args.perm_x, PDL=args.pdl)
    div = ["x_ptr", "codes_ptr", "meta_ptr", "scales_ptr", "y_ptr", "ws_ptr", "K", "stride_xm", "stride_ym"]
    return compile_sass(sm._nm24_sp_packed_kernel, sig, const, div, num_warps=args.warps)


def _gqsa_tile(args):
    from sparseflow.kernels.gqsa import tile_matmul as tm
    fast = {"bf16": 1, "fp16": 2}.get(args.x, 0) if args.fast else 0
    sig = dict(x_ptr="*" + args.x, words_ptr="*i32", scale_ptr="*fp16", zero_ptr="*fp16", mask_ptr="*i32",
               prefix_ptr="*i32", ws_ptr="*fp32", M="i32", N="i32", K="i32", stride_xm="i32", WORDS="i32",
               STEPS_PER_SPLIT="i32", G="constexpr", BITS="constexpr", GPS="constexpr", DOT_IEEE="constexpr",
               FAST="constexpr", DECODE_ASM="constexpr", POPC="constexpr", BLOCK_M="constexpr", BLOCK_N="constexpr",
               PDL="constexpr")
    const = dict(G=16, BITS=4, GPS=8, DOT_IEEE=args.x == "fp32", FAST=fast,
                 DECODE_ASM=tm.decode_asm(fast), POPC=args.popc, BLOCK_M=args.block_m, BLOCK_N=64, PDL=args.pdl)
    div = ["x_ptr", "words_ptr", "scale_ptr", "zero_ptr", "mask_ptr", "prefix_ptr", "ws_ptr", "K", "stride_xm"]
    return compile_sass(tm._gqsa_tile_matmul_kernel, sig, const, div, num_warps=args.warps)


def _splitk_finish(args):
    from sparseflow.kernels import splitk
    sig = dict(ws_ptr="*fp32", bias_ptr="*fp32", y_ptr="*" + args.x, M="i32", N="i32", stride_ym="i32",
               HAS_BIAS="constexpr", BLOCK="constexpr", PDL="constexpr")
    return compile_sass(splitk._finish_kernel, sig, dict(HAS_BIAS=False, BLOCK=1024, PDL=args.pdl),
                        ["ws_ptr", "y_ptr", "N", "stride_ym"], num_warps=4)


KERNELS = {"gqsa_task": _gqsa_task, "gqsa_il": _gqsa_il, "nm24": _nm24, "nm24sp": _nm24sp,
           "nm24sp_packed": _nm24sp_packed, "gqsa_tile": _gqsa_tile, "splitk_finish": _splitk_finish}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kernel", choices=sorted(KERNELS))
    p.add_argument("--dump", action="store_true")
    p.add_argument("--x", default="bf16", help="x element type as the kernel reads it (fp32, bf16)")
    p.add_argument("--values", default="bf16", help="nm24: value format (bf16, int8, int4)")
    p.add_argument("--block-r", type=int, default=4)
    p.add_argument("--block-u", type=int, default=64)
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--lanes", type=int, default=4, help="gqsa_il: lanes per row (S)")
    p.add_argument("--prefetch", type=int, default=1, help="gqsa_il: iterations loaded ahead (1 or 2)")
    p.add_argument("--block-m-gemv", type=int, default=1, help="gqsa_il: input rows per program (BLOCK_M)")
    p.add_argument("--pdl", action=argparse.BooleanOptionalAction, default=True,
                   help="gqsa_il, nm24sp_packed, gqsa_tile, splitk_finish: wait for the previous kernel "
                        "(programmatic dependent launch)")
    p.add_argument("--blocks", type=int, default=1, help="nm24sp_packed: 8-row x blocks per program (MB)")
    p.add_argument("--block-m", type=int, default=32, help="gqsa_tile: rows of x per program")
    p.add_argument("--perm-x", action=argparse.BooleanOptionalAction, default=False,
                   help="nm24sp_packed: x in permute_x_for_sparse_mma order (one 16-byte load per lane and block)")
    p.add_argument("--popc", action=argparse.BooleanOptionalAction, default=True,
                   help="gqsa_tile: count bitmap bits with POPC (as on the GPU) or with plain integer ops")
    p.add_argument("--own-rows", action=argparse.BooleanOptionalAction, default=True,
                   help="gqsa_task: programs own whole rows (the default config) or split tasks with atomics")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                   help="gqsa_tile: the inline-PTX 4-bit decode (bf16/fp16 x)")
    args = p.parse_args(argv)
    sass = KERNELS[args.kernel](args)
    if args.dump:
        print(sass)
    report(sass)


if __name__ == "__main__":
    main()
