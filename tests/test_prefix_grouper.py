"""Prefix Grouper against stock TRL GRPO on CPU in float32, with the real TRL trainer and the reference model:
per-token log-probs, entropies and parameter gradients of the log-prob pass (G = 2, 4, 8; left-padded prompts of
different lengths; completions of uneven lengths), then whole training runs with num_iterations = 2."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from sparseflow.trl_ext.prefix_grouper import PrefixGrouperGRPOConfig, PrefixGrouperGRPOTrainer
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from sparseflow.reference import reference_model_dir

PROMPTS = ["It was a dark and stormy night", "The sea", "Nobody in the house could explain why the old clock",
           "She opened the letter"]


def _reward(completions, **kwargs):
    return [float(len(c)) / 10.0 for c in completions]  # longer completions score higher: any signal will do


def _trainer(cls, config_cls, tmp_path, g, model=None, **overrides):
    tok = AutoTokenizer.from_pretrained(str(reference_model_dir()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = model or AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32)
    settings = dict(output_dir=str(tmp_path / cls.__name__), num_generations=g, per_device_train_batch_size=g,
                    max_completion_length=6, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to=[],
                    use_cpu=True, seed=0, save_strategy="no", temperature=1.0, beta=0.0, bf16=False)
    settings.update(overrides)
    args = config_cls(**settings)
    data = Dataset.from_dict({"prompt": PROMPTS})
    return cls(model=model, reward_funcs=_reward, args=args, train_dataset=data, processing_class=tok)


def _batch(tok, g, seed=0):
    """Two groups of ``g`` rows: left-padded prompts of different lengths, right-padded completions of uneven
    lengths (one empty after its first token)."""
    gen = torch.Generator().manual_seed(seed)
    enc = tok([PROMPTS[2], PROMPTS[1]], return_tensors="pt", padding=True, padding_side="left")
    prompt_ids = enc["input_ids"].repeat_interleave(g, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(g, 0)
    c = 7
    completion_ids = torch.randint(5, tok.vocab_size, (2 * g, c), generator=gen)
    lengths = torch.randint(1, c + 1, (2 * g,), generator=gen)
    lengths[0] = 1
    completion_mask = (torch.arange(c)[None, :] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
    return torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), c


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("g", [2, 4, 8])
def test_log_probs_entropies_and_gradients_match_stock_grpo(g, tmp_path):
    stock = _trainer(GRPOTrainer, GRPOConfig, tmp_path, g)
    ours = _trainer(PrefixGrouperGRPOTrainer, PrefixGrouperGRPOConfig, tmp_path, g,
                    model=copy.deepcopy(stock.model))
    input_ids, mask, c = _batch(stock.processing_class, g)
    weights = torch.randn(input_ids.shape[0], c, generator=torch.Generator().manual_seed(1))
    results = []
    for trainer in (stock, ours):
        trainer.model.zero_grad()
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, mask, c,
                                                                       batch_size=g, compute_entropy=True)
        completion_mask = mask[:, -c:].bool()
        ((logps * weights)[completion_mask].sum() + entropy[completion_mask].sum()).backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), entropy.detach(), grads, completion_mask))
    (lp0, en0, gr0, m), (lp1, en1, gr1, _) = results
    assert lp1.shape == lp0.shape == (2 * g, c)
    torch.testing.assert_close(lp1[m], lp0[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(en1[m], en0[m], rtol=1e-5, atol=1e-5)
    assert (lp1[~m] == 0).all()  # padding scores nothing, as in stock
    assert gr0.keys() == gr1.keys() and len(gr0) > 10
    worst = max(_rel(gr1[n], gr0[n]) for n in gr0)
    assert worst < 1e-5, worst


def test_micro_batches_keep_groups_together(tmp_path):
    """batch_size smaller than a group (3 rows, G=4): the pass still packs whole groups, same result."""
    ours = _trainer(PrefixGrouperGRPOTrainer, PrefixGrouperGRPOConfig, tmp_path, 4)
    input_ids, mask, c = _batch(ours.processing_class, 4)
    with torch.no_grad():
        whole, _, _ = ours._get_per_token_logps_and_entropies(ours.model, input_ids, mask, c)
        split, _, _ = ours._get_per_token_logps_and_entropies(ours.model, input_ids, mask, c, batch_size=3)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("g", [2, 4])
def test_training_runs_match_stock_grpo_with_several_iterations(g, tmp_path):
    """Two GRPO steps with num_iterations=2 (the old-policy pass runs too): same losses, same final weights."""
    initial = AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32)
    logs, trained = [], []
    # each trainer is built right before it trains: Trainer seeds the RNGs when it is built, so both sample the
    # same completions
    # Adam's eps is raised from 1e-8 to 1e-6 so the weights compare what Prefix Grouper promises, equal gradients.
    # At 1e-8 an element whose gradient is float32 noise (~1e-8) moves by about lr * sign(g), so a rounding
    # difference that flips the sign moves it by up to 2 lr: on one CPU, 2 of the 147k elements of layer 0's o_proj
    # differed by 1e-4 after two steps (relative difference of the matrix 1.3e-5, every other matrix < 5e-6).
    # At 1e-6 such elements move in proportion to their gradients; worst matrix 1.6e-6 here.
    for cls, config_cls in ((GRPOTrainer, GRPOConfig), (PrefixGrouperGRPOTrainer, PrefixGrouperGRPOConfig)):
        trainer = _trainer(cls, config_cls, tmp_path, g, num_iterations=2, model=copy.deepcopy(initial),
                           adam_epsilon=1e-6)
        trainer.train()
        logs.append([h for h in trainer.state.log_history if "loss" in h])
        trained.append(trainer.model)
    stock_model, our_model = trained
    assert len(logs[0]) == len(logs[1]) == 2
    for a, b in zip(*logs, strict=True):
        # GRPO's loss sits near zero (advantages are centred per group): compare it absolutely, the gradient norm
        # relatively, and the weights after both steps
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-5)
        assert a.get("reward") == b.get("reward")  # the same completions were sampled (logged at generation)
    for (n, p0), (_, p1) in zip(stock_model.named_parameters(), our_model.named_parameters(), strict=True):
        assert _rel(p1.detach(), p0.detach()) < 1e-5, n


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        PrefixGrouperGRPOConfig(output_dir=str(tmp_path), prefix_grouping_attention="flash", report_to=[],
                                use_cpu=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            _trainer(PrefixGrouperGRPOTrainer, PrefixGrouperGRPOConfig, tmp_path, 2,
                     prefix_grouping_attention="flex")


@pytest.mark.parametrize("g", [1, 3])
def test_flex_block_mask_matches_the_exact_path(g):
    """The FlexAttention path's mask (run eagerly here; compiled on the GPU) against the exact torch path, with
    left-padded prefixes and right-padded suffixes. Rows with no visible key (prefix padding) are not compared."""
    from sparseflow.trl_ext.prefix_grouper.attention import grouped_attention_flex, grouped_attention_torch
    from sparseflow.trl_ext.prefix_grouper.layout import PrefixLayout

    torch.manual_seed(0)
    p, s, rows, h, hkv, d = 9, 5, 2, 4, 2, 16
    valid = torch.ones(rows, p + g * s, dtype=torch.bool)
    valid[1, :3] = False
    valid[0, p + s - 2:p + s] = False
    layout = PrefixLayout(p, g, s, valid)
    q = torch.randn(rows, h, layout.total, d)
    k, v = torch.randn(rows, hkv, layout.total, d), torch.randn(rows, hkv, layout.total, d)
    want = grouped_attention_torch(q, k, v, layout, d ** -0.5)
    got = grouped_attention_flex(q, k, v, layout, d ** -0.5, compiled=False)
    seen = torch.ones(rows, layout.total, dtype=torch.bool)
    seen[1, :3] = False
    torch.testing.assert_close(got[seen], want[seen], rtol=1e-5, atol=1e-5)


def test_the_trl_seam_it_overrides_is_there():
    """An upstream change to the overridden method or the fused head fails here, loudly, not as wrong numbers."""
    import inspect

    import trl
    from trl.trainer.utils import add_fused_lm_head

    assert trl.__version__.startswith("1.16.")
    params = list(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters)
    assert params[:8] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size",
                          "compute_entropy", "compute_aux_loss"]
    assert "shift_labels" in inspect.getsource(add_fused_lm_head)


def test_unsupported_models_and_attention_implementations_are_refused_with_the_reason():
    from sparseflow.trl_ext.prefix_grouper import check_model
    from sparseflow.trl_ext.prefix_grouper.attention import install
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig

    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=64)
    with pytest.raises(ValueError, match="'gpt2'"):
        check_model(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)))
    with pytest.raises(ValueError, match="sliding-window"):
        check_model(AutoModelForCausalLM.from_config(MistralConfig(**tiny, sliding_window=16)))
    flex = LlamaForCausalLM(LlamaConfig(**tiny))
    flex.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation in"):
        install(flex)
    ok = LlamaForCausalLM(LlamaConfig(**tiny))
    install(ok)
    install(ok)  # idempotent
    assert ok.config._attn_implementation == "sparseflow_prefix_grouper"
    assert ok.config._sparseflow_attn_original in ("sdpa", "eager")
    ids = torch.randint(0, 64, (1, 5))
    plain = LlamaForCausalLM(LlamaConfig(**tiny))
    plain.load_state_dict(ok.state_dict())
    with torch.no_grad():  # outside the grouped passes it is the original attention
        torch.testing.assert_close(ok(input_ids=ids).logits, plain(input_ids=ids).logits)
