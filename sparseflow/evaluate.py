"""Perplexity and cloze accuracy, with transformers or with the real vLLM engine (prompt log-probs).

Both engines score exactly the same token positions, so their numbers differ only by arithmetic.

* **Perplexity**: the text is tokenized once and cut to ``max_tokens + 1`` tokens; windows of ``context``
  tokens start every ``stride`` tokens, and each window scores only the tokens no earlier window scored (the
  usual sliding-window evaluation; every scored token sees at least ``context - stride`` tokens of context,
  except at the start). Reported beside the unigram baseline (training-token frequencies, add-one smoothed)
  when the model folder has ``unigram_counts.json``.
* **Cloze accuracy** (LAMBADA-style): from sentences of the text, predict the last word from the preceding
  ``cloze_context`` tokens; a hit when greedy decoding reproduces every token of the word.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparseflow.log import logger
from sparseflow.serve import shutdown_engine

ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` go in; the last ``scored`` of them are scored."""

    begin: int
    end: int
    scored: int


def plan_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """Sliding windows over ``n_tokens`` tokens; together they score tokens 1..n_tokens-1 exactly once."""
    # stride < context: every window then starts before the first token it scores (that token needs context)
    if context < 2 or not 0 < stride < context:
        raise ValueError(f"need context >= 2 and 0 < stride < context (got context={context}, stride={stride})")
    if n_tokens < 2:
        raise ValueError(f"the text has {n_tokens} token(s); at least 2 are needed")
    plan, scored_until = [], 1  # token 0 has no prediction
    begin = 0
    while scored_until < n_tokens:
        end = min(begin + context, n_tokens)
        plan.append(Window(begin, end, end - scored_until))
        scored_until = end
        begin += stride
    return plan


@dataclass
class PerplexityResult:
    model: str
    engine: str
    text: str
    context: int
    stride: int
    tokens_scored: int
    windows: int
    nll: float  # mean negative log-likelihood per token (nats)
    perplexity: float
    unigram_perplexity: float | None
    seconds: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class ClozeResult:
    model: str
    engine: str
    text: str
    samples: int
    accuracy: float
    seconds: float


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{model_dir}: no usable tokenizer (tokenizer.json + tokenizer_config.json): {err}") \
            from err
    tokenizer.model_max_length = 1 << 40  # whole texts are tokenized once, then cut into windows: no warning
    return tokenizer


def tokenize(tokenizer, text: str) -> list[int]:
    """Plain token ids, no special tokens (the reference model was trained on raw text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def unigram_perplexity(model_dir: str | Path, targets: list[int]) -> float | None:
    """Perplexity of the add-one-smoothed unigram model of the training tokens, on ``targets``."""
    path = Path(model_dir) / "unigram_counts.json"
    if not path.is_file():
        return None
    counts = torch.tensor(json.loads(path.read_text()), dtype=torch.float64) + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[torch.tensor(targets)].mean().item())


# --- transformers --------------------------------------------------------------------------------------


def _hf_model(model_dir: str | Path, device: str):
    from sparseflow.hf_loader import load_causal_lm

    return load_causal_lm(model_dir, dtype=torch.float32, device=device)


@torch.no_grad()
def _hf_token_logprobs(model, ids: list[int], plan: list[Window], progress: bool) -> list[float]:
    out: list[float] = []
    for w in tqdm(plan, desc="perplexity (hf)", unit="window", disable=not progress):
        x = torch.tensor([ids[w.begin:w.end]], device=model.device)
        logits = model(input_ids=x).logits[0, -w.scored - 1:-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        out += logp.gather(1, x[0, -w.scored:, None]).squeeze(1).tolist()
    return out


@torch.no_grad()
def _hf_greedy_hits(model, samples: list[tuple[list[int], list[int]]], progress: bool) -> list[bool]:
    hits = []
    for prefix, target in tqdm(samples, desc="cloze (hf)", unit="sentence", disable=not progress):
        x = torch.tensor([prefix + target], device=model.device)
        pred = model(input_ids=x).logits[0, len(prefix) - 1:-1].argmax(-1)
        hits.append(pred.tolist() == target)
    return hits


# --- vLLM ----------------------------------------------------------------------------------------------


def _vllm_engine(model_dir: str | Path, max_len: int):
    from vllm import LLM

    from sparseflow.serve import cpu_engine_kwargs

    # +1: room for the one token vLLM generates after the longest prompt. Prompts are token ids and nothing
    # is detokenized, so vLLM needs no tokenizer of its own.
    return LLM(model=str(model_dir), max_model_len=max_len + 1, skip_tokenizer_init=True, **cpu_engine_kwargs())


def _vllm_prompt_logprobs(llm, prompts: list[list[int]], k: int, progress: bool):
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=progress)
    return [o.prompt_logprobs for o in outs]


def _vllm_token_logprobs(llm, ids: list[int], plan: list[Window], progress: bool) -> list[float]:
    prompts = [ids[w.begin:w.end] for w in plan]
    out: list[float] = []
    for w, p, lps in zip(plan, prompts, _vllm_prompt_logprobs(llm, prompts, 0, progress), strict=True):
        for pos in range(len(p) - w.scored, len(p)):
            out.append(lps[pos][p[pos]].logprob)
    return out


def _vllm_greedy_hits(llm, samples: list[tuple[list[int], list[int]]], progress: bool) -> list[bool]:
    prompts = [prefix + target for prefix, target in samples]
    hits = []
    for (prefix, _), p, lps in zip(samples, prompts, _vllm_prompt_logprobs(llm, prompts, 1, progress),
                                   strict=True):
        hits.append(all(lps[pos][p[pos]].rank == 1 for pos in range(len(prefix), len(p))))
    return hits


# --- public API -----------------------------------------------------------------------------------------


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")


def default_context(model_dir: str | Path) -> int:
    """The longest window both engines take: the model's positions minus the one vLLM keeps for generating."""
    from sparseflow.checkpoint import read_config

    return int(read_config(model_dir).get("max_position_embeddings", 1025)) - 1


