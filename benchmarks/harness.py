"""The one benchmark harness: registry, timing, roofline, table and JSON.

Physical limits measured on the H200 machine (2026-11-28, ../shared/ENVIRONMENT.md): device-to-device
copy 4.27 TB/s (bytes read + written) and dense bf16 matmul ~690 TFLOP/s.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HBM_BYTES_PER_S = 4.27e12
BF16_FLOPS_PER_S = 690e12
RESULTS_DIR = Path(__file__).resolve().parent / "results"
log = logging.getLogger(__name__)

_BENCHMARKS: dict[str, Callable[..., list[Row]]] = {}


# The Llama shape of the training benchmarks' CPU smoke runs (``quick``)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=100)


@dataclass
class Row:
    """One timed configuration of one implementation."""

    case: str  # e.g. "N=28672 K=8192 M=1"
    impl: str  # e.g. "gqsa w4g16", "dense bf16"
    ms: float | None  # median; None when the implementation is unavailable here
    bytes_moved: float  # fewest bytes this implementation must move
    flops: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def floor_ms(self) -> float:
        return 1e3 * max(self.bytes_moved / HBM_BYTES_PER_S, self.flops / BF16_FLOPS_PER_S)


def register(name: str):
    """Decorator: register ``fn(quick: bool) -> list[Row]`` under ``name`` (duplicates raise)."""

    def wrap(fn):
        if name in _BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        _BENCHMARKS[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    from . import gqsa_linear, gqsa_sparse, gqsa_tiles, grpo_prefix, nm_sparse, peft_step, tile_matmul  # noqa: F401

    return sorted(_BENCHMARKS)


def get(name: str) -> Callable[..., list[Row]]:
    names = available()
    if name not in _BENCHMARKS:
        raise KeyError(f"no benchmark named {name!r}; known: {', '.join(names)}")
    return _BENCHMARKS[name]


def warm_up_gpu(seconds: float = 2.0) -> None:
    """Run matmuls for ``seconds`` so the SM clock leaves idle (345 MHz seen at the start of H200
    runs) before the first timed case; the first case of the 13f58c7 run looks slowed by it."""
    import time

    import torch

    if not torch.cuda.is_available():  # the CPU-capable benchmarks (peft_step, grpo_prefix) then run on the host
        log.info("no CUDA GPU: nothing to warm up; benchmarks that need one will say so")
        return
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def over_shapes(name: str, shapes: list[tuple[int, int]],
                bench_shape: Callable[[int, int], list[Row]]) -> list[Row]:
    """Rows of ``bench_shape(n, k)`` for every ``(N, K)``, seeded, with a progress bar; needs CUDA."""
    import torch
    from tqdm.auto import tqdm

    if not torch.cuda.is_available():
        raise RuntimeError(f"the {name} benchmark needs a CUDA GPU")
    torch.manual_seed(0)
    rows: list[Row] = []
    for n, k in tqdm(shapes, desc=name, unit="shape"):
        rows += bench_shape(n, k)
        torch.cuda.empty_cache()  # each shape's weight pools are large
    return rows


def time_ms(fn: Callable[[], Any], *, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn`` over CUDA events (``triton.testing.do_bench``).

    It launches from Python each time: for kernels under ~50 us that measures the launch path, not the GPU
    (``time_graph_ms`` does not). ``gqsa_linear`` and ``gqsa_tiles`` still use it and their configs
    (``dense_gemv_config``, ``dense_groups_config``) came from such sweeps: re-run them with graphs first."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def time_graph_ms(calls: list[Callable[[], Any]], *, reps: int = 30) -> float:
    """Median milliseconds per call when one CUDA graph runs every call of ``calls`` once, in order.

    This is how vLLM runs decode (CUDA graphs), and it keeps host-side launch cost out of the number, which
    ``do_bench`` on small kernels does not: there the Python launch path can take longer than the kernel.
    Pass one call per weight copy so each reads HBM, not L2. Calls run once before capture (compilation,
    lazily built tables)."""
    import statistics

    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    del graph
    return float(statistics.median(times))


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "hbm_bytes_per_s_assumed": HBM_BYTES_PER_S,
        "bf16_flops_per_s_assumed": BF16_FLOPS_PER_S,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if os.environ.get("SPARSEFLOW_COMMIT"):  # the device machine gets a copy of the tree without .git
        info["commit"] = os.environ["SPARSEFLOW_COMMIT"]
        return info
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        info["commit_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def format_table(rows: list[Row], baseline: str) -> str:
    """Rows grouped by case: time, speed-up over ``baseline``, and share of the physical floor."""
    lines = [f"{'case':<28} {'impl':<22} {'ms':>9} {'x ' + baseline:>16} {'% of floor':>10}  note"]
    cases: dict[str, list[Row]] = {}
    for r in rows:
        cases.setdefault(r.case, []).append(r)
    for case, group in cases.items():
        base = next((r.ms for r in group if r.impl == baseline and r.ms), None)
        for r in group:
            if r.ms is None:
                lines.append(f"{case:<28} {r.impl:<22} {'n/a':>9} {'':>16} {'':>10}  {r.note}")
                continue
            ratio = f"{base / r.ms:.2f}x" if base else ""
            floor = f"{100 * r.floor_ms / r.ms:>9.0f}%" if r.floor_ms else f"{'':>10}"  # no byte/FLOP model given
            lines.append(f"{case:<28} {r.impl:<22} {r.ms:>9.4f} {ratio:>16} {floor}  {r.note}")
    return "\n".join(lines)


def save(name: str, rows: list[Row], out_dir: Path | None = None) -> Path:
    env = environment()
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    device = env["device"].replace(" ", "_")
    path = out_dir / f"{name}-{device}.json"
    payload = {"benchmark": name, "environment": env,
               "rows": [{**asdict(r), "floor_ms": r.floor_ms} for r in rows]}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
