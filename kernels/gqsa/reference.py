"""Plain-torch reference for GQSA: the spec every kernel is tested against, and the CPU fallback."""

from __future__ import annotations

import torch

from ..packing import unpack_codes
from .format import GQSAWeight


def dequantize_reference(w: GQSAWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense weight ``[N, K]`` in ``dtype``; pruned groups are zero. Arithmetic in float32."""
    n, g = w.out_features, w.group_size
    codes = unpack_codes(w.codes, w.bits).float()  # [nnz, g]
    values = (codes - w.zero.float()[:, None]) * w.scale.float()[:, None]
    rows = torch.repeat_interleave(torch.arange(n, device=w.device), w.row_ptr.diff().to(torch.int64))
    dense = torch.zeros(n, w.num_group_columns, g, dtype=torch.float32, device=w.device)
    dense[rows, w.group_col.to(torch.int64)] = values
    return dense.reshape(n, w.in_features).to(dtype)


def gqsa_linear_reference(x: torch.Tensor, w: GQSAWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W.T + bias`` with ``x [..., K]`` -> ``y [..., N]`` in ``x.dtype`` (float32 arithmetic)."""
    y = torch.nn.functional.linear(x.float(), dequantize_reference(w, torch.float32),
                                   None if bias is None else bias.float())
    return y.to(x.dtype)
