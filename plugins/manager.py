"""One plugin manager and one registry of features, built-ins and third-party plugins alike.

Built-in features are a plugin like any other (``sparseflow.plugins.builtin``), registered through
the same ``pluggy`` manager as packages that declare a ``sparseflow`` entry point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .features import FEATURE_KINDS, Feature

ENTRY_POINT_GROUP = "sparseflow"
BUILTIN_PROVIDER = "sparseflow (built-in)"


class DuplicateFeatureError(ValueError):
    """Two plugins (or one plugin twice) registered the same kind and name."""


class UnknownFeatureError(KeyError):
    """A lookup named a feature nobody registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class RegisteredFeature:
    feature: Feature
    provider: str  # distribution name and version, or BUILTIN_PROVIDER


class FeatureRegistry:
    """Features by kind and name. Raises on duplicates; lookups of unknown names list the known ones."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, RegisteredFeature]] = {kind: {} for kind in FEATURE_KINDS}

    def add(self, feature: Feature, provider: str) -> None:
        known = self._by_kind[feature.kind]
        if feature.name in known:
            raise DuplicateFeatureError(
                f"{feature.kind} {feature.name!r} is registered twice: by {known[feature.name].provider} "
                f"and by {provider}. Uninstall one of them or rename the feature."
            )
        known[feature.name] = RegisteredFeature(feature, provider)

    def get(self, kind: str, name: str) -> Feature:
        if kind not in self._by_kind:
            raise UnknownFeatureError(f"unknown feature kind {kind!r}; known kinds: {', '.join(FEATURE_KINDS)}")
        try:
            return self._by_kind[kind][name].feature
        except KeyError:
            names = ", ".join(sorted(self._by_kind[kind])) or "(none)"
            raise UnknownFeatureError(f"no {kind} named {name!r}; known: {names}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def all(self) -> list[RegisteredFeature]:
        return [entry for kind in FEATURE_KINDS for _, entry in sorted(self._by_kind[kind].items())]


def _provider_name(manager: pluggy.PluginManager, plugin: object) -> str:
    for candidate, dist in manager.list_plugin_distinfo():
        if candidate is plugin:
            return f"{dist.project_name} {dist.version}"
    return BUILTIN_PROVIDER


def build_registry(manager: pluggy.PluginManager) -> FeatureRegistry:
    """Ask every registered plugin for its features and file them, raising on duplicates."""
    registry = FeatureRegistry()
    for hook_name, kind in hookspecs.HOOK_KINDS.items():
        caller = getattr(manager.hook, hook_name)
        for impl in caller.get_hookimpls():
            provider = _provider_name(manager, impl.plugin)
            for feature in impl.function() or []:
                if feature.kind != kind:
                    raise ValueError(
                        f"{provider} returned a {feature.kind!r} feature ({feature.name!r}) from {hook_name}, "
                        f"which only takes {kind!r} features"
                    )
                registry.add(feature, provider)
    return registry


def make_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with our hook specs, the built-ins, and (optionally) installed plugins.

    ``check_pending`` makes a misspelled hook in any plugin an error instead of a silent no-op.
    """
    from . import builtin

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin, name="sparseflow.builtin")
    if load_entry_points:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    manager.check_pending()
    return manager


@functools.cache
def get_registry() -> FeatureRegistry:
    """The process-wide registry (built once, on first use)."""
    return build_registry(make_manager())
