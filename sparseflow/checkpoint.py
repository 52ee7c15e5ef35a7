"""Reading and writing Hugging Face checkpoint folders (config.json + safetensors), with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

# Files copied unchanged from a source model folder to a compressed one.
SIDECAR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "vocab.json", "merges.txt", "tokenizer.model", "unigram_counts.json")


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; is this a Hugging Face model folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def safetensors_files(model_dir: str | Path) -> list[Path]:
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / n for n in names]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights found")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{model_dir}: the index names {f.name}, which is missing")
    return files


def _unreadable(f: Path, err: Exception) -> ValueError:
    return ValueError(f"{f}: cannot read safetensors (corrupt or truncated?): {err}")


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors files; a corrupt or truncated file raises ``ValueError``."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in safetensors_files(model_dir):
        try:
            state.update(load_file(str(f)))
        except Exception as err:  # safetensors raises its own error types for a bad header or short file
            raise _unreadable(f, err) from err
    return state


def check_safetensors(model_dir: str | Path) -> None:
    """Raise ``ValueError`` (as ``load_state_dict`` does) if a weight file's header is corrupt or the file is
    shorter than its header says; reads headers only, for folders another library then loads."""
    from safetensors import safe_open

    for f in safetensors_files(model_dir):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as err:  # safetensors' own error types, as above
            raise _unreadable(f, err) from err


def save_folder(out_dir: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any],
                source_dir: str | Path | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (and copy tokenizer files from ``source_dir``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if source_dir is not None:
        for name in SIDECAR_FILES:
            src = Path(source_dir) / name
            if src.is_file():
                shutil.copy2(src, out / name)
    return out
