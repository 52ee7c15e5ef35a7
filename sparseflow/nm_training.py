"""N:M sparse training for any ``transformers`` model under the Hugging Face ``Trainer``: a config and a callback.

Methods (``NMTrainingConfig.method``):

* ``srste`` (SR-STE, "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch"): the forward pass
  uses ``W * mask(W)``, the mask recomputed from ``|W|`` every step; the gradient reaches the dense ``W``
  straight through, and pruned weights get an extra decay ``lambda * (1 - mask) * W`` before each optimizer step.
* ``mdgf`` (decaying-mask gradient flow, "Progressive Gradient Flow for Robust N:M Sparsity Training"): the
  forward pass uses ``W * (mask + beta_t * (1 - mask))``; ``beta_t`` falls from 1 to 0 over ``decay_fraction`` of
  training, so pruned weights fade out while still receiving (scaled) gradient.
* ``sdgf`` (staged patterns, same paper): the kept count steps down from ``m - 1`` to ``n`` in equal stages over
  ``decay_fraction`` of training (e.g. 3:4 then 2:4), SR-STE style within each stage.

The callback also logs the Sparse Architecture Divergence (SAD: the fraction of mask entries that flipped since the
previous measurement) every ``sad_interval`` steps, and at the end of training leaves every target weight hard
N:M-pruned (``W * mask``), so ``sparseflow compress --method nm --prune magnitude`` stores exactly that mask.

Usage::

    cb = NMSparseCallback(NMTrainingConfig(n=2, m=4, method="srste"))
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    cb.history  # steps, SAD, beta / pattern per logged step
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize
from transformers import TrainerCallback

from sparseflow.kernels.naming import is_ignored
from sparseflow.kernels.nm.format import check_pattern
from sparseflow.log import logger

METHODS = ("srste", "mdgf", "sdgf")


@dataclass
class NMTrainingConfig:
    """``n:m`` target pattern, ``method`` (srste, mdgf, sdgf), SR-STE decay ``srste_decay``, the share of training
    over which MdGf's mask decays / SdGf's stages run (``decay_fraction``), SAD logging interval, and the linear
    modules left dense (``ignore``: full or last name)."""

    n: int = 2
    m: int = 4
    method: str = "srste"
    srste_decay: float = 2e-4
    decay_fraction: float = 0.8
    sad_interval: int = 10
    ignore: tuple[str, ...] = field(default=("lm_head",))

    def __post_init__(self) -> None:
        check_pattern(self.n, self.m)
        if self.method not in METHODS:
            raise ValueError(f"unknown N:M training method {self.method!r}; choose one of {METHODS}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction={self.decay_fraction} must be in (0, 1]")
        if self.srste_decay < 0 or self.sad_interval < 1:
            raise ValueError("srste_decay must be >= 0 and sad_interval >= 1")


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool ``[N, K]``: the ``n`` largest ``|w|`` of every ``m`` consecutive inputs of each row."""
    rows, k = weight.shape
    blocks = weight.detach().abs().reshape(rows, k // m, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(-1, blocks.topk(n, dim=-1).indices, True)
    return keep.reshape(rows, k)


class _MaskedWeight(torch.nn.Module):
    """Parametrization ``W -> W * (mask + beta * (1 - mask))``. With ``straight_through`` (SR-STE, SdGf) the
    gradient reaches every entry of ``W`` unscaled; without (MdGf) pruned entries get ``beta`` times theirs."""

    def __init__(self, n: int, m: int, straight_through: bool) -> None:
        super().__init__()
        self.n, self.m, self.beta, self.straight_through = n, m, 0.0, straight_through
        self.mask: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        self.mask = nm_mask(weight, self.n, self.m)
        scale = self.mask.to(weight.dtype) + self.beta * (~self.mask).to(weight.dtype)
        if self.straight_through:
            return weight + (weight * scale - weight).detach()
        return weight * scale


class NMSparseCallback(TrainerCallback):
    """Trainer callback applying ``config``'s N:M sparse training to every target ``nn.Linear`` of the model."""

    def __init__(self, config: NMTrainingConfig) -> None:
        self.config = config
        self.masked: dict[str, _MaskedWeight] = {}
        self.history: dict[str, list] = {"step": [], "sad": [], "beta": [], "kept": []}
        self._last_masks: dict[str, torch.Tensor] = {}
        self._total_steps = 1

    # -- schedule ----------------------------------------------------------------------------------
    def beta(self, step: int) -> float:
        """MdGf: weight of the pruned entries at ``step`` (1 -> 0 linearly over the decay span); 0 otherwise."""
        if self.config.method != "mdgf":
            return 0.0
        span = max(1, round(self.config.decay_fraction * self._total_steps))
        return max(0.0, 1.0 - step / span)

    def kept(self, step: int) -> int:
        """SdGf: kept entries per block at ``step`` (m-1 down to n in equal stages); n otherwise."""
        c = self.config
        if c.method != "sdgf":
            return c.n
        stages = c.m - c.n  # m-1, ..., n: one stage per count
        span = max(1, round(c.decay_fraction * self._total_steps))
        stage = min(stages - 1, step * stages // span) if step < span else stages - 1
        return c.m - 1 - stage

    def _apply_schedule(self, step: int) -> None:
        for p in self.masked.values():
            p.beta, p.n = self.beta(step), self.kept(step)

    # -- Trainer hooks --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("NMSparseCallback needs the model from the Trainer")
        self._total_steps = max(1, state.max_steps)
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or is_ignored(name, self.config.ignore):
                continue
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"{name}.weight is already parametrized; N:M training needs the plain weight")
            if module.in_features % self.config.m:
                raise ValueError(f"{name}: N:M {self.config.n}:{self.config.m} does not divide in_features="
                                 f"{module.in_features}; add it to NMTrainingConfig.ignore")
            masked = _MaskedWeight(self.config.n, self.config.m, straight_through=self.config.method != "mdgf")
            # unsafe: the optimizer already holds the original Parameter, which parametrize keeps as .original
            parametrize.register_parametrization(module, "weight", masked, unsafe=True)
            self.masked[name] = masked
        if not self.masked:
            raise ValueError("NMSparseCallback found no nn.Linear to sparsify (all ignored?)")
        self._apply_schedule(0)
        logger.info("N:M %s training on %d linear layers, target %d:%d", self.config.method, len(self.masked),
                    self.config.n, self.config.m)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.config.method == "mdgf" or self.config.srste_decay == 0:
            return
        with torch.no_grad():
            for name, p in self.masked.items():
                original = model.get_submodule(name).parametrizations.weight.original
                if original.grad is not None and p.mask is not None:
                    original.grad.add_(original * (~p.mask), alpha=self.config.srste_decay)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._apply_schedule(state.global_step)
        if state.global_step % self.config.sad_interval == 0:
            self._record(state.global_step)

    def _record(self, step: int) -> None:
        flipped = total = 0
        for name, p in self.masked.items():
            if p.mask is None:
                continue
            mask = p.mask.detach().clone()
            if name in self._last_masks:
                flipped += int((mask != self._last_masks[name]).sum())
                total += mask.numel()
            self._last_masks[name] = mask
        self.history["step"].append(step)
        self.history["sad"].append(flipped / total if total else None)
        self.history["beta"].append(self.beta(step))
        self.history["kept"].append(self.kept(step))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Leave every target weight hard-pruned to the final ``n:m`` pattern, without parametrizations."""
        with torch.no_grad():
            for name in list(self.masked):
                module = model.get_submodule(name)
                weight = module.parametrizations.weight.original
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                module.weight.data = weight.data * nm_mask(weight.data, self.config.n, self.config.m)
        self.masked.clear()


def sparse_architecture_divergence(mask_a: torch.Tensor, mask_b: torch.Tensor) -> float:
    """Fraction of entries where two masks differ (SAD normalised by the mask size)."""
    return float((mask_a != mask_b).float().mean())
