"""Typed hook specifications: the one contract between sparseflow and any plugin, ours included.

A plugin (a module or object) implements any of these hooks, decorated with
``sparseflow.plugins.hookimpl``, and is found through the ``sparseflow`` entry-point group.
Each hook returns the features of one kind that the plugin provides.
"""

from __future__ import annotations

import pluggy

from .features import Feature

PROJECT = "sparseflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sparseflow_linear_methods() -> list[Feature]:
    """Quantized / sparse linear formats. ``Feature.target`` is the vLLM ``QuantizationConfig``
    class (``"module:Class"``), registered with vLLM under ``Feature.name``."""


@hookspec
def sparseflow_attention_backends() -> list[Feature]:
    """Sparse attention backends. ``Feature.target`` is the backend class."""


@hookspec
def sparseflow_peft_methods() -> list[Feature]:
    """PEFT methods. ``Feature.target`` is the PEFT config class."""


@hookspec
def sparseflow_trl_extensions() -> list[Feature]:
    """TRL extensions (trainer callbacks, patched trainers). ``Feature.target`` is the object users import."""


# hook name -> the feature kind its results must carry
HOOK_KINDS: dict[str, str] = {
    "sparseflow_linear_methods": "linear_method",
    "sparseflow_attention_backends": "attention_backend",
    "sparseflow_peft_methods": "peft_method",
    "sparseflow_trl_extensions": "trl_extension",
}
