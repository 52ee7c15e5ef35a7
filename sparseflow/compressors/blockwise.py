"""Walk a decoder-only transformer block by block on calibration data (the GPTQ-style sequential pass).

Two activation streams go through the blocks: ``fp`` (the dense model's own activations, the targets) and
``q`` (activations of the already-compressed blocks, what a compressed block really sees). Compressing block
``i`` may use both; afterwards both streams advance by one block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


class _StopForward(Exception):
    pass


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks of a Hugging Face causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no `model.layers` block list; only decoder-only transformers "
                         "with that layout (Llama, Mistral, Qwen, ...) can be calibrated block by block")
    return layers


def linear_children(block: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}


@dataclass
class BlockStreams:
    """Calibration activations entering block ``index`` (``[n_samples, seq, hidden]`` each)."""

    fp: torch.Tensor
    q: torch.Tensor
    kwargs: dict  # what the model passes every block (rotary embeddings, mask, ...), for one mini-batch
    batch_size: int
    index: int = 0


@torch.no_grad()
def capture_block_inputs(model: torch.nn.Module, ids: torch.Tensor, batch_size: int) -> BlockStreams:
    """Run the embeddings on ``ids [n, seq]`` and capture what enters the first block."""
    if ids.shape[0] % batch_size:
        raise ValueError(f"{ids.shape[0]} calibration samples do not split into batches of {batch_size}")
    layers = decoder_layers(model)
    captured: list[torch.Tensor] = []
    kwargs: dict = {}

    def hook(_module, args, kw):
        captured.append((args[0] if args else kw["hidden_states"]).detach())
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in ids.split(batch_size):
            try:
                model(input_ids=batch.to(next(model.parameters()).device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    kwargs["use_cache"] = False
    kwargs.pop("past_key_values", None)
    hidden = torch.cat(captured)
    return BlockStreams(fp=hidden, q=hidden.clone(), kwargs=kwargs, batch_size=batch_size)


def block_output(block: torch.nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_block(block: torch.nn.Module, x: torch.Tensor, streams: BlockStreams) -> torch.Tensor:
    """``block`` applied to all of ``x`` in mini-batches."""
    return torch.cat([block_output(block, xb, streams.kwargs) for xb in x.split(streams.batch_size)])


@torch.no_grad()
def input_hessians(block: torch.nn.Module, x: torch.Tensor, streams: BlockStreams,
                   names: list[str]) -> dict[str, torch.Tensor]:
    """``H = sum over tokens of x x^T`` (``[K, K]``, float32) of the input of each named linear of ``block``."""
    linears = linear_children(block)
    hessians = {n: torch.zeros(linears[n].in_features, linears[n].in_features, device=x.device) for n in names}

    def make_hook(name):
        def hook(_module, args):
            a = args[0].reshape(-1, args[0].shape[-1]).float()
            hessians[name] += a.T @ a
        return hook

    handles = [linears[n].register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        run_block(block, x, streams)
    finally:
        for h in handles:
            h.remove()
    return hessians


def walk_blocks(model: torch.nn.Module, streams: BlockStreams,
                compress_block: Callable[[int, torch.nn.Module, BlockStreams, torch.Tensor], None],
                desc: str = "blocks") -> None:
    """Call ``compress_block(i, block, streams, target)`` for each block in order (``target``: the dense block's
    output on the dense stream), then advance both streams."""
    layers = decoder_layers(model)
    for i in tqdm(range(len(layers)), desc=desc, unit="block"):
        block = layers[i]
        streams.index = i
        with torch.no_grad():
            target = run_block(block, streams.fp, streams)  # dense block, dense inputs
        compress_block(i, block, streams, target)
        with torch.no_grad():
            streams.q = run_block(block, streams.q, streams)
        streams.fp = target
