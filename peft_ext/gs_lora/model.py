"""``GSLoRAModel``: the PEFT tuner that puts ``GSLoRALinear`` in place of each targeted ``nn.Linear`` and assigns
every one to its group (its transformer block, or itself)."""

from __future__ import annotations

import re

from .._linear import LinearTuner
from .config import GSLoRAConfig
from .layer import GSLoRALayer, GSLoRALinear

# the feed-forward projections per model type (GS-LoRA adapts the FFN by default)
FFN_TARGETS = {
    "llama": ["gate_proj", "up_proj", "down_proj"],
    "mistral": ["gate_proj", "up_proj", "down_proj"],
    "qwen2": ["gate_proj", "up_proj", "down_proj"],
    "qwen3": ["gate_proj", "up_proj", "down_proj"],
    "gemma": ["gate_proj", "up_proj", "down_proj"],
    "phi3": ["gate_up_proj", "down_proj"],
}
_BLOCK = re.compile(r"(^|\.)(layers|h|blocks|block|layer)\.(\d+)(\.|$)")


def group_of(module_name: str, group_by: str) -> str:
    """The group a module's LoRA weights join: ``block <i>`` (the transformer block in its name) or the name."""
    if group_by == "module":
        return module_name
    match = _BLOCK.search(module_name)
    return f"block {match.group(3)}" if match else module_name


class GSLoRAModel(LinearTuner):
    """Built by ``get_peft_model(model, GSLoRAConfig(...))``; not constructed directly."""

    prefix: str = "gs_lora_"
    tuner_layer_cls = GSLoRALayer
    linear_cls = GSLoRALinear
    target_module_mapping = FFN_TARGETS

    def layer_args(self, config: GSLoRAConfig, current_key: str) -> tuple:
        return config, group_of(current_key, config.group_by)
