"""The DSEE layer: a frozen ``nn.Linear`` plus, per adapter, ``dsee_A [r, in]``, ``dsee_B [out, r]`` and the sparse
update's ``dsee_values [nnz]`` at ``dsee_indices [nnz]`` (flat indices into ``[out, in]``, a buffer)."""

from __future__ import annotations

import math
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .._buffers import AdapterBuffers, derived
from .._linear import AdditiveLinear, check_rank, init_linear_layer
from .config import DSEEConfig
from .support import select_support, support_size


def sparse_linear(x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, out_features: int,
                  in_features: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``out + x [..., in] @ S.T -> [..., out]`` for S given by flat ``indices`` and ``values`` ``[nnz]``, without a
    dense S: gather the inputs each entry reads, weigh them, add them into their output features. O(tokens x nnz)
    time and memory beyond ``out`` (default zeros).

    The op-by-op form, differentiated by autograd: the reference ``low_rank_plus_sparse`` (what ``DSEELinear``
    runs) is tested against. ``out`` must be a fresh tensor, not a view, whose producer's backward does not need it
    (``F.linear``'s output): the add goes into it in place and its gradient passes through untouched."""
    rows, cols = indices // in_features, indices % in_features
    if out is None:
        out = x.new_zeros(*x.shape[:-1], out_features)
    return out.index_add_(-1, rows, x.index_select(-1, cols) * values.to(x.dtype))


class _LowRankPlusSparse(torch.autograd.Function):
    """``x A^T B^T + x S^T`` for ``x [T, in]`` (S given by its rows, columns and values ``[nnz]``) as one autograd
    node. A step at a few thousand tokens is bound by the host's work per op: autograd over the op-by-op form
    (two ``F.linear`` and ``sparse_linear``) runs 11 backward ops per layer, among them a zero-filled ``[T, in]``
    gradient for the gathered inputs and its addition into x's gradient; here the sparse part of x's gradient is
    added into the low-rank part's in place, 9 ops, and a layer's 5 autograd nodes become one. H200, 0.32B Llama
    (peft_step, one run before and one after; 4k ratios move ~0.1-0.2 between runs): DSEE 1.21x -> 1.08x LoRA's
    step at 4k tokens, 1.08x -> 0.98x at 16k. ``sparse_linear`` with ``F.linear`` is the reference it is tested
    against."""

    @staticmethod
    def forward(ctx, x, a, b, values, rows, cols):
        h = x @ a.t()
        v = values.to(x.dtype)
        x_kept = x.index_select(1, cols)
        out = (h @ b.t()).index_add_(1, rows, x_kept * v)
        ctx.save_for_backward(x, a, b, v, h, x_kept, rows, cols)
        ctx.values_dtype = values.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, a, b, v, h, x_kept, rows, cols = ctx.saved_tensors
        need_x, need_a, need_b, need_v = ctx.needs_input_grad[:4]
        grad_b = grad.t() @ h if need_b else None
        grad_h = grad @ b if need_a or need_x else None
        grad_a = grad_h.t() @ x if need_a else None
        grad_kept = grad.index_select(1, rows) if need_v or need_x else None
        grad_v = (grad_kept * x_kept).sum(0).to(ctx.values_dtype) if need_v else None
        grad_x = (grad_h @ a).index_add_(1, cols, grad_kept * v) if need_x else None
        return grad_x, grad_a, grad_b, grad_v, None, None


def low_rank_plus_sparse(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, values: torch.Tensor,
                         rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x [..., in] -> x A^T B^T + x S^T [..., out]`` with ``a [r, in]``, ``b [out, r]`` and S's ``values [nnz]``
    at ``(rows, cols)`` (int64 ``[nnz]`` each; repeats add up). x, a and b share a dtype."""
    out = _LowRankPlusSparse.apply(x.reshape(-1, x.shape[-1]), a, b, values, rows, cols)
    return out.view(*x.shape[:-1], b.shape[0])


class DSEELayer(BaseTunerLayer):
    adapter_layer_names = ("dsee_A", "dsee_B", "dsee_values")
    other_param_names = ("dsee_indices", "dsee_scale")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        init_linear_layer(self, base_layer, "DSEE", kwargs)
        self.dsee_A = nn.ParameterDict({})
        self.dsee_B = nn.ParameterDict({})
        self.dsee_values = nn.ParameterDict({})
        self.dsee_indices = AdapterBuffers()
        self.dsee_scale: dict[str, float] = {}
        self._support_cache: dict[str, tuple] = {}

    def update_layer(self, adapter_name: str, config: DSEEConfig) -> None:
        check_rank(self, config.r, "DSEE")
        weight = self.get_base_layer().weight
        nnz = support_size(config.sparse_size, weight.numel())
        self.dsee_A[adapter_name] = nn.Parameter(torch.empty(config.r, self.in_features))
        nn.init.kaiming_uniform_(self.dsee_A[adapter_name], a=math.sqrt(5))
        self.dsee_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, config.r))
        self.dsee_values[adapter_name] = nn.Parameter(torch.zeros(nnz))
        if not config.init_weights:
            with torch.no_grad():
                self.dsee_B[adapter_name].normal_(0.0, 0.1)
                self.dsee_values[adapter_name].normal_(0.0, 0.1)
        self.dsee_indices[adapter_name] = select_support(weight, nnz, config.sparse_init, config.decomposition_rank,
                                                         seed=config.seed).cpu()
        self.dsee_scale[adapter_name] = config.lora_alpha / config.r
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def sparse_dense(self, adapter: str) -> torch.Tensor:
        """S as a dense ``[out, in]`` matrix (for merging and inspection)."""
        values = self.dsee_values[adapter]
        dense = values.new_zeros(self.out_features * self.in_features)
        return dense.index_put((self.dsee_indices[adapter].to(values.device),), values).view(self.out_features,
                                                                                              self.in_features)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scale * (B A + S)``, ``[out, in]``."""
        return self.dsee_scale[adapter] * (self.dsee_B[adapter] @ self.dsee_A[adapter] + self.sparse_dense(adapter))


class DSEELinear(AdditiveLinear, DSEELayer):
    """``nn.Linear`` with DSEE adapters: ``y = base(x) + scale * (x A^T B^T + x S^T)``."""

    method = "DSEE"

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: DSEEConfig, **kwargs: Any) -> None:
        super().__init__()
        DSEELayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def adapter_update(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        a = self.dsee_A[adapter]
        return low_rank_plus_sparse(x.to(a.dtype), a, self.dsee_B[adapter], self.dsee_values[adapter],
                                    *self.support_rows_cols(adapter))

    def adapter_scale(self, adapter: str) -> float:
        return self.dsee_scale[adapter]

    def support_rows_cols(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Omega's rows and columns, ``[nnz]`` each, kept between steps (two fewer launches per layer and step)."""
        return derived(self._support_cache, adapter, self.dsee_indices[adapter],
                       lambda indices: (indices // self.in_features, indices % self.in_features))

    def __repr__(self) -> str:
        return "dsee." + super().__repr__()
