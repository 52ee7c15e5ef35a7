"""Load a sparseflow-compressed folder into ``transformers`` (for evaluation, or users without vLLM)."""

from __future__ import annotations

from pathlib import Path

import torch

from sparseflow.checkpoint import check_safetensors, load_state_dict, read_config


def _formats() -> dict:
    """quant_method -> (checkpoint config class, weight builder, module class), one entry per format."""
    from sparseflow.kernels import gqsa, nm
    from sparseflow.nn import GQSALinear, NMLinear

    def gqsa_weight(state, prefix, in_features, q):
        return gqsa.GQSAWeight.from_tensors(state, prefix=prefix, in_features=in_features, group_size=q.group_size,
                                            bits=q.bits)

    def nm_weight(state, prefix, in_features, q):
        return nm.NMWeight.from_tensors(state, prefix=prefix, in_features=in_features, n=q.n, m=q.m,
                                        value_format=q.value_format, group_size=q.group_size)

    return {gqsa.FORMAT_NAME: (gqsa.GQSACheckpointConfig, gqsa_weight, GQSALinear),
            nm.FORMAT_NAME: (nm.NMCheckpointConfig, nm_weight, NMLinear)}


def load_model(model_dir: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A ``transformers`` causal LM with every compressed linear as its sparseflow module (``GQSALinear``,
    ``NMLinear``: the same math as vLLM).

    Raises ``FileNotFoundError`` for a missing folder/file and ``ValueError`` for a checkpoint that is corrupt,
    not a sparseflow format, or does not match its config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = read_config(model_dir)
    qdict = config.pop("quantization_config", None)
    formats = _formats()
    method = None if qdict is None else qdict.get("quant_method")
    if method not in formats:
        raise ValueError(f"{model_dir}: quantization_config.quant_method is {method!r}, not one of {sorted(formats)}")
    config_cls, build_weight, module_cls = formats[method]
    qcfg = config_cls.from_dict(qdict)
    hf_config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    state = load_state_dict(model_dir)

    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not qcfg.is_quantized(name):
            continue
        prefix = f"{name}."
        if f"{prefix}weight" in state:
            raise ValueError(f"{model_dir}: {name} should be {method}-compressed but the file holds a dense weight")
        w = build_weight(state, prefix, module.in_features, qcfg)
        if w.out_features != module.out_features:
            raise ValueError(f"{name}: {method} weight has {w.out_features} rows; the model needs "
                             f"{module.out_features}")
        for t in w.tensors():
            del state[prefix + t]
        bias = state.pop(f"{prefix}bias", None)
        model.set_submodule(name, module_cls.from_weight(w, bias))

    missing, unexpected = model.load_state_dict(state, strict=False)
    # compressed modules were set from the format above; a tied lm_head is filled by tie_weights().
    already_set = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, module_cls))
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
    check_safetensors(model_dir)  # transformers' own error for a cut-off file names neither the file nor the cause
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
