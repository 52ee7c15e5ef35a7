"""The SASS counter (benchmarks/sass.py) that the kernel log relies on: it compiles each decode kernel for sm_90
on this CPU-only machine (Triton's bundled ptxas) and finds the hot loop, so a kernel change that no longer
compiles for the GPU, or the tool itself, breaks here rather than on the next device run. It runs in a
subprocess without ``TRITON_INTERPRET`` (the test session interprets kernels, which cannot be compiled)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton.backends.nvidia")


@pytest.mark.parametrize("kernel, args", [("gqsa_il", []), ("gqsa_il", ["--block-m-gemv", "4", "--prefetch", "2"]),
                                          ("gqsa_task", []), ("gqsa_task", ["--no-own-rows"]),
                                          ("nm24", ["--values", "int4"]), ("nm24sp_packed", []), ("gqsa_tile", []),
                                          ("gqsa_tile", ["--x", "fp16"])])
def test_decode_kernels_compile_for_sm90_and_have_a_loop(kernel, args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "sparseflow.benchmarks.sass", kernel, *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "total instructions" in run.stdout
    assert "loop 0x" in run.stdout, run.stdout


def test_splitk_finish_reads_every_sum_before_zeroing_any():
    """With a bf16 output the workspace load and its zero store get different thread layouts; a barrier between
    them (BAR.SYNC after the last LDG, before the first zero STG) keeps threads from zeroing sums others have not
    read. Without it the H200 returned up to 2% zeros in 1M-element bf16 outputs."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "sparseflow.benchmarks.sass", "splitk_finish", "--dump"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ops = [op for line in run.stdout.splitlines() for op in ("LDG", "BAR", "STG") if f" {op}." in line]
    assert "BAR" in ops, ops
    bar = ops.index("BAR")
    assert "LDG" in ops[:bar] and "LDG" not in ops[bar:], ops
