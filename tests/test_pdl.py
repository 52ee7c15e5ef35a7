"""Programmatic dependent launch (``kernels/pdl.py``): off where it cannot run, and on the GPU a PDL-launched
decode kernel still sees what the kernel just before it wrote (it waits before its first load)."""

import pytest
import torch
from helpers import uneven_rows_gqsa
from sparseflow.kernels import pdl
from sparseflow.kernels.gqsa import gqsa_linear_reference
from sparseflow.kernels.gqsa.interleaved import interleave, interleaved_gemv
from sparseflow.kernels.testing import assert_close


def test_off_on_cpu_when_disabled_and_on_a_triton_without_it(monkeypatch):
    assert pdl.pdl_launch(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setattr(pdl, "PDL_ENABLED", False)
    assert pdl.pdl_launch(torch.device("cuda", 0)) == {"PDL": False}  # no device query when disabled
    monkeypatch.setattr(pdl, "PDL_ENABLED", True)
    monkeypatch.setattr(pdl, "_TRITON_HAS_PDL", False)
    assert pdl.pdl_launch(torch.device("cuda", 0)) == {"PDL": False}


def test_this_triton_has_it():
    """The Triton installed here can launch with PDL (CI has 3.9; the H200 machine 3.6, checked there too)."""
    assert pdl._triton_has_pdl()


@pytest.mark.gpu
def test_on_for_hopper():
    want = torch.cuda.get_device_capability()[0] >= 9 and pdl.PDL_ENABLED
    assert pdl.pdl_launch(torch.device("cuda")).get("PDL", False) == want


@pytest.mark.gpu
def test_decode_reads_x_and_copy_written_by_the_kernel_just_before():
    """Each call's x, and once the whole decode copy, are written by the launch right before the GEMV: a kernel
    that read before ``griddepcontrol.wait`` would see the previous values."""
    w = uneven_rows_gqsa().to("cuda")
    il = interleave(w, 4, 64)
    fresh = interleave(w, 4, 64)
    x = torch.empty(1, w.in_features, device="cuda", dtype=torch.bfloat16)
    for step in range(8):
        src = torch.randn(1, w.in_features, device="cuda", dtype=torch.bfloat16)
        if step == 4:
            il.words.zero_()
            il.words.copy_(fresh.words)  # the copy itself, written by the previous launch
        x.copy_(src)
        y = interleaved_gemv(x, w, il)
        assert_close(y.float(), gqsa_linear_reference(src.float(), w), torch.bfloat16, name=f"step {step}")
