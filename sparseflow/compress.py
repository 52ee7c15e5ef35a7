"""Compress a Hugging Face model folder into a sparseflow format folder that vLLM and transformers load."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparseflow.checkpoint import load_state_dict, read_config, save_folder
from sparseflow.kernels.gqsa import GQSACheckpointConfig, quantize_rtn


def linear_module_names(config: dict) -> list[str]:
    """Names of every ``nn.Linear`` in the model the config describes (built on the meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "quantization_config"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def compress_gqsa(model_dir: str | Path, out_dir: str | Path, *, bits: int = 4, group_size: int = 16,
                  sparsity: float = 0.0, ignore: tuple[str, ...] = ("lm_head",), progress: bool = True) -> Path:
    """Round-to-nearest GQSA compression of every linear layer not in ``ignore``.

    Writes ``out_dir/model.safetensors`` and ``config.json`` with ``quantization_config.quant_method
    = "gqsa"``. Only ``sparsity=0`` is implemented here; group pruning comes with calibration.
    """
    if sparsity != 0.0:
        raise NotImplementedError("GQSA group pruning needs calibration data; only sparsity=0 is available so far")
    qcfg = GQSACheckpointConfig(bits=bits, group_size=group_size, sparsity=sparsity, ignore=tuple(ignore))
    config = read_config(model_dir)
    if "quantization_config" in config:
        raise ValueError(f"{model_dir} is already quantized ({config['quantization_config'].get('quant_method')})")
    state = load_state_dict(model_dir)
    targets = [n for n in linear_module_names(config) if qcfg.is_quantized(n) and f"{n}.weight" in state]
    for name in tqdm(targets, desc=f"gqsa w{bits} g{group_size}", disable=not progress, unit="layer"):
        w = quantize_rtn(state.pop(f"{name}.weight"), bits=bits, group_size=group_size)
        for tensor_name, tensor in w.tensors().items():
            state[f"{name}.{tensor_name}"] = tensor
    config["quantization_config"] = qcfg.to_dict()
    return save_folder(out_dir, state, config, source_dir=model_dir)
