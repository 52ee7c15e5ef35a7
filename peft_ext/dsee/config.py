"""``DSEEConfig``: dW = (lora_alpha / r) * (B A + S), S non-zero only on a support fixed before training."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from .._registry import LOAD_HINT, SparseflowPeftType
from .support import SUPPORT_METHODS


@dataclass
class DSEEConfig(PeftConfig):
    """DSEE ("Dually Sparsity-embedded Efficient Tuning"): a LoRA pair plus a sparse matrix S whose support Omega
    is chosen from the pre-trained weight (``sparse_init``) and stored as indices + values, never as a dense matrix.

    Args:
        r: rank of B A.
        lora_alpha: the update is scaled by ``lora_alpha / r`` (LoRA's convention).
        sparse_size: entries of S per layer: a count (>= 1) or a fraction of the layer's weights (< 1).
        sparse_init: how Omega is chosen: ``grebsmo`` (low-rank + sparse decomposition of W), ``magnitude``,
            ``random``.
        decomposition_rank: rank of the low-rank part in the ``grebsmo`` decomposition.
        target_modules: module names (or a regex) to adapt; default: the model type's usual attention
            projections (PEFT's LoRA defaults).
        modules_to_save: modules (e.g. a classification head) trained in full and saved with the adapter.
        seed: seed of the ``random`` support.
        init_weights: ``True`` (default): B and S start at zero, so the adapted model starts equal to the base;
            ``False``: small random values (PEFT's test battery uses it to check merging of a non-trivial update).
    """

    r: int = field(default=8, metadata={"help": "rank of the low-rank part B A"})
    lora_alpha: float = field(default=16.0, metadata={"help": "scale of the update: lora_alpha / r"})
    sparse_size: float = field(default=64, metadata={"help": "entries of S per layer: count >= 1 or fraction < 1"})
    sparse_init: str = field(default="grebsmo", metadata={"help": f"support of S: one of {SUPPORT_METHODS}"})
    decomposition_rank: int = field(default=8, metadata={"help": "low rank used by the grebsmo support"})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "modules to adapt"})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "modules trained in full and saved"})
    seed: int = field(default=0, metadata={"help": "seed of the random support"})
    init_weights: bool = field(default=True, metadata={"help": "B and S start at zero (the adapter starts as the "
                                                               "identity); False: small random values (tests)"})
    requires: str = field(default=LOAD_HINT, metadata={"help": "saved with the adapter: what loading it needs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SparseflowPeftType.DSEE
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if self.sparse_size <= 0:
            raise ValueError(f"sparse_size must be > 0 (a count >= 1 or a fraction < 1); got {self.sparse_size}")
        if self.sparse_init not in SUPPORT_METHODS:
            raise ValueError(f"sparse_init {self.sparse_init!r} is not one of {SUPPORT_METHODS}")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
