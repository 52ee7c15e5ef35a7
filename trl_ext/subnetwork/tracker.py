"""``SubnetworkTracker``: a ``TrainerCallback`` that records which parameters RL training really updates, and
``SubnetworkOnly``: one that trains only a given subnetwork.

Works with any ``transformers`` trainer (TRL's ``GRPOTrainer`` included). Measurements run every ``every`` steps on
the parameters' device, from a float32 snapshot taken when training starts (4 bytes per tracked weight).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from .measure import DEFAULT_TOLERANCES, changed, tracked, update_rank, update_sparsity

logger = logging.getLogger(__name__)


class SubnetworkTracker(TrainerCallback):
    """Update sparsity per matrix and overall, in fp32 and bf16, for a sweep of tolerances.

    Args:
        every: measure every this many optimizer steps (and at the end).
        tolerances: ``|w_t - w_0| > tol`` counts as updated.
        include: substrings of parameter names to track (default: every trainable matrix).
        rank_of: substrings of matrix names whose update rank is computed at the end (an SVD each: on request).
        out_dir: where ``on_train_end`` writes ``subnetwork.json`` and the plots (None: keep in memory only).
    """

    def __init__(self, every: int = 10, tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
                 include: tuple[str, ...] = (), rank_of: tuple[str, ...] = (), out_dir: str | Path | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.tolerances, self.include, self.rank_of = every, tuple(tolerances), include, rank_of
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.start: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []
        self.final: dict | None = None
        self._params: dict[str, torch.nn.Parameter] = {}

    def attach(self, model: torch.nn.Module) -> None:
        """Snapshot the model's tracked weights now (``on_train_begin`` does this; call it yourself outside a
        trainer)."""
        self._params = tracked(model, self.include)
        self.start = {n: p.detach().float().clone() for n, p in self._params.items()}
        logger.info("subnetwork tracker: %d matrices, %.1f M weights", len(self.start),
                    sum(t.numel() for t in self.start.values()) / 1e6)

    def measure(self) -> dict:
        return update_sparsity({n: p.detach() for n, p in self._params.items()}, self.start, self.tolerances)

    def masks(self, tol: float = 0.0, view: str = "fp32") -> dict[str, torch.Tensor]:
        """Bool update mask per tracked matrix (True = updated by more than ``tol`` in ``view``), on CPU."""
        return {n: changed(p.detach(), self.start[n], tol, view).cpu() for n, p in self._params.items()}

    def save_masks(self, path: str | Path, tol: float = 0.0, view: str = "fp32") -> Path:
        """The masks as a safetensors file (bool tensors by parameter name); ``SubnetworkOnly.from_file`` reads it."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({n: m.contiguous() for n, m in self.masks(tol, view).items()}, str(path),
                  metadata={"tol": str(tol), "view": view})
        return path

    # --- TrainerCallback hooks ---
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.start:
            self.attach(model)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.history.append({"step": state.global_step, **self.measure()["overall"]})

    def on_train_end(self, args, state, control, **kwargs):
        self.final = self.measure()
        self.final["step"] = state.global_step
        if self.rank_of:
            self.final["update_rank"] = {n: update_rank(p.detach(), self.start[n]) for n, p in self._params.items()
                                         if any(s in n for s in self.rank_of)}
        if self.out_dir is not None:
            self.write(self.out_dir)

    def report(self) -> dict:
        return {"tolerances": list(self.tolerances), "history": self.history, "final": self.final}

    def write(self, out_dir: str | Path) -> Path:
        """``subnetwork.json`` plus ``subnetwork_layers.png`` and ``subnetwork_tolerance.png`` in ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "subnetwork.json"
        path.write_text(json.dumps(self.report(), indent=1) + "\n")
        try:
            from .plots import plot_layers, plot_tolerance

            plot_layers(self.report(), out_dir / "subnetwork_layers.png")
            plot_tolerance(self.report(), out_dir / "subnetwork_tolerance.png")
        except ImportError:
            logger.info("matplotlib is not installed: no subnetwork plots")
        return path


class SubnetworkOnly(TrainerCallback):
    """Train only a subnetwork: gradients outside ``masks`` are zeroed (so neither the optimizer's moments nor
    gradient clipping see them) and, after every optimizer step, entries outside are put back to their starting
    values (so decoupled weight decay and momentum cannot move them either).

    ``masks``: bool tensor per parameter name (True = may train), e.g. ``SubnetworkTracker.masks()`` of an earlier
    run; parameters without a mask train freely."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks
        self._hooks: list = []
        self._frozen: dict[str, tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> SubnetworkOnly:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no subnetwork mask at {path} (write one with SubnetworkTracker.save_masks)")
        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors reports a cut file as a header error
            raise ValueError(f"{path} is not a readable mask file (truncated, or not safetensors): {err}") from err
        return cls({n: t.bool() for n, t in tensors.items()})

    def attach(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        unknown = sorted(set(self.masks) - set(params))
        if unknown:
            raise ValueError(f"the mask names parameters this model does not have: {unknown[:5]}"
                             f"{' ...' if len(unknown) > 5 else ''} (a mask from another model?)")
        bad = [f"{n}: mask {tuple(m.shape)} vs weight {tuple(params[n].shape)}" for n, m in self.masks.items()
               if m.shape != params[n].shape]
        if bad:
            raise ValueError("mask shapes do not match the model: " + "; ".join(bad[:5]))
        for name, mask in self.masks.items():
            p = params[name]
            keep = mask.to(device=p.device, dtype=torch.bool)
            self._frozen[name] = (p, keep, p.detach().clone())
            self._hooks.append(p.register_hook(lambda g, keep=keep: g * keep))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._frozen:
            self.attach(model)

    def on_optimizer_step(self, args, state, control, **kwargs):
        with torch.no_grad():
            for p, keep, start in self._frozen.values():
                p.copy_(torch.where(keep, p, start))

    def on_train_end(self, args, state, control, **kwargs):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
