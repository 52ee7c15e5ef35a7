"""PST's masks from an importance matrix ``[out, in]``: keep the highest entries (unstructured), the top ``n`` of
every ``m`` consecutive inputs (N:M), or the highest-scoring whole groups of inputs (GQSA). The masked weight
passes its gradient straight through the mask to the importance (the straight-through estimator)."""

from __future__ import annotations

import torch


def unstructured_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    drop = int(sparsity * score.numel())
    mask = torch.ones_like(score, dtype=torch.bool)
    if drop:
        # unsorted: the dropped set is all that matters, and sorting half of a weight matrix every step is slow
        dropped = torch.topk(score.reshape(-1), drop, largest=False, sorted=False).indices
        mask.view(-1).index_fill_(0, dropped, False)
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


class _MaskedStraightThrough(torch.autograd.Function):
    """``updated * mask`` whose mask passes its gradient straight through to ``score``: d/d updated = grad * mask,
    d/d score = grad * updated. One autograd node instead of a cast, a product and a straight-through node per
    layer and step (PST's step at a few thousand tokens is bound by the host's per-op work); it also saves the
    mask as bools rather than as floats."""

    @staticmethod
    def forward(ctx, updated: torch.Tensor, score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(updated, mask)
        return updated * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        updated, mask = ctx.saved_tensors
        grad_updated = grad * mask if ctx.needs_input_grad[0] else None
        grad_score = grad * updated if ctx.needs_input_grad[1] else None
        return grad_updated, grad_score, None


def masked_straight_through(updated: torch.Tensor, score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``updated * mask`` (``mask`` boolean, same shape) with the straight-through estimator for ``score``:
    forward the masked weight, backward ``d/d score = d/d mask = grad * updated``."""
    return _MaskedStraightThrough.apply(updated, score, mask)


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: ``initial`` before ``start``, ``final`` from ``end``, and in between
    ``final + (initial - final) * (1 - progress)**3``: fast pruning first, slow at the end."""
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1 - progress) ** 3
