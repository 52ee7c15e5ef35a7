"""The ``sparseflow`` command line (typer + rich)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="sparseflow: sparse and quantized layers for vLLM, PEFT and TRL.", no_args_is_help=True)
bench_app = typer.Typer(help="GPU benchmarks (ours and the peers in one process).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
eval_app = typer.Typer(help="Perplexity and cloze accuracy with transformers or the real vLLM engine.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")
console = Console()

MODEL_HELP = "model folder, or 'reference' for the committed reference model"
TEXT_HELP = "'heldout', 'wikitext2' (need ../shared/data), 'builtin' (Python's docs, always there) or a UTF-8 file"


@app.command("list")
def list_features() -> None:
    """Show every registered feature and the package that provides it."""
    from sparseflow.plugins import get_registry

    table = Table(title="sparseflow features")
    for column in ("kind", "name", "provider", "summary"):
        table.add_column(column)
    for entry in get_registry().all():
        f = entry.feature
        table.add_row(f.kind, f.name, entry.provider, f.summary)
    console.print(table)


@app.command()
def compress(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder (config.json + safetensors), or 'reference'"),
    out_dir: Path = typer.Argument(..., help="where to write the compressed folder"),
    method: str = typer.Option("gqsa", help="linear method: gqsa, or sparse_nm (alias nm)"),
    bits: int = typer.Option(None, help="gqsa: code width 2, 3, 4, 8 (default 4); sparse_nm: kept values as "
                             "16 (bf16, default), 8 (int8) or 4 (int4) bits"),
    group_size: int = typer.Option(None, help="gqsa: inputs per group 8..128 (default 16); sparse_nm int values: "
                                   "kept values per scale, a multiple of 8 dividing K*N/M (default 64)"),
    sparsity: float = typer.Option(0.5, help="gqsa: fraction of weight groups to prune"),
    saliency: str = typer.Option("wanda", help="gqsa: group saliency: magnitude, wanda or obs"),
    compensate: bool = typer.Option(True, help="gqsa: OBS update of surviving weights after pruning"),
    stage1: bool = typer.Option(True, help="gqsa: BQPO, block-wise optimization of scales, zeros and weights"),
    stage2: bool = typer.Option(True, help="gqsa: E2E-OQP, end-to-end optimization of scales and zeros"),
    steps: int = typer.Option(100, help="gqsa: optimizer steps of each stage"),
    pattern: str = typer.Option("2:4", help="sparse_nm: N:M pattern, N kept of every M inputs (M = 4, 8, 16)"),
    prune: str = typer.Option("magnitude", help="sparse_nm: magnitude, wanda or sparsegpt"),
    quantizer: str = typer.Option("rtn", help="sparse_nm int values: rtn or gptq"),
    calibration: str = typer.Option("builtin-calibration", help="calibration text: 'calibration' (training-book "
                                    "excerpt, needs ../shared/data), 'builtin-calibration' (always there) or a file"),
    samples: int = typer.Option(32, help="calibration sequences"),
    seq_len: int = typer.Option(512, help="tokens per calibration sequence"),
    rtn: bool = typer.Option(False, help="gqsa: plain round-to-nearest + magnitude pruning: no data, no stages"),
) -> None:
    """Compress a model folder; vLLM (`--quantization <method>` or nothing) and `sparseflow.hf_loader` load it."""
    from sparseflow.plugins import get_registry
    from sparseflow.reference import resolve_model

    method = {"nm": "sparse_nm"}.get(method, method)
    get_registry().get("linear_method", method)  # unknown names raise with the known ones listed
    if method == "sparse_nm":
        from sparseflow.compress import compress_nm
        from sparseflow.compressors.nm import NMRecipe
        from sparseflow.kernels.nm import parse_pattern

        values = {16: "bf16", 8: "int8", 4: "int4"}.get(bits or 16)
        if values is None:
            raise typer.BadParameter(f"--bits {bits}: sparse_nm keeps values as 16, 8 or 4 bits")
        n, m = parse_pattern(pattern)
        recipe = NMRecipe(n=n, m=m, prune=prune, value_format=values,
                          group_size=0 if values == "bf16" else (group_size or 64), quantizer=quantizer,
                          samples=samples, seq_len=seq_len, batch_size=min(4, samples))
        out = compress_nm(resolve_model(model_dir), out_dir, recipe, calibration=calibration)
    elif method == "gqsa":
        from sparseflow.compress import compress_gqsa
        from sparseflow.compressors.gqsa import GQSARecipe

        bits, group_size = bits or 4, group_size or 16
        recipe = None if rtn else GQSARecipe(
            bits=bits, group_size=group_size, sparsity=sparsity, saliency=saliency, compensate=compensate,
            stage1=stage1, stage2=stage2, stage1_steps=steps, stage2_steps=steps, samples=samples, seq_len=seq_len,
            batch_size=min(4, samples))
        out = compress_gqsa(resolve_model(model_dir), out_dir, bits=bits, group_size=group_size, sparsity=sparsity,
                            recipe=recipe, calibration=calibration)
    else:
        raise typer.BadParameter(f"compression for {method!r} is not implemented")
    console.print(f"wrote {out}")


@app.command()
def convert(
    src: Path = typer.Argument(..., help="a compressed-tensors 2:4 model folder (sparsity format sparse-24-bitmask)"),
    dst: Path = typer.Argument(..., help="where to write the sparse_nm folder"),
) -> None:
    """Convert another tool's 2:4 checkpoint to sparse_nm, which vLLM serves with the sparseflow plugin."""
    from sparseflow.convert import convert_compressed_tensors_24

    console.print(f"wrote {convert_compressed_tensors_24(src, dst)}")


