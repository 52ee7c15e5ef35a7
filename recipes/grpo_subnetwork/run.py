"""GRPO on the reference model with both TRL features of sparseflow on: Prefix Grouper (each prompt encoded once per
group) and the RL-subnetwork tracker; then training only the subnetwork the first run updated.

Task (a verifiable word-usage reward): continue an opening sentence from a held-out book in the first person; the
reward is the share of the completion's words that are first-person pronouns (``FIRST_PERSON``), x5, capped at 1
(the base model's share is ~4%, varying a lot between samples: a signal GRPO can use). Runs:

1. ``full``: GRPO, tracker on (update sparsity per matrix in fp32 and bf16, tolerance sweep);
2. ``full_seed1``: the same with another seed: the run-to-run noise of the reward curve;
3. ``subnetwork``: seed 0 again, training only the entries ``full`` updated in bf16 (the paper's measurement).

Writes ``results.json``, ``results.md``, ``reward_curves.png`` and the tracker's report and plots (``tracker/``).

    python recipes/grpo_subnetwork/run.py [--steps 80] [--out recipes/grpo_subnetwork]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from sparseflow.trl_ext.prefix_grouper import PrefixGrouperGRPOConfig, PrefixGrouperGRPOTrainer
from sparseflow.trl_ext.subnetwork import SubnetworkOnly, SubnetworkTracker, mask_overlap
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparseflow.reference import reference_model_dir
from sparseflow.texts import heldout_books

FIRST_PERSON = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves"}


def first_person_reward(completions, **kwargs) -> list[float]:
    """Share of words that are first-person pronouns, x5 (a fifth of them earns the full 1.0)."""
    out = []
    for text in completions:
        words = re.findall(r"[a-z]+", text.lower())
        share = sum(w in FIRST_PERSON for w in words) / max(len(words), 1)
        out.append(min(1.0, 5.0 * share))
    return out


def prompts(n: int, seed: int = 0) -> list[str]:
    """Openings (first 8 words) of sentences from the held-out books."""
    rng = random.Random(seed)
    sentences = []
    for book in heldout_books():
        text = " ".join(book.read_text().split())
        sentences += [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 12]
    return [" ".join(s.split()[:8]) for s in rng.sample(sentences, n)]


def run(name: str, out: Path, steps: int, seed: int, callbacks: list, device: str) -> dict:
    tok = AutoTokenizer.from_pretrained(str(reference_model_dir()))
    model = AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32)
    args = PrefixGrouperGRPOConfig(
        output_dir=str(Path(tempfile.gettempdir()) / "sparseflow_grpo_subnetwork" / name),  # nothing is saved
        num_generations=8, per_device_train_batch_size=16,
        max_completion_length=24, max_steps=steps, learning_rate=1e-4, logging_steps=1, report_to=[],
        use_cpu=device == "cpu", seed=seed, save_strategy="no", bf16=device == "cuda", beta=0.0, temperature=1.0,
        data_seed=seed)
    trainer = PrefixGrouperGRPOTrainer(model=model, reward_funcs=first_person_reward, args=args,
                                       train_dataset=Dataset.from_dict({"prompt": prompts(512)}),
                                       processing_class=tok, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"rewards": rewards, "seconds": time.perf_counter() - t0}


def smooth(xs: list[float], k: int = 5) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    tracker = SubnetworkTracker(every=10, tolerances=(0.0, 1e-7, 1e-6, 1e-5, 1e-4), rank_of=("layers.0.",),
                                out_dir=args.out / "tracker")
    results = {"steps": args.steps, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    results["full"] = run("full", args.out, args.steps, 0, [tracker], device)
    mask = tracker.masks(tol=0.0, view="bf16")
    tracker_seed1 = SubnetworkTracker(every=10**9, tolerances=(0.0,))
    results["full_seed1"] = run("full_seed1", args.out, args.steps, 1, [tracker_seed1], device)
    results["mask_overlap_seeds_bf16"] = mask_overlap(mask, tracker_seed1.masks(tol=0.0, view="bf16"))
    results["subnetwork"] = run("subnetwork", args.out, args.steps, 0, [SubnetworkOnly(mask)], device)
    final = tracker.final["overall"]
    results["update_sparsity"] = final
    results["subnetwork_density"] = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
    mean = {k: sum(results[k]["rewards"][-10:]) / len(results[k]["rewards"][-10:])
            for k in ("full", "full_seed1", "subnetwork")}
    results["mean_reward_last10"] = mean
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("full", "full (seed 0)"), ("full_seed1", "full (seed 1)"),
                       ("subnetwork", "subnetwork only (seed 0)")):
        ax.plot(smooth(results[key]["rewards"]), label=label)
    ax.set(xlabel="step", ylabel="reward (5-step mean)", title="GRPO first-person reward, reference model")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "reward_curves.png", dpi=120)
    plt.close(fig)
    lines = ["# GRPO with Prefix Grouper and the subnetwork tracker", "",
             f"{args.steps} steps on {results['device']}, 8 completions per prompt, 2 prompts per step.", "",
             "| run | mean reward, last 10 steps | seconds |", "|---|---|---|"]
    for k in ("full", "full_seed1", "subnetwork"):
        lines.append(f"| {k} | {mean[k]:.3f} | {results[k]['seconds']:.0f} |")
    lines += ["", "Update sparsity of the full run (fraction of weights not updated), by tolerance:", "",
              "| tolerance | fp32 | bf16 |", "|---|---|---|"]
    for t in tracker.tolerances:
        lines.append(f"| {t:g} | {final['fp32'][str(t)]:.3f} | {final['bf16'][str(t)]:.3f} |")
    o = results["mask_overlap_seeds_bf16"]
    lines += ["", f"Subnetwork trained in run 3 (bf16 updates of run 1): {results['subnetwork_density']:.1%} of the "
              f"weights. Overlap of the bf16 update masks of seeds 0 and 1: Jaccard {o['jaccard']:.3f} "
              f"(chance {o['chance']:.3f})."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
