"""The ``vllm.general_plugins`` entry point.

vLLM calls ``register`` in every process it starts (engine core, workers), sometimes more than
once per process; registering twice must be harmless, so we remember what this process did.
"""

from __future__ import annotations

from ..log import logger

_registered: set[str] = set()


def register() -> None:
    """Register every sparseflow linear method with vLLM's quantization registry."""
    from vllm.model_executor.layers.quantization import register_quantization_config

    from .manager import get_registry

    registry = get_registry()
    for name in registry.names("linear_method"):
        if name in _registered:
            continue
        config_cls = registry.get("linear_method", name).load()
        register_quantization_config(name)(config_cls)
        _registered.add(name)
        logger.debug("registered vLLM quantization method %r", name)
