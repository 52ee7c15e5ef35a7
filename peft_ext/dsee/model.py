"""``DSEEModel``: the PEFT tuner that puts ``DSEELinear`` in place of each targeted ``nn.Linear``."""

from __future__ import annotations

from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from .._linear import LinearTuner
from .layer import DSEELayer, DSEELinear


class DSEEModel(LinearTuner):
    """Built by ``get_peft_model(model, DSEEConfig(...))``; not constructed directly."""

    prefix: str = "dsee_"
    tuner_layer_cls = DSEELayer
    linear_cls = DSEELinear
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
