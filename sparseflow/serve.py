"""Greedy generation with the real vLLM engine, set up the way the CPU machine needs it.

Call from a script guarded by ``if __name__ == "__main__":`` (the engine starts processes).
"""

from __future__ import annotations

from pathlib import Path


def cpu_engine_kwargs() -> dict:
    """Settings vLLM on CPU needs: fp32 (bf16 hit SIGILL in AMX attention once), eager, a set KV cache."""
    import torch

    if torch.cuda.is_available():
        return {"dtype": "bfloat16"}
    return {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "block_size": 32}


def generate_greedy(model_dir: str | Path, prompts: list[list[int]], max_tokens: int = 8,
                    **engine_kwargs) -> list[list[int]]:
    """Greedy continuations (token ids) of token-id ``prompts`` from ``vllm.LLM``."""
    from vllm import LLM, SamplingParams

    kwargs = {**cpu_engine_kwargs(), "skip_tokenizer_init": True, "max_model_len": 256, **engine_kwargs}
    llm = LLM(model=str(model_dir), **kwargs)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), use_tqdm=False)
    shutdown_engine(llm)
    return [list(o.outputs[0].token_ids) for o in outs]


def generate_greedy_hf(model, prompts: list[list[int]], max_tokens: int = 8) -> list[list[int]]:
    """The same greedy continuations from a ``transformers`` model (for comparison)."""
    import torch

    results = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=model.device)
            # an explicit mask: otherwise generate() treats prompt tokens equal to pad_token_id as padding
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, min_new_tokens=max_tokens, pad_token_id=0)
            results.append(out[0, len(p):].tolist())
    return results


def shutdown_engine(llm) -> None:
    """Stop a ``vllm.LLM``'s engine processes now rather than at interpreter exit, where vLLM 0.32's teardown
    has aborted the process ("terminate called without an active exception") after all work was done."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
