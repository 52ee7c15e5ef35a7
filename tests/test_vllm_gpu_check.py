"""The GPU check script's judging rules (the script itself runs on the GPU machine; its CPU smoke run starts three
vLLM engines): which checkpoints tensor parallelism can split, and the near-tie rule between two engines."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "vllm_gpu_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("vllm_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(tmp_path, name, quant):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"hidden_size": 384, "intermediate_size": 1024,
                                                  "quantization_config": quant}))
    return path


def test_tp_blocker_names_the_layer_whose_inputs_do_not_split(tmp_path, check):
    g64 = _config(tmp_path, "g64", {"quant_method": "sparse_nm", "n": 2, "m": 4, "group_size": 64})
    g32 = _config(tmp_path, "g32", {"quant_method": "sparse_nm", "n": 2, "m": 4, "group_size": 32})
    gqsa = _config(tmp_path, "gqsa", {"quant_method": "gqsa", "group_size": 16})
    reason = check.tp_blocker(g64, 2)
    assert "o_proj" in reason and "192 per rank" in reason and "128-input span" in reason
    assert check.tp_blocker(g32, 2) is None and check.tp_blocker(gqsa, 2) is None
    assert check.tp_blocker(g64, 1) is None


def test_compare_engines_accepts_only_near_ties(check):
    base = {"greedy": [[5, 6, 7], [1, 2, 3], [1, 2, 3]],
            "top2": [[[[5, -0.1], [9, -3.0]]] * 3,
                     [[[1, -0.1], [8, -2.0]], [[2, -0.50], [4, -0.55]], [[3, -0.1], [0, -9.0]]],
                     [[[1, -0.1], [8, -2.0]], [[2, -0.50], [6, -0.90]], [[3, -0.1], [0, -9.0]]]]}
    other = {"greedy": [[5, 6, 7], [1, 4, 3], [1, 5, 3]]}
    verdicts = check.compare_engines(base, other, tol=0.125)
    assert verdicts[0] == {"prompt": 0, "equal": True}
    assert verdicts[1]["first_difference"] == 1 and verdicts[1]["near_tie"]
    assert abs(verdicts[1]["logprob_gap"] - 0.05) < 1e-9
    assert not verdicts[2]["near_tie"] and verdicts[2]["logprob_gap"] == float("inf")  # 5 not in the top 2
