"""Step 3 of the reference LM recipe (CPU, ~10 minutes): plot the training curves and evaluate the committed
model with both engines, beside the unigram baseline.

    python recipes/reference_lm/report.py

Writes ``loss.png`` and ``eval.json`` next to the checkpoint (sparseflow/assets/reference_lm/) and prints a
markdown table for the model card.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from sparseflow.evaluate import cloze_accuracy, perplexity
from sparseflow.reference import reference_model_dir
from sparseflow.texts import load_text, shared_data_dir


def plot_curves(model_dir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    training = json.loads((model_dir / "training.json").read_text())
    tokens_per_step = int(training["args"]["batch"]) * int(training["args"]["seq"])
    train = training["loss_curve"]
    held = training["heldout_curve"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p["step"] * tokens_per_step / 1e6 for p in train], [p["loss"] for p in train], label="train (batch)")
    ax.plot([p["step"] * tokens_per_step / 1e6 for p in held], [p["heldout_loss"] for p in held], "o-",
            label="held-out books (32 windows)")
    epoch = training["train_tokens"] / 1e6
    for e in range(1, int(training["tokens_seen"] / training["train_tokens"]) + 1):
        ax.axvline(e * epoch, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("training tokens (millions; dotted lines: epochs)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_ylim(2.5, 6)
    ax.set_title(f"reference LM: {training['parameters'] / 1e6:.1f} M params, {training['steps_done']} steps, "
                 f"{training['train_seconds']:.0f} s on {training['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(model_dir / "loss.png", dpi=110)


def main() -> None:
    model_dir = reference_model_dir()
    plot_curves(model_dir)
    texts = ["heldout", "wikitext2", "builtin"] if shared_data_dir() is not None else ["builtin"]
    results = []
    for name in texts:
        text = load_text(name)
        for engine in ("hf", "vllm"):
            ppl = perplexity(model_dir, text, text_name=name, engine=engine)
            cloze = cloze_accuracy(model_dir, text, text_name=name, engine=engine)
            results.append({"perplexity": asdict(ppl), "cloze": asdict(cloze)})
    (model_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| text | engine | tokens scored | perplexity | unigram perplexity | cloze accuracy (n) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        p, c = r["perplexity"], r["cloze"]
        print(f"| {p['text']} | {p['engine']} | {p['tokens_scored']} | {p['perplexity']:.3f} | "
              f"{p['unigram_perplexity']:.1f} | {c['accuracy']:.3f} ({c['samples']}) |")


if __name__ == "__main__":
    main()
