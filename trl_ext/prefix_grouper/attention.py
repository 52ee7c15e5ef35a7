"""Attention over packed groups (``layout.py``): a transformers attention function registered as
``sparseflow_prefix_grouper``, with two implementations.

* ``torch`` (exact; the spec, and the CPU path): prefix self-attention, then suffix attention as one softmax over
  [scores against the shared prefix keys ; scores against the suffix's own keys]. The prefix K/V enter every
  suffix's scores by broadcasting in one batched matmul: they are never copied per completion.
* ``flex`` (CUDA): FlexAttention on the packed row with a block mask of the same pattern, so fully masked blocks
  (a suffix against another suffix, the future) are skipped and the prefix K/V are read, not repeated.

The layout reaches the function through the model's forward kwargs (``prefix_layout=``), which transformers passes
down to every attention call, and which gradient checkpointing saves and passes again when it recomputes a layer in
the backward pass. So the model's attention implementation is switched once (``install``), not around each
forward: without a layout (generation, anything else) the function hands over to the implementation the model had
(``sdpa`` or ``eager``), and so does the mask function, except inside ``grouping()``, where the layout is the mask.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

NAME = "sparseflow_prefix_grouper"
ORIGINALS = ("sdpa", "eager")  # implementations we hand over to outside the grouped passes
_FLEX = {}
_GROUPING = contextvars.ContextVar("sparseflow_prefix_grouping", default=False)


def _masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis in float32 where ``allowed``; rows with nothing allowed (left padding) give 0, not
    NaN, so no NaN reaches the gradients of real tokens."""
    scores = scores.float().masked_fill(~allowed, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(scores - top)
    return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def grouped_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout, scaling: float) -> torch.Tensor:
    """Exact attention for packed groups. ``q [B, H, T, d]``, ``k``/``v [B, Hkv, T, d]`` -> ``[B, T, H, d]``."""
    b, h, t, d = q.shape
    hkv = k.shape[1]
    rep = h // hkv
    p, g, s = layout.prefix_len, layout.num_suffixes, layout.suffix_len
    valid = layout.key_valid.to(q.device)
    qg = q.view(b, hkv, rep, t, d)
    kp, vp = k[:, :, :p], v[:, :, :p]  # the shared prefix keys / values, [B, Hkv, P, d]
    outs = []
    if p:
        causal = torch.ones(p, p, dtype=torch.bool, device=q.device).tril()
        allowed = causal & valid[:, None, None, None, :p]
        scores = torch.einsum("bhrqd,bhkd->bhrqk", qg[..., :p, :], kp) * scaling
        outs.append(torch.einsum("bhrqk,bhkd->bhrqd", _masked_softmax(scores, allowed).to(v.dtype), vp))
    qs = qg[..., p:, :].reshape(b, hkv, rep, g, s, d)
    ks = k[:, :, p:].reshape(b, hkv, g, s, d)
    vs = v[:, :, p:].reshape(b, hkv, g, s, d)
    own_valid = valid[:, p:].view(b, g, s)
    causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    to_prefix = torch.einsum("bhrgqd,bhkd->bhrgqk", qs, kp) * scaling  # [B, Hkv, rep, G, S, P]
    to_own = torch.einsum("bhrgqd,bhgkd->bhrgqk", qs, ks) * scaling  # [B, Hkv, rep, G, S, S]
    allowed = torch.cat([valid[:, None, None, None, None, :p].expand(b, 1, 1, g, s, p),
                         (causal & own_valid[:, :, None, :])[:, None, None]], dim=-1)
    probs = _masked_softmax(torch.cat([to_prefix, to_own], dim=-1), allowed).to(v.dtype)
    suffix_out = (torch.einsum("bhrgqk,bhkd->bhrgqd", probs[..., :p], vp)
                  + torch.einsum("bhrgqk,bhgkd->bhrgqd", probs[..., p:], vs))
    outs.append(suffix_out.reshape(b, hkv, rep, g * s, d))
    return torch.cat(outs, dim=3).reshape(b, h, t, d).transpose(1, 2)


