"""The PEFT issue's recipes on the reference model (15.7 M-parameter Llama trained on the training books):

* ``dsee``: DSEE vs LoRA at equal trainable parameters on a domain shift: fine-tune on the first 80% of a held-out
  book (an author the model never saw), score the last 20%; then DSEE's pruning of the tuned model at 30% / 50%.
* ``pst``: PST at 50 / 70 / 90% sparsity against magnitude pruning + masked fine-tuning at the same step budget
  (same data as ``dsee``), every attention and MLP projection sparsified.
* ``gs_lora``: forget one author with GS-LoRA (retain: other training books): that author's perplexity should rise
  at least 3x while the other books' moves at most 5%; reports the groups that survive the group lasso.

    python recipes/peft_methods/run.py [--only dsee,pst,gs_lora] [--steps 300] [--out recipes/peft_methods]

Writes ``results.json``, ``results.md`` and one plot per experiment. Needs ../shared/data (or $SPARSEFLOW_DATA).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import sparseflow.peft_ext  # noqa: F401
import torch
from peft import LoraConfig, get_peft_model
from sparseflow.peft_ext import DSEEConfig, GSLoRAConfig, PSTConfig
from sparseflow.peft_ext.dsee import prune_unstructured
from sparseflow.peft_ext.gs_lora import forgetting_loss, group_norms, group_soft_threshold
from sparseflow.peft_ext.pst import cubic_sparsity, set_sparsity
from tqdm.auto import tqdm

from sparseflow.evaluate import load_tokenizer, tokenize
from sparseflow.reference import reference_model_dir
from sparseflow.texts import HELDOUT_BOOKS, _gutenberg_dir, training_books

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ = 256


def load_base(device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32).to(device)


def chunks(ids: list[int], seq: int = SEQ) -> torch.Tensor:
    n = len(ids) // seq
    return torch.tensor(ids[: n * seq]).view(n, seq)


@torch.no_grad()
def ppl(model, data: torch.Tensor, device: str, batch: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i:i + batch].to(device)
        out = model(input_ids=x, labels=x)
        total += out.loss.item() * x.numel()
        count += x.numel()
    return math.exp(total / count)


def train(model, data: torch.Tensor, steps: int, device: str, lr: float, batch: int = 8, after_step=None,
          loss_fn=None, desc: str = "train") -> float:
    """AdamW on random batches of ``data``; ``after_step(step)`` after every optimizer step. Returns seconds."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, leave=False):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x = data[idx].to(device)
        loss = loss_fn(model, x, step) if loss_fn else model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if after_step:
            after_step(step)
    model.eval()
    return time.perf_counter() - t0


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def domain_data(tok) -> tuple[torch.Tensor, torch.Tensor, str]:
    book = HELDOUT_BOOKS[0]
    ids = tokenize(tok, (_gutenberg_dir() / book).read_text())
    cut = int(0.8 * len(ids))
    return chunks(ids[:cut]), chunks(ids[cut:]), book


