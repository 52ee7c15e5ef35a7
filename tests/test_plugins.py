"""The feature registry: built-ins and third-party plugins through one pluggy manager."""

from __future__ import annotations

import os
import subprocess
import sys

import pluggy
import pytest
from helpers import REPO
from sparseflow.plugins import (
    DuplicateFeatureError,
    Feature,
    UnknownFeatureError,
    build_registry,
    hookimpl,
    make_manager,
)


class _AttnPlugin:
    def __init__(self, name):
        self.name = name

    @hookimpl
    def sparseflow_attention_backends(self):
        return [Feature("attention_backend", self.name, "test", "builtins:object")]


def test_builtin_features_are_listed():
    registry = build_registry(make_manager(load_entry_points=False))
    assert "gqsa" in registry.names("linear_method")
    assert registry.get("linear_method", "gqsa").target.endswith(":GQSAConfig")


def test_duplicate_registration_raises():
    manager = make_manager(load_entry_points=False)
    manager.register(_AttnPlugin("same"), name="first")
    manager.register(_AttnPlugin("same"), name="second")
    with pytest.raises(DuplicateFeatureError, match="registered twice"):
        build_registry(manager)


def test_builtin_name_cannot_be_taken_by_a_plugin():
    class Clash:
        @hookimpl
        def sparseflow_linear_methods(self):
            return [Feature("linear_method", "gqsa", "impostor", "builtins:object")]

    manager = make_manager(load_entry_points=False)
    manager.register(Clash())
    with pytest.raises(DuplicateFeatureError, match="gqsa"):
        build_registry(manager)


def test_unknown_name_lists_known_ones():
    registry = build_registry(make_manager(load_entry_points=False))
    with pytest.raises(UnknownFeatureError, match=r"no linear_method named 'gqsaa'; known: gqsa, sparse_nm"):
        registry.get("linear_method", "gqsaa")


def test_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def sparseflow_linear_method(self):  # missing 's'
            return []

    manager = make_manager(load_entry_points=False)
    manager.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook"):
        manager.check_pending()


def test_feature_validates_its_fields():
    with pytest.raises(ValueError, match="kind"):
        Feature("linear", "x", "", "a:b")
    with pytest.raises(ValueError, match="target"):
        Feature("linear_method", "x", "", "no_colon")


def test_wrong_kind_from_a_hook_is_rejected():
    class Mixed:
        @hookimpl
        def sparseflow_peft_methods(self):
            return [Feature("trl_extension", "x", "", "a:b")]

    manager = make_manager(load_entry_points=False)
    manager.register(Mixed())
    with pytest.raises(ValueError, match="only takes 'peft_method'"):
        build_registry(manager)


def test_third_party_plugin_is_listed_by_the_cli(tmp_path):
    """Install a real package with a `sparseflow` entry point (into a side folder) and list it."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO / "tests" / "thirdparty_plugin")], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "sparseflow.cli", "list"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert "demo_sparse_attn" in out and "sparseflow-demo-plugin 0.0.1" in out, out
    assert "gqsa" in out and "built-in" in out, out


def test_vllm_entry_point_is_idempotent():
    from sparseflow.plugins.vllm_entry import register
    from sparseflow.vllm_ext.gqsa import GQSAConfig
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config

    for _ in range(3):
        register()
    assert QUANTIZATION_METHODS.count("gqsa") == 1
    assert get_quantization_config("gqsa") is GQSAConfig
