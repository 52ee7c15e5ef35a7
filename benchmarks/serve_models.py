"""Checkpoints for ``sparseflow bench serve``: a random-weight Llama of given shapes written straight to
safetensors (no model object: an 8B one would need 16 GB twice), and the same weights round-to-nearest
quantized to W4 g128 in the GPTQ layout vLLM reads (its own W4 kernels, Machete / Marlin, are the peers).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

# Llama-3-8B shapes (random weights); "tiny" is for CPU smoke tests of the benchmark itself
PRESETS: dict[str, dict[str, int]] = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}
_SHARD_BYTES = 4 << 30
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")


def llama_config(shape: dict[str, int], dtype: str = "bfloat16") -> dict:
    """config.json of a ``LlamaForCausalLM`` with the given sizes (head_dim = hidden / heads)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "head_dim": shape["hidden_size"] // shape["num_attention_heads"], "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": dtype,
        "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02, "attention_bias": False,
        "mlp_bias": False, **shape,
    }


def _linear_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


def random_llama_tensors(cfg: dict, seed: int = 0, device: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, bf16 CPU tensor)`` of a random Llama, one at a time: N(0, 0.02) matrices, unit norms."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    h, std = cfg["hidden_size"], cfg["initializer_range"]

    def normal(*shape):
        return (torch.randn(*shape, generator=gen, device=device) * std).to(torch.bfloat16).cpu()

    yield "model.embed_tokens.weight", normal(cfg["vocab_size"], h)
    shapes = _linear_shapes(cfg)
    for layer in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        for name in _LINEARS:
            yield f"{prefix}{name}.weight", normal(*shapes[name])
        yield f"{prefix}input_layernorm.weight", torch.ones(h, dtype=torch.bfloat16)
        yield f"{prefix}post_attention_layernorm.weight", torch.ones(h, dtype=torch.bfloat16)
    yield "model.norm.weight", torch.ones(h, dtype=torch.bfloat16)
    yield "lm_head.weight", normal(cfg["vocab_size"], h)


def _write_shards(out: Path, tensors: Iterator[tuple[str, torch.Tensor]], config: dict) -> Path:
    """Safetensors shards of at most ~4 GiB plus ``model.safetensors.index.json`` and ``config.json``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    files: list[dict[str, torch.Tensor]] = []
    size = 0
    weight_map: dict[str, int] = {}
    for name, t in tensors:
        if size and size + t.numel() * t.element_size() > _SHARD_BYTES:
            files.append(shard)
            shard, size = {}, 0
        shard[name] = t.contiguous()
        size += t.numel() * t.element_size()
        weight_map[name] = len(files)
    files.append(shard)
    names = [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
    for name, part in zip(names, files, strict=True):
        save_file(part, str(out / name), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for part in files for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def write_random_llama(out: str | Path, shape: dict[str, int], seed: int = 0) -> Path:
    """A random bf16 ``LlamaForCausalLM`` checkpoint of ``shape`` (see ``PRESETS``) in ``out``."""
    cfg = llama_config(shape)
    return _write_shards(Path(out), random_llama_tensors(cfg, seed), cfg)


def gptq_pack(weight: torch.Tensor, group_size: int = 128) -> dict[str, torch.Tensor]:
    """Symmetric round-to-nearest W4 of ``weight [N, K]`` in the GPTQ (AutoGPTQ v1) layout vLLM loads:
    ``qweight [K/8, N]`` int32 (input k at bits 4*(k % 8) of row k // 8, code = q + 8), ``scales [K/g, N]``
    fp16, ``qzeros [K/g, N/8]`` int32 (zero 8 stored as 7, the v1 convention), ``g_idx [K]`` int32."""
    n, k = weight.shape
    if k % group_size or k % 8 or n % 8:
        raise ValueError(f"GPTQ W4 needs K % {group_size}, K % 8 and N % 8 to be 0; got [{n}, {k}]")
    w = weight.float().reshape(n, k // group_size, group_size)
    scale = (w.abs().amax(-1, keepdim=True) / 7).clamp_min(1e-8).to(torch.float16).float()
    q = (torch.round(w / scale).clamp(-8, 7) + 8).to(torch.int64).reshape(n, k)
    shifts = (torch.arange(8, device=q.device) * 4).view(1, 8, 1)
    qweight = (q.t().reshape(k // 8, 8, n) << shifts).sum(1)
    qweight = torch.where(qweight >= 2**31, qweight - 2**32, qweight).to(torch.int32)
    qzeros = torch.full((k // group_size, n // 8), 0x77777777, dtype=torch.int32, device=q.device)
    return {"qweight": qweight, "scales": scale.squeeze(-1).t().contiguous().to(torch.float16), "qzeros": qzeros,
            "g_idx": (torch.arange(k, device=q.device) // group_size).to(torch.int32)}


def gptq_unpack(tensors: dict[str, torch.Tensor], group_size: int = 128) -> torch.Tensor:
    """The dense ``[N, K]`` float weight a ``gptq_pack`` result stands for (the spec, for tests)."""
    qweight = tensors["qweight"].to(torch.int64) & 0xFFFFFFFF
    k8, n = qweight.shape
    shifts = (torch.arange(8) * 4).view(1, 8, 1)
    q = ((qweight.unsqueeze(1) >> shifts) & 0xF).reshape(k8 * 8, n).t().float() - 8
    scale = tensors["scales"].float().t().repeat_interleave(group_size, dim=1)
    return q * scale


def write_gptq_w4(dense_dir: str | Path, out: str | Path, group_size: int = 128) -> Path:
    """``dense_dir``'s weights with every decoder linear RTN-quantized to W4 g``group_size`` in GPTQ format
    (``quantization_config.quant_method = "gptq"``, symmetric, no act-order); embeddings and lm_head stay bf16."""
    from safetensors import safe_open

    dense_dir = Path(dense_dir)
    cfg = json.loads((dense_dir / "config.json").read_text())
    index = json.loads((dense_dir / "model.safetensors.index.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for file in sorted(set(index["weight_map"].values())):
            with safe_open(str(dense_dir / file), framework="pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    module = name.removesuffix(".weight")
                    if name.endswith(".weight") and module.endswith(_LINEARS):
                        for part, packed in gptq_pack(t.to(device), group_size).items():
                            yield f"{module}.{part}", packed.cpu()
                    else:
                        yield name, t

    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": False,
                                  "sym": True, "checkpoint_format": "gptq", "lm_head": False}
    return _write_shards(Path(out), tensors(), cfg)
