"""The package logger (stdlib only, so ``sparseflow.kernels`` keeps to torch + triton)."""

from __future__ import annotations

import logging

logger = logging.getLogger("sparseflow")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[sparseflow] %(levelname)s %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_said: set[str] = set()


def info_once(message: str) -> None:
    """Log ``message`` at INFO the first time it is seen in this process.

    Fallbacks (CPU reference instead of a kernel) must be visible, but not on every forward call.
    """
    if message not in _said:
        _said.add(message)
        logger.info(message)
