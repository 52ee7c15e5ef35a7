"""sparseflow's PEFT methods as PEFT config objects. Importing this package registers them with PEFT:

    import sparseflow.peft_ext
    from sparseflow.peft_ext import DSEEConfig
    model = get_peft_model(model, DSEEConfig(r=8, sparse_size=64, target_modules=["q_proj", "v_proj"]))

Needs the ``peft`` extra (``pip install 'sparseflow[peft]'``); ``_registry`` explains how the methods enter PEFT.
"""

try:
    import peft  # noqa: F401
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError("sparseflow.peft_ext needs PEFT: pip install 'sparseflow[peft]'") from err

from ._registry import LOAD_HINT, SparseflowPeftType, check_peft_version, register
from .dsee import DSEEConfig, DSEEModel
from .gs_lora import GSLoRAConfig, GSLoRAModel
from .pst import PSTConfig, PSTModel

check_peft_version()
register(SparseflowPeftType.DSEE, DSEEConfig, DSEEModel)
register(SparseflowPeftType.GS_LORA, GSLoRAConfig, GSLoRAModel)
register(SparseflowPeftType.PST, PSTConfig, PSTModel)

__all__ = ["LOAD_HINT", "DSEEConfig", "DSEEModel", "GSLoRAConfig", "GSLoRAModel", "PSTConfig", "PSTModel",
           "SparseflowPeftType"]
