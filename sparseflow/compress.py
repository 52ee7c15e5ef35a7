"""Compress a Hugging Face model folder into a sparseflow format folder that vLLM and transformers load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparseflow.checkpoint import load_state_dict, read_config, save_folder
from sparseflow.kernels.gqsa import GQSACheckpointConfig

if TYPE_CHECKING:
    from sparseflow.compressors.gqsa import GQSARecipe
    from sparseflow.compressors.nm import NMRecipe


def compress_gqsa(model_dir: str | Path, out_dir: str | Path, *, bits: int = 4, group_size: int = 16,
                  sparsity: float = 0.0, ignore: tuple[str, ...] = ("lm_head",), recipe: GQSARecipe | None = None,
                  calibration: str = "builtin-calibration", device: str | None = None, progress: bool = True) -> Path:
    """Compress every linear layer not in ``ignore`` to GQSA and write a folder vLLM and transformers load.

    With ``recipe`` (``sparseflow.compressors.gqsa.GQSARecipe``): the full method, calibrated on the named text
    or file ``calibration``. Without: round-to-nearest codes with ``bits``/``group_size`` and, when ``sparsity``
    > 0, magnitude group pruning (no data needed). Writes ``model.safetensors`` and ``config.json`` with
    ``quantization_config.quant_method = "gqsa"`` (the recipe recorded under ``recipe``).
    """
    from sparseflow.compressors.gqsa import GQSARecipe, compress_model

    if recipe is None:
        recipe = GQSARecipe(bits=bits, group_size=group_size, sparsity=sparsity, saliency="magnitude",
                            compensate=False, stage1=False, stage2=False)
    qcfg = GQSACheckpointConfig(bits=recipe.bits, group_size=recipe.group_size, sparsity=recipe.sparsity,
                                ignore=tuple(ignore), recipe={**recipe.to_dict(), "calibration": calibration})
    model, ids = _prepare(model_dir, recipe, calibration, device)
    weights, _ = compress_model(model, ids, recipe, is_target=qcfg.is_quantized, progress=progress)
    return _write(model_dir, out_dir, weights, qcfg.to_dict())


def compress_nm(model_dir: str | Path, out_dir: str | Path, recipe: NMRecipe, *,
                ignore: tuple[str, ...] = ("lm_head",), calibration: str = "builtin-calibration",
                device: str | None = None, progress: bool = True) -> Path:
    """Compress every linear layer not in ``ignore`` to N:M sparse (``sparseflow.compressors.nm.NMRecipe``:
    pattern, pruning, kept-value format) and write a folder vLLM (``quant_method = "sparse_nm"``) and transformers
    load. Magnitude pruning with float or RTN values needs no data; Wanda, SparseGPT and GPTQ calibrate on the
    named text or file ``calibration``."""
    from sparseflow.compressors.nm import compress_model
    from sparseflow.kernels.nm import NMCheckpointConfig

    qcfg = NMCheckpointConfig(n=recipe.n, m=recipe.m, value_format=recipe.value_format, group_size=recipe.group_size,
                              ignore=tuple(ignore), recipe={**recipe.to_dict(), "calibration": calibration})
    model, ids = _prepare(model_dir, recipe, calibration, device)
    weights = compress_model(model, ids, recipe, is_target=qcfg.is_quantized, progress=progress)
    return _write(model_dir, out_dir, weights, qcfg.to_dict())


def _prepare(model_dir: str | Path, recipe: Any, calibration: str, device: str | None):
    """The dense model on ``device`` and, if the recipe calibrates, its calibration token ids."""
    config = read_config(model_dir)
    if "quantization_config" in config:
        raise ValueError(f"{model_dir} is already quantized ({config['quantization_config'].get('quant_method')})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from sparseflow.hf_loader import load_causal_lm

    model = load_causal_lm(model_dir, device=device)  # checks the weight files first: a cut-off one is named
    ids = None
    if recipe.needs_calibration:
        from sparseflow.compressors.data import calibration_ids
        from sparseflow.evaluate import load_tokenizer
        from sparseflow.texts import load_text

        ids = calibration_ids(load_tokenizer(model_dir), load_text(calibration), recipe.samples, recipe.seq_len,
                              recipe.seed)
    return model, ids


def _write(model_dir: str | Path, out_dir: str | Path, weights: Mapping[str, Any], qdict: dict) -> Path:
    """The source checkpoint with each compressed module's ``weight`` replaced by its format tensors."""
    state = load_state_dict(model_dir)
    config = read_config(model_dir)
    for name, w in weights.items():
        if f"{name}.weight" not in state:
            raise ValueError(f"{model_dir}: the model has {name} but the checkpoint holds no {name}.weight")
        del state[f"{name}.weight"]
        for tensor_name, tensor in w.to("cpu").tensors().items():
            state[f"{name}.{tensor_name}"] = tensor
    config["quantization_config"] = qdict
    return save_folder(out_dir, state, config, source_dir=model_dir)

