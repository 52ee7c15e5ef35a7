"""Shared fixtures and markers.

* ``gpu``: skipped without CUDA. ``slow``: starts a real engine; deselect with ``-m "not slow"``.
* Without CUDA, Triton runs in its interpreter (``TRITON_INTERPRET=1``), set here before any kernel
  module imports triton.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import result_of, run_python

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (fp32 safetensors) on disk."""
    from sparseflow.tiny import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def gqsa_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama compressed to GQSA w4 g16 (config.json says quant_method: gqsa)."""
    from sparseflow.compress import compress_gqsa

    return compress_gqsa(tiny_llama_dir, tmp_path_factory.mktemp("models") / "tiny-llama-gqsa", progress=False)


@pytest.fixture(scope="session")
def vllm_greedy():
    """``vllm_greedy(model_dir, prompts, max_tokens, **engine_kwargs) -> list[list[int]]``.

    Runs the real vLLM CPU engine (fp32, eager, 64 MiB KV cache) in a fresh process with vLLM's
    default multiprocessing, so vLLM itself loads sparseflow through its entry point.
    """

    def generate(model_dir, prompts, max_tokens=8, **engine_kwargs):
        code = f"""
        import json
        if __name__ == "__main__":
            from sparseflow.serve import generate_greedy
            out = generate_greedy({str(model_dir)!r}, {prompts!r}, max_tokens={max_tokens}, **{engine_kwargs!r})
            print("RESULT " + json.dumps(out))
        """
        return result_of(run_python(code, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}))

    return generate
