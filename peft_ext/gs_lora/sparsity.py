"""The group lasso as a proximal step, the forgetting loss, and which groups survive.

The group lasso is not added to the loss: trainers such as TRL's GRPO ignore extra loss terms a model returns, and
a subgradient never reaches exact zeros. ``GroupSparsityCallback`` instead applies the lasso's proximal operator
after every optimizer step, shrinking each group's weights toward zero by ``lr * strength`` in norm; a group whose
norm is below that becomes exactly zero and stays so unless the task gradient revives it.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from .layer import GSLoRALayer


def groups(model: torch.nn.Module, adapter: str = "default") -> dict[str, list[torch.nn.Parameter]]:
    """Group name -> the LoRA parameters (A and B of every module) in it."""
    out: dict[str, list[torch.nn.Parameter]] = defaultdict(list)
    for module in model.modules():
        if isinstance(module, GSLoRALayer) and adapter in module.gs_lora_A:
            group = module.gs_lora_group[adapter]
            out[group] += [module.gs_lora_A[adapter], module.gs_lora_B[adapter]]
    if not out:
        raise ValueError(f"no GS-LoRA layers with adapter {adapter!r} in the model")
    return dict(out)


_GROUP_INDEX: dict[tuple, torch.Tensor] = {}


def _group_index(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Group index of each parameter, ``[sum(sizes)]``, for groups of ``sizes`` parameters in order; kept per
    layout and device, since building it from a Python list is a host-to-device copy (a device sync) every step."""
    key = (sizes, device)
    if key not in _GROUP_INDEX:
        _GROUP_INDEX[key] = torch.tensor([g for g, size in enumerate(sizes) for _ in range(size)], device=device)
    return _GROUP_INDEX[key]


@torch.no_grad()
def _batched_norms(members: dict[str, list[torch.nn.Parameter]]):
    """``(params, group index of each, group norms [G] float64)`` with two batched launches (``_foreach_norm`` and
    one ``index_add_``) whatever the number of parameters."""
    params = [p for ps in members.values() for p in ps]
    which = _group_index(tuple(len(ps) for ps in members.values()), params[0].device)
    squares = torch.stack(torch._foreach_norm(params)).double().pow(2)
    norms = torch.zeros(len(members), dtype=torch.float64, device=squares.device).index_add_(0, which, squares)
    return params, which, norms.sqrt()


def group_norms(model: torch.nn.Module, adapter: str = "default") -> dict[str, float]:
    """Group name -> the L2 norm of all its weights (0.0: the group is switched off)."""
    members = groups(model, adapter)
    return dict(zip(members, _batched_norms(members)[2].tolist(), strict=True))


@torch.no_grad()
def group_soft_threshold(model: torch.nn.Module, threshold: float, adapter: str = "default") -> torch.Tensor:
    """The group lasso's proximal step: every group scaled by ``max(0, 1 - threshold / ||group||)``. Returns the
    number of groups that are exactly zero afterwards as a 0-d tensor on the model's device: reading it
    (``int()``) is the only device sync, so a training loop that does not look does not wait. Every norm and
    scaling is a batched ``_foreach`` launch, not a few per parameter: this runs after every optimizer step."""
    params, which, norms = _batched_norms(groups(model, adapter))
    factors = torch.clamp(1 - threshold / norms.clamp_min(1e-30), min=0.0)
    per_param = factors[which]
    dtypes = {p.dtype for p in params}
    if len(dtypes) == 1:  # one cast for all (a cast per parameter was a kernel launch per parameter and step)
        scales = per_param.to(dtypes.pop()).unbind()
    else:
        scales = [f.to(p.dtype) for f, p in zip(per_param.unbind(), params, strict=True)]
    torch._foreach_mul_(params, list(scales))
    return (factors == 0).sum()


