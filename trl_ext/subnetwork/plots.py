"""Plots of a ``SubnetworkTracker`` report: update sparsity per matrix (fp32 and bf16) and overall sparsity against
the tolerance."""

from __future__ import annotations

from pathlib import Path


def plot_layers(report: dict, path: Path, tol: str | None = None) -> Path:
    """Bar chart: per matrix, the fraction of entries never updated (fp32 and bf16 views) at tolerance ``tol``
    (default: the smallest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = report["final"]["per_matrix"]
    tol = tol or str(report["tolerances"][0])
    names = list(per)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
    xs = range(len(names))
    for view, offset in (("fp32", -0.2), ("bf16", 0.2)):
        ax.bar([x + offset for x in xs], [per[n][view][tol] for n in names], width=0.4, label=view)
    ax.set_xticks(list(xs), [n.removeprefix("model.").removesuffix(".weight") for n in names], rotation=90,
                  fontsize=6)
    ax.set(ylabel="fraction not updated", ylim=(0, 1), title=f"RL update sparsity per matrix (tol {tol})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tolerance(report: dict, path: Path) -> Path:
    """Overall update sparsity against the tolerance, fp32 and bf16 views."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = report["final"]["overall"]
    tols = report["tolerances"]
    xs = [max(float(t), 1e-9) for t in tols]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for view in ("fp32", "bf16"):
        ax.plot(xs, [overall[view][str(t)] for t in tols], marker="o", label=view)
    ax.set(xscale="log", xlabel="tolerance (0 plotted at 1e-9)", ylabel="fraction not updated", ylim=(0, 1),
           title="RL update sparsity vs tolerance")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
