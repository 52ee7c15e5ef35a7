"""GQSA end to end on real components: compressor -> checkpoint on disk -> vLLM engine and transformers."""

from __future__ import annotations

import json

import pytest
import torch

from sparseflow.hf_loader import load_model
from sparseflow.nn import GQSALinear
from sparseflow.serve import generate_greedy_hf

PROMPTS = [[1, 2, 3, 4, 5], [100, 7, 300, 42], [511, 0, 17, 9, 250, 33, 8]]


def test_checkpoint_on_disk_says_gqsa(gqsa_llama_dir):
    config = json.loads((gqsa_llama_dir / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gqsa"
    assert config["quantization_config"]["bits"] == 4 and config["quantization_config"]["group_size"] == 16


def test_transformers_loader_matches_dequantized_dense(gqsa_llama_dir, tiny_llama_dir):
    model = load_model(gqsa_llama_dir)
    linears = [m for m in model.modules() if isinstance(m, GQSALinear)]
    assert len(linears) == 2 * 7  # q k v o gate up down, in 2 layers; lm_head stays dense
    # the same network with each GQSA weight dequantized into a plain nn.Linear
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    for name, module in model.named_modules():
        if isinstance(module, GQSALinear):
            dense.get_submodule(name).weight.data = module.dequantized_weight()
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, dense(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_vllm_engine_greedy_equals_transformers(gqsa_llama_dir, vllm_greedy):
    """vLLM (CPU, default multiprocessing: the plugin loads through its entry point in vLLM's own
    processes) and transformers over the same dequantized weights pick the same greedy tokens."""
    expected = generate_greedy_hf(load_model(gqsa_llama_dir), PROMPTS, max_tokens=8)
    assert vllm_greedy(gqsa_llama_dir, PROMPTS, max_tokens=8) == expected


@pytest.mark.slow
def test_vllm_quantization_flag_selects_gqsa(gqsa_llama_dir, vllm_greedy, tmp_path):
    """`--quantization gqsa` (quantization="gqsa") works and agrees with the config-driven path."""
    expected = generate_greedy_hf(load_model(gqsa_llama_dir), PROMPTS[:1], max_tokens=6)
    assert vllm_greedy(gqsa_llama_dir, PROMPTS[:1], max_tokens=6, quantization="gqsa") == expected


def test_loader_rejects_bad_checkpoints(gqsa_llama_dir, tiny_llama_dir, tmp_path):
    from helpers import copy_with_quant_config, truncated_copy

    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"is None, not one of \['gqsa', 'sparse_nm'\]"):
        load_model(tiny_llama_dir)  # a dense checkpoint
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(truncated_copy(gqsa_llama_dir, tmp_path / "truncated"))
    from sparseflow.hf_loader import load_causal_lm

    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors \(corrupt or truncated"):
        load_causal_lm(truncated_copy(tiny_llama_dir, tmp_path / "dense-truncated"))  # the dense path too
    from sparseflow.compress import compress_gqsa

    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors \(corrupt or truncated"):
        compress_gqsa(tmp_path / "dense-truncated", tmp_path / "never-written")  # compress loads through it too
    wrong = copy_with_quant_config(gqsa_llama_dir, tmp_path / "wrong-bits", bits=8)  # contradicts the packed codes
    with pytest.raises(ValueError, match="codes"):
        load_model(wrong)


@pytest.fixture(scope="module")
def pruned_reference_dir(tmp_path_factory):
    """The reference model through the CLI: GQSA W4S50 g16, every stage on (small calibration budget)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("models") / "reference-w4s50"
    cmd = [sys.executable, "-m", "sparseflow.cli", "compress", "reference", str(out), "--sparsity", "0.5",
           "--samples", "4", "--seq-len", "64", "--steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_cli_compress_records_the_recipe(pruned_reference_dir):
    config = json.loads((pruned_reference_dir / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "gqsa" and q["sparsity"] == 0.5
    assert q["recipe"]["saliency"] == "wanda" and q["recipe"]["stage1"] and q["recipe"]["stage2"]
    assert q["recipe"]["calibration"] == "builtin-calibration"
    model = load_model(pruned_reference_dir)
    linears = [m for m in model.modules() if isinstance(m, GQSALinear)]
    assert len(linears) == 8 * 7
    assert all(abs(m.weight_format().density() - 0.5) < 0.01 for m in linears)
    assert all(m.weight_format().bits_per_weight() < 3.6 for m in linears)


@pytest.mark.slow
def test_vllm_serves_pruned_gqsa_like_transformers(pruned_reference_dir):
    """Pruned GQSA (W4S50) in the real vLLM CPU engine: same greedy tokens and perplexity as transformers
    over the same stored format."""
    from helpers import vllm_engine_run

    from sparseflow.evaluate import load_tokenizer, perplexity, tokenize
    from sparseflow.texts import builtin_text

    prompts = [tokenize(load_tokenizer(pruned_reference_dir), p) for p in
               ("It was a dark and stormy night, and", "The ship sailed at dawn", "She opened the letter")]
    got = vllm_engine_run(pruned_reference_dir, prompts, max_tokens=12, ppl_tokens=2048)
    model = load_model(pruned_reference_dir)
    assert got["greedy"] == generate_greedy_hf(model, prompts, max_tokens=12)
    hf_ppl = perplexity(pruned_reference_dir, builtin_text(), max_tokens=2048, model=model, progress=False)
    assert abs(got["ppl"] / hf_ppl.perplexity - 1) < 5e-3, (got["ppl"], hf_ppl.perplexity)
