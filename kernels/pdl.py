"""Programmatic dependent launch (PDL, sm_90+): a decode kernel launched with it is scheduled as soon as the kernel
before it in the stream has retired its blocks, so its programs are resident and waiting when that kernel's
writes land, instead of paying the launch gap after it. Programs wait (``wait_for_earlier_kernels``) before their
first load: any tensor they read, weights included, may have been written by that kernel. The kernels never
trigger their dependents early, so a following kernel starts no sooner than after any ordinary kernel, and
benchmarks of back-to-back calls stay fair.

GPU only: the Triton interpreter cannot run ``griddepcontrol``. ``SPARSEFLOW_PDL=0`` turns it off.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

PDL_ENABLED = os.environ.get("SPARSEFLOW_PDL", "1") != "0"
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def pdl_launch(device: torch.device) -> dict:
    """Launch keywords for a kernel taking a ``PDL`` constexpr: ``PDL=True`` and ``launch_pdl=True`` on sm_90+
    CUDA devices, else ``PDL=False``."""
    if PDL_ENABLED and not _INTERPRETED and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9:
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


@triton.jit
def wait_for_earlier_kernels(PDL: tl.constexpr):
    """Block until the kernels launched before this one have finished and their writes are visible (a no-op
    without PDL)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
