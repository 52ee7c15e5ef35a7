"""N:M end to end on real components: compressor -> checkpoint on disk -> vLLM engine and transformers."""

from __future__ import annotations

import json

import pytest
import torch

from sparseflow.compress import compress_nm
from sparseflow.compressors.nm import NMRecipe
from sparseflow.hf_loader import load_model
from sparseflow.nn import NMLinear
from sparseflow.serve import generate_greedy_hf

PROMPTS = [[1, 2, 3, 4, 5], [100, 7, 300, 42], [511, 0, 17, 9, 250, 33, 8]]
# data-free recipes on the tiny Llama (it has no tokenizer to calibrate with)
VARIANTS = {
    "2of4-bf16": NMRecipe(n=2, m=4),
    "2of4-int4": NMRecipe(n=2, m=4, value_format="int4", group_size=32),
    "1of8-int8": NMRecipe(n=1, m=8, value_format="int8", group_size=16),
    "4of8-fp16": NMRecipe(n=4, m=8, value_format="fp16"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def nm_dir(request, tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / f"tiny-{request.param}"
    return compress_nm(tiny_llama_dir, out, VARIANTS[request.param], progress=False), VARIANTS[request.param]


def test_checkpoint_and_transformers_loader(nm_dir, tiny_llama_dir):
    path, recipe = nm_dir
    q = json.loads((path / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "sparse_nm" and (q["n"], q["m"]) == (recipe.n, recipe.m)
    assert q["recipe"]["prune"] == recipe.prune
    model = load_model(path)
    linears = [m for m in model.modules() if isinstance(m, NMLinear)]
    assert len(linears) == 2 * 7  # lm_head stays dense
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    for name, module in model.named_modules():
        if isinstance(module, NMLinear):
            w = module.dequantized_weight()
            blocks = (w.reshape(w.shape[0], -1, recipe.m) != 0).sum(-1)
            assert int(blocks.max()) <= recipe.n  # really N:M sparse
            dense.get_submodule(name).weight.data = w
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, dense(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_vllm_engine_greedy_equals_transformers(nm_dir, vllm_greedy):
    """The real vLLM CPU engine (plugin loaded through its entry point) and transformers over the same stored
    N:M weights pick the same greedy tokens; `--quantization sparse_nm` selects the same method."""
    path, _ = nm_dir
    expected = generate_greedy_hf(load_model(path), PROMPTS, max_tokens=8)
    assert vllm_greedy(path, PROMPTS, max_tokens=8, quantization="sparse_nm") == expected


def test_loader_rejects_bad_nm_checkpoints(nm_dir, tmp_path):
    from helpers import copy_with_quant_config, truncated_copy

    path, recipe = nm_dir
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(truncated_copy(path, tmp_path / "truncated"))
    wrong = copy_with_quant_config(path, tmp_path / "wrong-pattern",
                                   n=recipe.n + 1 if recipe.n + 1 < recipe.m else recipe.n - 1)
    with pytest.raises(ValueError, match="shape"):  # the stored values no longer fit the declared pattern
        load_model(wrong)


def test_recipe_errors():
    with pytest.raises(ValueError, match="gptq"):
        NMRecipe(quantizer="gptq")  # bf16 values have nothing to quantize
    with pytest.raises(ValueError, match="unknown N:M pruning"):
        NMRecipe(prune="random")
    with pytest.raises(ValueError, match="0 < N < M"):
        NMRecipe(n=4, m=4)


@pytest.fixture(scope="module")
def calibrated_reference_dir(tmp_path_factory):
    """The reference model through the CLI: 2:4 SparseGPT + GPTQ int4 g64 (small calibration budget)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("models") / "reference-2of4-int4"
    cmd = [sys.executable, "-m", "sparseflow.cli", "compress", "reference", str(out), "--method", "sparse_nm",
           "--pattern", "2:4", "--bits", "4", "--group-size", "64", "--prune", "sparsegpt", "--quantizer", "gptq",
           "--samples", "4", "--seq-len", "64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_cli_compress_calibrated_nm(calibrated_reference_dir):
    q = json.loads((calibrated_reference_dir / "config.json").read_text())["quantization_config"]
    assert (q["quant_method"], q["n"], q["m"], q["value_format"], q["group_size"]) == ("sparse_nm", 2, 4, "int4", 64)
    assert q["recipe"]["prune"] == "sparsegpt" and q["recipe"]["quantizer"] == "gptq"
    linears = [m for m in load_model(calibrated_reference_dir).modules() if isinstance(m, NMLinear)]
    assert len(linears) == 8 * 7
    assert all(m.weight_format().bits_per_weight() < 3.2 for m in linears)  # int4 values + 2-bit positions


def test_wanda_calibrates_on_the_reference_model(tmp_path):
    from sparseflow.reference import reference_model_dir

    recipe = NMRecipe(n=4, m=8, prune="wanda", samples=2, seq_len=32, batch_size=2)
    path = compress_nm(reference_model_dir(), tmp_path / "wanda", recipe, progress=False)
    model = load_model(path)
    w = next(m for m in model.modules() if isinstance(m, NMLinear)).dequantized_weight()
    assert int((w.reshape(w.shape[0], -1, 8) != 0).sum(-1).max()) <= 4


@pytest.mark.slow
def test_vllm_serves_calibrated_nm_like_transformers(calibrated_reference_dir):
    """2:4 + int4 (GPTQ) in the real vLLM CPU engine: same greedy tokens and perplexity as transformers."""
    from helpers import vllm_engine_run

    from sparseflow.evaluate import load_tokenizer, perplexity, tokenize
    from sparseflow.texts import builtin_text

    prompts = [tokenize(load_tokenizer(calibrated_reference_dir), p) for p in
               ("It was a dark and stormy night, and", "The ship sailed at dawn")]
    got = vllm_engine_run(calibrated_reference_dir, prompts, max_tokens=12, ppl_tokens=2048)
    model = load_model(calibrated_reference_dir)
    assert got["greedy"] == generate_greedy_hf(model, prompts, max_tokens=12)
    hf_ppl = perplexity(calibrated_reference_dir, builtin_text(), max_tokens=2048, model=model, progress=False)
    assert abs(got["ppl"] / hf_ppl.perplexity - 1) < 5e-3, (got["ppl"], hf_ppl.perplexity)


@pytest.mark.parametrize("args, message", [
    (["--bits", "3"], "16, 8 or 4 bits"),
    (["--pattern", "2:5"], "M must be one of"),
    (["--pattern", "4:4"], "0 < N < M"),
    (["--bits", "4", "--group-size", "12"], "multiple of 8"),
])
def test_cli_rejects_bad_nm_options(args, message, tiny_llama_dir, tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sparseflow.cli", "compress", str(tiny_llama_dir), str(tmp_path / "out"),
           "--method", "nm", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
