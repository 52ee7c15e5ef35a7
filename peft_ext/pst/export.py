"""PST's result out of PEFT: the final sparse weights, or a sparseflow checkpoint vLLM serves directly.

With ``mask="nm"`` the trained weights are exactly N:M sparse and go into the N:M format (values kept in bf16/fp16
or quantized to int8/int4); with ``mask="gqsa"`` whole groups are zero and the rest are quantized (round to
nearest) into GQSA. Train sparse with PEFT, serve sparse with ``vllm serve OUT_DIR``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .layer import PSTLayer


def sparse_weights(peft_model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Module name (as in the base model) -> its final ``W' * M``, ``[out, in]``."""
    out = {}
    with torch.no_grad():
        for name, m in peft_model.named_modules():
            if isinstance(m, PSTLayer) and adapter in m.pst_U:
                out[name.removeprefix("base_model.model.")] = m.sparse_weight(adapter).detach().clone()
    if not out:
        raise ValueError(f"no PST layers with adapter {adapter!r}")
    return out


def _recipe(config) -> dict:
    """The PST config as plain JSON values (sets -> sorted lists, enums -> their names), for the checkpoint."""
    def plain(v):
        if isinstance(v, set):
            return sorted(v)
        return getattr(v, "value", v)

    return {"method": "pst", **{k: plain(v) for k, v in config.to_dict().items()}}


def save_sparse_checkpoint(peft_model, out_dir: str | Path, *, value_format: str = "bf16", bits: int = 4,
                           quant_group_size: int = 64, adapter: str = "default") -> Path:
    """Write the tuned model as a sparseflow checkpoint: the PST-sparsified linears in the format their mask fits
    (``nm``: N:M with ``value_format``, int formats grouped by ``quant_group_size``; ``gqsa``: ``bits``-bit GQSA
    over the mask's groups); every other linear stays dense (listed in ``ignore``)."""
    from sparseflow.kernels.gqsa import GQSACheckpointConfig, quantize_rtn
    from sparseflow.kernels.nm import NMCheckpointConfig, from_dense

    from sparseflow.compress import _write

    config = peft_model.peft_config[adapter]
    if config.mask not in ("nm", "gqsa"):
        raise ValueError("a serving checkpoint needs a structured mask (mask='nm' or 'gqsa'); for "
                         "mask='unstructured' use sparse_weights() or merge_and_unload()")
    levels = {float(m.pst_level[adapter]) for m in peft_model.modules()
              if isinstance(m, PSTLayer) and adapter in m.pst_U}
    if min(levels) < config.final_sparsity() - 1e-6:
        raise ValueError(f"the sparsity schedule is at {min(levels):.3f}, not yet at its final "
                         f"{config.final_sparsity():.3f}: train to the end (or set_sparsity) before exporting")
    weights = sparse_weights(peft_model, adapter)
    compressed = {}
    for name, w in weights.items():
        if config.mask == "nm":
            n, m = config.pattern()
            group = quant_group_size if value_format in ("int8", "int4") else 0
            compressed[name] = from_dense(w.float(), n, m, value_format, group)
        else:
            g = config.group_size
            keep = w.reshape(w.shape[0], -1, g).abs().sum(-1) > 0
            compressed[name] = quantize_rtn(w.float(), bits=bits, group_size=g, keep=keep)
    merged = peft_model.merge_and_unload()
    dense_linears = [n for n, mod in merged.named_modules()
                     if isinstance(mod, torch.nn.Linear) and n not in compressed]
    if config.mask == "nm":
        n, m = config.pattern()
        qcfg = NMCheckpointConfig(n=n, m=m, value_format=value_format,
                                  group_size=quant_group_size if value_format in ("int8", "int4") else 0,
                                  ignore=tuple(dense_linears), recipe=_recipe(config))
    else:
        qcfg = GQSACheckpointConfig(bits=bits, group_size=config.group_size, sparsity=config.sparsity,
                                    ignore=tuple(dense_linears), recipe=_recipe(config))
    with tempfile.TemporaryDirectory() as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        return _write(tmp, out_dir, compressed, qcfg.to_dict())
