"""``sparseflow bench serve``: our linear methods inside the real vLLM engine, against vLLM's own.

One run builds (or reuses, under ``--work``) a random-weight Llama checkpoint (Llama-3-8B shapes by default), writes
its variants (vLLM's W4 g128 in GPTQ format, GQSA, N:M) with our compressor, then starts ``vllm.LLM`` once per
variant in a fresh process and measures: decode time per step and tokens/s at each batch (prompts of
``prompt_len`` random tokens, ``new_tokens`` generated, greedy, prefix caching off; decode time = run with
``new_tokens`` minus run with one, each the best of ``repeats`` after a warm-up), prefill tokens/s for
``prefill_len``-token prompts, weight memory (bytes of the model's parameters and buffers on the worker) and
engine start time. vLLM runs exactly as users run it:
torch.compile and CUDA graphs on (``enforce_eager`` only on CPU, where the tests smoke-run the tiny preset).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .serve_models import PRESETS, write_gptq_w4, write_random_llama


@dataclass(frozen=True)
class Variant:
    """One served configuration: which checkpoint (``dense``, ``gptq`` or a compressed one), extra ``vllm.LLM``
    arguments and environment, and whether it needs CUDA (vLLM's own quantized kernels do)."""

    label: str
    checkpoint: str
    engine: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    cuda_only: bool = False


VARIANTS: dict[str, Variant] = {
    "dense": Variant("dense bf16", "dense"),
    "fp8": Variant("vLLM fp8 (online)", "dense", engine={"quantization": "fp8"}, cuda_only=True),
    "w4-machete": Variant("vLLM W4 g128 (Machete)", "gptq", cuda_only=True),
    "w4-marlin": Variant("vLLM W4 g128 (Marlin)", "gptq", env={"VLLM_DISABLED_KERNELS": "MacheteLinearKernel"},
                         cuda_only=True),
    "gqsa-w4s50": Variant("GQSA W4S50 g16", "gqsa_w4s50g16"),
    "gqsa-w4s20": Variant("GQSA W4S20 g16", "gqsa_w4s20g16"),
    "nm24-bf16": Variant("N:M 2:4 bf16", "nm_2of4_bf16"),
    "nm24-int4": Variant("N:M 2:4 int4 g128", "nm_2of4_int4g128"),
}


@dataclass
class Settings:
    preset: str = "llama3-8b"
    layers: int | None = None  # override the preset's layer count (quick GPU checks)
    batches: tuple[int, ...] = (1, 8, 32, 128)
    new_tokens: int = 128
    prompt_len: int = 32
    prefill_len: int = 2048
    prefill_batch: int = 8
    repeats: int = 3  # timings are the best of this many runs
    tp: int = 1  # tensor-parallel GPUs per engine

    def shape(self) -> dict[str, int]:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        shape = dict(PRESETS[self.preset])
        if self.layers is not None:
            shape["num_hidden_layers"] = self.layers
        return shape


def build_checkpoint(kind: str, work: Path, settings: Settings) -> Path:
    """The checkpoint ``kind`` for these settings under ``work`` (built once; a finished one has config.json)."""
    from sparseflow.compress import compress_gqsa, compress_nm
    from sparseflow.compressors.nm import NMRecipe

    shape = settings.shape()
    root = work / f"{settings.preset}-{shape['num_hidden_layers']}l"
    out = root / kind
    if (out / "config.json").exists():
        return out
    dense = root / "dense"
    if kind != "dense":
        build_checkpoint("dense", work, settings)
    t0 = time.perf_counter()
    if kind == "dense":
        write_random_llama(out, shape)
    elif kind == "gptq":
        write_gptq_w4(dense, out)
    elif kind.startswith("gqsa_w4s"):  # data-free: magnitude group pruning + round-to-nearest
        compress_gqsa(dense, out, bits=4, group_size=16, sparsity=int(kind[8:10]) / 100)
    elif kind == "nm_2of4_bf16":
        compress_nm(dense, out, NMRecipe(n=2, m=4))
    elif kind == "nm_2of4_int4g128":
        compress_nm(dense, out, NMRecipe(n=2, m=4, value_format="int4", group_size=128))
    else:
        raise ValueError(f"no recipe for checkpoint {kind!r}")
    print(f"[serve] built {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    _release_gpu_memory()
    return out


def _release_gpu_memory() -> None:
    """Hand the compressor's cached GPU memory back: the engine starts in a child process and sizes its KV cache
    from what is free (an 8B model compressed in fp32 leaves ~30 GiB in this process's allocator cache)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build(work: Path, settings: Settings, variants: list[str]) -> list[Path]:
    """Only build the checkpoints the variants need (e.g. ahead of the vLLM install on a fresh GPU machine)."""
    _check_names(variants)
    return [build_checkpoint(c, work, settings) for c in dict.fromkeys(VARIANTS[v].checkpoint for v in variants)]


def _model_bytes(worker) -> int:
    """Bytes of the served model's parameters and buffers (runs on each vLLM worker via ``collective_rpc``)."""
    import itertools

    model = worker.model_runner.model
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def measure(model_dir: str, engine: dict, settings: Settings) -> dict[str, Any]:
    """Start ``vllm.LLM`` on ``model_dir`` here and time decode per batch, prefill, and the start itself."""
    import random

    import torch
    from vllm import LLM, SamplingParams

    from sparseflow.serve import cpu_engine_kwargs, shutdown_engine

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    max_len = max(settings.prefill_len, settings.prompt_len + settings.new_tokens) + 8
    t0 = time.perf_counter()
    kwargs = {**cpu_engine_kwargs(), **engine}
    if settings.tp > 1:
        kwargs["tensor_parallel_size"] = settings.tp
    if torch.cuda.is_available():
        # capture CUDA graphs only at the decode batches measured (the graphs used there are the same ones vLLM's
        # default list would capture; the other ~60 sizes would cost engine-start time and nothing else)
        kwargs["compilation_config"] = {"cudagraph_capture_sizes": sorted(settings.batches)}
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=max_len, enable_prefix_caching=False, seed=0,
              **kwargs)
    result: dict[str, Any] = {"engine_start_s": time.perf_counter() - t0}
    try:
        result["weight_bytes"] = sum(llm.collective_rpc(_model_bytes))
    except Exception as err:  # the worker layout is vLLM-internal; say so rather than guess
        result["weight_bytes"] = None
        result["weight_bytes_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    rng = random.Random(0)

    def run(batch: int, length: int, new: int) -> float:
        prompts = [{"prompt_token_ids": [rng.randrange(3, cfg["vocab_size"]) for _ in range(length)]}
                   for _ in range(batch)]
        params = SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    result["decode"] = {}
    for batch in settings.batches:
        # a warm-up at this batch first (first-call allocations, lazy compiles), then the best of `repeats`: one
        # stray ~50 ms stall would otherwise add ~0.4 ms to every one of 127 steps
        run(batch, settings.prompt_len, 8)
        full = min(run(batch, settings.prompt_len, settings.new_tokens) for _ in range(settings.repeats))
        one = min(run(batch, settings.prompt_len, 1) for _ in range(settings.repeats))
        step_ms = max(full - one, 1e-9) / (settings.new_tokens - 1) * 1e3
        result["decode"][str(batch)] = {"ms_per_step": step_ms, "tokens_per_s": batch * 1e3 / step_ms}
        print(f"[serve]   batch {batch}: {step_ms:.2f} ms/step", flush=True)
    run(settings.prefill_batch, settings.prefill_len, 1)
    seconds = min(run(settings.prefill_batch, settings.prefill_len, 1) for _ in range(settings.repeats))
    result["prefill_tokens_per_s"] = settings.prefill_batch * settings.prefill_len / seconds
    shutdown_engine(llm)
    return result


def engine_environment() -> dict[str, Any]:
    """Device, versions (vLLM included) and commit of this process: each variant's result carries its own, so a
    report assembled later from results measured over several calls says where they were measured."""
    from .harness import environment

    env = environment()
    try:
        import vllm

        env["vllm"] = vllm.__version__
    except ImportError:
        env["vllm"] = None
    return env


def _child(spec_file: str, result_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    out = measure(spec["model_dir"], spec["engine"], Settings(**spec["settings"]))
    out["environment"] = engine_environment()
    Path(result_file).write_text(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # vLLM's teardown at interpreter exit can abort after the work is done


def run_variant(name: str, work: Path, settings: Settings, resume: bool = False) -> dict[str, Any]:
    """Build the variant's checkpoint, then measure it in a fresh process (each engine owns the GPU alone). With
    ``resume``, a result already measured under ``work`` with the same settings is reused, so a long run can be
    split over several calls (the device tool allows 10 minutes per command)."""
    import torch

    v = VARIANTS[name]
    if v.cuda_only and not torch.cuda.is_available():
        return {"label": v.label, "skipped": "needs CUDA (vLLM's own kernel)"}
    spec, result = _files(work, name, settings)
    measured = _measured(work, name, settings)
    if resume and measured is not None:
        print(f"[serve] {v.label}: reusing {result}", flush=True)
        return {**measured, "reused": True}
    model_dir = build_checkpoint(v.checkpoint, work, settings)
    result.unlink(missing_ok=True)
    spec.write_text(json.dumps({"model_dir": str(model_dir), "engine": v.engine, "settings": asdict(settings)}))
    env = {**os.environ, **v.env, "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}  # collective_rpc takes a function
    print(f"[serve] {v.label}: starting vLLM on {model_dir}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "sparseflow.benchmarks.serve", "--child", str(spec), str(result)],
                          env=env)
    if proc.returncode != 0 or not result.exists():
        return {"label": v.label, "failed": f"engine process exited {proc.returncode}"}
    return _measured(work, name, settings)


def _files(work: Path, name: str, settings: Settings) -> tuple[Path, Path]:
    """A variant's spec and result files under ``work`` (kept apart per tensor-parallel size)."""
    tag = f"{name}-tp{settings.tp}" if settings.tp > 1 else name
    return work / f"{tag}.spec.json", work / f"{tag}.result.json"


def _measured(work: Path, name: str, settings: Settings) -> dict[str, Any] | None:
    """The variant's report entry if it was measured under ``work`` with exactly these settings, else ``None``."""
    spec, result = _files(work, name, settings)
    if not (spec.exists() and result.exists()):
        return None
    if json.loads(spec.read_text())["settings"] != json.loads(json.dumps(asdict(settings))):
        return None
    v = VARIANTS[name]
    return {"label": v.label, "checkpoint": v.checkpoint, "engine": v.engine, "env": v.env,
            **json.loads(result.read_text())}


def _check_names(variants: list[str]) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")


def run(work: Path, settings: Settings, variants: list[str], resume: bool = False) -> dict[str, Any]:
    """Every variant in turn; the report ``{"settings", "shape", "variants": {name: result}}``."""
    _check_names(variants)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"settings": asdict(settings), "shape": settings.shape(), "variants": {}}
    for name in variants:
        report["variants"][name] = run_variant(name, work, settings, resume)
    return report


def table(report: dict[str, Any]) -> str:
    """Decode ms/step and tokens/s per batch, speed-up over dense bf16 per batch, prefill, memory, start."""
    batches = [str(b) for b in report["settings"]["batches"]]
    dense = report["variants"].get("dense", {}).get("decode", {})
    head = f"{'variant':<24}" + "".join(f"{'b' + b + ' ms':>10}{'x dense':>8}" for b in batches)
    lines = [head + f"{'prefill tok/s':>15}{'weights GiB':>12}{'start s':>9}"]
    for result in report["variants"].values():
        if "decode" not in result:
            lines.append(f"{result['label']:<24}  {result.get('skipped') or result.get('failed')}")
            continue
        cells = ""
        for b in batches:
            ms = result["decode"][b]["ms_per_step"]
            ratio = dense[b]["ms_per_step"] / ms if b in dense else float("nan")
            cells += f"{ms:>10.2f}{ratio:>7.2f}x"
        gib = result["weight_bytes"] / 2**30 if result.get("weight_bytes") else float("nan")
        lines.append(f"{result['label']:<24}{cells}{result['prefill_tokens_per_s']:>15.0f}{gib:>12.2f}"
                     f"{result['engine_start_s']:>9.0f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Decode tokens/s against batch size, one line per variant (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in report["variants"].values():
        if "decode" not in result:
            continue
        batches = sorted(int(b) for b in result["decode"])
        ax.plot(batches, [result["decode"][str(b)]["tokens_per_s"] for b in batches], marker="o",
                label=result["label"])
    shape = report["shape"]
    tp = report["settings"].get("tp", 1)
    ax.set(xscale="log", yscale="log", xlabel="batch (sequences decoding together)", ylabel="decode tokens/s",
           title=f"vLLM decode, random Llama ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']})"
           + (f", TP={tp}" if tp > 1 else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def collect(work: Path, settings: Settings, variants: list[str]) -> dict[str, Any]:
    """The report of the variants already measured under ``work`` with these settings (no engine started): for a run
    split over several device calls whose last call ran out of time before saving. Variants not measured are left
    out; the environment is the one the measurements recorded."""
    _check_names(variants)
    report: dict[str, Any] = {"settings": asdict(settings), "shape": settings.shape(), "variants": {}}
    for name in variants:
        measured = _measured(work, name, settings)
        if measured is not None:
            report["variants"][name] = measured
    envs = [r.pop("environment") for r in report["variants"].values() if "environment" in r]
    if envs:
        report["environment"] = envs[0]
    return report


def save(report: dict[str, Any], out_dir: Path) -> Path:
    """``serve-<device>.json`` (with the environment: device, versions, commit) in ``out_dir``."""
    env = report.pop("environment", None) or engine_environment()
    for result in report["variants"].values():
        result.pop("environment", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    tp = report["settings"].get("tp", 1)
    path = out_dir / f"serve-{'tp' + str(tp) + '-' if tp > 1 else ''}{env['device'].replace(' ', '_')}.json"
    path.write_text(json.dumps({"benchmark": "serve", "environment": env, **report}, indent=1) + "\n")
    return path


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    sys.exit("usage: python -m sparseflow.benchmarks.serve --child SPEC RESULT (use `sparseflow bench serve`)")
