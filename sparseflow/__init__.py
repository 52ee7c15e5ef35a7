"""sparseflow: sparsity research as plugins for vLLM, PEFT and TRL.

Importing this package is cheap on purpose: vLLM, PEFT, TRL and Triton are imported only by
the feature that needs them (``sparseflow.vllm_ext``, ``sparseflow.kernels.<op>.triton_*``, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
