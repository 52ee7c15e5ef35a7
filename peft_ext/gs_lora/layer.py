"""The GS-LoRA layer: a frozen ``nn.Linear`` plus, per adapter, ``gs_lora_A [r, in]``, ``gs_lora_B [out, r]`` and the
name of the group its weights belong to."""

from __future__ import annotations

import math
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .._linear import AdditiveLinear, check_rank, init_linear_layer
from .config import GSLoRAConfig


class GSLoRALayer(BaseTunerLayer):
    adapter_layer_names = ("gs_lora_A", "gs_lora_B")
    other_param_names = ("gs_lora_scale", "gs_lora_group")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        init_linear_layer(self, base_layer, "GS-LoRA", kwargs)
        self.gs_lora_A = nn.ParameterDict({})
        self.gs_lora_B = nn.ParameterDict({})
        self.gs_lora_scale: dict[str, float] = {}
        self.gs_lora_group: dict[str, str] = {}

    def update_layer(self, adapter_name: str, config: GSLoRAConfig, group: str) -> None:
        check_rank(self, config.r, "GS-LoRA")
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


class GSLoRALinear(AdditiveLinear, GSLoRALayer):
    """``nn.Linear`` with GS-LoRA adapters: ``y = base(x) + scale * x A^T B^T``."""

    method = "GS-LoRA"

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: GSLoRAConfig, group: str,
                 **kwargs: Any) -> None:
        super().__init__()
        GSLoRALayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, group)

    def adapter_update(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.gs_lora_A[adapter], self.gs_lora_B[adapter]
        return (x.to(a.dtype) @ a.t()) @ b.t()

    def adapter_scale(self, adapter: str) -> float:
        return self.gs_lora_scale[adapter]

    def __repr__(self) -> str:
        return "gs_lora." + super().__repr__()
