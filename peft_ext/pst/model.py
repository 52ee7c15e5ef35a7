"""``PSTModel``: the PEFT tuner that puts ``PSTLinear`` in place of each targeted ``nn.Linear``."""

from __future__ import annotations

from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from .._linear import LinearTuner
from .layer import PSTLayer, PSTLinear


class PSTModel(LinearTuner):
    """Built by ``get_peft_model(model, PSTConfig(...))``; not constructed directly."""

    prefix: str = "pst_"
    tuner_layer_cls = PSTLayer
    linear_cls = PSTLinear
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
