"""Tiny random Llama checkpoints written to disk, for tests and the smoke run (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

# head_dim 64 (vLLM CPU attention), GQA (4 query heads, 2 KV heads), sizes multiples of 16.
TINY_LLAMA = dict(
    hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    num_hidden_layers=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False,
    initializer_range=0.08, rms_norm_eps=1e-5,
)


def write_tiny_llama(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a random ``LlamaForCausalLM`` (fp32 safetensors + config.json) to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides})
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return Path(path)
