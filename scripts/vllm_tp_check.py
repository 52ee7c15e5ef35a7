"""Tensor-parallel check for the GQSA and N:M vLLM methods: the reference model compressed with GQSA W4S50 and
with N:M 2:4 + int4, served by ``vllm.LLM`` at TP=1 and TP=``--tp``; the greedy tokens must be equal.

Each engine runs in its own process (vLLM's TP workers are processes too). Writes ``tp_check.json`` with every
token list and a per-checkpoint verdict into ``--out``, and exits non-zero on a mismatch.

    python scripts/vllm_tp_check.py --out OUT [--tp 2] [--tokens 32]     # GPU machine with --tp GPUs and vLLM
    python scripts/vllm_tp_check.py --out OUT --tp 1 --tokens 4          # smoke test of the script (CPU vLLM)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PROMPTS = [
    "It was a dark and stormy night, and",
    "The old man looked at the sea for",
    "In the morning the village woke to",
    "She opened the letter and read that",
    "Nobody in the house could explain why",
]


def compress(out: Path, calibration: str) -> dict[str, Path]:
    """The two checkpoints (cached under ``out``): GQSA W4S50 g16 (calibrated) and N:M 2:4 int4 g64 (SparseGPT +
    GPTQ); small calibration budgets, as in the demo; ``calibration`` names a text (``sparseflow.texts``)."""
    from sparseflow.compress import compress_gqsa, compress_nm
    from sparseflow.compressors.gqsa import GQSARecipe
    from sparseflow.compressors.nm import NMRecipe
    from sparseflow.demo import DEMO_CALIBRATION
    from sparseflow.reference import resolve_model

    model = resolve_model("reference")
    paths = {"gqsa_w4s50g16": out / "gqsa_w4s50g16", "nm_2of4_int4g64": out / "nm_2of4_int4g64"}
    if not (paths["gqsa_w4s50g16"] / "config.json").exists():
        compress_gqsa(model, paths["gqsa_w4s50g16"], recipe=GQSARecipe(bits=4, group_size=16, sparsity=0.5,
                                                                       **DEMO_CALIBRATION), calibration=calibration)
    if not (paths["nm_2of4_int4g64"] / "config.json").exists():
        recipe = NMRecipe(n=2, m=4, prune="sparsegpt", value_format="int4", group_size=64, quantizer="gptq",
                          samples=DEMO_CALIBRATION["samples"], seq_len=DEMO_CALIBRATION["seq_len"],
                          batch_size=DEMO_CALIBRATION["batch_size"])
        compress_nm(model, paths["nm_2of4_int4g64"], recipe, calibration=calibration)
    return paths


def _engine_child(model_dir: str, tp: int, tokens: int, result_file: str) -> None:
    from transformers import AutoTokenizer

    from sparseflow.serve import generate_greedy

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    out = generate_greedy(model_dir, prompts, max_tokens=tokens, tensor_parallel_size=tp)
    Path(result_file).write_text(json.dumps(out))
    os._exit(0)  # vLLM's teardown at interpreter exit can abort after the work is done


def run_engine(model_dir: Path, tp: int, tokens: int, out: Path) -> list[list[int]]:
    """Greedy tokens of ``model_dir`` at TP=``tp``, from a fresh process (this script in ``--child`` mode)."""
    result = out / f"{model_dir.name}_tp{tp}.json"
    cmd = [sys.executable, __file__, "--child", str(model_dir), str(tp), str(tokens), str(result)]
    proc = subprocess.run(cmd)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"vLLM at TP={tp} on {model_dir} failed (exit {proc.returncode})")
    return json.loads(result.read_text())


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _engine_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--calibration", default="builtin-calibration", help="text name or file (sparseflow.texts)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    report = {"tp": args.tp, "tokens": args.tokens, "prompts": PROMPTS, "checkpoints": {}}
    ok = True
    for name, path in compress(args.out, args.calibration).items():
        base = run_engine(path, 1, args.tokens, args.out)
        other = run_engine(path, args.tp, args.tokens, args.out) if args.tp != 1 else base
        equal = base == other
        ok &= equal
        report["checkpoints"][name] = {"tp1": base, f"tp{args.tp}": other, "equal": equal}
        print(f"{name}: TP=1 vs TP={args.tp} greedy tokens {'equal' if equal else 'DIFFER'}", flush=True)
    (args.out / "tp_check.json").write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
