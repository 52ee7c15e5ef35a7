# The two commands the README promises (each sets up ./.venv first, reusing it when unchanged).
.PHONY: setup demo test lint gpu-check

setup:
	bash scripts/setup.sh

# Main job: compress the committed reference model with every method, evaluate each, serve the best one
# with the real vLLM engine (CPU), print one table. Offline; uses ../shared/data only when it is there.
demo: setup
	.venv/bin/sparseflow demo

# The pytest console script, not `python -m pytest`: the repo root must stay off sys.path. Two workers
# (pytest-xdist): the interpreter's kernel tests and the vLLM engine tests are single-process bound, and the
# suite went from 28 to 20 minutes on this 2-core machine.
test: setup
	.venv/bin/ruff check .
	.venv/bin/pytest -q -n 2

lint: setup
	.venv/bin/ruff check .

# On the H200 machine (device tool): kernel tests natively + benchmarks, results in $$OUT.
gpu-check:
	bash scripts/gpu_check.sh
