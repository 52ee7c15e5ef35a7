"""The committed reference model and the evaluation harness, on real checkpoints and the real vLLM engine."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import vllm_engine_run

from sparseflow.evaluate import (
    cloze_accuracy,
    cloze_samples,
    default_context,
    load_tokenizer,
    perplexity,
    plan_windows,
    tokenize,
)
from sparseflow.reference import reference_model_dir, resolve_model
from sparseflow.serve import generate_greedy_hf
from sparseflow.texts import builtin_text, load_text

PROMPTS = [
    "It was a dark and stormy night, and",
    "Mr. Holmes looked up from his paper and said",
    "The ship sailed out of the harbour at dawn",
    "She opened the letter with trembling hands.",
    "In the morning the whole village",
]


@pytest.fixture(scope="module")
def reference():
    return reference_model_dir()


@pytest.fixture(scope="module")
def hf_model(reference):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32).eval()


def test_reference_checkpoint_is_small_llama_with_gqa(reference):
    config = json.loads((reference / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert config["head_dim"] == 64 and config["num_key_value_heads"] < config["num_attention_heads"]
    assert config["hidden_size"] % 128 == 0 and config["intermediate_size"] % 128 == 0
    assert config["max_position_embeddings"] >= 1024
    assert (reference / "model.safetensors").stat().st_size <= 32_000_000
    training = json.loads((reference / "training.json").read_text())
    assert training["device"] == "NVIDIA H200" and training["train_seconds"] < 600


def test_reference_loads_by_path_in_transformers(reference, hf_model):
    tokenizer = load_tokenizer(reference)
    ids = tokenize(tokenizer, PROMPTS[0])
    assert tokenizer.decode(ids) == PROMPTS[0]
    assert hf_model.model.embed_tokens.weight.data_ptr() == hf_model.lm_head.weight.data_ptr()  # tied
    out = generate_greedy_hf(hf_model, [ids], max_tokens=4)[0]
    assert len(out) == 4


@pytest.mark.parametrize(("n", "context", "stride"), [(2, 2, 1), (10, 4, 2), (100, 16, 15), (1000, 1023, 511),
                                                      (37, 8, 3), (5, 100, 50)])
def test_windows_score_every_token_once(n, context, stride):
    plan = plan_windows(n, context, stride)
    scored = [pos for w in plan for pos in range(w.end - w.scored, w.end)]
    assert scored == list(range(1, n))
    assert all(w.end - w.begin <= context and 0 < w.scored < w.end - w.begin + 1 for w in plan)
    assert all(w.end - w.scored > w.begin for w in plan)  # a scored token always has a token before it


def test_bad_evaluation_arguments_raise(reference, tmp_path):
    with pytest.raises(ValueError, match="stride"):
        plan_windows(100, 16, 16)
    with pytest.raises(ValueError, match="at least 2"):
        plan_windows(1, 16, 8)
    with pytest.raises(ValueError, match="unknown engine"):
        perplexity(reference, "some text here", engine="onnx")
    with pytest.raises(ValueError, match="too long for vLLM"):
        perplexity(reference, "some text here", engine="vllm", context=4096)
    with pytest.raises(FileNotFoundError, match="named texts"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_text(tmp_path / "latin1.txt")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        resolve_model(tmp_path)
    with pytest.raises(ValueError, match="no sentence"):
        cloze_samples(load_tokenizer(reference), "no sentences here at all")


def test_builtin_text_exists_everywhere():
    text = builtin_text()
    calibration = load_text("builtin-calibration")
    assert len(text) > 100_000 and text == load_text("builtin") and len(calibration) > 100_000
    assert text[-2000:] not in calibration  # evaluation and calibration halves are disjoint


def test_reference_perplexity_far_below_unigram(reference, hf_model):
    text = builtin_text()
    result = perplexity(reference, text, max_tokens=2048, model=hf_model, progress=False)
    assert result.tokens_scored == 2048 and result.context == default_context(reference) == 1023
    assert result.perplexity < result.unigram_perplexity / 4


@pytest.mark.slow
def test_vllm_and_transformers_agree_on_reference(reference, hf_model):
    """One vLLM CPU engine (fp32; default multiprocessing): greedy tokens for 5 prompts, perplexity and cloze
    accuracy, compared with transformers over the same checkpoint."""
    tokenizer = load_tokenizer(reference)
    prompts = [tokenize(tokenizer, p) for p in PROMPTS]
    got = vllm_engine_run(reference, prompts, max_tokens=16, ppl_tokens=3000, cloze_samples=40)
    assert got["ppl_engine"] == "vllm"

    assert got["greedy"] == generate_greedy_hf(hf_model, prompts, max_tokens=16)
    ppl = perplexity(reference, builtin_text(), max_tokens=3000, model=hf_model, progress=False).perplexity
    assert math.isclose(got["ppl"], ppl, rel_tol=5e-3), (got["ppl"], ppl)
    assert got["cloze"] == cloze_accuracy(reference, builtin_text(), n=40, model=hf_model, progress=False).accuracy


def test_cli_eval_ppl_writes_json(tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("The old man walked slowly down the road. He was tired, and the night was cold. " * 20)
    out = tmp_path / "ppl.json"
    cmd = [sys.executable, "-m", "sparseflow.cli", "eval", "ppl", "reference", "--text", str(text),
           "--context", "64", "--max-tokens", "200", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tokens_scored"] == 200 and result["context"] == 64 and result["stride"] == 32
    assert result["perplexity"] < result["unigram_perplexity"]

    bad = subprocess.run([*cmd[:-2], "--engine", "onnx"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown engine" in bad.stderr


@pytest.mark.slow
def test_demo_prints_the_table(tmp_path):
    """The README's main job, small budgets: every method, one table, vLLM serving the best one."""
    cmd = [sys.executable, "-m", "sparseflow.cli", "demo", "--text", "builtin", "--max-tokens", "512",
           "--cloze-samples", "10", "--work-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={"COLUMNS": "160",
                                                                                  **__import__("os").environ})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "demo.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods[0] == "dense bf16" and len(methods) >= 3
    assert any(m.startswith("gqsa") for m in methods) and any(m.startswith("nm 2:4") for m in methods)
    assert result["served"]["method"] in methods[1:] and result["served"]["continuation"].strip()
    for m in methods:
        assert m in proc.stdout
