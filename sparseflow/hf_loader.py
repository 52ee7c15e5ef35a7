"""Load a sparseflow-compressed folder into ``transformers`` (for evaluation, or users without vLLM)."""

from __future__ import annotations

from pathlib import Path

import torch

from sparseflow.checkpoint import load_state_dict, read_config
from sparseflow.kernels.gqsa import FORMAT_NAME, TENSOR_NAMES, GQSACheckpointConfig, GQSAWeight
from sparseflow.nn import GQSALinear


def load_model(model_dir: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A ``transformers`` causal LM with every GQSA linear as ``GQSALinear`` (same math as vLLM).

    Raises ``FileNotFoundError`` for a missing folder/file and ``ValueError`` for a checkpoint that is
    corrupt, not GQSA, or does not match its config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = read_config(model_dir)
    qdict = config.pop("quantization_config", None)
    if qdict is None or qdict.get("quant_method") != FORMAT_NAME:
        method = None if qdict is None else qdict.get("quant_method")
        raise ValueError(f"{model_dir}: quantization_config.quant_method is {method!r}, not {FORMAT_NAME!r}")
    qcfg = GQSACheckpointConfig.from_dict(qdict)
    hf_config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    state = load_state_dict(model_dir)

    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not qcfg.is_quantized(name):
            continue
        prefix = f"{name}."
        if f"{prefix}weight" in state:
            raise ValueError(f"{model_dir}: {name} should be GQSA-compressed but the file holds a dense weight")
        w = GQSAWeight.from_tensors(state, prefix=prefix, in_features=module.in_features,
                                    group_size=qcfg.group_size, bits=qcfg.bits)
        if w.out_features != module.out_features:
            raise ValueError(f"{name}: GQSA weight has {w.out_features} rows; the model needs {module.out_features}")
        for t in TENSOR_NAMES:
            del state[prefix + t]
        bias = state.pop(f"{prefix}bias", None)
        model.set_submodule(name, GQSALinear.from_weight(w, bias))

    missing, unexpected = model.load_state_dict(state, strict=False)
    # GQSALinear tensors were set from the format above; a tied lm_head is filled by tie_weights().
    already_set = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, GQSALinear))
    tied = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied and not k.startswith(already_set)]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: checkpoint does not match the model: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    if tied:
        model.tie_weights()
    return model.to(device).eval()


def load_causal_lm(model_dir: str | Path, *, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu"):
    """Any model folder sparseflow can evaluate: a sparseflow-compressed one or a plain dense one."""
    from transformers import AutoModelForCausalLM

    qdict = read_config(model_dir).get("quantization_config")
    if qdict is not None:
        return load_model(model_dir, dtype=dtype, device=device)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
