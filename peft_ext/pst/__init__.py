"""PST as a PEFT method: ``get_peft_model(model, PSTConfig(...))``, ``SparsityScheduleCallback`` for the cubic
sparsity schedule, and export of the sparse result (``save_sparse_checkpoint``: straight into N:M or GQSA)."""

from .config import PSTConfig
from .export import save_sparse_checkpoint, sparse_weights
from .layer import PSTLayer, PSTLinear
from .masks import cubic_sparsity, group_mask, masked_straight_through, nm_mask, unstructured_mask
from .model import PSTModel
from .schedule import SparsityScheduleCallback, set_sparsity

__all__ = ["PSTConfig", "PSTLayer", "PSTLinear", "PSTModel", "SparsityScheduleCallback", "cubic_sparsity",
           "group_mask", "masked_straight_through", "nm_mask", "save_sparse_checkpoint", "set_sparsity",
           "sparse_weights", "unstructured_mask"]
