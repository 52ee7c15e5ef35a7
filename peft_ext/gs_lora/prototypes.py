"""GS-LoRA++'s prototype terms, for language models.

GS-LoRA++ regularises features with class prototypes: a forgotten class's features are pushed away from its
prototype, a retained class's features kept at theirs. A language model has no classes; here a prototype is the mean
of the frozen model's sequence features (last hidden state, mean over real tokens) over one data set (the data to
retain, the data to forget), computed once before training with the adapters off. The loss, added to the forgetting
loss with weight ``gamma``:

    (1 - cos(h_retain, p_retain)) + ReLU(cos(h_forget, p_forget) - margin)

the forget part bounded (as the forgetting CE is) so it stops once the features have left their prototype's cone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def pooled_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T, H]`` hidden states -> ``[B, H]``, the mean over real tokens (all when no mask)."""
    if attention_mask is None:
        return hidden.float().mean(1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1)


@torch.no_grad()
def prototype(model, batches: Iterable[dict]) -> torch.Tensor:
    """The mean pooled last-layer feature of ``batches`` (dicts with ``input_ids``, optionally ``attention_mask``)
    under the frozen model: a PEFT model's adapters are switched off while it runs."""
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else torch.no_grad()
    total, count = None, 0
    was_training = model.training
    model.eval()
    with ctx:
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        output_hidden_states=True)
            feats = pooled_features(out.hidden_states[-1], batch.get("attention_mask"))
            total = feats.sum(0) if total is None else total + feats.sum(0)
            count += feats.shape[0]
    model.train(was_training)
    if not count:
        raise ValueError("no batches to compute a prototype from")
    return total / count


def prototype_loss(retain_feats: torch.Tensor, forget_feats: torch.Tensor, retain_proto: torch.Tensor,
                   forget_proto: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """``mean(1 - cos(h_r, p_r)) + mean(ReLU(cos(h_f, p_f) - margin))`` (either part 0 when its batch is empty)."""
    loss = retain_feats.new_zeros(())
    if retain_feats.numel():
        loss = loss + (1 - F.cosine_similarity(retain_feats, retain_proto.to(retain_feats)[None], dim=-1)).mean()
    if forget_feats.numel():
        cos = F.cosine_similarity(forget_feats, forget_proto.to(forget_feats)[None], dim=-1)
        loss = loss + F.relu(cos - margin).mean()
    return loss
