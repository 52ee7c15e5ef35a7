"""Triton helpers for values held in one thread's registers, shared by the decode kernels (GQSA and N:M)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split4(t):
    """``[E, 4]`` -> four ``[E]`` tensors (registers of one thread when the last axis is per thread): the columns
    of a 16-byte load, with no data movement."""
    even, odd = tl.split(tl.reshape(t, (t.shape[0], 2, 2)))  # (t0, t2), (t1, t3)
    t0, t2 = tl.split(even)
    t1, t3 = tl.split(odd)
    return t0, t1, t2, t3
