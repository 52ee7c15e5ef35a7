"""DSEE as a PEFT method: ``get_peft_model(model, DSEEConfig(...))``."""

from .config import DSEEConfig
from .layer import DSEELayer, DSEELinear, low_rank_plus_sparse, sparse_linear
from .model import DSEEModel
from .prune import head_scores, prune_heads, prune_unstructured
from .support import select_support, support_size

__all__ = ["DSEEConfig", "DSEELayer", "DSEELinear", "DSEEModel", "head_scores", "low_rank_plus_sparse", "prune_heads",
           "prune_unstructured", "select_support", "sparse_linear", "support_size"]
