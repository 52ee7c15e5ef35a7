"""``SparsityScheduleCallback``: raises every PST layer's sparsity on the cubic schedule as training proceeds."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from .layer import PSTLayer
from .masks import cubic_sparsity


def set_sparsity(model: torch.nn.Module, level: float, adapter: str = "default") -> int:
    """Set the current sparsity of every PST layer of ``adapter``; returns how many layers there are."""
    layers = [m for m in model.modules() if isinstance(m, PSTLayer) and adapter in m.pst_U]
    if not layers:
        raise ValueError(f"no PST layers with adapter {adapter!r} in the model")
    for m in layers:
        m.pst_level[adapter].fill_(level)
    return len(layers)


class SparsityScheduleCallback(TrainerCallback):
    """Before every step, sparsity = ``cubic_sparsity(step, config.final_sparsity(), start_step, end_step)``;
    ``end_step`` defaults to three quarters of the run, so the last quarter fine-tunes at the final mask.
    ``history`` holds (step, sparsity) pairs."""

    def __init__(self, start_step: int = 0, end_step: int | None = None, adapter: str = "default") -> None:
        self.start_step, self.end_step, self.adapter = start_step, end_step, adapter
        self.history: list[tuple[int, float]] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        final = model.peft_config[self.adapter].final_sparsity()
        end = self.end_step if self.end_step is not None else max(self.start_step + 1, (3 * state.max_steps) // 4)
        level = cubic_sparsity(state.global_step, final, self.start_step, end)
        set_sparsity(model, level, self.adapter)
        self.history.append((state.global_step, level))
        return control
