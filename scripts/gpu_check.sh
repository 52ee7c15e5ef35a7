#!/usr/bin/env bash
# Runs on the H200 machine (through the device tool): install sparseflow into the image's python
# (no network there, no dependencies pulled), run the kernel and PEFT tests natively (bf16 included),
# then the benchmarks. Results land in $OUT (or ./gpu_out).
#   COMMIT=<hash> bash scripts/gpu_check.sh [benchmark ...]   (default: gqsa_linear)
# Write the hash literally, as `git rev-parse --short HEAD` prints it here, before the call: the device's copy of
# .git is the session's starting commit, so `$(git rev-parse ...)` inside the device command labels results with a
# stale commit (it did, once: benchmarks/results JSONs carry a commit_note where that was mended).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -n "${COMMIT:-}" ] && export SPARSEFLOW_COMMIT=$COMMIT
python3 -m pip install -q --no-deps --no-build-isolation --no-index . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/gpu.txt"
PARALLEL=""; python3 -c 'import xdist' 2>/dev/null && PARALLEL="-n 8"
# run from tests/'s parent but import the installed package: -p no:cacheprovider (the tree is a copy). These files
# hold every test that needs CUDA and runs without vLLM (about 1,670 tests, ~3.5 minutes with xdist on 16 cores).
python3 -m pytest -q -p no:cacheprovider $PARALLEL tests/test_gqsa_kernels.py tests/test_gqsa_format.py \
  tests/test_gqsa_tile_matmul.py tests/test_gqsa_interleaved.py tests/test_nm_kernels.py tests/test_nm_format.py tests/test_nm_tile_matmul.py \
  tests/test_ops.py tests/test_splitk.py tests/test_pdl.py tests/test_stream_read.py tests/test_peft_dsee.py tests/test_peft_pst.py tests/test_peft_gs_lora.py \
  2>&1 | tee "$OUT/pytest_gpu.log" | tail -15
# host-bound benchmarks (peft_step at 4k tokens) are only meaningful with nothing else running on the machine
for bench in "${@:-gqsa_linear}"; do
  sparseflow bench run "$bench" --out-dir "$OUT" 2>&1 | tee "$OUT/bench_$bench.log" | grep -v "it/s\]" | tail -60
done
