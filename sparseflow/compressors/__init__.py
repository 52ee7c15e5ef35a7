"""Calibrated compressors (plain torch): GQSA's saliency-pruned, block- and end-to-end-optimized group
quantization, and the baselines it is compared with (N:M pruning by magnitude / Wanda / SparseGPT, RTN and
GPTQ group quantization). Formats live in ``sparseflow.kernels``; this package only decides their contents.
"""
