"""GRPO log-prob step, stock vs Prefix Grouper: the forward and backward of the per-token log-probs of one group
(G completions of one prompt) through the same model and TRL's fused LM head, exactly as
``GRPOTrainer._get_per_token_logps_and_entropies`` (stock: G rows of prompt + completion) and
``PrefixGrouperGRPOTrainer`` (one packed row) run it. Random-weight Llama (~0.5B on the GPU), bf16, gradient
checkpointing on (TRL's default). The issue's bar: grouped at least 4x faster at G=16, prompt 4096, completions
256 (the token ratio is 8.5x)."""

from __future__ import annotations

import time

from .harness import TINY_LLAMA, Row, register

SHAPES = {
    # 0.52B parameters: 24 blocks of 18.9M plus 65.5M of embedding and head
    "gpu": dict(hidden_size=1024, intermediate_size=5120, num_hidden_layers=24, num_attention_heads=16,
                num_key_value_heads=8, vocab_size=32000),
    "quick": TINY_LLAMA,
}


def _model(shape: dict, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, max_position_embeddings=8192,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    return model


def _inputs(shape: dict, prompt: int, completion: int, g: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, shape["vocab_size"], (1, prompt), generator=gen).repeat(g, 1)
    completion_ids = torch.randint(3, shape["vocab_size"], (g, completion), generator=gen)
    lengths = torch.randint(completion // 2, completion + 1, (g,), generator=gen)
    completion_mask = (torch.arange(completion)[None, :] < lengths[:, None]).long()
    return [t.to(device) for t in (prompt_ids, torch.ones_like(prompt_ids), completion_ids, completion_mask)]


def _stock_step(model, prompt_ids, prompt_mask, completion_ids, completion_mask):
    import torch

    c = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :-c] = -100
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -c:]


def _grouped_step(model, prompt_ids, prompt_mask, completion_ids, completion_mask, impl: str):
    from sparseflow.trl_ext.prefix_grouper import attention
    from sparseflow.trl_ext.prefix_grouper.layout import pack_groups

    packed = pack_groups(prompt_ids, prompt_mask, completion_ids, completion_mask, [(0, prompt_ids.shape[0])])
    with attention.grouping():
        out = model(input_ids=packed.input_ids, position_ids=packed.position_ids, shift_labels=packed.shift_labels,
                    fused_lm_head=True, prefix_layout=packed.layout, prefix_attention=impl)
    return packed.per_row(out.log_probs)


def measure(step, model, inputs, repeats: int, device: str) -> dict:
    """Median ms of forward + backward of ``sum(log-probs)`` and the peak memory (CUDA) of one such step."""
    import statistics

    import torch

    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):
        start = time.perf_counter()
        logps = step(model, *inputs)
        (logps * inputs[3]).sum().backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first is a warm-up (FlexAttention compiles there)
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"ms": statistics.median(times), "peak_bytes": peak, "logps": logps.detach()}


@register("grpo_prefix")
def run(quick: bool = False) -> list[Row]:
    """Stock vs grouped GRPO log-prob step at G = 8 and 16 (prompt 4096, completions 256 on the GPU)."""
    import torch
    from sparseflow.trl_ext.prefix_grouper import attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = quick or device == "cpu"
    shape = SHAPES["quick" if small else "gpu"]
    prompt, completion, groups, repeats = (64, 16, (2, 4), 1) if small else (4096, 256, (8, 16), 3)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    impl = "flex" if device == "cuda" else "torch"
    model = _model(shape, device, dtype)
    attention.install(model)  # behaves as sdpa without a layout, so the stock step is unchanged
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for g in groups:
        inputs = _inputs(shape, prompt, completion, g, device)
        case = f"llama {params / 1e9:.2f}B P{prompt} C{completion} G{g}"
        stock = measure(_stock_step, model, inputs, repeats, device)
        grouped = measure(lambda m, *x: _grouped_step(m, *x, impl), model, inputs, repeats, device)
        mask = inputs[3].bool()
        diff = (grouped["logps"] - stock["logps"])[mask].abs()
        err, mean_err = float(diff.max()), float(diff.mean())
        tokens_stock, tokens_grouped = g * (prompt + completion), prompt - 1 + g * completion
        for name, r, tokens in (("stock GRPO (sdpa)", stock, tokens_stock),
                                (f"prefix grouper ({impl})", grouped, tokens_grouped)):
            peak = f"{r['peak_bytes'] / 2**30:.1f} GiB peak" if r["peak_bytes"] else "peak n/a (CPU)"
            rows.append(Row(case, name, r["ms"], 0, 0,
                            note=f"{stock['ms'] / r['ms']:.2f}x stock, {tokens} tokens, {peak}, "
                                 f"log-prob diff max {err:.2e} mean {mean_err:.2e}",
                            extra={"peak_bytes": r["peak_bytes"], "tokens": tokens, "max_logprob_diff": err,
                                   "mean_logprob_diff": mean_err}))
    return rows