@app.command()
def smoke(
    prompt_tokens: str = typer.Option("1,2,3,4,5", help="comma-separated prompt token ids"),
    max_tokens: int = typer.Option(8),
) -> None:
    """Write a tiny random Llama, compress it to GQSA w4g16, and generate with the real vLLM engine."""
    from sparseflow.compress import compress_gqsa
    from sparseflow.serve import generate_greedy
    from sparseflow.tiny import write_tiny_llama

    prompt = [int(t) for t in prompt_tokens.split(",")]
    with tempfile.TemporaryDirectory(prefix="sparseflow-smoke-") as tmp:
        dense = write_tiny_llama(Path(tmp) / "dense")
        quantized = compress_gqsa(dense, Path(tmp) / "gqsa")
        tokens = generate_greedy(quantized, [prompt], max_tokens=max_tokens)[0]
    console.print(f"vLLM + gqsa (tiny random Llama): prompt {prompt} -> greedy {tokens}")




def _write_json(payload: str, out: Path | None) -> None:
    console.print(payload, markup=False, highlight=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(payload + "\n")
        console.print(f"saved {out}")


@eval_app.command("ppl")
def eval_ppl(
    model: str = typer.Argument("reference", help=MODEL_HELP),
    engine: str = typer.Option("hf", help="hf (transformers + sparseflow loader) or vllm (the real engine)"),
    text: str = typer.Option("heldout", help=TEXT_HELP),
    context: int = typer.Option(None, help="window length in tokens (default: the model's positions - 1)"),
    stride: int = typer.Option(None, help="window step (default: half the context)"),
    max_tokens: int = typer.Option(32768, help="token budget: at most this many tokens are scored"),
    out: Path = typer.Option(None, help="also write the JSON result here"),
) -> None:
    """Sliding-window perplexity (and the unigram baseline when the model folder has its counts)."""
    from sparseflow.evaluate import perplexity
    from sparseflow.reference import resolve_model
    from sparseflow.texts import load_text

    result = perplexity(resolve_model(model), load_text(text), text_name=text, engine=engine, context=context,
                        stride=stride, max_tokens=max_tokens)
    _write_json(result.to_json(), out)


@eval_app.command("cloze")
def eval_cloze(
    model: str = typer.Argument("reference", help=MODEL_HELP),
    engine: str = typer.Option("hf", help="hf or vllm"),
    text: str = typer.Option("heldout", help=TEXT_HELP),
    samples: int = typer.Option(200, help="sentences to score"),
    out: Path = typer.Option(None, help="also write the JSON result here"),
) -> None:
    """Last-word (cloze) accuracy: greedy decoding must reproduce a sentence's final word exactly."""
    from dataclasses import asdict

    from sparseflow.evaluate import cloze_accuracy
    from sparseflow.reference import resolve_model
    from sparseflow.texts import load_text

    result = cloze_accuracy(resolve_model(model), load_text(text), text_name=text, engine=engine, n=samples)
    _write_json(json.dumps(asdict(result), indent=2), out)


@app.command()
def demo(
    text: str = typer.Option(None, help=TEXT_HELP + " (default: heldout if ../shared/data is there, else builtin)"),
    max_tokens: int = typer.Option(8192, help="perplexity token budget per method"),
    cloze_samples: int = typer.Option(100),
    work_dir: Path = typer.Option(None, help="keep the compressed models here (default: a temporary folder)"),
) -> None:
    """Compress the reference model with every method, evaluate each, serve the best with vLLM: one table."""
    from sparseflow.demo import format_table, run_demo

    t0 = time.perf_counter()
    if not console.is_terminal:
        console.width = 120  # logs and CI: room for the table's columns
    with tempfile.TemporaryDirectory(prefix="sparseflow-demo-") as tmp:
        folder = work_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = run_demo(folder, text=text, max_tokens=max_tokens, cloze_samples=cloze_samples, console=console)
    console.print(format_table(result))
    if "served" in result:
        s = result["served"]
        console.print(f"vLLM ({s['method']}): {s['prompt']!r} ->", markup=False, highlight=False)
        console.print(f"  {s['continuation']!r}", markup=False, highlight=False)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")


@bench_app.command("list")
def bench_list() -> None:
    """Names of the registered benchmarks."""
    from sparseflow.benchmarks.harness import available

    for name in available():
        console.print(name)


@bench_app.command("run")
def bench_run(
    name: str = typer.Argument(..., help="benchmark name (see `sparseflow bench list`)"),
    quick: bool = typer.Option(False, help="fewer shapes and batches"),
    out_dir: Path = typer.Option(None, help="where to save the JSON (default: benchmarks/results in the repo)"),
    baseline: str = typer.Option("dense bf16", help="implementation the ratios are taken against"),
) -> None:
    """Run a benchmark on the GPU, print the ratio table and save JSON."""
    from sparseflow.benchmarks import harness

    runner = harness.get(name)
    harness.warm_up_gpu()
    rows = runner(quick=quick)
    console.print(harness.format_table(rows, baseline), markup=False, highlight=False)
    path = harness.save(name, rows, out_dir)
    console.print(f"saved {path}")
    console.print(json.dumps(harness.environment()), markup=False, highlight=False)


@bench_app.command("serve")
def bench_serve(
    preset: str = typer.Option("llama3-8b", help="model shapes: llama3-8b (random weights) or tiny (CPU smoke)"),
    layers: int = typer.Option(None, help="override the preset's layer count"),
    variants: str = typer.Option(",".join(["dense", "fp8", "w4-machete", "w4-marlin", "gqsa-w4s50", "gqsa-w4s20",
                                           "nm24-bf16", "nm24-int4"]), help="comma-separated variant names"),
    batches: str = typer.Option("1,8,32,128", help="decode batch sizes"),
    new_tokens: int = typer.Option(128, help="tokens generated per sequence when timing decode"),
    prompt_len: int = typer.Option(32, help="prompt tokens of the decode runs"),
    prefill_len: int = typer.Option(2048, help="prompt tokens of the prefill run"),
    prefill_batch: int = typer.Option(8, help="prompts in the prefill run"),
    repeats: int = typer.Option(3, help="each timing is the best of this many runs"),
    work: Path = typer.Option(Path("/tmp/sparseflow-serve"), help="where checkpoints are built (reused if there)"),
    out_dir: Path = typer.Option(None, help="where the JSON and plot go (default: benchmarks/results in the repo)"),
    resume: bool = typer.Option(False, help="reuse variants already measured under --work with the same settings"),
    tp: int = typer.Option(1, help="tensor-parallel GPUs per engine"),
    build_only: bool = typer.Option(False, help="only build the variants' checkpoints under --work (no vLLM needed)"),
    collect: bool = typer.Option(False, help="no engine: report the variants already measured under --work"),
) -> None:
    """Serve a random Llama (and its GQSA / N:M / vLLM-W4 / fp8 variants) with the real vLLM engine; print the
    decode / prefill table, save JSON and a decode-vs-batch plot."""
    from sparseflow.benchmarks import serve
    from sparseflow.benchmarks.harness import RESULTS_DIR

    settings = serve.Settings(preset=preset, layers=layers, batches=tuple(int(b) for b in batches.split(",")),
                              new_tokens=new_tokens, prompt_len=prompt_len, prefill_len=prefill_len,
                              prefill_batch=prefill_batch, repeats=repeats, tp=tp)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    if build_only:
        for path in serve.build(work, settings, names):
            console.print(f"checkpoint {path}")
        return
    report = serve.collect(work, settings, names) if collect else serve.run(work, settings, names, resume=resume)
    console.print(serve.table(report), markup=False, highlight=False)
    path = serve.save(report, out_dir or RESULTS_DIR)
    console.print(f"saved {path}")
    try:
        console.print(f"plot {serve.plot(report, path.with_suffix('.png'))}")
    except ImportError:
        console.print("matplotlib is not installed here: plot later with `sparseflow bench serve-plot JSON`")


@bench_app.command("serve-plot")
def bench_serve_plot(report: Path = typer.Argument(..., help="a serve-*.json from `sparseflow bench serve`")) -> None:
    """Draw the decode-vs-batch plot of a saved serving report next to it."""
    from sparseflow.benchmarks import serve

    console.print(f"plot {serve.plot(json.loads(report.read_text()), report.with_suffix('.png'))}")


if __name__ == "__main__":
    app()
