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


@pytest.mark.parametrize("kernel, args", [("gqsa_task", []), ("nm24", ["--values", "int4"]),
                                          ("nm24sp_packed", [])])
def test_decode_kernels_compile_for_sm90_and_have_a_loop(kernel, args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "sparseflow.benchmarks.sass", kernel, *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "total instructions" in run.stdout
    assert "loop 0x" in run.stdout, run.stdout
