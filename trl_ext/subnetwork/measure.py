"""Update sparsity: which entries of each weight matrix RL training has changed, measured from a snapshot.

An entry counts as updated when ``|w_t - w_0| > tol``. It is measured twice:

* ``fp32``: on the weights as the optimizer holds them (float32 master weights, or the parameters themselves), i.e.
  every update however small;
* ``bf16``: on both weights rounded to bfloat16, i.e. what a bf16 checkpoint shows. An update smaller than half a
  bf16 step of its weight vanishes there: much of the sparsity reported for RL in bf16 is this rounding, and the
  two numbers side by side make that visible.

Everything here runs where the parameters are (the GPU during training), without gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

DEFAULT_TOLERANCES = (0.0, 1e-7, 1e-6, 1e-5, 1e-4)
VIEWS = ("fp32", "bf16")


def check_readable(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
    """Raise ``ValueError`` if a parameter is a shard (FSDP / DTensor / DeepSpeed ZeRO-3): its local values are not
    the weight, so any sparsity read from them would be wrong."""
    for name, p in named_params:
        if type(p).__name__ == "DTensor" or hasattr(p, "ds_numel") or hasattr(p, "_is_sharded") or (
                p.numel() == 0 and p.requires_grad):
            raise ValueError(
                f"parameter {name!r} is sharded ({type(p).__name__}, local shape {tuple(p.shape)}): the tracker needs "
                "whole weights. Track a run without parameter sharding (DDP or a single GPU), or gather the weights "
                "first (FSDP: full state dict; DeepSpeed: ZeRO stage 2 or zero_to_fp32) and use "
                "sparseflow.trl_ext.subnetwork.update_sparsity on the gathered tensors")


def tracked(model: torch.nn.Module, include: tuple[str, ...] = (), min_dim: int = 2) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters with at least ``min_dim`` dimensions (weight matrices) whose names contain one of
    ``include`` (all when empty)."""
    params = {n: p for n, p in model.named_parameters()
              if p.requires_grad and p.dim() >= min_dim and (not include or any(s in n for s in include))}
    check_readable(params.items())
    if not params:
        raise ValueError(f"no trainable parameters of >= {min_dim} dims match include={include}")
    return params


@torch.no_grad()
def changed(now: torch.Tensor, start: torch.Tensor, tol: float, view: str) -> torch.Tensor:
    """Bool mask of entries updated by more than ``tol`` in ``view`` ('fp32' or 'bf16')."""
    if view == "bf16":
        now, start = now.to(torch.bfloat16), start.to(torch.bfloat16)
    elif view != "fp32":
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    return (now.float() - start.float()).abs() > tol


@torch.no_grad()
def update_sparsity(now: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor],
                    tolerances: Iterable[float] = DEFAULT_TOLERANCES) -> dict:
    """Per matrix and overall: the fraction of entries *not* updated, for every view and tolerance.

    Returns ``{"per_matrix": {name: {view: {tol: sparsity}}}, "overall": {view: {tol: sparsity}}, "numel": {...}}``
    (tolerances as strings, for JSON)."""
    missing = set(start) - set(now)
    if missing:
        raise ValueError(f"snapshot has matrices the model does not: {sorted(missing)[:5]}")
    tolerances = list(tolerances)
    per, total_kept = {}, {v: {str(t): 0 for t in tolerances} for v in VIEWS}
    numel = {}
    for name, s in start.items():
        w = now[name]
        if w.shape != s.shape:
            raise ValueError(f"{name}: snapshot {tuple(s.shape)} vs model {tuple(w.shape)}")
        numel[name] = w.numel()
        per[name] = {}
        for view in VIEWS:
            per[name][view] = {}
            for t in tolerances:
                kept = w.numel() - int(changed(w, s, t, view).sum())
                per[name][view][str(t)] = kept / w.numel()
                total_kept[view][str(t)] += kept
    n = sum(numel.values())
    overall = {v: {t: k / n for t, k in d.items()} for v, d in total_kept.items()}
    return {"per_matrix": per, "overall": overall, "numel": numel}


@torch.no_grad()
def update_rank(now: torch.Tensor, start: torch.Tensor, rtol: float = 1e-3) -> int:
    """Numerical rank of the update ``w_t - w_0`` (float32; singular values above ``rtol`` x the largest)."""
    delta = (now.float() - start.float())
    if delta.dim() != 2:
        raise ValueError(f"update rank needs a matrix, got shape {tuple(delta.shape)}")
    s = torch.linalg.svdvals(delta)
    return int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0


def mask_overlap(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict:
    """Jaccard overlap of two runs' update masks (all matrices together), and what two independent random masks of
    the same densities would give (``p q / (p + q - p q)``)."""
    if a.keys() != b.keys():
        raise ValueError(f"the masks cover different matrices: only in one: {sorted(a.keys() ^ b.keys())[:5]}")
    inter = union = na = nb = n = 0
    for name in a:
        x, y = a[name].bool(), b[name].bool()
        if x.shape != y.shape:
            raise ValueError(f"{name}: mask shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
        inter += int((x & y).sum())
        union += int((x | y).sum())
        na, nb, n = na + int(x.sum()), nb + int(y.sum()), n + x.numel()
    p, q = na / n, nb / n
    chance = p * q / (p + q - p * q) if p + q > 0 else 0.0
    return {"jaccard": inter / union if union else 1.0, "chance": chance, "density_a": p, "density_b": q}
