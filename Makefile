# The two commands the README promises (each sets up ./.venv first, reusing it when unchanged).
.PHONY: setup demo test lint gpu-check

setup:
	bash scripts/setup.sh

# Main job. Until the reference-model demo exists: list the features, then compress a tiny random
# Llama to GQSA and generate from it with the real vLLM engine (CPU).
demo: setup
	.venv/bin/sparseflow list
	.venv/bin/sparseflow smoke

# The pytest console script, not `python -m pytest`: the repo root must stay off sys.path.
test: setup
	.venv/bin/ruff check .
	.venv/bin/pytest -q

lint: setup
	.venv/bin/ruff check .

# On the H200 machine (device tool): kernel tests natively + benchmarks, results in $$OUT.
gpu-check:
	bash scripts/gpu_check.sh
