"""`sparseflow demo`: compress the committed reference model with every available method, evaluate each,
serve the best one with the real vLLM engine, and print one table.

Everything it reads ships with the package or with Python (the reference model; the standard library's
documentation as calibration and evaluation text), so it runs offline on any machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sparseflow.log import logger

PROMPT = "It was a dark and stormy night, and the old house"


@dataclass(frozen=True)
class DemoMethod:
    """A compression method as the demo runs it: ``compress(model_dir, out_dir, calibration_text) -> folder``."""

    name: str
    # (model_dir, out_dir, calibration: a named text or file) -> compressed folder; None: the dense model itself
    compress: Callable[[Path, Path, str], Path] | None


def _gqsa_rtn(bits: int, group_size: int) -> DemoMethod:
    def run(model_dir: Path, out_dir: Path, calibration_text: str) -> Path:
        from sparseflow.compress import compress_gqsa

        return compress_gqsa(model_dir, out_dir, bits=bits, group_size=group_size)

    return DemoMethod(f"gqsa w{bits}g{group_size} rtn", run)


# The full GQSA method on a CPU budget (a GPU runs the defaults: 32 x 512 tokens, 100 steps per stage).
DEMO_CALIBRATION = dict(samples=16, seq_len=256, batch_size=4, stage1_steps=40, stage2_steps=40)


def _gqsa_calibrated(bits: int, group_size: int, sparsity: float) -> DemoMethod:
    def run(model_dir: Path, out_dir: Path, calibration_text: str) -> Path:
        from sparseflow.compress import compress_gqsa
        from sparseflow.compressors.gqsa import GQSARecipe

        recipe = GQSARecipe(bits=bits, group_size=group_size, sparsity=sparsity, **DEMO_CALIBRATION)
        return compress_gqsa(model_dir, out_dir, recipe=recipe, calibration=calibration_text)

    return DemoMethod(f"gqsa w{bits}s{round(sparsity * 100)}g{group_size}", run)


def _nm(n: int, m: int, prune: str, values: str = "bf16", group_size: int = 0, quantizer: str = "rtn") -> DemoMethod:
    def run(model_dir: Path, out_dir: Path, calibration_text: str) -> Path:
        from sparseflow.compress import compress_nm
        from sparseflow.compressors.nm import NMRecipe

        recipe = NMRecipe(n=n, m=m, prune=prune, value_format=values, group_size=group_size, quantizer=quantizer,
                          samples=DEMO_CALIBRATION["samples"], seq_len=DEMO_CALIBRATION["seq_len"],
                          batch_size=DEMO_CALIBRATION["batch_size"])
        return compress_nm(model_dir, out_dir, recipe, calibration=calibration_text)

    label = values + (f"g{group_size} {quantizer}" if group_size else "")
    return DemoMethod(f"nm {n}:{m} {label} {prune}", run)


def available_methods() -> list[DemoMethod]:
    """What the demo compares: the dense model and every compression method implemented so far."""
    return [DemoMethod("dense bf16", None), _gqsa_rtn(8, 16), _gqsa_rtn(4, 16), _gqsa_calibrated(4, 16, 0.2),
            _gqsa_calibrated(4, 16, 0.5), _gqsa_rtn(2, 16), _nm(2, 4, "sparsegpt"),
            _nm(2, 4, "sparsegpt", "int4", 64, "gptq")]


@dataclass
class DemoRow:
    method: str
    bits_per_weight: float  # stored bits per weight of the compressed linear layers (bf16: 16)
    file_mb: float
    perplexity: float
    cloze_accuracy: float
    hf_tokens_per_s: float
    seconds: float


def linear_bits_per_weight(model) -> float:
    """Stored bits per weight over the model's linear layers, lm_head excluded (it is never compressed)."""
    from sparseflow.nn import GQSALinear, NMLinear

    bits = weights = 0
    for name, m in model.named_modules():
        if isinstance(m, (GQSALinear, NMLinear)):
            bits += 8 * m.weight_format().storage_bytes()
            weights += m.in_features * m.out_features
        elif isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"):
            bits += 16 * m.weight.numel()  # as stored in the bf16 checkpoint
            weights += m.weight.numel()
    return bits / weights


@torch.no_grad()
def hf_tokens_per_second(model, prompt_ids: list[int], new_tokens: int = 32) -> float:
    ids = torch.tensor([prompt_ids])
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=0)
    return new_tokens / (time.perf_counter() - t0)


def choose_best(rows: list[DemoRow], dense_ppl: float, tolerance: float = 0.10) -> DemoRow:
    """The fewest bits per weight whose perplexity is within ``tolerance`` of dense (else the lowest perplexity)."""
    compressed = [r for r in rows if r.bits_per_weight < 16]
    good = [r for r in compressed if r.perplexity <= dense_ppl * (1 + tolerance)]
    if good:
        return min(good, key=lambda r: (r.bits_per_weight, r.perplexity))
    return min(compressed, key=lambda r: r.perplexity)