class GroupSparsityCallback(TrainerCallback):
    """After every optimizer step: the proximal group-lasso step with threshold ``lr * group_lasso * ramp`` (ramp
    rising linearly over the config's ``warmup_steps``). Works with any ``transformers`` trainer, GRPO included.
    ``zeroed`` holds, per step, how many groups were exactly zero (read from the GPU only when asked for)."""

    def __init__(self, adapter: str = "default") -> None:
        self.adapter = adapter
        self._zeroed: list[tuple[int, torch.Tensor]] = []

    @property
    def zeroed(self) -> list[tuple[int, int]]:
        return [(step, int(count)) for step, count in self._zeroed]

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        config = model.peft_config[self.adapter]
        ramp = min(1.0, (state.global_step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        lr = optimizer.param_groups[0]["lr"]
        self._zeroed.append((state.global_step, group_soft_threshold(model, lr * config.group_lasso * ramp,
                                                                     self.adapter)))
        return control


def forgetting_loss(retain_ce: torch.Tensor, forget_ce: torch.Tensor, beta: float, bound: float) -> torch.Tensor:
    """``retain CE + beta * ReLU(bound - forget CE)``: keep what should stay, push the forgotten data's loss up
    to ``bound`` and no further (an unbounded ascent would wreck the model)."""
    return retain_ce + beta * F.relu(bound - forget_ce)


def _mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the non-ignored (-100) positions; 0 if there are none."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    count = (shift_labels != -100).sum()
    return loss / count.clamp_min(1)


class ForgettingTrainer(Trainer):
    """A ``Trainer`` whose batches mix data to retain and data to forget: each example carries ``forget`` (1 or 0)
    and the loss is ``forgetting_loss`` of the two groups' mean token cross-entropies.

    GS-LoRA++: with ``prototypes={"retain": p_r, "forget": p_f}`` (``prototypes.prototype`` of each data set), the
    loss adds ``gamma * prototype_loss`` (features of retained data kept at their prototype, of forgotten data pushed
    out of theirs, down to cosine ``margin``)."""

    def __init__(self, *args, beta: float = 0.2, bound: float = 10.0, prototypes: dict | None = None,
                 gamma: float = 0.1, margin: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if prototypes is not None and set(prototypes) != {"retain", "forget"}:
            raise ValueError(f"prototypes needs exactly the keys 'retain' and 'forget'; got {sorted(prototypes)}")
        if gamma < 0 or not -1 <= margin <= 1:
            raise ValueError(f"need gamma >= 0 and margin in [-1, 1]; got gamma={gamma}, margin={margin}")
        self.beta, self.bound = beta, bound
        self.prototypes, self.gamma, self.margin = prototypes, gamma, margin

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget = inputs.pop("forget").bool()
        labels = inputs.pop("labels")
        outputs = model(**inputs, output_hidden_states=self.prototypes is not None)
        retain_ce = _mean_ce(outputs.logits[~forget], labels[~forget])
        forget_ce = _mean_ce(outputs.logits[forget], labels[forget])
        loss = forgetting_loss(retain_ce, forget_ce, self.beta, self.bound) if forget.any() else retain_ce
        if self.prototypes is not None:
            from .prototypes import pooled_features, prototype_loss

            feats = pooled_features(outputs.hidden_states[-1], inputs.get("attention_mask"))
            loss = loss + self.gamma * prototype_loss(feats[~forget], feats[forget], self.prototypes["retain"],
                                                      self.prototypes["forget"], self.margin)
        return (loss, outputs) if return_outputs else loss


def add_forgetting_task(model, name: str, config=None) -> None:
    """Start sequential forgetting task ``name`` on a GS-LoRA ``PeftModel``: a new adapter (its own groups, from
    ``config`` or a copy of the current adapter's config) is added and trained, while every earlier task's adapter
    stays active (its forgetting stays in force) but frozen. Follow with ``GroupSparsityCallback(adapter=name)``."""
    from copy import deepcopy

    earlier = list(model.base_model.active_adapters)
    if name in model.peft_config:
        raise ValueError(f"adapter {name!r} already exists; earlier tasks: {earlier}")
    model.add_adapter(name, config or deepcopy(model.peft_config[earlier[-1]]))
    model.base_model.set_adapter([*earlier, name])
    for module in model.modules():
        if isinstance(module, GSLoRALayer):
            for adapter in module.gs_lora_A:
                trainable = adapter == name
                module.gs_lora_A[adapter].requires_grad_(trainable)
                module.gs_lora_B[adapter].requires_grad_(trainable)
