"""vLLM adapters: sparseflow kernels and formats as vLLM quantization methods.

Importing a submodule imports vLLM; ``sparseflow.plugins.vllm_entry`` registers them with vLLM.
"""
