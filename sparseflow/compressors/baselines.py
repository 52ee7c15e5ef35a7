"""The methods GQSA is compared with, as dense "fake-compressed" weights ``[N, K]`` (same shape, pruned entries
zero, quantized entries on their grid), so one evaluation path scores them all.

* N:M pruning along the input dimension: ``magnitude``, ``wanda`` (|w| * ||x_j||), ``sparsegpt`` (OBS).
* Group quantization (asymmetric, per ``group_size`` inputs): ``rtn`` and ``gptq`` (OBS).
"""

from __future__ import annotations

import torch

from sparseflow.compressors.obs import obs_sweep
from sparseflow.compressors.saliency import damped
from sparseflow.kernels.gqsa.quantize import group_scale_zero

NM_METHODS = ("magnitude", "wanda", "sparsegpt")
QUANT_METHODS = ("rtn", "gptq")


def nm_prune(weight: torch.Tensor, n: int, m: int, method: str = "magnitude",
             hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Keep ``n`` of every ``m`` consecutive inputs of each row of ``weight [N, K]``."""
    if method not in NM_METHODS:
        raise ValueError(f"unknown N:M method {method!r}; choose one of {NM_METHODS}")
    if not 0 < n < m or weight.shape[1] % m:
        raise ValueError(f"N:M = {n}:{m} needs 0 < N < M and M dividing in_features={weight.shape[1]}")
    if method == "sparsegpt":
        if hessian is None:
            raise ValueError("sparsegpt needs the input Hessian from calibration")
        return obs_sweep(weight, hessian, prune=(n, m))
    w = weight.detach().float()
    score = w.abs()
    if method == "wanda":
        if hessian is None:
            raise ValueError("wanda needs the input Hessian (its diagonal: ||x_j||^2) from calibration")
        score = score * torch.diag(damped(hessian.float())).sqrt()[None, :]
    blocks = score.reshape(w.shape[0], -1, m)
    drop = blocks.argsort(dim=-1)[..., : m - n]
    mask = torch.ones_like(blocks, dtype=torch.bool).scatter_(-1, drop, False)
    return w * mask.reshape(w.shape)


def fake_quantize_groups(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest asymmetric group quantization of ``w [N, K]``, returned dequantized."""
    n, k = w.shape
    groups = w.float().reshape(n, k // group_size, group_size)
    scale, zero = group_scale_zero(groups, bits)
    q = (groups / scale[..., None] + zero[..., None]).round().clamp(0, (1 << bits) - 1)
    return ((q - zero[..., None]) * scale[..., None]).reshape(n, k)


def group_quantize(weight: torch.Tensor, bits: int, group_size: int = 128, method: str = "rtn",
                   hessian: torch.Tensor | None = None) -> torch.Tensor:
    """W``bits`` g``group_size`` weight, dequantized (``rtn``, or ``gptq`` with calibration)."""
    if method not in QUANT_METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {QUANT_METHODS}")
    if weight.shape[1] % group_size:
        raise ValueError(f"in_features={weight.shape[1]} is not a multiple of group_size={group_size}")
    if method == "rtn":
        return fake_quantize_groups(weight, bits, group_size)
    if hessian is None:
        raise ValueError("gptq needs the input Hessian from calibration")
    qmax = (1 << bits) - 1

    def make_quantizer(group: torch.Tensor):
        scale, zero = group_scale_zero(group, bits)
        return lambda x: ((x / scale + zero).round().clamp(0, qmax) - zero) * scale

    block = group_size * max(1, 128 // group_size)
    return obs_sweep(weight, hessian, block=block, make_quantizer=make_quantizer, quant_group=group_size)
