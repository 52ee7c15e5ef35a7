"""GPU correctness of the GQSA and N:M vLLM methods on the reference model (issues 4-6): the model compressed with
GQSA W4S50 and with N:M 2:4 + int4 (g64 and g32), served by ``vllm.LLM`` (torch.compile + CUDA graphs, bf16), must give

* the same greedy tokens as transformers on the *dequantized* weights (each compressed linear replaced by a plain
  ``nn.Linear`` holding its dense bf16 weight): first ``--tokens`` tokens of 5 prompts. "bf16 tolerance": where the
  two first differ, transformers' logit of vLLM's token must be within ``--tol`` of its own best (a near tie that
  bf16 rounding can flip); anything else is a mismatch;
* with ``--tp N``, the same greedy tokens at TP=N as at TP=1, under the same rule: where they first differ, TP=1's
  logprob of its token must be within ``--tol`` of its logprob of TP=N's token (TP changes the order of bf16 sums,
  which can flip a near tie). The dense reference model is run the same way as a control. A checkpoint the format
  cannot split at TP=N (scale groups across ranks) is reported as skipped, with the reason.

Each engine runs in its own process (vLLM's TP workers are processes too). Writes ``gpu_check.json`` with every token
list and a verdict per checkpoint into ``--out`` (after each checkpoint, so a run cut short keeps what it finished),
and exits non-zero on a mismatch.

    python scripts/vllm_gpu_check.py --out OUT [--tp 2] [--tokens 32]     # GPU machine with vLLM
    python scripts/vllm_gpu_check.py --out OUT --tp 2 --skip-transformers --only nm_2of4_int4g32   # one TP=2 check
    python scripts/vllm_gpu_check.py --out OUT --tokens 4                 # smoke test of the script (CPU vLLM)
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

CHECKPOINTS = ("gqsa_w4s50g16", "nm_2of4_int4g64", "nm_2of4_int4g32")


def compress(out: Path, calibration: str, names: list[str] | None = None) -> dict[str, Path]:
    """The checkpoints (cached under ``out``): GQSA W4S50 g16 (calibrated), N:M 2:4 int4 g64 and g32 (SparseGPT +
    GPTQ); small calibration budgets, as in the demo; ``calibration`` names a text (``sparseflow.texts``); ``names``:
    only these (default: all). g32 is
    there for tensor parallelism: the reference model's o_proj has 384 inputs, 192 per rank at TP=2, and a g64
    scale group of 2:4 values spans 128 inputs, which 192 does not hold a whole number of (vLLM refuses it)."""
    from sparseflow.compress import compress_gqsa, compress_nm
    from sparseflow.compressors.gqsa import GQSARecipe
    from sparseflow.compressors.nm import NMRecipe
    from sparseflow.demo import DEMO_CALIBRATION
    from sparseflow.reference import resolve_model

    model = resolve_model("reference")
    paths = {name: out / name for name in CHECKPOINTS if not names or name in names}
    if "gqsa_w4s50g16" in paths and not (paths["gqsa_w4s50g16"] / "config.json").exists():
        compress_gqsa(model, paths["gqsa_w4s50g16"], recipe=GQSARecipe(bits=4, group_size=16, sparsity=0.5,
                                                                       **DEMO_CALIBRATION), calibration=calibration)
    for group in (64, 32):
        path = paths.get(f"nm_2of4_int4g{group}")
        if path is not None and not (path / "config.json").exists():
            recipe = NMRecipe(n=2, m=4, prune="sparsegpt", value_format="int4", group_size=group, quantizer="gptq",
                              samples=DEMO_CALIBRATION["samples"], seq_len=DEMO_CALIBRATION["seq_len"],
                              batch_size=DEMO_CALIBRATION["batch_size"])
            compress_nm(model, path, recipe, calibration=calibration)
    return paths


def tp_blocker(model_dir: Path, tp: int) -> str | None:
    """Why vLLM would refuse ``model_dir`` at TP=``tp`` (row-parallel inputs per rank not a whole number of the
    format's blocks), or ``None``."""
    cfg = json.loads((model_dir / "config.json").read_text())
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") != "sparse_nm" or not q.get("group_size"):
        return None
    span = q["group_size"] * q["m"] // q["n"]
    for name, inputs in (("o_proj", cfg["hidden_size"]), ("down_proj", cfg["intermediate_size"])):
        if (inputs // tp) % span:
            return (f"{name} has {inputs} inputs, {inputs // tp} per rank at TP={tp}: not a whole number of the "
                    f"{span}-input span of a g{q['group_size']} scale group")
    return None


def _engine_child(model_dir: str, tp: int, tokens: int, result_file: str) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from sparseflow.serve import cpu_engine_kwargs, shutdown_engine

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [{"prompt_token_ids": tok(p)["input_ids"]} for p in PROMPTS]
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=256, tensor_parallel_size=tp,
              **cpu_engine_kwargs())
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, logprobs=2)
    outs = llm.generate(prompts, params, use_tqdm=False)
    shutdown_engine(llm)
    result = {"greedy": [list(o.outputs[0].token_ids) for o in outs],
              # per step: the top-2 (token, logprob) of this engine, to judge near ties between engines
              "top2": [[sorted(((t, lp.logprob) for t, lp in step.items()), key=lambda v: -v[1])[:2]
                        for step in o.outputs[0].logprobs] for o in outs]}
    Path(result_file).write_text(json.dumps(result))
    os._exit(0)  # vLLM's teardown at interpreter exit can abort after the work is done


