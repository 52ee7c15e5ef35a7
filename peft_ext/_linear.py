"""What sparseflow's three PEFT methods share: the wrapped ``nn.Linear`` layer's set-up, the additive-update layer
(DSEE and GS-LoRA add ``get_delta_weight`` to W when merged and ``adapter_update(x)`` to the output otherwise), and
the tuner that puts one such layer in place of each targeted ``nn.Linear``."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from torch import nn


def init_linear_layer(layer: BaseTunerLayer, base_layer: nn.Module, method: str, kwargs: dict[str, Any]) -> None:
    """PEFT's per-layer state, and ``in_features`` / ``out_features``; refuses anything but an ``nn.Linear``."""
    layer.base_layer = base_layer
    layer._disable_adapters = False
    layer.merged_adapters = []
    layer.kwargs = kwargs
    base = layer.get_base_layer()
    if not isinstance(base, nn.Linear):
        raise TypeError(f"{method} adapts torch.nn.Linear layers; got {type(base).__name__}")
    layer.in_features, layer.out_features = base.in_features, base.out_features


def check_rank(layer: BaseTunerLayer, rank: int, method: str) -> None:
    if rank > min(layer.in_features, layer.out_features):
        raise ValueError(f"{method} rank r={rank} is larger than the layer "
                         f"[{layer.out_features}, {layer.in_features}] allows")


def holds(layer: BaseTunerLayer, adapter: str) -> bool:
    """The layer has weights for ``adapter`` (its first adapter parameter dict has the key)."""
    return adapter in getattr(layer, layer.adapter_layer_names[0])


class AdditiveLinear(nn.Module):
    """Merge, unmerge and forward of a layer whose adapter adds ``get_delta_weight(adapter)`` to W; subclasses
    (also ``BaseTunerLayer``s) give ``method``, ``get_delta_weight``, ``adapter_update(adapter, x)`` (the update's
    contribution to the output, unscaled, in the adapter's dtype) and ``adapter_scale(adapter)``."""

    method = ""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for adapter in check_adapters_to_merge(self, adapter_names):
            if not holds(self, adapter):
                continue
            weight = self.get_base_layer().weight
            merged = weight.data + self.get_delta_weight(adapter).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"merging {self.method} adapter {adapter!r} gives non-finite weights")
            weight.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn(f"{self.method}: nothing merged, nothing to unmerge", stacklevel=2)
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if holds(self, adapter):
                weight = self.get_base_layer().weight
                weight.data -= self.get_delta_weight(adapter).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for adapter in self.active_adapters:
            if holds(self, adapter):
                # one in-place op scales, casts and adds: the base output is fresh and its backward does not need
                # it, and a step at a few thousand tokens is bound by the host's per-op work
                result = result.add_(self.adapter_update(adapter, x), alpha=self.adapter_scale(adapter))
        return result


class LinearTuner(BaseTuner):
    """A tuner that wraps each targeted ``nn.Linear`` in ``linear_cls``; ``layer_args`` gives the arguments after
    the adapter name that both ``update_layer`` and ``linear_cls`` take (default: the config)."""

    linear_cls: type[nn.Module]

    def layer_args(self, config, current_key: str) -> tuple:
        return (config,)

    def _create_and_replace(self, config, adapter_name: str, target, target_name: str, parent, current_key: str,
                            **kwargs) -> None:
        args = self.layer_args(config, current_key)
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, *args)
            return
        new_module = self.linear_cls(target, adapter_name, *args)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)
