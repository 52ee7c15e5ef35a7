"""Programmatic dependent launch (PDL, sm_90+): a decode kernel launched with it is scheduled as soon as the kernel
before it in the stream has retired its blocks, so its programs are resident and waiting when that kernel's
writes land, instead of paying the launch gap after it. Programs wait (``wait_for_earlier_kernels``) before their
first load: any tensor they read, weights included, may have been written by that kernel. The kernels never
trigger their dependents early, so a following kernel starts no sooner than after any ordinary kernel, and
benchmarks of back-to-back calls stay fair.

GPU only: the Triton interpreter cannot run ``griddepcontrol``, and sm_80 has none. ``SPARSEFLOW_PDL=0`` turns it
off.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

PDL_ENABLED = os.environ.get("SPARSEFLOW_PDL", "1") != "0"
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _triton_has_pdl() -> bool:
    """This Triton can launch with PDL and emit the wait (both arrived in the 3.x line; older ones get none)."""
    if not hasattr(getattr(tl.extra, "cuda", None), "gdc_wait"):
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


_TRITON_HAS_PDL = _triton_has_pdl()


@functools.cache
def _device_has_pdl(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch(device: torch.device) -> dict:
    """Launch keywords for a kernel taking a ``PDL`` constexpr: ``PDL=True`` and ``launch_pdl=True`` on sm_90+
    CUDA devices with a Triton that has both, else ``PDL=False``."""
    if PDL_ENABLED and _TRITON_HAS_PDL and not _INTERPRETED and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if _device_has_pdl(index):
            return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


@triton.jit
def wait_for_earlier_kernels(PDL: tl.constexpr):
    """Block until the kernels launched before this one have finished and their writes are visible (a no-op
    without PDL)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
