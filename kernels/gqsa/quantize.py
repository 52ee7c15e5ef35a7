"""Round-to-nearest group quantization into the GQSA format (plain torch).

This is the baseline quantizer: asymmetric min/max per group, range widened to include 0 (so the
zero point stays inside ``[0, 2**bits - 1]`` and fits float16), optional group pruning mask.
The GQSA issue's calibrated stages refine what this produces.
"""

from __future__ import annotations

import torch

from .format import GQSAWeight, check_bits_and_group_size, from_dense_groups

# Smallest scale stored: keeps float16 away from 0 for all-zero groups (their codes are then all `zero`).
MIN_SCALE = 1e-6


def group_scale_zero(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group float16-representable ``scale`` and ``zero`` for ``groups [..., g]``."""
    qmax = (1 << bits) - 1
    lo = groups.amin(-1).clamp(max=0)
    hi = groups.amax(-1).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=MIN_SCALE).to(torch.float16).float()
    zero = (-lo / scale).round().clamp(0, qmax).to(torch.float16).float()
    return scale, zero


def quantize_rtn(weight: torch.Tensor, *, bits: int = 4, group_size: int = 16,
                 keep: torch.Tensor | None = None) -> GQSAWeight:
    """Quantize a dense ``weight [N, K]`` to GQSA by rounding to nearest.

    Args:
        weight: ``[N, K]`` float tensor, ``K`` a multiple of ``group_size``.
        bits, group_size: see ``format.SUPPORTED_BITS`` / ``SUPPORTED_GROUP_SIZES``.
        keep: optional bool ``[N, K/group_size]``; False prunes the group (default: keep all).
    """
    check_bits_and_group_size(bits, group_size)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features={k} is not a multiple of group_size={group_size}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    groups = weight.detach().float().reshape(n, k // group_size, group_size)
    scale, zero = group_scale_zero(groups, bits)
    codes = (groups / scale[..., None] + zero[..., None]).round().clamp(0, (1 << bits) - 1)
    if keep is None:
        keep = torch.ones(n, k // group_size, dtype=torch.bool, device=weight.device)
    return from_dense_groups(codes.to(torch.int64), scale, zero, keep, bits=bits, group_size=group_size)
