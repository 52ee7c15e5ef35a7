"""GS-LoRA as a PEFT method: ``get_peft_model(model, GSLoRAConfig(...))`` plus ``GroupSparsityCallback`` (the group
lasso) and ``ForgettingTrainer`` (retain + bounded forget loss; GS-LoRA++'s prototype terms with ``prototypes=``)."""

from .config import GSLoRAConfig
from .layer import GSLoRALayer, GSLoRALinear
from .model import GSLoRAModel, group_of
from .prototypes import pooled_features, prototype, prototype_loss
from .sparsity import (
    ForgettingTrainer,
    GroupSparsityCallback,
    add_forgetting_task,
    forgetting_loss,
    group_norms,
    group_soft_threshold,
    groups,
)

__all__ = ["ForgettingTrainer", "GSLoRAConfig", "GSLoRALayer", "GSLoRALinear", "GSLoRAModel", "GroupSparsityCallback",
           "add_forgetting_task", "forgetting_loss", "group_norms", "group_of", "group_soft_threshold", "groups",
           "pooled_features", "prototype", "prototype_loss"]
