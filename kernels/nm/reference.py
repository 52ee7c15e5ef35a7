"""Plain-torch reference for the N:M format: the spec every kernel is tested against, and the CPU fallback."""

from __future__ import annotations

import torch

from .format import NMWeight


def expand_reference(w: NMWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense weight ``[N, K]`` in ``dtype``: kept values at their input columns, zeros elsewhere (float32 math)."""
    dense = torch.zeros(w.out_features, w.in_features, dtype=torch.float32, device=w.device)
    dense.scatter_(1, w.input_columns(), w.dequantized_values(torch.float32))
    return dense.to(dtype)


def nm_linear_reference(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W.T + bias`` with ``x [..., K]`` -> ``y [..., N]`` in ``x.dtype`` (float32 arithmetic)."""
    y = torch.nn.functional.linear(x.float(), expand_reference(w, torch.float32),
                                   None if bias is None else bias.float())
    return y.to(x.dtype)
