"""The ``sparseflow`` command line (typer + rich)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="sparseflow: sparse and quantized layers for vLLM, PEFT and TRL.", no_args_is_help=True)
bench_app = typer.Typer(help="GPU benchmarks (ours and the peers in one process).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()


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
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder (config.json + safetensors)"),
    out_dir: Path = typer.Argument(..., help="where to write the compressed folder"),
    method: str = typer.Option("gqsa", help="linear method (see `sparseflow list`)"),
    bits: int = typer.Option(4, help="code width"),
    group_size: int = typer.Option(16, help="inputs per quantization group"),
    sparsity: float = typer.Option(0.0, help="fraction of weight groups to prune"),
) -> None:
    """Compress a model folder; vLLM and `sparseflow.hf_loader` load the result."""
    from sparseflow.plugins import get_registry

    get_registry().get("linear_method", method)  # unknown names raise with the known ones listed
    if method != "gqsa":
        raise typer.BadParameter(f"compression for {method!r} is not implemented yet")
    from sparseflow.compress import compress_gqsa

    out = compress_gqsa(model_dir, out_dir, bits=bits, group_size=group_size, sparsity=sparsity)
    console.print(f"wrote {out}")


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


if __name__ == "__main__":
    app()
