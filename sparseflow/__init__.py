"""sparseflow: sparsity research as plugins for vLLM, PEFT and TRL.

Importing this package is cheap on purpose: vLLM, PEFT, TRL and Triton are imported only by
the feature that needs them (``sparseflow.vllm_ext``, ``sparseflow.kernels.<op>.triton_*``, ...).
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

__all__ = ["__version__"]

# In the source tree the subpackages live beside this folder (kernels/, plugins/, ...) and an install
# maps them under sparseflow. When the repo root itself is on sys.path (`python -m pytest` from the
# root), this folder is found first; point the package at the root too so `sparseflow.kernels`
# still resolves to the same files. Installed wheels have no pyproject.toml beside them: no-op there.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "kernels" / "__init__.py").is_file():
    __path__.append(str(_root))  # type: ignore[name-defined]
del _Path, _root
