# The two commands the README promises (each sets up ./.venv first, reusing it when unchanged).
.PHONY: setup demo test lint gpu-check

setup:
	bash scripts/setup.sh

# Main job: compress the committed reference model with every method, evaluate each, serve the best one
# with the real vLLM engine (CPU), print one table. Offline; uses ../shared/data only when it is there.
demo: setup
	.venv/bin/sparseflow demo

# The pytest console script, not `python -m pytest`: the repo root must stay off sys.path.
test: setup
	.venv/bin/ruff check .
	.venv/bin/pytest -q

lint: setup
	.venv/bin/ruff check .

# On the H200 machine (device tool): kernel tests natively + benchmarks, results in $$OUT.
gpu-check:
	bash scripts/gpu_check.sh
