"""Where DSEE's sparse update S may be non-zero: the support Omega, fixed from the pre-trained weight before training.

``grebsmo`` (default) follows the paper's idea, W = L + S with L low-rank and S sparse, and takes Omega from S.
Here the decomposition is an alternating projection: L is the best rank-``rank`` approximation of W - S (randomized
SVD), S keeps the ``nnz`` largest entries of W - L; a few rounds. Entries the low-rank part cannot explain are the
ones worth a free parameter. ``magnitude`` takes the largest |W|, ``random`` a seeded uniform sample.
"""

from __future__ import annotations

import torch

SUPPORT_METHODS = ("grebsmo", "magnitude", "random")


def support_size(size: float, numel: int) -> int:
    """Entries of S for a layer of ``numel`` weights: ``size`` is a count (>= 1) or a fraction (0 < size < 1)."""
    if size <= 0:
        raise ValueError(f"sparse_size must be > 0 (a count >= 1 or a fraction < 1); got {size}")
    nnz = round(size * numel) if size < 1 else int(size)
    if size >= 1 and size != int(size):
        raise ValueError(f"sparse_size {size} >= 1 is a count and must be a whole number")
    if nnz > numel:
        raise ValueError(f"sparse_size {size} asks for {nnz} entries; the layer has {numel} weights")
    return max(nnz, 1)


def _top(values: torch.Tensor, nnz: int) -> torch.Tensor:
    return torch.topk(values.reshape(-1), nnz, sorted=False).indices


def select_support(weight: torch.Tensor, nnz: int, method: str = "grebsmo", rank: int = 8, iters: int = 4,
                   seed: int = 0) -> torch.Tensor:
    """Sorted flat indices (int64, ``[nnz]``) into ``weight [out, in]`` where S lives."""
    if method not in SUPPORT_METHODS:
        raise ValueError(f"sparse_init {method!r} is not one of {SUPPORT_METHODS}")
    w = weight.detach().float()
    if method == "magnitude":
        idx = _top(w.abs(), nnz)
    elif method == "random":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        idx = torch.randperm(w.numel(), generator=gen)[:nnz].to(w.device)
    else:
        rank = max(1, min(rank, min(w.shape) - 1)) if min(w.shape) > 1 else 1
        sparse = torch.zeros_like(w)
        idx = _top(w.abs(), nnz)
        for _ in range(iters):
            u, s, v = torch.svd_lowrank(w - sparse, q=rank, niter=2)
            residual = w - (u * s) @ v.t()
            idx = _top(residual.abs(), nnz)
            sparse = torch.zeros_like(w).reshape(-1).index_copy_(0, idx, residual.reshape(-1)[idx]).view_as(w)
    return torch.sort(idx).values.to(torch.int64)
