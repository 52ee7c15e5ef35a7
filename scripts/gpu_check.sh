#!/usr/bin/env bash
# Runs on the H200 machine (through the device tool): install sparseflow into the image's python
# (no network there, no dependencies pulled), run the kernel tests natively (bf16 included), then
# the benchmarks. Results land in $OUT (or ./gpu_out).
#   bash scripts/gpu_check.sh [benchmark ...]      (default: gqsa_linear)
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/gpu.txt"
# run from tests/'s parent but import the installed package: -p no:cacheprovider (the tree is a copy)
python3 -m pytest -q -p no:cacheprovider tests/test_gqsa_kernels.py tests/test_gqsa_format.py \
  tests/test_nm_kernels.py tests/test_nm_format.py 2>&1 \
  | tee "$OUT/pytest_gpu.log" | tail -15
for bench in "${@:-gqsa_linear}"; do
  sparseflow bench run "$bench" --out-dir "$OUT" 2>&1 | tee "$OUT/bench_$bench.log" | grep -v "it/s\]" | tail -60
done