def perplexity(model_dir: str | Path, text: str, *, text_name: str = "text", engine: str = "hf",
               context: int | None = None, stride: int | None = None, max_tokens: int = 32768,
               device: str = "cpu", progress: bool = True, model=None, llm=None) -> PerplexityResult:
    """Sliding-window perplexity of ``text`` (at most ``max_tokens`` scored tokens).

    ``context`` defaults to :func:`default_context` and ``stride`` to half of it. ``model`` (a loaded
    transformers model) or ``llm`` (a ``vllm.LLM``) may be passed to reuse one.
    """
    _check_engine(engine)
    context = context or default_context(model_dir)
    stride = stride or context // 2
    if engine == "vllm" and context > default_context(model_dir):
        raise ValueError(f"context {context} is too long for vLLM with this model: at most "
                         f"{default_context(model_dir)} (max_position_embeddings - 1 for the generated token)")
    ids = tokenize(load_tokenizer(model_dir), text)[: max_tokens + 1]
    plan = plan_windows(len(ids), context, stride)
    t0 = time.perf_counter()
    if engine == "hf":
        logprobs = _hf_token_logprobs(model or _hf_model(model_dir, device), ids, plan, progress)
    else:
        vllm_llm = llm or _vllm_engine(model_dir, context)
        logprobs = _vllm_token_logprobs(vllm_llm, ids, plan, progress)
        if llm is None:
            shutdown_engine(vllm_llm)
    nll = -sum(logprobs) / len(logprobs)
    return PerplexityResult(model=str(model_dir), engine=engine, text=text_name, context=context, stride=stride,
                            tokens_scored=len(logprobs), windows=len(plan), nll=nll, perplexity=math.exp(nll),
                            unigram_perplexity=unigram_perplexity(model_dir, ids[1:]),
                            seconds=round(time.perf_counter() - t0, 2))


_SENTENCE_END = re.compile(r"(?<=[a-z])([.!?])(?=[\"'’”]?\s)")
_LAST_WORD = re.compile(r"(?:^|\s)([A-Za-z]{3,20})$")


def cloze_samples(tokenizer, text: str, n: int = 200, context_tokens: int = 128) -> list[tuple[list[int], list[int]]]:
    """``n`` (prefix ids, target-word ids) pairs, evenly spaced over the text's sentences.

    A sentence qualifies when it ends in ``.``, ``!`` or ``?`` right after a word of at least 3 letters.
    The prefix is the text before that word (its last ``context_tokens`` tokens); the target is `` word``.
    """
    candidates = []
    for m in _SENTENCE_END.finditer(text):
        head = text[max(0, m.start() - 4 * context_tokens * 2): m.start()]
        word = _LAST_WORD.search(head)
        if not word or len(head) < 200:
            continue
        prefix = head[: word.start(1)].rstrip(" ")
        if prefix and not prefix[-1].isspace():  # else the word starts a line and its token has no leading space
            candidates.append((prefix, word.group(1)))
    if not candidates:
        raise ValueError("the text has no sentence that ends in a word; cloze needs prose")
    step = max(1, len(candidates) // n)
    samples = []
    for prefix, word in candidates[::step][:n]:
        samples.append((tokenize(tokenizer, prefix)[-context_tokens:], tokenize(tokenizer, " " + word)))
    return samples


def cloze_accuracy(model_dir: str | Path, text: str, *, text_name: str = "text", engine: str = "hf", n: int = 200,
                   context_tokens: int = 128, device: str = "cpu", progress: bool = True, model=None,
                   llm=None) -> ClozeResult:
    """Share of sentences whose last word greedy decoding reproduces exactly."""
    _check_engine(engine)
    samples = cloze_samples(load_tokenizer(model_dir), text, n=n, context_tokens=context_tokens)
    t0 = time.perf_counter()
    if engine == "hf":
        hits = _hf_greedy_hits(model or _hf_model(model_dir, device), samples, progress)
    else:
        vllm_llm = llm or _vllm_engine(model_dir, context_tokens + 32)
        hits = _vllm_greedy_hits(vllm_llm, samples, progress)
        if llm is None:
            shutdown_engine(vllm_llm)
    logger.debug("cloze: %d samples, %d hits", len(hits), sum(hits))
    return ClozeResult(model=str(model_dir), engine=engine, text=text_name, samples=len(hits),
                       accuracy=sum(hits) / len(hits), seconds=round(time.perf_counter() - t0, 2))
