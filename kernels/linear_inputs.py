"""The input checks every format's ``*_linear`` entry point makes before choosing a kernel."""

from __future__ import annotations

import torch

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_linear_inputs(x: torch.Tensor, w, bias: torch.Tensor | None) -> None:
    """Raise ``ValueError`` saying what is wrong if ``x [..., K]`` / ``bias [N]`` do not fit weight ``w`` (any
    format with ``in_features``, ``out_features`` and ``device``) or ``x`` has an unsupported dtype."""
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension; the weight expects {w.in_features}")
    if x.dtype not in ACT_DTYPES:
        raise ValueError(f"x.dtype={x.dtype} is not supported; use one of {ACT_DTYPES}")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but the weight is on {w.device}")
    if bias is not None and tuple(bias.shape) != (w.out_features,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({w.out_features},)")