def serve_with_vllm(model_dir: Path, prompt: str, max_tokens: int = 48) -> tuple[str, float]:
    """Greedy continuation of ``prompt`` by the real vLLM engine, and its decode tokens/s."""
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the demo prints one table, not engine logs
    from vllm import LLM, SamplingParams

    from sparseflow.serve import cpu_engine_kwargs, shutdown_engine

    llm = LLM(model=str(model_dir), max_model_len=512, **cpu_engine_kwargs())
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    llm.generate([prompt], SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    tokens_per_s = len(out.token_ids) / (time.perf_counter() - t0)
    shutdown_engine(llm)
    return out.text, tokens_per_s


def default_text() -> str:
    """Held-out books when the shared corpus is here (in-domain for the model), else Python's own docs."""
    from sparseflow.texts import shared_data_dir

    return "heldout" if shared_data_dir() is not None else "builtin"


def run_demo(work_dir: Path, *, text: str | None = None, max_tokens: int = 8192, cloze_samples: int = 100,
             methods: list[DemoMethod] | None = None, serve: bool = True, console=None) -> dict:
    """Compress, evaluate, serve; returns the table rows and the served continuation (also saved as JSON)."""
    from sparseflow.evaluate import cloze_accuracy, load_tokenizer, perplexity, tokenize
    from sparseflow.hf_loader import load_causal_lm
    from sparseflow.reference import reference_model_dir
    from sparseflow.texts import load_text

    say = console.print if console is not None else logger.info
    text = text or default_text()
    reference = reference_model_dir()
    eval_text = load_text(text)
    # in-domain training-book excerpt when the corpus is here; else the half of Python's docs never evaluated
    calibration = "calibration" if text == "heldout" else "builtin-calibration"
    prompt_ids = tokenize(load_tokenizer(reference), PROMPT)
    rows: list[DemoRow] = []
    folders: dict[str, Path] = {}
    for i, method in enumerate(methods or available_methods(), 1):
        say(f"[{i}] {method.name}: compress, evaluate on {text!r}")
        t0 = time.perf_counter()
        folder = reference
        if method.compress is not None:
            folder = method.compress(reference, work_dir / f"m{i}", calibration)
        folders[method.name] = folder
        model = load_causal_lm(folder, dtype=torch.float32)
        ppl = perplexity(folder, eval_text, text_name=text, max_tokens=max_tokens, model=model)
        cloze = cloze_accuracy(folder, eval_text, text_name=text, n=cloze_samples, model=model)
        rows.append(DemoRow(
            method=method.name, bits_per_weight=round(linear_bits_per_weight(model), 2),
            file_mb=round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6, 2),
            perplexity=round(ppl.perplexity, 3), cloze_accuracy=round(cloze.accuracy, 3),
            hf_tokens_per_s=round(hf_tokens_per_second(model, prompt_ids), 1),
            seconds=round(time.perf_counter() - t0, 1)))
        del model
    dense_ppl = next(r.perplexity for r in rows if r.bits_per_weight >= 16)
    result: dict = {"text": text, "calibration": calibration, "tokens_scored": max_tokens,
                    "rows": [asdict(r) for r in rows], "unigram_perplexity": ppl.unigram_perplexity}
    if serve and any(r.bits_per_weight < 16 for r in rows):
        best = choose_best(rows, dense_ppl)
        say(f"serving {best.method} with vLLM (CPU): the fewest bits within 10% of dense perplexity")
        continuation, tps = serve_with_vllm(folders[best.method], PROMPT)
        result["served"] = {"method": best.method, "prompt": PROMPT, "continuation": continuation,
                            "vllm_tokens_per_s": round(tps, 1)}
    (work_dir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict):
    """The demo's one table (a ``rich`` Table)."""
    from rich.table import Table

    served = result.get("served", {})
    calib = {"calibration": "an excerpt of the training books",
             "builtin-calibration": "the other half of Python's docs"}.get(result["calibration"], result["calibration"])
    table = Table(title=f"reference model on {result['text']!r} text ({result['tokens_scored']} tokens; unigram "
                        f"perplexity {result['unigram_perplexity']:.0f})")
    table.caption = ("bits/weight: stored bits per weight of the linear layers (codes, scales, zeros, indices); "
                     f"rtn: round-to-nearest; wXsY: GQSA with Y% of groups pruned, calibrated on {calib} "
                     f"({DEMO_CALIBRATION['samples']} x {DEMO_CALIBRATION['seq_len']} tokens, "
                     f"{DEMO_CALIBRATION['stage1_steps']} steps per stage; calibration adapts them to its domain); "
                     "tok/s: greedy batch-1 decoding on this CPU")
    for col in ("method", "bits/weight", "file MB", "perplexity", "cloze acc", "tok/s HF", "tok/s vLLM"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in result["rows"]:
        vllm_tps = f"{served['vllm_tokens_per_s']:.1f}" if served.get("method") == r["method"] else ""
        table.add_row(r["method"], f"{r['bits_per_weight']:.2f}", f"{r['file_mb']:.2f}", f"{r['perplexity']:.2f}",
                      f"{r['cloze_accuracy']:.3f}", f"{r['hf_tokens_per_s']:.1f}", vllm_tps)
    return table
