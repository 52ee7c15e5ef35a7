"""Split-K output without a zero fill: a self-cleaning float32 workspace and one finishing launch.

A split-K GEMV adds its programs' partial sums with float32 atomics. It used to add them into a freshly
zeroed output and then add the bias and cast in further launches: four launches per call, each costing
~3 us in a CUDA graph on the H200, against a ~35 us 2:4 int4 decode GEMV. Now the partials go into a
workspace that is already zero, and ``splitk_finish`` reads the sums, adds the bias, writes the output in
its dtype and zeroes what it read, leaving the workspace ready for the next call: two launches.

Tried first and dropped: letting the last program to arrive at a per-tile counter finish the tile (one
launch). Every program then needs a GPU-scope release fence, which waits for its partials to reach L2; on
28672x8192 that cost ~9 us, more than the launches it saved.

The workspace is kept per (device, stream), so kernels running concurrently on two streams never share it,
and never freed: a captured CUDA graph keeps using the buffer it saw at capture time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_launch, wait_for_earlier_kernels

_MIN_PARTIALS = 1 << 20

_WORKSPACES: dict[tuple[str, int], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown buffers a captured graph may still use


def splitk_workspace(device: torch.device, numel: int) -> torch.Tensor:
    """A zeroed float32 buffer of at least ``numel`` elements for kernels on the current stream. Whoever adds
    into it must have ``splitk_finish`` read it back (which zeroes it again)."""
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        key = (str(stream.device), stream.cuda_stream)
    else:  # the Triton interpreter (CPU tests): one stream
        key = (str(device), 0)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.numel() < numel:
        if ws is not None:
            _RETIRED.append(ws)
        ws = torch.zeros(max(numel, _MIN_PARTIALS), dtype=torch.float32, device=device)
        _WORKSPACES[key] = ws
    return ws


@triton.jit
def _finish_kernel(ws_ptr, bias_ptr, y_ptr, M, N, stride_ym, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                   PDL: tl.constexpr):
    wait_for_earlier_kernels(PDL)  # the sums come from the kernel just before
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < M * N
    v = tl.load(ws_ptr + i, mask=ok, other=0.0)
    # Every thread of the program must have read its sums before any zeroes them: with a 16-bit y, Triton gives the
    # load and the zero store different thread layouts (the y store wants 8 elements per thread, float32 4), so
    # without this barrier one thread zeroed sums another had not read yet. H200: bfloat16 outputs of 1M+ elements
    # came back with up to 2% zeros (and a float atomic exchange, which would also do, has no interpreter support).
    tl.debug_barrier()
    tl.store(ws_ptr + i, tl.zeros_like(v), mask=ok)
    row = i // N
    col = i % N
    if HAS_BIAS:
        v += tl.load(bias_ptr + col, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row.to(tl.int64) * stride_ym + col, v.to(y_ptr.dtype.element_ty), mask=ok)


def splitk_finish(ws: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y [M, N] = ws[:M*N] (+ bias)`` in y's dtype, and ``ws[:M*N] = 0``. Returns ``y``."""
    m, n = y.shape
    block = 1024
    _finish_kernel[(triton.cdiv(m * n, block),)](
        ws, bias if bias is not None else ws, y, m, n, y.stride(0), HAS_BIAS=bias is not None, BLOCK=block,
        num_warps=4, **pdl_launch(y.device),
    )
    return y
