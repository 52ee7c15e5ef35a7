"""The GS-LoRA layer: a frozen ``nn.Linear`` plus, per adapter, ``gs_lora_A [r, in]``, ``gs_lora_B [out, r]`` and the
name of the group its weights belong to."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from .config import GSLoRAConfig


class GSLoRALayer(BaseTunerLayer):
    adapter_layer_names = ("gs_lora_A", "gs_lora_B")
    other_param_names = ("gs_lora_scale", "gs_lora_group")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.gs_lora_A = nn.ParameterDict({})
        self.gs_lora_B = nn.ParameterDict({})
        self.gs_lora_scale: dict[str, float] = {}
        self.gs_lora_group: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"GS-LoRA adapts torch.nn.Linear layers; got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(self, adapter_name: str, config: GSLoRAConfig, group: str) -> None:
        if config.r > min(self.in_features, self.out_features):
            raise ValueError(f"GS-LoRA rank r={config.r} is larger than the layer "
                             f"[{self.out_features}, {self.in_features}] allows")
        self.gs_lora_A[adapter_name] = nn.Parameter(torch.empty(config.r, self.in_features))
        nn.init.kaiming_uniform_(self.gs_lora_A[adapter_name], a=math.sqrt(5))
        self.gs_lora_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, config.r))
        if not config.init_weights:
            with torch.no_grad():
                self.gs_lora_B[adapter_name].normal_(0.0, 0.1)
        self.gs_lora_scale[adapter_name] = config.lora_alpha / config.r
        self.gs_lora_group[adapter_name] = group
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scale * B A``, ``[out, in]``."""
        return self.gs_lora_scale[adapter] * (self.gs_lora_B[adapter] @ self.gs_lora_A[adapter])


class GSLoRALinear(nn.Module, GSLoRALayer):
    """``nn.Linear`` with GS-LoRA adapters: ``y = base(x) + scale * x A^T B^T``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: GSLoRAConfig, group: str,
                 **kwargs: Any) -> None:
        super().__init__()
        GSLoRALayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, group)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.gs_lora_A:
                continue
            weight = self.get_base_layer().weight
            merged = weight.data + self.get_delta_weight(adapter).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"merging GS-LoRA adapter {adapter!r} gives non-finite weights")
            weight.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("GS-LoRA: nothing merged, nothing to unmerge", stacklevel=2)
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.gs_lora_A:
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
            if adapter not in self.gs_lora_A:
                continue
            a, b = self.gs_lora_A[adapter], self.gs_lora_B[adapter]
            update = (x.to(a.dtype) @ a.t()) @ b.t()
            result = result + (self.gs_lora_scale[adapter] * update).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "gs_lora." + super().__repr__()
