"""``PrefixGrouperGRPOTrainer``: TRL's ``GRPOTrainer`` whose log-prob passes (policy, old policy, reference: all go
through ``_get_per_token_logps_and_entropies``) encode each prompt once for its whole group of completions.

Outputs and gradients are those of stock GRPO (same positions, same masking, same LM head: TRL's fused head scores
the packed positions through ``shift_labels``); only the work changes: ``P + G*C`` tokens per group instead of
``G*(P + C)``. Everything else (generation, rewards, the loss) is TRL's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import trl
from trl import GRPOConfig, GRPOTrainer

from . import attention
from .layout import find_groups, pack_groups

logger = logging.getLogger(__name__)

# The trainer overrides GRPOTrainer._get_per_token_logps_and_entropies and uses TRL's fused LM head with
# shift_labels: internals of this TRL minor version (pinned in pyproject's `trl` extra).
SUPPORTED_TRL = "1.16"
if not trl.__version__.startswith(SUPPORTED_TRL + "."):
    raise ImportError(f"sparseflow's prefix grouper is built on TRL {SUPPORTED_TRL}.x internals; TRL "
                      f"{trl.__version__} is installed. Install 'sparseflow[trl]' (trl>={SUPPORTED_TRL},<1.17)")

# decoder families whose attention goes through transformers' attention interface with plain causal masking (no
# sliding window, no logit soft-capping), so swapping the attention function is all prefix grouping needs
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ATTENTION_CHOICES = ("auto", "torch", "flex")


@dataclass
class PrefixGrouperGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the prefix-grouping switch."""

    prefix_grouping: bool = field(default=True, metadata={"help": "encode each prompt once for its group"})
    prefix_grouping_attention: str = field(
        default="auto", metadata={"help": "'torch' (exact, any device), 'flex' (FlexAttention, CUDA) or 'auto' "
                                          "(flex on CUDA, torch elsewhere)"})

    def __post_init__(self):
        super().__post_init__()
        if self.prefix_grouping_attention not in ATTENTION_CHOICES:
            raise ValueError(f"prefix_grouping_attention={self.prefix_grouping_attention!r}; choose one of "
                             f"{ATTENTION_CHOICES}")


def check_model(model) -> None:
    """Raise ``ValueError`` saying why ``model`` cannot be prefix-grouped (family, sliding window, soft-capping)."""
    cfg = attention.text_config(model)
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"prefix grouping supports {SUPPORTED_MODEL_TYPES} models; this one is {cfg.model_type!r}. "
                         "Set prefix_grouping=False to train it with stock GRPO")
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise ValueError(f"prefix grouping does not implement sliding-window attention "
                         f"(sliding_window={cfg.sliding_window}); set prefix_grouping=False")
    if getattr(cfg, "attn_logit_softcapping", None):
        raise ValueError("prefix grouping does not implement attention logit soft-capping; set prefix_grouping=False")


class PrefixGrouperGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with shared-prefix log-prob passes (``args.prefix_grouping``, on by default)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "prefix_grouping", False):
            check_model(self.model)
            choice = getattr(self.args, "prefix_grouping_attention", "auto")
            if choice == "flex" and not torch.cuda.is_available():
                raise ValueError("prefix_grouping_attention='flex' needs CUDA; use 'torch' (exact) on CPU")
            self._prefix_attention = choice if choice != "auto" else (
                "flex" if torch.cuda.is_available() else "torch")
            for model in (self.model, self.ref_model):
                if model is not None:
                    attention.install(model)
            logger.info("prefix grouping on (%s attention)", self._prefix_attention)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        if not getattr(self.args, "prefix_grouping", False):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **extra)
        given = sorted(k for k, v in extra.items() if v is not None)
        if given or compute_aux_loss:
            raise ValueError(f"prefix grouping handles text-only, non-MoE models; got {given or ['aux loss']}. "
                             "Set prefix_grouping=False")
        c = logits_to_keep
        prompt_ids, completion_ids = input_ids[:, :-c], input_ids[:, -c:]
        prompt_mask, completion_mask = attention_mask[:, :-c], attention_mask[:, -c:]
        groups = find_groups(prompt_ids, prompt_mask)
        sizes = {e - s for s, e in groups}
        rows = batch_size or input_ids.size(0)
        per_chunk = max(1, rows // max(sizes)) if len(sizes) == 1 else 1
        logps, entropies = [], []
        for i in range(0, len(groups), per_chunk):
            packed = pack_groups(prompt_ids, prompt_mask, completion_ids, completion_mask, groups[i:i + per_chunk])
            with attention.grouping(), self.accelerator.autocast():
                out = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                            shift_labels=packed.shift_labels, fused_lm_head=True, prefix_layout=packed.layout,
                            prefix_attention=self._prefix_attention)
            logps.append(packed.per_row(out.log_probs))
            if compute_entropy:
                entropies.append(packed.per_row(out.entropy))
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None
