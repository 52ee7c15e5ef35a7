"""GQSA against its baselines on the reference model: held-out perplexity per method and bits per weight.

    python recipes/gqsa_quality/run.py [--out recipes/gqsa_quality] [--max-tokens 32768]

Every method is calibrated on the same in-domain excerpt of training books (``calibration`` text, 32 x 512
tokens) and scored on the held-out books. GQSA models are evaluated through the stored format (``GQSALinear``,
the loader's modules); baselines as dense weights with their pruning/quantization applied. Writes
``results.json``, ``results.md`` and ``perplexity_vs_bits.png``. Needs ../shared/data (or $SPARSEFLOW_DATA).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparseflow.compressors.baselines import group_quantize, nm_prune
from sparseflow.compressors.blockwise import capture_block_inputs, input_hessians, linear_children, walk_blocks
from sparseflow.compressors.data import calibration_ids
from sparseflow.compressors.gqsa import GQSARecipe, compress_model
from sparseflow.demo import linear_bits_per_weight
from sparseflow.evaluate import load_tokenizer, perplexity
from sparseflow.nn import GQSALinear
from sparseflow.reference import reference_model_dir
from sparseflow.texts import load_text

W4S50 = GQSARecipe(sparsity=0.5)
METHODS: list[tuple[str, object, float]] = [  # name, recipe, stored bits per weight (non-GQSA)
    ("dense bf16", None, 16.0),
    ("GQSA W4S50 g16", W4S50, 0),
    ("GQSA W4S30 g16", replace(W4S50, sparsity=0.3), 0),
    ("GQSA W4S20 g16", replace(W4S50, sparsity=0.2), 0),
    ("GQSA W4S50 g16, stage 1 off", replace(W4S50, stage1=False), 0),
    ("GQSA W4S50 g16, stage 2 off", replace(W4S50, stage2=False), 0),
    ("GQSA W4S50 g16, both off (saliency + compensation + RTN)", replace(W4S50, stage1=False, stage2=False), 0),
    ("GQSA W4S50 g16, no compensation", replace(W4S50, compensate=False), 0),
    ("GQSA W4S50 g16, OBS saliency", replace(W4S50, saliency="obs"), 0),
    ("GQSA W4S50 g16, stage 1 scales only", replace(W4S50, stage1_train_weights=False), 0),
    ("GQSA W4S50 g16, 4x steps", replace(W4S50, stage1_steps=400, stage2_steps=400), 0),
    ("2:4 magnitude (bf16)", ("nm", "magnitude"), 9.0),  # 8 bits of values + 1 bit of 2:4 metadata per weight
    ("2:4 Wanda (bf16)", ("nm", "wanda"), 9.0),
    ("2:4 SparseGPT (bf16)", ("nm", "sparsegpt"), 9.0),
    ("W2 g128 RTN", ("quant", 2, "rtn"), 2.25),  # codes + fp16 scale and zero per 128
    ("W2 g128 GPTQ", ("quant", 2, "gptq"), 2.25),
    ("W4 g128 RTN", ("quant", 4, "rtn"), 4.25),
    ("W4 g128 GPTQ", ("quant", 4, "gptq"), 4.25),
]


def load_dense(device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32).to(device).eval()


def apply_baseline(model, ids, spec, batch_size: int = 4) -> None:
    """Sequential (block by block) baseline compression, each layer from its own calibration Hessian."""
    streams = capture_block_inputs(model, ids, batch_size)

    def compress_block(i, block, s, target):
        names = list(linear_children(block))
        hessians = input_hessians(block, s.q, s, names)
        for name, linear in linear_children(block).items():
            w = linear.weight.data
            if spec[0] == "nm":
                new = nm_prune(w, 2, 4, spec[1], hessians[name])
            else:
                new = group_quantize(w, spec[1], 128, spec[2], hessians[name])
            linear.weight.data = new.to(w.dtype)

    walk_blocks(model, streams, compress_block, desc=f"baseline {spec}")


def gqsa_model(model, ids, recipe: GQSARecipe) -> float:
    """Compress in place, then put the stored format (GQSALinear) in; returns stored bits per weight."""
    weights, _ = compress_model(model, ids, recipe, progress=False)
    for name, w in weights.items():
        model.set_submodule(name, GQSALinear.from_weight(w, model.get_submodule(name).bias))
    return linear_bits_per_weight(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--only", default="", help="comma-separated method-name prefixes to run")
    parser.add_argument("--stage-steps", type=int, default=None, help="override both GQSA stages' step counts")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from OUT/results.json")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / "results.json").read_text())["rows"], args.out / "perplexity_vs_bits.png")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = reference_model_dir()
    heldout = load_text("heldout")
    ids = calibration_ids(load_tokenizer(ref), load_text("calibration"), W4S50.samples, W4S50.seq_len, W4S50.seed)
    rows = []
    chosen = [m for m in METHODS if not args.only or any(m[0].startswith(p) for p in args.only.split(","))]
    for name, spec, bits in tqdm(chosen, desc="methods", unit="method"):
        t0 = time.perf_counter()
        model = load_dense(device)
        if isinstance(spec, GQSARecipe):
            if args.stage_steps is not None:
                spec = replace(spec, stage1_steps=args.stage_steps, stage2_steps=args.stage_steps)
            bits = gqsa_model(model, ids, spec)
        elif spec is not None:
            apply_baseline(model, ids, spec)
        ppl = perplexity(ref, heldout, text_name="heldout", max_tokens=args.max_tokens, model=model,
                         device=device, progress=False)
        rows.append({"method": name, "bits_per_weight": round(bits, 3), "perplexity": round(ppl.perplexity, 3),
                     "seconds": round(time.perf_counter() - t0, 1)})
        tqdm.write(json.dumps(rows[-1]))
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "calibration": f"calibration text, {W4S50.samples} x {W4S50.seq_len} tokens",
           "eval": f"heldout, {args.max_tokens} tokens, context 1023, stride 511", "recipe": W4S50.to_dict()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    lines = ["| method | bits/weight | held-out perplexity |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['bits_per_weight']:.2f} | {r['perplexity']:.2f} |" for r in rows]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, args.out / "perplexity_vs_bits.png")


def plot(rows: list[dict], path: Path) -> None:
    """Left: every method's perplexity vs stored bits. Right: the W4S50 ablations (same bits) as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in rows if "," not in r["method"]]
    ablations = [r for r in rows if r["method"].startswith("GQSA W4S50")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    for r in main:
        color = "tab:red" if r["method"].startswith("GQSA") else "tab:blue"
        ax.scatter(r["bits_per_weight"], r["perplexity"], color=color)
        ax.annotate(r["method"], (r["bits_per_weight"], r["perplexity"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("stored bits per weight (linear layers)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title("GQSA (red) vs 2:4 pruning and group quantization")
    labels = [r["method"].replace("GQSA W4S50 g16", "W4S50").replace(", ", ": ") for r in ablations]
    bx.barh(labels, [r["perplexity"] for r in ablations], color="tab:red")
    bx.invert_yaxis()
    bx.set_xscale("log")
    bx.set_xlabel("held-out perplexity (log)")
    bx.set_title("GQSA W4S50 g16: what each part does")
    bx.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
