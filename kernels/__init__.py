"""sparseflow.kernels: Triton kernels with plain-torch references. Imports only torch and triton.

Layout (one folder per op family): ``<op>/format.py`` (how compressed weights are laid out, shared
by the compressor, kernels, vLLM method and transformers loader), ``<op>/reference.py`` (plain
torch: the spec and the CPU fallback), ``<op>/triton_*.py`` (the kernels) and ``<op>/__init__.py``
(the public, validated entry points that dispatch between them). Triton is imported lazily.
"""
