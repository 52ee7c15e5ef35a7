"""``GSLoRAConfig``: LoRA on the feed-forward modules, its weights in groups that a group lasso can switch off."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from .._registry import LOAD_HINT, SparseflowPeftType

GROUPINGS = ("block", "module")


@dataclass
class GSLoRAConfig(PeftConfig):
    """GS-LoRA ("Practical Continual Forgetting for Pre-trained Vision Models"), for language models.

    Args:
        r, lora_alpha: LoRA rank and scale (update = lora_alpha / r * B A).
        target_modules: modules to adapt; default: the model type's feed-forward projections.
        group_by: ``block`` (default): all LoRA weights of one transformer block form one group; ``module``: each
            adapted module is its own group.
        group_lasso: strength of the group lasso, applied as a proximal step after every optimizer step
            (``GroupSparsityCallback``): a group whose norm falls below ``lr * group_lasso`` becomes exactly zero.
        warmup_steps: the group-lasso strength ramps linearly from 0 over these steps (the paper's alpha warm-up).
        init_weights: ``True``: B starts at zero (the identity); ``False``: small random B (tests).
    """

    r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "scale of the update: lora_alpha / r"})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "modules to adapt"})
    group_by: str = field(default="block", metadata={"help": f"one of {GROUPINGS}"})
    group_lasso: float = field(default=1e-3, metadata={"help": "group-lasso strength (proximal step)"})
    warmup_steps: int = field(default=0, metadata={"help": "steps over which the group lasso ramps up"})
    init_weights: bool = field(default=True, metadata={"help": "B starts at zero"})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "modules trained in full and saved"})
    requires: str = field(default=LOAD_HINT, metadata={"help": "saved with the adapter: what loading it needs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SparseflowPeftType.GS_LORA
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if self.group_by not in GROUPINGS:
            raise ValueError(f"group_by {self.group_by!r} is not one of {GROUPINGS}")
        if self.group_lasso < 0 or self.warmup_steps < 0:
            raise ValueError(f"group_lasso and warmup_steps must be >= 0; got {self.group_lasso}, {self.warmup_steps}")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
