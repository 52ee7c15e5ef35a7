"""compressed-tensors 2:4 checkpoints (sparse-24-bitmask) read into sparse_nm: same network, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from sparseflow.checkpoint import load_state_dict, save_folder
from sparseflow.compressors.baselines import nm_prune
from sparseflow.hf_loader import load_model
from sparseflow.nn import NMLinear

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _bitmask(keep: torch.Tensor) -> torch.Tensor:
    """Bool ``[N, K]`` -> uint8 ``[N, ceil(K/8)]``, bit j of byte b = input 8b + j (numpy's little bit order)."""
    rows, k = keep.shape
    padded = torch.zeros(rows, -(-k // 8) * 8, dtype=torch.int64)
    padded[:, :k] = keep.long()
    return (padded.reshape(rows, -1, 8) << torch.arange(8)).sum(-1).to(torch.uint8)


@pytest.fixture(scope="module")
def ct_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama pruned 2:4 and written the way compressed-tensors stores sparse-24-bitmask models."""
    state = load_state_dict(tiny_llama_dir)
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    pruned = {}
    for key in list(state):
        module = key[: -len(".weight")]
        if key.endswith(".weight") and module.rsplit(".", 1)[-1] in LINEARS:
            w = nm_prune(state.pop(key), 2, 4).to(torch.bfloat16)
            keep = torch.zeros_like(w, dtype=torch.bool).reshape(w.shape[0], -1, 4)
            keep.scatter_(-1, w.reshape(w.shape[0], -1, 4).abs().float().topk(2, dim=-1).indices, True)
            keep = keep.reshape(w.shape)
            pruned[module] = w.float() * keep
            state[f"{module}.compressed"] = w[keep].reshape(w.shape[0], -1)
            state[f"{module}.bitmask"] = _bitmask(keep)
            state[f"{module}.shape"] = torch.tensor(list(w.shape)).reshape(-1, 1)
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "dense", "config_groups": {},
        "sparsity_config": {"format": "sparse-24-bitmask", "sparsity_structure": "2:4", "targets": ["Linear"],
                            "ignore": ["lm_head"]},
    }
    out = save_folder(tmp_path_factory.mktemp("models") / "tiny-ct24", state, config)
    return out, pruned


def test_converted_model_is_the_pruned_network(ct_dir, tiny_llama_dir, tmp_path):
    src, pruned = ct_dir
    dst = tmp_path / "nm"
    proc = subprocess.run([sys.executable, "-m", "sparseflow.cli", "convert", str(src), str(dst)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    q = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert (q["quant_method"], q["n"], q["m"], q["value_format"]) == ("sparse_nm", 2, 4, "bf16")
    model = load_model(dst)
    assert sum(isinstance(m, NMLinear) for m in model.modules()) == 2 * 7
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    for name, w in pruned.items():
        assert torch.equal(model.get_submodule(name).dequantized_weight(), w)
        dense.get_submodule(name).weight.data = w
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, dense(ids).logits, atol=1e-5, rtol=1e-5)


def test_convert_errors(ct_dir, tiny_llama_dir, tmp_path):
    from sparseflow.convert import convert_compressed_tensors_24

    src, _ = ct_dir
    with pytest.raises(ValueError, match="not a compressed-tensors"):
        convert_compressed_tensors_24(tiny_llama_dir, tmp_path / "a")
    quantized = tmp_path / "quantized"
    shutil.copytree(src, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"]["config_groups"] = {"group_0": {"weights": {"num_bits": 4}}}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="also quantized"):
        convert_compressed_tensors_24(quantized, tmp_path / "b")
    bad = tmp_path / "bad-mask"
    shutil.copytree(src, bad)
    state = load_state_dict(bad)
    key = next(k for k in state if k.endswith(".bitmask"))
    state[key][0, 0] = 0b00000111  # three kept in the first block
    save_folder(bad, state, json.loads((bad / "config.json").read_text()))
    with pytest.raises(ValueError, match="not 2:4 metadata"):
        convert_compressed_tensors_24(bad, tmp_path / "c")
