"""A linear layer that computes with its GQSA-quantized weight while the quantization parameters train.

``w_hat = keep * (clamp(round(w / s + z), 0, 2^b - 1) - z) * s`` per group of ``g`` inputs, with
``s = s0 * exp(log_scale)`` and ``z = z0 + zero_shift`` (``s0, z0``: round-to-nearest start). Rounding
passes gradients straight through. Two modes:

* ``codes="free"`` (stage 1, BQPO): codes follow ``w`` and the parameters; ``w`` itself can train too.
* ``codes="frozen"`` (stage 2, E2E-OQP): codes and mask are fixed; only ``log_scale`` and ``zero_shift`` train.
"""

from __future__ import annotations

import torch

from sparseflow.kernels.gqsa import GQSAWeight, from_dense_groups
from sparseflow.kernels.gqsa.quantize import MIN_SCALE, group_scale_zero


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


class FakeQuantLinear(torch.nn.Module):
    """``[..., K] -> [..., N]`` with a trainable group-quantized ``[N, K]`` weight (float32 master copy)."""

    def __init__(self, linear: torch.nn.Linear, keep: torch.Tensor, *, bits: int, group_size: int,
                 train_weight: bool = False) -> None:
        super().__init__()
        n, k = linear.weight.shape
        self.bits, self.group_size, self.qmax = bits, group_size, (1 << bits) - 1
        w = linear.weight.detach().float().reshape(n, k // group_size, group_size)
        self.weight = torch.nn.Parameter(w.clone(), requires_grad=train_weight)
        s0, z0 = group_scale_zero(w, bits)
        self.register_buffer("s0", s0)
        self.register_buffer("z0", z0)
        self.register_buffer("keep", keep.to(torch.bool))
        self.register_buffer("codes", torch.empty(0))
        self.log_scale = torch.nn.Parameter(torch.zeros_like(s0))
        self.zero_shift = torch.nn.Parameter(torch.zeros_like(z0))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(),
                                                                        requires_grad=False)
        self.out_features, self.in_features = n, k

    def scale_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = (self.s0 * self.log_scale.exp()).clamp(min=MIN_SCALE)
        return scale, self.z0 + self.zero_shift

    def freeze_codes(self) -> None:
        """Stage 2: fix the current codes; the weight no longer trains."""
        scale, zero = self.scale_zero()
        with torch.no_grad():
            self.codes = (self.weight / scale[..., None] + zero[..., None]).round().clamp(0, self.qmax)
        self.weight.requires_grad_(False)

    def dequantized(self) -> torch.Tensor:
        scale, zero = self.scale_zero()
        if self.codes.numel():
            q = self.codes
        else:
            q = round_ste(self.weight / scale[..., None] + zero[..., None]).clamp(0, self.qmax)
        w_hat = (q - zero[..., None]) * scale[..., None] * self.keep[..., None]
        return w_hat.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.dequantized().to(x.dtype),
                                          None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def export(self) -> GQSAWeight:
        """The GQSA format: scale and zero rounded to float16 first, codes computed against the rounded values
        (or kept, when frozen), so the file computes exactly what it stores."""
        scale, zero = self.scale_zero()
        scale, zero = scale.half().float(), zero.half().float()
        if self.codes.numel():
            codes = self.codes
        else:
            codes = (self.weight / scale[..., None] + zero[..., None]).round().clamp(0, self.qmax)
        return from_dense_groups(codes.to(torch.int64), scale, zero, self.keep, bits=self.bits,
                                 group_size=self.group_size)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in (self.log_scale, self.zero_shift, self.weight) if p.requires_grad]