def run_engine(model_dir: Path, tp: int, tokens: int, out: Path) -> dict:
    """``{"greedy", "top2"}`` of ``model_dir`` at TP=``tp``, from a fresh process (this script in ``--child``
    mode)."""
    result = out / f"{model_dir.name}_tp{tp}.json"
    cmd = [sys.executable, __file__, "--child", str(model_dir), str(tp), str(tokens), str(result)]
    proc = subprocess.run(cmd)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"vLLM at TP={tp} on {model_dir} failed (exit {proc.returncode})")
    return json.loads(result.read_text())


def compare_engines(base: dict, other: dict, tol: float) -> list[dict]:
    """Per prompt: equal, or the first differing step and the base engine's logprob gap there between its token
    and the other engine's (near tie if <= tol; a token outside the base's top 2 is a mismatch)."""
    def gap(i: int, step: int, ours: int, theirs: int) -> float:
        top = dict((int(t), lp) for t, lp in base["top2"][i][step])
        return top[ours] - top[theirs] if theirs in top else float("inf")

    return _verdicts(base["greedy"], other["greedy"], gap, "logprob_gap", tol)


def _verdicts(ours_all: list[list[int]], theirs_all: list[list[int]], gap, gap_name: str, tol: float) -> list[dict]:
    """Per prompt: equal, or the first step where the token lists differ and ``gap(prompt, step, ours, theirs)``
    there under ``gap_name`` (a near tie if <= tol)."""
    verdicts = []
    for i, (ours, theirs) in enumerate(zip(ours_all, theirs_all, strict=True)):
        first = next((t for t, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
        if first is None:
            verdicts.append({"prompt": i, "equal": True})
            continue
        g = gap(i, first, ours[first], theirs[first])
        verdicts.append({"prompt": i, "equal": False, "first_difference": first, gap_name: g, "near_tie": g <= tol})
    return verdicts


def transformers_dequantized(model_dir: Path, prompts: list[list[int]], tokens: int) -> dict:
    """Greedy tokens of transformers on the dequantized weights, and per-step logits (to judge near ties)."""
    import torch

    from sparseflow.hf_loader import load_model
    from sparseflow.nn import GQSALinear, NMLinear

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_model(model_dir, dtype=dtype, device=device)
    for name, module in list(model.named_modules()):
        if isinstance(module, (GQSALinear, NMLinear)):
            dense = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                    device=device, dtype=dtype)
            dense.weight.data = module.dequantized_weight(torch.float32).to(dtype)
            if module.bias is not None:
                dense.bias.data = module.bias.data.to(dtype)
            model.set_submodule(name, dense)
    greedy, logits = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                                 min_new_tokens=tokens, pad_token_id=0, output_logits=True,
                                 return_dict_in_generate=True)
            greedy.append(out.sequences[0, len(p):].tolist())
            logits.append([step[0].float().cpu() for step in out.logits])
    return {"greedy": greedy, "logits": logits}


