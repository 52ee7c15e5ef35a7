"""Step 2 of the reference LM recipe (GPU, under 10 minutes on one H200): train a small Llama on the
tokenized training books and save it as a bf16 Hugging Face checkpoint with the tokenizer.

    python recipes/reference_lm/train.py --data .gpu_carry/reference_lm --out OUT_DIR

Random windows of ``--seq`` tokens are drawn from the training stream; the held-out loss is measured on a fixed
set of held-out windows every ``--eval-every`` steps (reported only, never used to pick a checkpoint).
``training.json`` in OUT_DIR keeps the command, config, curves, timings and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Llama, head_dim 64 (vLLM CPU attention), 6 query / 2 KV heads, sizes multiples of 128, context 1024,
# tied embeddings: 15.7 M parameters, 31.5 MB in bf16.
MODEL_CONFIG = dict(
    vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
    num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, initializer_range=0.02, bos_token_id=0, eos_token_id=0,
)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def windows(tokens: torch.Tensor, starts: torch.Tensor, seq: int) -> torch.Tensor:
    """[B, seq + 1] token windows starting at ``starts``."""
    return tokens[starts[:, None] + torch.arange(seq + 1, device=tokens.device)].long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder written by prepare.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, default=7.0,
                        help="GPU-time budget: after 30 steps, --steps is lowered (and the schedule with it) to fit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    train = torch.from_numpy(np.load(args.data / "train.npy").astype(np.int32)).to(device)
    heldout = torch.from_numpy(np.load(args.data / "heldout.npy").astype(np.int32)).to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    eval_starts = torch.linspace(0, heldout.numel() - args.seq - 2, 32, device=device).long()
    eval_batch = windows(heldout, eval_starts, args.seq)

    config = LlamaConfig(**MODEL_CONFIG)
    model = LlamaForCausalLM(config).to(device)
    model.config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = model(input_ids=batch[:, :-1]).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    curve, evals = [], []
    t0 = time.perf_counter()
    total = args.steps
    step = 0
    while step < total:
        if step == 10:
            t10 = time.perf_counter()
        if step == 30:  # still in warm-up: the schedule can shrink to the time budget without a jump
            step_seconds = (time.perf_counter() - t10) / 20  # steps 10..29: no CUDA start-up in the estimate
            fits = int((args.max_minutes * 60 - (time.perf_counter() - t0)) / step_seconds) + 30
            if fits < total:
                print(f"{total} steps do not fit {args.max_minutes} min at this speed: training {fits}", flush=True)
                total = max(fits, args.warmup + 1)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup)
        starts = torch.randint(0, train.numel() - args.seq - 2, (args.batch,), device=device, generator=gen)
        loss = loss_of(windows(train, starts, args.seq))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == total - 1:
            curve.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - t0})
        if step % args.eval_every == 0 or step == total - 1:
            model.eval()
            with torch.no_grad():
                held = loss_of(eval_batch).item()
            model.train()
            evals.append({"step": step, "heldout_loss": held, "seconds": time.perf_counter() - t0})
            print(f"step {step:5d}  train {loss.item():.3f}  held-out {held:.3f}  {time.perf_counter() - t0:6.1f}s",
                  flush=True)
        step += 1
    train_seconds = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(args.out), safe_serialization=True)
    for f in (args.data / "tokenizer").iterdir():
        shutil.copy2(f, args.out / f.name)
    shutil.copy2(args.data / "unigram_counts.json", args.out / "unigram_counts.json")
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "model_config": MODEL_CONFIG, "parameters": n_params, "args": {k: str(v) for k, v in vars(args).items()},
        "steps_done": step, "tokens_seen": step * args.batch * args.seq, "train_tokens": int(train.numel()),
        "train_seconds": round(train_seconds, 1), "loss_curve": curve, "heldout_curve": evals,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("loss_curve", "heldout_curve")}))


if __name__ == "__main__":
    main()
