"""``PSTConfig``: sparse fine-tuning with a learnt mask; only low-rank factors train."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from .._registry import LOAD_HINT, SparseflowPeftType

MASKS = ("unstructured", "nm", "gqsa")


@dataclass
class PSTConfig(PeftConfig):
    """PST ("Parameter-Efficient Sparsity for Large Language Models Fine-Tuning").

    The weight W stays frozen; the layer computes with ``W' * M`` where ``W' = W + U V`` and the mask M keeps the
    highest ``importance = |W'| + A B + R 1^T + 1 C^T`` (data-free magnitude plus a learnt low-rank and row/column
    part). M drops the lowest fraction ``s_t``, which ``SparsityScheduleCallback`` raises on a cubic schedule; M's
    gradient passes straight through to the importance. Only U, V, A, B, R, C train.

    Args:
        r: rank of U V (the weight update). importance_rank: rank of A B (the learnt importance).
        sparsity: final fraction of weights dropped (unstructured, gqsa); for ``nm`` the pattern's 1 - n/m.
        mask: ``unstructured``; ``nm`` (top ``n`` of every ``m`` inputs: exports to sparseflow's N:M format);
            ``gqsa`` (whole groups of ``group_size`` inputs: exports to GQSA).
        nm_pattern: ``"n:m"`` for ``mask="nm"``. group_size: inputs per group for ``mask="gqsa"``.
        init_weights: ``True``: U and the learnt importance start at zero (W' = W); ``False``: small random (tests).
    """

    r: int = field(default=8, metadata={"help": "rank of the weight update U V"})
    importance_rank: int = field(default=8, metadata={"help": "rank of the learnt importance A B"})
    sparsity: float = field(default=0.5, metadata={"help": "final fraction of weights dropped"})
    mask: str = field(default="unstructured", metadata={"help": f"one of {MASKS}"})
    nm_pattern: str = field(default="2:4", metadata={"help": "n:m for mask='nm'"})
    group_size: int = field(default=16, metadata={"help": "inputs per group for mask='gqsa'"})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "modules to sparsify"})
    init_weights: bool = field(default=True, metadata={"help": "U, A, R, C start at zero"})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "modules trained in full and saved"})
    requires: str = field(default=LOAD_HINT, metadata={"help": "saved with the adapter: what loading it needs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SparseflowPeftType.PST
        if self.r < 1 or self.importance_rank < 1:
            raise ValueError(f"r and importance_rank must be >= 1, got {self.r}, {self.importance_rank}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.mask not in MASKS:
            raise ValueError(f"mask {self.mask!r} is not one of {MASKS}")
        if self.mask == "nm":
            n, m = self.pattern()
            if not 0 < n < m:
                raise ValueError(f"nm_pattern {self.nm_pattern!r}: need 0 < n < m")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)

    def final_sparsity(self) -> float:
        """Where the schedule ends: ``sparsity``, or 1 - n/m for an N:M mask."""
        if self.mask == "nm":
            n, m = self.pattern()
            return 1 - n / m
        return self.sparsity

    def pattern(self) -> tuple[int, int]:
        try:
            n, m = (int(v) for v in self.nm_pattern.split(":"))
        except ValueError as err:
            raise ValueError(f"nm_pattern must look like '2:4', got {self.nm_pattern!r}") from err
        return n, m
