"""Optimal Brain Surgeon column sweep: the shared core of GPTQ (quantize) and SparseGPT (prune).

Columns of ``W [N, K]`` are processed left to right; after column ``j`` is replaced (quantized or zeroed),
its error is spread over the columns not yet processed through the inverse Hessian of the layer input,
``H = X^T X``, which keeps the layer output on the calibration data close to the original.
Algorithm as published (Frantar & Alistarh, GPTQ 2022 / SparseGPT 2023); this is an independent implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparseflow.compressors.saliency import damped


def inverse_hessian_cholesky(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of ``H^-1`` (what the column sweep reads)."""
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(damped(h.float(), damp)))
    return torch.linalg.cholesky(h_inv, upper=True)


@torch.no_grad()
def obs_sweep(weight: torch.Tensor, hessian: torch.Tensor, *, block: int = 128,
              make_quantizer: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
              quant_group: int = 128, prune: tuple[int, int] | None = None, keep: torch.Tensor | None = None,
              damp: float = 0.01) -> torch.Tensor:
    """The compressed dense weight ``[N, K]`` (float32).

    Args:
        make_quantizer: at the start of every ``quant_group`` columns, called with those columns' current
            (already error-corrected) weights ``[N, quant_group]``; returns the column quantizer for the group
            (GPTQ with group parameters). ``block`` must be a multiple of ``quant_group``.
        prune: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs, chosen by ``w^2 / [H^-1]_jj^2``
            (SparseGPT's N:M rule). Pruning happens before quantization when both are given.
        keep: a fixed bool mask ``[N, K]`` (False = prune), e.g. GQSA's group mask: pruned weights are zeroed
            and their error is compensated by the columns to their right.
    """
    w = weight.detach().float().clone()
    k = w.shape[1]
    u = inverse_hessian_cholesky(hessian, damp)
    dead = torch.diag(hessian) == 0
    w[:, dead] = 0
    if prune is not None and (k % prune[1] or block % prune[1]):
        raise ValueError(f"in_features={k} and block={block} must be multiples of the N:M block {prune[1]}")
    if make_quantizer is not None and (k % quant_group or block % quant_group):
        raise ValueError(f"in_features={k} and block={block} must be multiples of the group {quant_group}")
    q_col = None
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        w_blk = w[:, b0:b1].clone()
        err_blk = torch.zeros_like(w_blk)
        u_blk = u[b0:b1, b0:b1]
        mask = torch.ones_like(w_blk, dtype=torch.bool) if keep is None else keep[:, b0:b1].clone()
        for j in range(b1 - b0):
            col = b0 + j
            if prune is not None and j % prune[1] == 0:
                n, m = prune
                d = torch.diag(u_blk)[j:j + m]
                score = w_blk[:, j:j + m].square() / d.square()
                drop = score.argsort(dim=1)[:, : m - n]
                mask[:, j:j + m].scatter_(1, drop, False)
            if make_quantizer is not None and col % quant_group == 0:
                q_col = make_quantizer(w_blk[:, j:j + quant_group])
            x = w_blk[:, j]
            q = x * mask[:, j]
            if q_col is not None:
                q = q_col(q) * mask[:, j]
            err = (x - q) / u_blk[j, j]
            w_blk[:, j:] -= err[:, None] * u_blk[j, j:][None, :]
            w_blk[:, j] = q
            err_blk[:, j] = err
        w[:, b0:b1] = w_blk
        w[:, b1:] -= err_blk @ u[b0:b1, b1:]
    return w
