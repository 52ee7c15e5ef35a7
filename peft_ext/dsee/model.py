"""``DSEEModel``: the PEFT tuner that puts ``DSEELinear`` in place of each targeted ``nn.Linear``."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from .config import DSEEConfig
from .layer import DSEELayer, DSEELinear


class DSEEModel(BaseTuner):
    """Built by ``get_peft_model(model, DSEEConfig(...))``; not constructed directly."""

    prefix: str = "dsee_"
    tuner_layer_cls = DSEELayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config: DSEEConfig, adapter_name: str, target, target_name: str, parent,
                            current_key: str, **kwargs) -> None:
        if isinstance(target, DSEELayer):
            target.update_layer(adapter_name, config)
            return
        new_module = DSEELinear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)