def _block_mask(layout, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    key = ("block_mask", str(device))
    if key not in layout.cache:
        p, s = layout.prefix_len, layout.suffix_len
        valid = layout.key_valid.to(device)

        def mask_mod(b, h, q_idx, kv_idx):
            in_prefix = q_idx < p
            same_suffix = ((q_idx - p) // s) == ((kv_idx - p) // s)
            sees = torch.where(in_prefix, kv_idx <= q_idx, (kv_idx < p) | (same_suffix & (kv_idx <= q_idx)))
            return sees & valid[b, kv_idx]

        layout.cache[key] = create_block_mask(mask_mod, valid.shape[0], None, layout.total, layout.total,
                                              device=device)
    return layout.cache[key]


def grouped_attention_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout, scaling: float,
                           compiled: bool = True) -> torch.Tensor:
    """FlexAttention for packed groups (CUDA; ``compiled=False`` runs flex's slow eager path, for CPU tests of the
    mask). Same shapes as ``grouped_attention_torch``."""
    from torch.nn.attention.flex_attention import flex_attention

    if compiled and "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    fn = _FLEX["fn"] if compiled else flex_attention
    out = fn(q, k, v, block_mask=_block_mask(layout, q.device), scale=scaling, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2)


IMPLEMENTATIONS = {"torch": grouped_attention_torch, "flex": grouped_attention_flex}


def _original(config) -> str:
    original = getattr(config, "_sparseflow_attn_original", None)
    if original is None:
        raise RuntimeError(f"attention implementation {NAME!r} is set on a model it was not installed on; use "
                           "sparseflow.trl_ext.prefix_grouper.attention.install(model)")
    return original


def prefix_grouper_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The transformers attention function (signature of ``ALL_ATTENTION_FUNCTIONS`` entries)."""
    layout = kwargs.pop("prefix_layout", None)
    impl_name = kwargs.pop("prefix_attention", "torch")
    if layout is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        original = _original(module.config)
        fn = eager_attention_forward if original == "eager" else ALL_ATTENTION_FUNCTIONS[original]
        return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout:
        raise ValueError("prefix grouping runs attention without dropout (GRPO log-prob passes use none)")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return IMPLEMENTATIONS[impl_name](query, key, value, layout, scaling), None


def prefix_grouper_mask(*args, config=None, **kwargs):
    """The mask function: none inside ``grouping()`` (the layout is the mask), else the original's."""
    if _GROUPING.get():
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS[_original(config)](*args, config=config, **kwargs)


def register() -> None:
    """Register the attention and mask functions with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, prefix_grouper_attention)
    AttentionMaskInterface.register(NAME, prefix_grouper_mask)


def text_config(model):
    """The language model's config of a transformers model, or of the one inside a PEFT model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.get_text_config()


def install(model) -> None:
    """Switch ``model`` (a transformers model, or a PEFT model around one) to the prefix-grouper attention, which
    behaves as its current ``sdpa`` / ``eager`` attention unless called with a layout. Idempotent."""
    register()
    cfg = text_config(model)
    if cfg._attn_implementation == NAME:
        return
    if cfg._attn_implementation not in ORIGINALS:
        raise ValueError(f"prefix grouping needs the model loaded with attn_implementation in {ORIGINALS} (used as is "
                         f"outside the grouped passes, e.g. for generation); this one uses "
                         f"{cfg._attn_implementation!r}")
    cfg._sparseflow_attn_original = cfg._attn_implementation
    cfg._attn_implementation = NAME


@contextlib.contextmanager
def grouping():
    """Inside: the model's mask function yields ``None``, for forwards that pass ``prefix_layout=``."""
    token = _GROUPING.set(True)
    try:
        yield
    finally:
        _GROUPING.reset(token)
