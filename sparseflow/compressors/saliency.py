"""Which weight groups matter: per-group saliency from calibration statistics, and the pruning mask.

All scores estimate how much the layer's output on calibration data changes when a group of ``g``
consecutive input weights of one output row is zeroed (larger = keep):

* ``magnitude``: ``sum_G w^2`` (no data).
* ``wanda``: ``sum_G w_j^2 H_jj`` with ``H = X^T X``: Wanda's |w| * ||x_j|| scoring, summed over the group in
  squares (the diagonal approximation of the output error).
* ``obs``: ``w_G^T [(H^-1)_GG]^-1 w_G``, the Optimal Brain Surgeon error of removing the whole group with the
  rest of the row re-fitted (exact for a quadratic loss).
"""

from __future__ import annotations

import torch

SALIENCY_METHODS = ("magnitude", "wanda", "obs")


def damped(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``H + damp * mean(diag H) * I`` with dead inputs (never active) given unit curvature."""
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    return h


def group_saliency(weight: torch.Tensor, group_size: int, method: str = "wanda",
                   hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Saliency ``[N, K/g]`` of every group of ``weight [N, K]``; ``hessian [K, K]`` for wanda/obs."""
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency {method!r}; choose one of {SALIENCY_METHODS}")
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features={k} is not a multiple of group_size={group_size}")
    w = weight.float().reshape(n, k // group_size, group_size)
    if method == "magnitude":
        return w.square().sum(-1)
    if hessian is None or hessian.shape != (k, k):
        raise ValueError(f"saliency {method!r} needs the input Hessian [K, K] = [{k}, {k}] from calibration")
    h = damped(hessian.float())
    if method == "wanda":
        return (w.square() * torch.diag(h).reshape(1, -1, group_size)).sum(-1)
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    blocks = h_inv.reshape(k // group_size, group_size, k // group_size, group_size).diagonal(dim1=0, dim2=2)
    inv_blocks = torch.linalg.inv(blocks.permute(2, 0, 1))  # [K/g, g, g]
    return torch.einsum("ncg,cgh,nch->nc", w, inv_blocks, w)


def keep_mask(saliency: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool ``[N, K/g]``: prune the ``sparsity`` fraction of least salient groups of the whole layer.

    Ranking is over all rows together (rows end up with different counts; the task-centric kernel splits
    work by kept groups, so uneven rows cost nothing).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n_prune = round(sparsity * saliency.numel())
    keep = torch.ones_like(saliency, dtype=torch.bool)
    if n_prune:
        keep.view(-1)[saliency.flatten().argsort()[:n_prune]] = False
    return keep
