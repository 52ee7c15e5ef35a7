"""The PST layer: a frozen ``nn.Linear`` computing with ``(W + U V) * M``. Per adapter: ``pst_U [out, r]``,
``pst_V [r, in]``, the learnt importance ``pst_A [out, k]``, ``pst_B [k, in]``, ``pst_R [out]``, ``pst_C [in]``, and
the current sparsity ``pst_level`` (a saved buffer, set by ``SparsityScheduleCallback``)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from .._buffers import AdapterBuffers, derived
from .._linear import check_rank, init_linear_layer
from .config import PSTConfig
from .masks import group_mask, nm_mask, unstructured_mask


class PSTLayer(BaseTunerLayer):
    adapter_layer_names = ("pst_U", "pst_V", "pst_A", "pst_B", "pst_R", "pst_C")
    other_param_names = ("pst_level", "pst_config")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        init_linear_layer(self, base_layer, "PST", kwargs)
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ParameterDict({}))
        self.pst_level = AdapterBuffers()
        self.pst_config: dict[str, PSTConfig] = {}
        self._level_cache: dict[str, tuple] = {}

    def update_layer(self, adapter_name: str, config: PSTConfig) -> None:
        check_rank(self, max(config.r, config.importance_rank), "PST")
        if config.mask == "nm" and self.in_features % config.pattern()[1]:
            raise ValueError(f"PST N:M mask {config.nm_pattern}: in_features {self.in_features} is not divisible")
        if config.mask == "gqsa" and self.in_features % config.group_size:
            raise ValueError(f"PST GQSA mask: in_features {self.in_features} is not a multiple of {config.group_size}")
        o, i = self.out_features, self.in_features
        self.pst_U[adapter_name] = nn.Parameter(torch.zeros(o, config.r))
        self.pst_V[adapter_name] = nn.Parameter(torch.empty(config.r, i))
        self.pst_A[adapter_name] = nn.Parameter(torch.zeros(o, config.importance_rank))
        self.pst_B[adapter_name] = nn.Parameter(torch.empty(config.importance_rank, i))
        self.pst_R[adapter_name] = nn.Parameter(torch.zeros(o))
        self.pst_C[adapter_name] = nn.Parameter(torch.zeros(i))
        nn.init.kaiming_uniform_(self.pst_V[adapter_name], a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.pst_B[adapter_name], a=math.sqrt(5))
        if not config.init_weights:
            with torch.no_grad():
                for name in ("pst_U", "pst_A", "pst_R", "pst_C"):
                    getattr(self, name)[adapter_name].normal_(0.0, 0.02)
        self.pst_level[adapter_name] = torch.tensor(0.0)
        self.pst_config[adapter_name] = config
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def level(self, adapter: str) -> float:
        """The current sparsity, read back from its buffer only when the buffer changed: a ``float()`` of a GPU
        tensor in every forward pass is a device sync per layer, which stops the host queueing work ahead."""
        return derived(self._level_cache, adapter, self.pst_level[adapter], float)

    def updated_weight(self, adapter: str) -> torch.Tensor:
        """``W' = W + U V``."""
        return self.get_base_layer().weight + self.pst_U[adapter] @ self.pst_V[adapter]

    def importance(self, adapter: str, updated: torch.Tensor) -> torch.Tensor:
        """``|W'| + A B + R 1^T + 1 C^T``."""
        # one addmm and two in-place adds: fewer autograd nodes than the sum written out (a host-bound step counts
        # them), same arithmetic
        return (torch.addmm(updated.abs(), self.pst_A[adapter], self.pst_B[adapter])
                .add_(self.pst_R[adapter][:, None]).add_(self.pst_C[adapter]))

    def mask(self, adapter: str, score: torch.Tensor) -> torch.Tensor:
        """The binary mask for the current sparsity level. N:M: unstructured while the level ramps up, the N:M
        pattern once it reaches the pattern's own sparsity 1 - n/m (so the adapter starts as the identity)."""
        config = self.pst_config[adapter]
        level = self.level(adapter)
        with torch.no_grad():
            if config.mask == "nm":
                n, m = config.pattern()
                return nm_mask(score, n, m) if level >= 1 - n / m - 1e-9 else unstructured_mask(score, level)
            if config.mask == "gqsa":
                return group_mask(score, level, config.group_size)
            return unstructured_mask(score, level)

    def sparse_weight(self, adapter: str) -> torch.Tensor:
        """``W' * M`` with M's straight-through gradient; ``[out, in]``."""
        params = [getattr(self, name)[adapter] for name in self.adapter_layer_names]
        return _SparseWeight.apply(self, adapter, *params)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        return self.sparse_weight(adapter) - self.get_base_layer().weight


class _SparseWeight(torch.autograd.Function):
    """``W' * M`` from the six factors (``pst_U, pst_V, pst_A, pst_B, pst_R, pst_C``) as one autograd node, the
    layer's own methods doing the forward arithmetic; backward by hand, with M's straight-through gradient:

        g_score = g * W'                      (d/d score = d/d M)
        g_W' = g * M + g_score * sign(W')     (the product, and |W'| inside the score)
        U, V from g_W'; A, B, R, C from g_score.

    The same ops recorded one by one make ~25 autograd nodes per layer and step, and PST's step at a few thousand
    tokens is bound by the host's per-op work."""

    @staticmethod
    def forward(ctx, layer, adapter, u, v, a, b, r, c):
        updated = layer.updated_weight(adapter)
        mask = layer.mask(adapter, layer.importance(adapter, updated))
        ctx.save_for_backward(updated, mask, u, v, a, b)
        return updated * mask

    @staticmethod
    def backward(ctx, grad):
        updated, mask, u, v, a, b = ctx.saved_tensors
        grad_score = grad * updated
        grad_updated = torch.addcmul(grad * mask, grad_score, updated.sign())
        return (None, None, grad_updated @ v.t(), u.t() @ grad_updated, grad_score @ b.t(), a.t() @ grad_score,
                grad_score.sum(1), grad_score.sum(0))


class PSTLinear(nn.Module, PSTLayer):
    """``nn.Linear`` computing with ``(W + U V) * M`` while the adapter is active."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: PSTConfig, **kwargs: Any) -> None:
        super().__init__()
        PSTLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapters = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.pst_U]
        if len(adapters) > 1:
            raise ValueError("PST replaces the weight by a masked one: merge one adapter at a time")
        for adapter in adapters:
            weight = self.get_base_layer().weight
            with torch.no_grad():
                merged = self.sparse_weight(adapter).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"merging PST adapter {adapter!r} gives non-finite weights")
            self._unmerged_weight = weight.data.clone()
            weight.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("PST: nothing merged, nothing to unmerge", stacklevel=2)
            return
        self.get_base_layer().weight.data = self._unmerged_weight
        del self._unmerged_weight
        self.merged_adapters.clear()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.pst_U]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        if len(active) > 1:
            raise ValueError("PST: one active adapter at a time (each replaces the weight)")
        weight = self.sparse_weight(active[0])
        return F.linear(x, weight.to(x.dtype), self.get_base_layer().bias)

    def __repr__(self) -> str:
        return "pst." + super().__repr__()
