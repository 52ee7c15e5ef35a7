"""Training step time and peak memory of our PEFT methods against LoRA: same random Llama, same rank, same target
modules (every linear of every block), same batch, bf16 on the GPU. The issue's bar: DSEE and GS-LoRA within 1.2x of
LoRA, PST within 1.5x. Each method's own per-step work is in the timing: GS-LoRA's proximal group-lasso step, PST's
mask (at its final sparsity). ``SPARSEFLOW_PROFILE=1`` also prints each method's top ops over one more step."""

from __future__ import annotations

import os
import time

from .harness import TINY_LLAMA, Row, register

# 0.32B-parameter Llama on the GPU (16 blocks of 15.7M plus 65.5M of embedding and head); a tiny one for CPU smoke
# runs (quick)
SHAPES = {
    "gpu": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=16,
                num_key_value_heads=8, vocab_size=32000),
    "quick": TINY_LLAMA,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _configs(rank: int) -> dict:
    import sparseflow.peft_ext  # noqa: F401
    from peft import LoraConfig
    from sparseflow.peft_ext import DSEEConfig, GSLoRAConfig, PSTConfig

    return {
        "LoRA (PEFT)": LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS),
        "DSEE": DSEEConfig(r=rank, lora_alpha=2 * rank, sparse_size=64, target_modules=TARGETS),
        "GS-LoRA": GSLoRAConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, group_lasso=1e-4),
        "PST 50%": PSTConfig(r=rank, importance_rank=rank, sparsity=0.5, target_modules=TARGETS),
    }


def measure_step(name: str, config, shape: dict, batch: int, seq: int, steps: int, device: str) -> dict:
    """Median step time (ms) and peak memory (bytes, CUDA only) of ``steps`` AdamW steps after two warm-ups."""
    import statistics

    import torch
    from peft import get_peft_model
    from sparseflow.peft_ext.gs_lora import group_soft_threshold
    from sparseflow.peft_ext.pst import set_sparsity
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):  # initialised where it runs: a 0.4B random init on the host takes seconds per build
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False)).to(dtype=dtype)
    model = get_peft_model(model, config)
    if name.startswith("PST"):
        set_sparsity(model, config.final_sparsity())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, shape["vocab_size"], (batch, seq), device=device)
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def step_once(sync: bool = True):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if name == "GS-LoRA":
            group_soft_threshold(model, 1e-4 * 1e-4)
        if device == "cuda" and sync:
            torch.cuda.synchronize()

    for step in range(steps + 2):
        start = time.perf_counter()
        step_once()
        if step >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    syncs = count_host_syncs(lambda: step_once(sync=False)) if device == "cuda" else None
    profile = None
    if os.environ.get("SPARSEFLOW_PROFILE"):  # where a method's extra time goes: its top ops over one more step
        with torch.profiler.profile() as prof:
            step_once()
        profile = profile_summary(prof, device)
        print(f"--- {name}: one step ---\n{profile}", flush=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = opt = None  # freed before the next method is built
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"ms": statistics.median(times), "peak_bytes": peak, "trainable": trainable, "profile": profile,
            "host_syncs": syncs}


def profile_summary(prof, device: str) -> str:
    """The device's busy time and the number of kernels in one step, then the top ops by device time and by host
    time: a step whose wall time is well above its device time is bound by the host's per-op work."""
    events = prof.key_averages()
    lines = []
    if device == "cuda":
        from torch.autograd import DeviceType

        # the kernels' own durations: key_averages() lists an op and the kernels it launched both with self device
        # time, so summing it counted most of the step twice (111 ms "busy" for LoRA's 52 ms of kernels)
        kernels = [e for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA]
        busy_us = sum(e.time_range.elapsed_us() for e in kernels)
        lines.append(f"device busy {busy_us / 1e3:.1f} ms, {len(kernels)} kernels")
        lines.append(events.table(sort_by="self_cuda_time_total", row_limit=10))
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=10))
    return "\n".join(x for x in lines if x)


def count_host_syncs(step) -> int:
    """Device syncs one step makes (CUDA's sync debug mode warns on each): a sync per layer stops the host queueing
    work ahead of the GPU, which at small batches costs more than any kernel. ``step`` must not synchronize
    itself."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


@register("peft_step")
def run(quick: bool = False) -> list[Row]:
    """Step time and peak memory of LoRA, DSEE, GS-LoRA and PST 50% (rank 8) on one random Llama at 4k and 16k
    tokens a step: the median over three interleaved rounds of each method's median step."""
    import statistics

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = SHAPES["quick" if quick or device == "cpu" else "gpu"]
    small = quick or device == "cpu"
    # (batch, seq, steps): 4k tokens a step, where the host's launch work is most of the step, and 16k, a usual
    # fine-tuning batch on this GPU, where the GPU's work is
    sizes = [(2, 16, 3)] if small else [(8, 512, 10), (16, 1024, 6)]
    rounds = 1 if small else 3
    rows = []
    for batch, seq, steps in sizes:
        case = f"llama h{shape['hidden_size']} L{shape['num_hidden_layers']} b{batch}x{seq}"
        # methods take turns, round after round: drift in the machine's state (clocks, other work on the host)
        # then reaches every method alike instead of whichever happened to run during it
        runs: dict[str, list[dict]] = {name: [] for name in _configs(8)}
        for _ in range(rounds):
            for name, config in _configs(8).items():
                runs[name].append(measure_step(name, config, shape, batch, seq, steps, device))
        lora_ms = None
        for name, results in runs.items():
            r = {"ms": statistics.median(x["ms"] for x in results), "peak_bytes": results[0]["peak_bytes"],
                 "trainable": results[0]["trainable"], "rounds_ms": [x["ms"] for x in results],
                 "profile": results[-1]["profile"], "host_syncs": results[-1]["host_syncs"]}
            lora_ms = lora_ms or r["ms"]
            peak = f"{r['peak_bytes'] / 2**30:.2f} GiB peak" if r["peak_bytes"] else "peak n/a (CPU)"
            rows.append(Row(case, name, r["ms"], 0, 0, note=f"{r['ms'] / lora_ms:.2f}x LoRA time, {peak}, "
                            f"{r['trainable'] / 1e6:.2f}M trainable, {_syncs(r['host_syncs'])}", extra=r))
    return rows


def _syncs(count: int | None) -> str:
    return "syncs n/a (CPU)" if count is None else f"{count} syncs/step"
