"""``PSTModel``: the PEFT tuner that puts ``PSTLinear`` in place of each targeted ``nn.Linear``."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from .config import PSTConfig
from .layer import PSTLayer, PSTLinear


class PSTModel(BaseTuner):
    """Built by ``get_peft_model(model, PSTConfig(...))``; not constructed directly."""

    prefix: str = "pst_"
    tuner_layer_cls = PSTLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config: PSTConfig, adapter_name: str, target, target_name: str, parent,
                            current_key: str, **kwargs) -> None:
        if isinstance(target, PSTLayer):
            target.update_layer(adapter_name, config)
            return
        new_module = PSTLinear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
