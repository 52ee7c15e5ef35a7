"""PEFT's own custom-model test battery, run with our methods' test cases.

PEFT ships ``tests/test_custom_models.py`` (with ``testing_common.py`` and ``testing_utils.py``) in its sdist, not in
the wheel. This test fetches the sdist of the *installed* PEFT version with pip (cached under
``~/.cache/sparseflow/peft-sdist``; never committed), swaps the module's ``TEST_CASES`` for ours
(``tests/peft_battery/cases.py``) and runs every test parametrized by them in a separate pytest process.
A PEFT upgrade that changes what a tuner must do fails here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import peft
import pytest

CACHE = Path(os.environ.get("SPARSEFLOW_CACHE", Path.home() / ".cache" / "sparseflow")) / "peft-sdist"
FILES = ("test_custom_models.py", "testing_common.py", "testing_utils.py")


def _sdist() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    name = f"peft-{peft.__version__}.tar.gz"
    if not (CACHE / name).exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--no-build-isolation",
               "-q", "-d", str(CACHE), f"peft=={peft.__version__}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not (CACHE / name).exists():
            raise RuntimeError(f"could not fetch the PEFT {peft.__version__} sdist with pip:\n{proc.stderr[-2000:]}")
    return CACHE / name


def _with_our_cases(source: str) -> str:
    """``TEST_CASES = [...]`` (the module's first, top-level list) replaced by our cases."""
    start = source.index("\nTEST_CASES = [") + 1
    depth, i = 0, source.index("[", start)
    while True:
        depth += {"[": 1, "]": -1}.get(source[i], 0)
        if depth == 0:
            break
        i += 1
    return source[:start] + "from .sparseflow_cases import SPARSEFLOW_TEST_CASES as TEST_CASES" + source[i + 1:]


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("peft_battery")
    pkg = root / "peft_tests"
    pkg.mkdir()
    with tarfile.open(_sdist()) as tar:
        for f in FILES:
            member = tar.getmember(f"peft-{peft.__version__}/tests/{f}")
            (pkg / f).write_bytes(tar.extractfile(member).read())
    (pkg / "__init__.py").write_text("")
    source = (pkg / "test_custom_models.py").read_text()
    (pkg / "test_custom_models.py").write_text(_with_our_cases(source))
    shutil.copy(Path(__file__).parent / "peft_battery" / "cases.py", pkg / "sparseflow_cases.py")
    return root


@pytest.mark.slow
def test_peft_custom_model_battery_passes_with_our_methods(battery):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-k", "DSEE or GSLoRA or PST",
         "peft_tests/test_custom_models.py::TestPeftCustomModel"],
        cwd=battery, capture_output=True, text=True, timeout=1800, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed >= 800, tail  # every parametrized test of the class ran for our cases
    print(tail.splitlines()[-1])
