"""Helpers the tests import (tests/ is on pytest's ``pythonpath``; the repo root never is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, *, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (outside pytest's process), raising with its output on failure."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def result_of(proc: subprocess.CompletedProcess):
    """The JSON a subprocess printed on its last ``RESULT `` line."""
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def vllm_engine_run(model_dir, prompts: list[list[int]], max_tokens: int, ppl_tokens: int,
                    cloze_samples: int = 0) -> dict:
    """One real vLLM CPU engine (fp32, vLLM's default multiprocessing) on ``model_dir``: greedy continuations
    of token-id ``prompts``, perplexity of the built-in text over ``ppl_tokens`` tokens and, when
    ``cloze_samples``, cloze accuracy. Returns ``{"greedy", "ppl", "ppl_engine", "cloze"}``."""
    code = f"""
    import json

    def main():
        from vllm import LLM, SamplingParams
        from sparseflow.evaluate import cloze_accuracy, perplexity
        from sparseflow.serve import cpu_engine_kwargs, shutdown_engine
        from sparseflow.texts import builtin_text
        llm = LLM(model={str(model_dir)!r}, max_model_len=1024, skip_tokenizer_init=True, **cpu_engine_kwargs())
        outs = llm.generate([{{"prompt_token_ids": p}} for p in {prompts!r}],
                            SamplingParams(max_tokens={max_tokens}, temperature=0.0, ignore_eos=True),
                            use_tqdm=False)
        ppl = perplexity({str(model_dir)!r}, builtin_text(), engine="vllm", max_tokens={ppl_tokens}, llm=llm)
        cloze = None
        if {cloze_samples}:
            cloze = cloze_accuracy({str(model_dir)!r}, builtin_text(), engine="vllm", n={cloze_samples}, llm=llm)
        print("RESULT " + json.dumps({{"greedy": [list(o.outputs[0].token_ids) for o in outs],
                                      "ppl": ppl.perplexity, "ppl_engine": ppl.engine,
                                      "cloze": cloze and cloze.accuracy}}))
        shutdown_engine(llm)

    if __name__ == "__main__":
        main()
        # vLLM 0.32 (CPU) has aborted during interpreter teardown ("terminate called without an active
        # exception") after all work and an explicit engine shutdown; the results are printed by then.
        import os, sys
        sys.stdout.flush()
        os._exit(0)
    """
    return result_of(run_python(code, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}))


def truncated_copy(model_dir, dst) -> Path:
    """A copy of a model folder whose ``model.safetensors`` is cut in half (a download that broke off)."""
    import shutil

    shutil.copytree(model_dir, dst)
    data = (Path(dst) / "model.safetensors").read_bytes()
    (Path(dst) / "model.safetensors").write_bytes(data[: len(data) // 2])
    return Path(dst)


def copy_with_quant_config(model_dir, dst, **changes) -> Path:
    """A copy of a model folder whose config.json ``quantization_config`` has ``changes`` applied."""
    import shutil

    shutil.copytree(model_dir, dst)
    config = json.loads((Path(dst) / "config.json").read_text())
    config["quantization_config"].update(changes)
    (Path(dst) / "config.json").write_text(json.dumps(config))
    return Path(dst)


def tiny_llama(layers: int = 2, seed: int = 0):
    """A random 64-wide ``LlamaForCausalLM`` (4 query heads, 2 KV heads, vocab 100) in eval mode, for adapter tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=layers, vocab_size=100, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


class TokenDataset:
    """``n`` random token sequences as Trainer examples (labels = inputs); with ``forget``, every other example is
    marked for forgetting (``forget`` = 1)."""

    def __init__(self, n: int = 16, length: int = 12, forget: bool = False) -> None:
        import torch

        self.ids = torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(0))
        self.forget = forget

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        import torch

        example = {"input_ids": self.ids[i], "labels": self.ids[i]}
        if self.forget:
            example["forget"] = torch.tensor(i % 2)
        return example


def uneven_rows_gqsa():
    """A 50 x 512 GQSA W4 g16 weight (CPU) with very uneven rows: one full row (3), ten single-group rows
    (10-19), one row of every third group (40), and the rest empty (41-49 trail, so a kernel must still write
    their bias)."""
    import torch
    from sparseflow.kernels.gqsa import quantize_rtn

    n, k, g = 50, 512, 16
    keep = torch.zeros(n, k // g, dtype=torch.bool)
    keep[3] = True
    keep[10:20, 5] = True
    keep[40, ::3] = True
    return quantize_rtn(torch.randn(n, k), bits=4, group_size=g, keep=keep)
