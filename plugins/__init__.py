"""Plugin wiring: typed hook specs, one manager, the feature registry and the vLLM entry point."""

from __future__ import annotations

from .features import FEATURE_KINDS, Feature
from .hookspecs import hookimpl
from .manager import (
    DuplicateFeatureError,
    FeatureRegistry,
    UnknownFeatureError,
    build_registry,
    get_registry,
    make_manager,
)

__all__ = [
    "FEATURE_KINDS",
    "DuplicateFeatureError",
    "Feature",
    "FeatureRegistry",
    "UnknownFeatureError",
    "build_registry",
    "get_registry",
    "hookimpl",
    "make_manager",
]
