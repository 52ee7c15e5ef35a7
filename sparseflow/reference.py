"""The committed reference model: a 15.7 M-parameter Llama trained on the shared Gutenberg books.

How it was trained, and its numbers: ``recipes/reference_lm/README.md``. It ships inside the package so the
demo and the tests work offline on any machine.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE_NAME = "reference"
_DIR = Path(__file__).resolve().parent / "assets" / "reference_lm"


def reference_model_dir() -> Path:
    """Folder of the reference model (config.json, model.safetensors, tokenizer, unigram counts)."""
    if not (_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"the reference model is missing from {_DIR}: reinstall sparseflow")
    return _DIR


def resolve_model(name_or_path: str | Path) -> Path:
    """``reference`` means the committed reference model; anything else is a model folder path."""
    if str(name_or_path) == REFERENCE_NAME:
        return reference_model_dir()
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json); pass a folder or {REFERENCE_NAME!r}")
    return path
