"""RL-subnetwork tracking: which parameters RL fine-tuning really updates (``SubnetworkTracker``), measured in fp32
and in bf16 over a tolerance sweep, and training only a recorded subnetwork (``SubnetworkOnly``)."""

from .measure import DEFAULT_TOLERANCES, mask_overlap, update_rank, update_sparsity
from .tracker import SubnetworkOnly, SubnetworkTracker

__all__ = ["DEFAULT_TOLERANCES", "SubnetworkOnly", "SubnetworkTracker", "mask_overlap", "update_rank",
           "update_sparsity"]