def compare_with_tolerance(vllm_greedy: list[list[int]], hf: dict, tol: float) -> list[dict]:
    """Per prompt: equal, or the first differing step and transformers' logit gap there (near tie if <= tol)."""
    def gap(i: int, step: int, ours: int, theirs: int) -> float:
        logits = hf["logits"][i][step]
        return float(logits.max() - logits[ours])

    return _verdicts(vllm_greedy, hf["greedy"], gap, "logit_gap", tol)


def _tp_entry(path: Path, base: dict, args) -> dict:
    other = run_engine(path, args.tp, args.tokens, args.out)
    verdicts = compare_engines(base, other, args.tol)
    equal = sum(v["equal"] for v in verdicts)
    tp_ok = all(v["equal"] or v["near_tie"] for v in verdicts)
    print(f"{path.name}: TP=1 vs TP={args.tp}: {equal}/{len(verdicts)} prompts equal, "
          f"{'OK' if tp_ok else 'MISMATCH'} (near ties: logprob gap <= {args.tol})", flush=True)
    return {f"vllm_tp{args.tp}": other["greedy"], "vs_tp1": verdicts, "tp_all_equal": equal == len(verdicts),
            "tp_ok": tp_ok}


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _engine_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tp", type=int, default=1, help="also run at this tensor-parallel size and compare with TP=1")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--tol", type=float, default=0.125, help="logit gap counted as a bf16 near tie")
    p.add_argument("--calibration", default="builtin-calibration", help="text name or file (sparseflow.texts)")
    p.add_argument("--only", default="", help="comma-separated checkpoint names to check (default: all)")
    p.add_argument("--skip-transformers", action="store_true",
                   help="with --tp: only compare TP=N with TP=1 (the transformers comparison done in a TP=1 run)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from sparseflow.benchmarks.serve import engine_environment
    from transformers import AutoTokenizer

    if args.skip_transformers and args.tp == 1:
        p.error("--skip-transformers leaves nothing to check at TP=1")
    report = {"tp": args.tp, "tokens": args.tokens, "tol": args.tol, "prompts": PROMPTS, "checkpoints": {},
              "environment": engine_environment()}
    ok = True
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - set(CHECKPOINTS))
    if unknown:
        p.error(f"--only: no checkpoint {unknown}; there are {list(CHECKPOINTS)}")
    for name, path in compress(args.out, args.calibration, only).items():
        base = run_engine(path, 1, args.tokens, args.out)
        entry = {"vllm_tp1": base["greedy"]}
        if not args.skip_transformers:
            tok = AutoTokenizer.from_pretrained(str(path))
            hf = transformers_dequantized(path, [tok(p)["input_ids"] for p in PROMPTS], args.tokens)
            verdicts = compare_with_tolerance(base["greedy"], hf, args.tol)
            vs_hf = all(v["equal"] or v["near_tie"] for v in verdicts)
            entry.update({"transformers_dequantized": hf["greedy"], "vs_transformers": verdicts,
                          "vs_transformers_ok": vs_hf})
            print(f"{name}: vLLM vs transformers (dequantized): "
                  f"{sum(v['equal'] for v in verdicts)}/{len(verdicts)} prompts equal, "
                  f"{'OK' if vs_hf else 'MISMATCH'}", flush=True)
            ok &= vs_hf
        if args.tp != 1:
            blocker = tp_blocker(path, args.tp)
            if blocker:
                entry["tp_skipped"] = blocker
                print(f"{name}: TP={args.tp} not run: {blocker}", flush=True)
            else:
                entry.update(_tp_entry(path, base, args))
                ok &= entry["tp_ok"]
        report["checkpoints"][name] = entry
        _write(args.out, report)  # after every checkpoint: a run cut short keeps what it finished
    if args.tp != 1 and not only:
        # control: the dense reference model under the same rule (TP changes the bf16 summation order)
        from sparseflow.reference import reference_model_dir

        dense = Path(reference_model_dir())
        report["dense_control"] = _tp_entry(dense, run_engine(dense, 1, args.tokens, args.out), args)
    _write(args.out, report)
    return 0 if ok else 1


def _write(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
