"""Calibration token batches from a text."""

from __future__ import annotations

import torch


def calibration_ids(tokenizer, text: str, samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``[samples, seq_len]`` token windows drawn at seeded random offsets from the tokenized ``text``."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    if ids.numel() < seq_len + 1:
        raise ValueError(f"calibration text has {ids.numel()} tokens; need at least seq_len + 1 = {seq_len + 1}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=gen)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])