def run_dsee(tok, steps: int, device: str) -> dict:
    train_data, test_data, book = domain_data(tok)
    base = load_base(device)
    out = {"book": book, "base_ppl": ppl(base, test_data, device)}
    lora = get_peft_model(load_base(device), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    budget = trainable(lora)
    out["lora"] = {"trainable": budget, "seconds": train(lora, train_data, steps, device, 1e-3, desc="LoRA")}
    out["lora"]["ppl"] = ppl(lora, test_data, device)
    # DSEE at the same trainable count: rank 7 and the remainder as sparse entries
    probe = get_peft_model(load_base(device), DSEEConfig(r=7, sparse_size=1, target_modules=["q_proj", "v_proj"]))
    layers = sum(1 for n, _ in probe.named_modules() if n.endswith(("q_proj", "v_proj")) and "dsee" not in n
                 and hasattr(_, "dsee_A"))
    per_layer = (budget - (trainable(probe) - layers)) // layers
    dsee = get_peft_model(load_base(device), DSEEConfig(r=7, sparse_size=per_layer,
                                                        target_modules=["q_proj", "v_proj"]))
    out["dsee"] = {"trainable": trainable(dsee), "sparse_per_layer": per_layer,
                   "seconds": train(dsee, train_data, steps, device, 1e-3, desc="DSEE")}
    out["dsee"]["ppl"] = ppl(dsee, test_data, device)
    state = {k: v.clone() for k, v in dsee.state_dict().items()}
    for sparsity in (0.3, 0.5):
        dsee.load_state_dict(state)
        pruned, _ = prune_unstructured(dsee, sparsity, score="weight")
        out[f"dsee_pruned_{int(sparsity * 100)}"] = {"ppl": ppl(pruned, test_data, device)}
        dsee = get_peft_model(load_base(device), DSEEConfig(r=7, sparse_size=per_layer,
                                                            target_modules=["q_proj", "v_proj"]))
    return out


def run_pst(tok, steps: int, device: str) -> dict:
    train_data, test_data, book = domain_data(tok)
    out = {"book": book, "levels": {}}
    for sparsity in (0.5, 0.7, 0.9):
        model = get_peft_model(load_base(device), PSTConfig(r=8, importance_rank=8, sparsity=sparsity,
                                                            target_modules=ALL_LINEARS))
        end = (3 * steps) // 4

        def schedule(step, model=model, sparsity=sparsity, end=end):
            set_sparsity(model, cubic_sparsity(step + 1, sparsity, 0, end))

        set_sparsity(model, 0.0)
        seconds = train(model, train_data, steps, device, 1e-3, after_step=schedule, desc=f"PST {sparsity}")
        entry = {"pst_ppl": ppl(model, test_data, device), "pst_trainable": trainable(model), "pst_seconds": seconds}
        # baseline: magnitude pruning of the same layers, then fine-tuning the surviving weights (mask fixed)
        dense = load_base(device)
        masks = {}
        for name, mod in dense.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.endswith(tuple(ALL_LINEARS)):
                w = mod.weight.data
                k = int(sparsity * w.numel())
                mask = torch.ones_like(w, dtype=torch.bool)
                mask.view(-1)[torch.topk(w.abs().reshape(-1), k, largest=False).indices] = False
                w.mul_(mask)
                masks[mod] = mask
        for p in dense.parameters():
            p.requires_grad_(False)
        for mod in masks:
            mod.weight.requires_grad_(True)
        entry["magnitude_pruned_ppl"] = ppl(dense, test_data, device)

        def remask(step, masks=masks):
            with torch.no_grad():
                for mod, mask in masks.items():
                    mod.weight.mul_(mask)

        entry["magnitude_ft_seconds"] = train(dense, train_data, steps, device, 1e-4, after_step=remask,
                                              desc=f"magnitude+FT {sparsity}")
        entry["magnitude_ft_ppl"] = ppl(dense, test_data, device)
        out["levels"][str(sparsity)] = entry
    return out


def run_gs_lora(tok, steps: int, device: str) -> dict:
    books = training_books()
    forget_book = next(b for b in books if b.name.startswith("stoker-"))
    others = [b for b in books if b != forget_book][:6]
    forget_ids = tokenize(tok, forget_book.read_text())
    cut = int(0.8 * len(forget_ids))
    forget_train, forget_test = chunks(forget_ids[:cut]), chunks(forget_ids[cut:])[:64]
    retain_train, retain_test = [], []
    for b in others:
        ids = tokenize(tok, b.read_text())
        c = int(0.8 * len(ids))
        retain_train.append(chunks(ids[:c]))
        retain_test.append(chunks(ids[c:])[:16])
    retain_train, retain_test = torch.cat(retain_train), torch.cat(retain_test)
    base = load_base(device)
    out = {"forget_book": forget_book.name, "retain_books": [b.name for b in others],
           "before": {"forget_ppl": ppl(base, forget_test, device), "retain_ppl": ppl(base, retain_test, device)}}
    config = GSLoRAConfig(r=8, lora_alpha=16, group_lasso=2e-2, warmup_steps=steps // 4)
    model = get_peft_model(load_base(device), config)
    gen = torch.Generator().manual_seed(1)
    bound = math.log(out["before"]["forget_ppl"]) + math.log(4.0)  # push the forget CE ~4x past its start

    def loss_fn(model, x, step):
        f = forget_train[torch.randint(0, len(forget_train), (x.shape[0] // 2,), generator=gen)].to(device)
        retain_ce = model(input_ids=x, labels=x).loss
        forget_ce = model(input_ids=f, labels=f).loss
        return forgetting_loss(retain_ce, forget_ce, beta=0.5, bound=bound)

    def prox(step):
        ramp = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        group_soft_threshold(model, 1e-3 * config.group_lasso * ramp)

    out["seconds"] = train(model, retain_train, steps, device, 1e-3, after_step=prox, loss_fn=loss_fn, desc="GS-LoRA")
    out["after"] = {"forget_ppl": ppl(model, forget_test, device), "retain_ppl": ppl(model, retain_test, device)}
    norms = group_norms(model)
    out["groups"] = norms
    out["zeroed_groups"] = sum(v == 0.0 for v in norms.values())
    out["forget_ratio"] = out["after"]["forget_ppl"] / out["before"]["forget_ppl"]
    out["retain_change"] = out["after"]["retain_ppl"] / out["before"]["retain_ppl"] - 1
    return out


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# PEFT methods on the reference model", ""]
    if "dsee" in results:
        d = results["dsee"]
        lines += [f"## DSEE vs LoRA (fine-tune on {d['book']}, first 80%; held-out perplexity on its last 20%)", "",
                  "| model | trainable | perplexity |", "|---|---|---|",
                  f"| base (no tuning) | 0 | {d['base_ppl']:.2f} |",
                  f"| LoRA r=8 (q, v) | {d['lora']['trainable']} | {d['lora']['ppl']:.2f} |",
                  f"| DSEE r=7 + {d['dsee']['sparse_per_layer']} sparse/layer | {d['dsee']['trainable']} | "
                  f"{d['dsee']['ppl']:.2f} |",
                  f"| DSEE, 30% pruned | | {d['dsee_pruned_30']['ppl']:.2f} |",
                  f"| DSEE, 50% pruned | | {d['dsee_pruned_50']['ppl']:.2f} |", ""]
    if "pst" in results:
        lines += ["## PST vs magnitude pruning + fine-tuning (same data and steps)", "",
                  "| sparsity | PST | magnitude, no FT | magnitude + FT |", "|---|---|---|---|"]
        for level, e in results["pst"]["levels"].items():
            lines.append(f"| {float(level):.0%} | {e['pst_ppl']:.2f} | {e['magnitude_pruned_ppl']:.2f} | "
                         f"{e['magnitude_ft_ppl']:.2f} |")
        lines.append("")
    if "gs_lora" in results:
        g = results["gs_lora"]
        lines += [f"## GS-LoRA forgetting {g['forget_book']}", "",
                  f"forgotten book perplexity {g['before']['forget_ppl']:.2f} -> {g['after']['forget_ppl']:.2f} "
                  f"({g['forget_ratio']:.2f}x); other books {g['before']['retain_ppl']:.2f} -> "
                  f"{g['after']['retain_ppl']:.2f} ({g['retain_change']:+.1%}); groups zeroed: "
                  f"{g['zeroed_groups']} of {len(g['groups'])}", ""]
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, out: Path) -> list[Path]:
    """``dsee.png`` (held-out perplexity: base, LoRA, DSEE, DSEE pruned), ``pst_sparsity.png`` (perplexity vs
    sparsity, PST against magnitude + FT) and ``gs_lora_groups.png`` (the norm of every group after forgetting; zero =
    switched off)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if "dsee" in results:
        d = results["dsee"]
        bars = {"base": d["base_ppl"], "LoRA r=8": d["lora"]["ppl"], "DSEE r=7+S": d["dsee"]["ppl"],
                "DSEE, 30%\npruned": d["dsee_pruned_30"]["ppl"], "DSEE, 50%\npruned": d["dsee_pruned_50"]["ppl"]}
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.bar(list(bars), list(bars.values()), color=["grey", "C0", "C1", "C1", "C1"])
        for i, v in enumerate(bars.values()):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set(ylabel="held-out perplexity", title=f"DSEE vs LoRA at {d['lora']['trainable']} trainable parameters "
               f"({results['steps']} steps)")
        fig.tight_layout()
        paths.append(out / "dsee.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if "pst" in results:
        levels = sorted(results["pst"]["levels"], key=float)
        xs = [float(v) for v in levels]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for key, label in (("pst_ppl", "PST"), ("magnitude_ft_ppl", "magnitude + fine-tune"),
                           ("magnitude_pruned_ppl", "magnitude, no fine-tune")):
            ax.plot(xs, [results["pst"]["levels"][v][key] for v in levels], marker="o", label=label)
        ax.set(xlabel="sparsity of every projection", ylabel="held-out perplexity", yscale="log",
               title=f"PST vs magnitude pruning ({results['steps']} steps)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out / "pst_sparsity.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if "gs_lora" in results:
        groups = results["gs_lora"]["groups"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(list(groups), list(groups.values()))
        ax.set(ylabel="group norm", title=f"GS-LoRA groups after forgetting ({results['gs_lora']['zeroed_groups']} "
               "zeroed)")
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        paths.append(out / "gs_lora_groups.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="dsee,pst,gs_lora")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(reference_model_dir())
    results = {"steps": args.steps, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    runners = {"dsee": run_dsee, "pst": run_pst, "gs_lora": run_gs_lora}
    for name in args.only.split(","):
        torch.manual_seed(0)
        results[name] = runners[name](tok, args.steps, device)
        print(json.dumps({name: results[name]}, default=str)[:2000], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_markdown(results, args.out / "results.md")
    plot(results, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
