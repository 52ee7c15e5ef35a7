"""N:M sparsity on the reference model: one-shot pruning (magnitude, Wanda, SparseGPT) at 2:4, 4:8 and 1:4, each
with bf16 values and with GPTQ int4 (g32), then sparse fine-tuning (SR-STE, MdGf, SdGf) at 2:4 and 1:4 with one
step budget. Held-out perplexity for everything.

    python recipes/nm_quality/run.py --data .gpu_carry/reference_lm [--out recipes/nm_quality]

One-shot methods calibrate on the training-book excerpt (``calibration`` text, 32 x 512 tokens). Fine-tuning starts
from the dense reference model and trains on random windows of its training tokens (``train.npy`` from
``recipes/reference_lm/prepare.py``) with the Hugging Face Trainer and ``NMSparseCallback``. Writes
``results.json`` (rows after each method, so a cut-off run keeps what finished), ``results.md`` and
``nm_quality.png`` (perplexity per method; fine-tuning loss and SAD). Needs ../shared/data (or $SPARSEFLOW_DATA).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sparseflow.compressors.data import calibration_ids
from sparseflow.compressors.nm import NMRecipe, compress_model
from sparseflow.evaluate import load_tokenizer, perplexity
from sparseflow.nm_training import NMSparseCallback, NMTrainingConfig
from sparseflow.reference import reference_model_dir
from sparseflow.texts import load_text

PATTERNS = [(2, 4), (4, 8), (1, 4)]
PRUNING = ["magnitude", "wanda", "sparsegpt"]
FINETUNE = [(2, 4), (1, 4)]
TRAINING = ["srste", "mdgf", "sdgf"]


def load_dense(device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32).to(device).eval()


def one_shot(device: str, ids: torch.Tensor, n: int, m: int, prune: str, int4: bool):
    recipe = NMRecipe(n=n, m=m, prune=prune, value_format="int4" if int4 else "bf16", group_size=32 if int4 else 0,
                      quantizer="gptq" if int4 else "rtn")
    model = load_dense(device)
    weights = compress_model(model, ids, recipe, progress=False)
    bits = sum(8 * w.storage_bytes() for w in weights.values()) / sum(w.out_features * w.in_features
                                                                     for w in weights.values())
    return model, bits


def finetune(device: str, tokens: np.ndarray, n: int, m: int, method: str, steps: int, out: Path):
    from transformers import Trainer, TrainingArguments

    model = load_dense(device).train()
    rng = np.random.default_rng(0)
    seq = 256
    starts = rng.integers(0, len(tokens) - seq - 1, size=steps * 16)
    data = [{"input_ids": torch.from_numpy(tokens[s:s + seq].astype(np.int64)),
             "labels": torch.from_numpy(tokens[s:s + seq].astype(np.int64))} for s in starts]
    args = TrainingArguments(output_dir=str(out / f"run-{method}-{n}of{m}"), max_steps=steps,
                             per_device_train_batch_size=16, learning_rate=3e-4, warmup_steps=steps // 10,
                             lr_scheduler_type="cosine", logging_steps=max(1, steps // 40), save_strategy="no",
                             report_to=[], disable_tqdm=True, bf16=device == "cuda", dataloader_num_workers=0)
    callback = NMSparseCallback(NMTrainingConfig(n=n, m=m, method=method, sad_interval=max(1, steps // 40)))
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return model.eval(), losses, callback.history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--data", type=Path, required=True, help="folder with train.npy (recipes/reference_lm)")
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps (16 x 256 tokens each)")
    parser.add_argument("--skip-one-shot", action="store_true")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / "results.json").read_text()), args.out / "nm_quality.png")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = reference_model_dir()
    heldout = load_text("heldout")
    ids = calibration_ids(load_tokenizer(ref), load_text("calibration"), 32, 512, 0)
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "calibration": "calibration text, 32 x 512 tokens", "finetune": f"{args.steps} steps x 16 x 256 tokens",
           "eval": f"heldout, {args.max_tokens} tokens, context 1023, stride 511"}
    results: dict = {"environment": env, "rows": [], "curves": {}}
    args.out.mkdir(parents=True, exist_ok=True)

    def score(model, name: str, bits: float, kind: str, t0: float) -> None:
        ppl = perplexity(ref, heldout, text_name="heldout", max_tokens=args.max_tokens, model=model.float(),
                         device=device, progress=False)
        results["rows"].append({"method": name, "kind": kind, "bits_per_weight": round(bits, 3),
                                "perplexity": round(ppl.perplexity, 3), "seconds": round(time.perf_counter() - t0, 1)})
        tqdm.write(json.dumps(results["rows"][-1]))
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    t0 = time.perf_counter()
    score(load_dense(device), "dense bf16", 16.0, "dense", t0)
    if not args.skip_one_shot:
        jobs = [(n, m, p, q) for (n, m) in PATTERNS for p in PRUNING for q in (False, True)]
        for n, m, prune, int4 in tqdm(jobs, desc="one-shot", unit="model"):
            t0 = time.perf_counter()
            model, bits = one_shot(device, ids, n, m, prune, int4)
            score(model, f"{n}:{m} {prune}" + (" + int4 GPTQ g32" if int4 else " (bf16)"), bits, "one-shot", t0)
    tokens = np.load(args.data / "train.npy", mmap_mode="r")
    for (n, m) in FINETUNE:
        for method in TRAINING:
            t0 = time.perf_counter()
            model, losses, history = finetune(device, tokens, n, m, method, args.steps, args.out)
            results["curves"][f"{n}:{m} {method}"] = {"loss": losses, **history}
            score(model, f"{n}:{m} {method} ({args.steps} steps, bf16)", 16 * n / m + np.log2(m) * n / m,
                  "fine-tuned", t0)
    lines = ["| method | kind | bits/weight | held-out perplexity |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['kind']} | {r['bits_per_weight']:.2f} | {r['perplexity']:.2f} |"
              for r in results["rows"]]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, args.out / "nm_quality.png")


def plot(results: dict, path: Path) -> None:
    """Left: held-out perplexity of every method (log). Middle: fine-tuning loss. Right: SAD over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(17, 6), gridspec_kw={"width_ratios": [3, 2, 2]})
    colors = {"dense": "black", "one-shot": "tab:blue", "fine-tuned": "tab:red"}
    ax.barh([r["method"] for r in rows], [r["perplexity"] for r in rows], color=[colors[r["kind"]] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("held-out perplexity (log)")
    ax.set_title("N:M on the reference model (blue: one-shot, red: sparse fine-tuning)")
    ax.tick_params(axis="y", labelsize=7)
    for name, curve in results.get("curves", {}).items():
        if curve["loss"]:
            steps, losses = zip(*curve["loss"], strict=True)
            bx.plot(steps, losses, label=name)
        sad = [(s, v) for s, v in zip(curve["step"], curve["sad"], strict=True) if v is not None]
        if sad:
            cx.plot(*zip(*sad, strict=True), label=name)
    bx.set_xlabel("step")
    bx.set_ylabel("training loss")
    bx.set_title("sparse fine-tuning loss")
    bx.legend(fontsize=7)
    cx.set_xlabel("step")
    cx.set_ylabel("SAD (fraction of mask entries flipped per interval)")
    cx.set_yscale("log")
    cx.set_title("sparse architecture divergence")
    cx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
