"""The fastest read of N bytes this harness can time: a Triton kernel that streams a buffer once, 16-byte loads,
and keeps only a per-program XOR. It is the practical ceiling for any decode kernel that must read that many
bytes (launch, ramp-up and the tail of the grid included), as opposed to the physical one (bytes / 4.27 TB/s).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _stream_read_kernel(buf_ptr, out_ptr, n_words, BLOCK: tl.constexpr):
    """Program ``p`` reads ``BLOCK`` int32 words from ``p * BLOCK`` and stores their XOR at ``out[p]``."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(buf_ptr + offs, mask=offs < n_words, other=0)
    tl.store(out_ptr + pid, tl.xor_sum(v, axis=0))


def stream_read(buf: torch.Tensor, block: int = 4096, num_warps: int = 8) -> torch.Tensor:
    """Read every byte of the int32 tensor ``buf`` once; returns one XOR per program (so the reads cannot be
    optimised away)."""
    if buf.dtype != torch.int32 or not buf.is_contiguous():
        raise ValueError(f"stream_read takes a contiguous int32 buffer, got {buf.dtype}")
    n = buf.numel()
    out = torch.empty(triton.cdiv(n, block), dtype=torch.int32, device=buf.device)
    _stream_read_kernel[(out.numel(),)](buf, out, n, BLOCK=block, num_warps=num_warps)
    return out


def read_ceiling_us(nbytes: int, blocks: tuple[int, ...] = (2048, 4096, 8192)) -> tuple[float, int]:
    """Fastest time (us) to stream ``nbytes`` from HBM over rotating buffers, CUDA-graph timed, and the block
    size that gave it."""
    from .harness import time_graph_ms
    from .peers import rotating

    buf = torch.randint(-(2**31), 2**31 - 1, (triton.cdiv(nbytes, 4),), dtype=torch.int32, device="cuda")
    bufs = rotating(buf, nbytes)
    best = (float("inf"), 0)
    for block in blocks:
        us = time_graph_ms([lambda b=b, block=block: stream_read(b, block) for b in bufs]) * 1e3
        best = min(best, (us, block))
    return best
