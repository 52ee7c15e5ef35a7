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


@triton.jit
def half_to_f32(h, IS_BF16: tl.constexpr):
    """Low 16 bits of the uint32 ``h`` (a bfloat16 or a float16) as float32."""
    if IS_BF16:
        return (h << 16).to(tl.float32, bitcast=True)
    else:
        return (h & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
