"""``torch.nn`` modules over the shared formats (what the transformers loader puts into a model)."""

from __future__ import annotations

import torch

from sparseflow.kernels.gqsa import TENSOR_NAMES, GQSAWeight, dequantize, gqsa_linear
from sparseflow.kernels.gqsa.format import TENSOR_DTYPES
from sparseflow.kernels.nm import NMWeight, nm_linear
from sparseflow.kernels.nm import expand as nm_expand


class GQSALinear(torch.nn.Module):
    """Drop-in for ``nn.Linear`` whose weight is a ``GQSAWeight`` (kept as buffers, so
    ``state_dict`` and ``.to(device)`` work). ``forward``: ``[..., in_features] -> [..., out_features]``."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, group_size: int, bits: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.bits = group_size, bits
        for name in TENSOR_NAMES:
            self.register_buffer(name, torch.empty(0, dtype=TENSOR_DTYPES[name]))
        self.bias = torch.nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_weight(cls, w: GQSAWeight, bias: torch.Tensor | None = None) -> GQSALinear:
        module = cls(w.in_features, w.out_features, bias=bias is not None, group_size=w.group_size, bits=w.bits)
        module.set_weight(w)
        if bias is not None:
            module.bias.data = bias.detach().clone()
        return module

    def set_weight(self, w: GQSAWeight) -> None:
        if (w.out_features, w.in_features, w.group_size, w.bits) != (
            self.out_features, self.in_features, self.group_size, self.bits
        ):
            raise ValueError(
                f"GQSA weight [{w.out_features}, {w.in_features}] g={w.group_size} bits={w.bits} does not fit "
                f"GQSALinear [{self.out_features}, {self.in_features}] g={self.group_size} bits={self.bits}"
            )
        for name, tensor in w.tensors().items():
            setattr(self, name, tensor)

    def weight_format(self) -> GQSAWeight:
        return GQSAWeight(self.codes, self.group_col, self.row_ptr, self.scale, self.zero,
                          in_features=self.in_features, group_size=self.group_size, bits=self.bits)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.weight_format(), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return gqsa_linear(x, self.weight_format(), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


class NMLinear(torch.nn.Module):
    """Drop-in for ``nn.Linear`` whose weight is an ``NMWeight`` (N:M sparse; tensors kept as buffers).
    ``forward``: ``[..., in_features] -> [..., out_features]``."""

    def __init__(self, w: NMWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = w.in_features, w.out_features
        self.n, self.m, self.value_format, self.group_size = w.n, w.m, w.value_format, w.group_size
        for name, tensor in w.tensors().items():
            self.register_buffer(name, tensor)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_weight(cls, w: NMWeight, bias: torch.Tensor | None = None) -> NMLinear:
        return cls(w, bias)

    def weight_format(self) -> NMWeight:
        return NMWeight(self.values, self.indices, getattr(self, "scales", None), self.in_features, self.n, self.m,
                        self.value_format, self.group_size)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return nm_expand(self.weight_format(), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nm_linear(x, self.weight_format(), bias)

    def extra_repr(self) -> str:
        fmt = self.value_format + (f" g{self.group_size}" if self.group_size else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}, pattern={self.n}:{self.m}, "
                f"values={fmt}, bias={self.bias is not None}")
