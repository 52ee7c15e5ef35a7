"""The wheel holds exactly one top-level package, and importing it stays light."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import pytest
from helpers import REPO, run_python

# repo folders installed under sparseflow/ (the rest of sparseflow/ installs as itself)
MAPPED = ["plugins", "vllm_ext", "peft_ext", "trl_ext", "kernels", "benchmarks"]


def _source_packages() -> list[str]:
    """Every package the repo holds, as its path inside the installed ``sparseflow/`` (a missing entry in
    pyproject's explicit package list once left ``sparseflow.compressors`` out of the wheel)."""
    found = []
    for root in ["sparseflow", *MAPPED]:
        for init in sorted((REPO / root).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / root).as_posix()
            prefix = "" if root == "sparseflow" else root
            found.append("/".join(p for p in (prefix, rel) if p and p != "."))
    return [f for f in found if f]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True)
    (path,) = out.glob("sparseflow-*.whl")
    return path


def test_wheel_holds_every_subpackage_and_nothing_else_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/", 1)[0] for n in names}
    assert top_level == {"sparseflow", next(t for t in top_level if t.endswith(".dist-info"))}, top_level
    subpackages = _source_packages()
    assert {"compressors", "kernels/gqsa", "kernels/nm", "plugins"} <= set(subpackages), subpackages
    for sub in subpackages:
        assert f"sparseflow/{sub}/__init__.py" in names, f"{sub} missing from the wheel"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[vllm.general_plugins]" in entry_points and "sparseflow.plugins.vllm_entry:register" in entry_points


@pytest.mark.parametrize("name", ["kernels", "plugins", "vllm_ext", "peft_ext", "trl_ext"])
def test_repo_folders_are_not_importable_top_level(name):
    # Hugging Face ships a top-level `kernels` package; ours must never shadow it.
    spec = importlib.util.find_spec(name)
    assert spec is None or not str(spec.origin or "").startswith(str(REPO)), spec


def test_import_sparseflow_stays_light():
    proc = run_python("""
        import sys
        import sparseflow, sparseflow.cli
        from sparseflow.plugins import get_registry
        get_registry().all()
        heavy = [m for m in ("vllm", "peft", "trl", "triton", "transformers") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    assert "HEAVY []" in proc.stdout, proc.stdout
