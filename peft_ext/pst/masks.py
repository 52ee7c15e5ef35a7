"""PST's masks from an importance matrix ``[out, in]``: keep the highest entries (unstructured), the top ``n`` of
every ``m`` consecutive inputs (N:M), or the highest-scoring whole groups of inputs (GQSA). Forward: the binary
mask; backward: the gradient passes straight through to the importance (the straight-through estimator)."""

from __future__ import annotations

import torch


def unstructured_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    drop = int(sparsity * score.numel())
    mask = torch.ones_like(score, dtype=torch.bool)
    if drop:
        # unsorted: the dropped set is all that matters, and sorting half of a weight matrix every step is slow
        mask.view(-1)[torch.topk(score.reshape(-1), drop, largest=False, sorted=False).indices] = False
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"N:M mask {n}:{m} needs in_features divisible by {m}; got {cols}")
    blocks = score.reshape(rows, cols // m, m)
    keep = torch.topk(blocks, n, dim=-1, sorted=False).indices
    return torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, keep, True).reshape(rows, cols)


def group_mask(score: torch.Tensor, sparsity: float, group_size: int) -> torch.Tensor:
    rows, cols = score.shape
    if cols % group_size:
        raise ValueError(f"GQSA groups of {group_size} need in_features divisible by it; got {cols}")
    groups = score.reshape(rows, cols // group_size, group_size).sum(-1)
    return unstructured_mask(groups, sparsity).repeat_interleave(group_size, dim=1)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(score.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def straight_through(score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as floats in the forward pass, ``d/d score = d/d mask`` in the backward pass."""
    return _StraightThrough.apply(score, mask)


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: ``initial`` before ``start``, ``final`` from ``end``, and in between
    ``final + (initial - final) * (1 - progress)**3``: fast pruning first, slow at the end."""
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1 - progress) ** 3
