"""The data a plugin hands to sparseflow: one ``Feature`` per thing a user can select by name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

FEATURE_KINDS = ("linear_method", "attention_backend", "peft_method", "trl_extension")


@dataclass(frozen=True)
class Feature:
    """A named, selectable feature.

    Args:
        kind: one of ``FEATURE_KINDS``.
        name: the name users type (``--quantization gqsa``); unique within its kind.
        summary: one line for ``sparseflow list``.
        target: ``"module:attribute"`` of the object the host tool needs; imported only on use,
            so listing features never imports vLLM, PEFT or TRL.
    """

    kind: str
    name: str
    summary: str
    target: str

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"Feature.kind={self.kind!r} is not one of {FEATURE_KINDS}")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"Feature.name={self.name!r} must be non-empty letters, digits, '-' or '_'")
        module, sep, attribute = self.target.partition(":")
        if not (module and sep and attribute):
            raise ValueError(f"Feature.target={self.target!r} must look like 'package.module:attribute'")

    def load(self) -> Any:
        """Import and return the target object."""
        module_name, _, attribute = self.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
        return obj
