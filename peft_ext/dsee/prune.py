"""DSEE's second stage: prune the tuned model.

* ``prune_unstructured``: merge the adapters, then zero the lowest-scoring weights of every adapted layer: by
  |W| of the merged weight (``score="weight"``) or by |dW| of the update DSEE learnt (``score="delta"``: keep the
  weights the task moved most).
* ``prune_heads``: score each attention head by the update's magnitude on it, ||(BA + S)|| over the head's rows of
  q_proj (and of k/v/o where adapted), remove the lowest, and return a *smaller* model: fewer query heads in every
  layer, the config says so, and it saves and loads with plain transformers. Llama-style grouped attention needs
  every KV group to keep the same number of query heads and transformers needs every layer to have the same head
  count, so the same number of heads goes from each KV group of each layer.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer import DSEELinear


def _dsee_layers(model: nn.Module) -> dict[str, DSEELinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, DSEELinear)}


def prune_unstructured(peft_model, sparsity: float, score: str = "weight") -> tuple[nn.Module, dict[str, float]]:
    """Merge and unload ``peft_model``, then zero a ``sparsity`` fraction of every adapted layer's weights (lowest
    ``score``: ``weight`` = |W merged|, ``delta`` = |dW|). Returns the plain model and each layer's sparsity."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if score not in ("weight", "delta"):
        raise ValueError(f"score must be 'weight' or 'delta', got {score!r}")
    layers = _dsee_layers(peft_model)
    if not layers:
        raise ValueError("the model has no DSEE layers: pass the PeftModel returned by get_peft_model")
    deltas = {}
    if score == "delta":
        with torch.no_grad():
            deltas = {name: sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.dsee_A)
                      for name, m in layers.items()}
    model = peft_model.merge_and_unload()
    report = {}
    with torch.no_grad():
        for name in layers:
            short = name.removeprefix("base_model.model.")
            weight = model.get_submodule(short).weight
            scores = (weight if score == "weight" else deltas[name]).abs().float().reshape(-1)
            k = int(sparsity * scores.numel())
            if k:
                weight.view(-1)[torch.topk(scores, k, largest=False).indices] = 0
            report[short] = float((weight == 0).float().mean())
    return model, report


def head_scores(peft_model) -> dict[int, torch.Tensor]:
    """Per decoder layer, ``[num_attention_heads]``: the Frobenius norm of (BA + S) over each query head's slice of
    the adapted attention projections (q: its rows; o: its input columns; k/v: its KV group's rows)."""
    cfg = peft_model.get_base_model().config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    scores: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for name, m in _dsee_layers(peft_model).items():
            parts = name.split(".")
            if "self_attn" not in parts:
                continue
            layer = int(parts[parts.index("layers") + 1])
            proj = parts[-1]
            delta = sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.dsee_A).float()
            s = scores.setdefault(layer, torch.zeros(heads))
            if proj == "q_proj":
                s += delta.view(heads, head_dim, -1).pow(2).sum((1, 2))
            elif proj == "o_proj":
                s += delta.view(-1, heads, head_dim).pow(2).sum((0, 2))
            elif proj in ("k_proj", "v_proj"):
                s += delta.view(kv, head_dim, -1).pow(2).sum((1, 2)).repeat_interleave(heads // kv)
    return {layer: s.sqrt() for layer, s in scores.items()}


def prune_heads(peft_model, heads_per_group: int) -> nn.Module:
    """Merge ``peft_model`` and remove ``heads_per_group`` query heads from every KV group of every layer (the
    lowest ``head_scores``); returns a smaller ``transformers`` model whose config has the new head count."""
    cfg = peft_model.get_base_model().config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    group = heads // kv
    if not 0 < heads_per_group < group:
        raise ValueError(f"each KV group has {group} query heads; heads_per_group must be in [1, {group - 1}]")
    scores = head_scores(peft_model)
    if not scores:
        raise ValueError("no adapted attention projections (q/k/v/o_proj) to score heads by")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    model = peft_model.merge_and_unload()
    keep_per_group = group - heads_per_group
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            s = scores.get(i, torch.zeros(heads)).view(kv, group)
            keep = torch.sort(torch.topk(s, keep_per_group, dim=1).indices, dim=1).values
            keep = (keep + torch.arange(kv).unsqueeze(1) * group).reshape(-1)
            rows = (keep.unsqueeze(1) * head_dim + torch.arange(head_dim)).reshape(-1)
            attn = layer.self_attn
            attn.q_proj = _take_rows(attn.q_proj, rows)
            attn.o_proj = _take_cols(attn.o_proj, rows)
            attn.num_heads = kv * keep_per_group
            attn.num_key_value_groups = keep_per_group
    model.config.num_attention_heads = kv * keep_per_group
    model.config.head_dim = head_dim
    return model


def _take_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, rows.numel(), bias=linear.bias is not None, device=linear.weight.device,
                    dtype=linear.weight.dtype)
    new.weight.copy_(linear.weight[rows])
    if linear.bias is not None:
        new.bias.copy_(linear.bias[rows])
    return new


def _take_cols(linear: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    new = nn.Linear(cols.numel(), linear.out_features, bias=linear.bias is not None, device=linear.weight.device,
                    dtype=linear.weight.dtype)
    new.weight.copy_(linear.weight[:, cols])
    if linear.bias is not None:
        new.bias.copy_(linear.bias)
    return new
