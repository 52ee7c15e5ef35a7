"""GPU benchmarks: our ops and their peers timed in one process, with ratios and roofline shares.

Run ``sparseflow bench list`` / ``sparseflow bench run NAME`` on the GPU machine; results are saved as
JSON under ``benchmarks/results/`` (device, versions, commit).
"""
