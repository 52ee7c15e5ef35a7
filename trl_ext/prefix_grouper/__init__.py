"""Prefix Grouper for TRL's GRPO: each prompt encoded once for its group of completions (``trainer.py``), on a
packed layout (``layout.py``) with shared-prefix attention (``attention.py``)."""

from .layout import PackedGroups, PrefixLayout, find_groups, pack_groups
from .trainer import PrefixGrouperGRPOConfig, PrefixGrouperGRPOTrainer, check_model

__all__ = ["PackedGroups", "PrefixGrouperGRPOConfig", "PrefixGrouperGRPOTrainer", "PrefixLayout", "check_model",
           "find_groups", "pack_groups"]
