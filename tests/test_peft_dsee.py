"""DSEE through PEFT's own API (get_peft_model, save_pretrained, PeftModel.from_pretrained, merge_and_unload) on a
real transformers Llama, CPU, fp32."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sparseflow.peft_ext  # noqa: F401  (registers the methods)
import torch
from helpers import tiny_llama
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from sparseflow.peft_ext import DSEEConfig
from sparseflow.peft_ext.dsee import DSEELinear, low_rank_plus_sparse, select_support, sparse_linear, support_size
from transformers import LlamaForCausalLM

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(seed))


def _train(model, steps: int = 5) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps):
        x = _batch(step)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_only_the_adapter_trains_and_starts_as_the_identity():
    base = tiny_llama()
    x = _batch()
    with torch.no_grad():
        want = base(input_ids=x).logits
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, DSEEConfig(r=4, sparse_size=32, target_modules=TARGETS))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, want)  # B = 0 and S = 0 at the start
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".dsee_" in n for n in trainable)
    layers = [m for m in model.modules() if isinstance(m, DSEELinear)]
    assert len(layers) == 2 * len(TARGETS)
    want_count = sum(4 * (m.in_features + m.out_features) + 32 for m in layers)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == want_count
    _train(model)
    after = dict(model.get_base_model().named_parameters())
    for name, p in before.items():
        key = name if name in after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], p), f"{name} changed: the base model must stay frozen"
    assert any(m.dsee_values["default"].abs().sum() > 0 for m in layers)


def test_save_stores_indices_and_values_only_and_loads_back(tmp_path):
    model = get_peft_model(tiny_llama(), DSEEConfig(r=4, sparse_size=0.01, sparse_init="magnitude",
                                                target_modules=TARGETS))
    _train(model, 3)
    x = _batch(7)
    with torch.no_grad():
        want = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    nnz = support_size(0.01, 64 * 64)
    assert saved[f"{q}.dsee_values"].shape == (nnz,) and saved[f"{q}.dsee_indices"].shape == (nnz,)
    assert all(t.numel() < 64 * 64 for t in saved.values()), "no dense S (or any dense update) is saved"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "DSEE"
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, want)


def test_merge_and_unload_match_the_adapter_and_the_base():
    model = get_peft_model(tiny_llama(), DSEEConfig(r=4, sparse_size=48, target_modules=TARGETS))
    _train(model, 3)
    x = _batch(3)
    with torch.no_grad():
        want = model(input_ids=x).logits
        with model.disable_adapter():
            base_out = model(input_ids=x).logits
    merged = model.merge_and_unload()
    assert not any(isinstance(m, DSEELinear) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, want, rtol=1e-4, atol=1e-4)
    model2 = get_peft_model(tiny_llama(), DSEEConfig(r=4, sparse_size=48, target_modules=TARGETS))
    with torch.no_grad():
        torch.testing.assert_close(model2.unload()(input_ids=x).logits, base_out)


def test_sparse_linear_equals_a_dense_sparse_matrix():
    torch.manual_seed(0)
    out_f, in_f = 7, 13
    idx = torch.sort(torch.randperm(out_f * in_f)[:20]).values
    values = torch.randn(20)
    dense = torch.zeros(out_f * in_f).index_put((idx,), values).view(out_f, in_f)
    x = torch.randn(3, 5, in_f)
    torch.testing.assert_close(sparse_linear(x, idx, values, out_f, in_f), x @ dense.t())


def test_sparse_linear_gradients_equal_the_dense_sparse_matrix():
    """The hand-written backward (in place into ``out``): gradients of x, values and whatever produced ``out``."""
    torch.manual_seed(1)
    out_f, in_f = 7, 13
    idx = torch.sort(torch.randperm(out_f * in_f)[:20]).values
    x = torch.randn(3, 5, in_f, dtype=torch.double, requires_grad=True)
    values = torch.randn(20, dtype=torch.double, requires_grad=True)
    base = torch.randn(in_f, out_f, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: sparse_linear(x, idx, v, out_f, in_f, out=x @ b), (x, values, base))
    assert torch.autograd.gradcheck(lambda x, v: sparse_linear(x, idx, v, out_f, in_f), (x, values))


@pytest.mark.parametrize("needs", ["all", "no_x", "only_values"])
def test_low_rank_plus_sparse_equals_the_op_by_op_reference(needs):
    """The one-node DSEE update against autograd over two F.linear and sparse_linear: outputs, and the gradients of
    x, A, B and the values (repeated rows and columns in the support; some inputs not requiring grad)."""
    torch.manual_seed(2)
    out_f, in_f, r = 7, 13, 3
    idx = torch.randperm(out_f * in_f)[:20]
    idx = torch.cat([idx, idx[:3]])  # three entries twice: their values add up
    rows, cols = idx // in_f, idx % in_f
    x = torch.randn(3, 5, in_f, dtype=torch.double, requires_grad=needs == "all")
    a = torch.randn(r, in_f, dtype=torch.double, requires_grad=needs != "only_values")
    b = torch.randn(out_f, r, dtype=torch.double, requires_grad=needs != "only_values")
    values = torch.randn(idx.numel(), dtype=torch.double, requires_grad=True)
    inputs = [t for t in (x, a, b, values) if t.requires_grad]
    assert torch.autograd.gradcheck(lambda *_: low_rank_plus_sparse(x, a, b, values, rows, cols), inputs)

    def grads(fn):
        y = fn()
        return [y.detach(), *torch.autograd.grad((y * y).sum(), inputs)]

    got = grads(lambda: low_rank_plus_sparse(x, a, b, values, rows, cols))
    want = grads(lambda: sparse_linear(x, idx, values, out_f, in_f,
                                       out=torch.nn.functional.linear(torch.nn.functional.linear(x, a), b)))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_grebsmo_support_finds_what_the_low_rank_part_cannot_explain():
    """W = a strong rank-1 matrix + 12 spikes smaller than its largest entries: magnitude picks rank-1 entries,
    the low-rank + sparse decomposition picks the spikes."""
    torch.manual_seed(0)
    u, v = torch.randn(40, 1), torch.randn(1, 30)
    w = 3 * (u @ v)
    spikes = torch.randperm(w.numel())[:12]
    w.view(-1)[spikes] += 4.0
    grebsmo = set(select_support(w, 12, "grebsmo", rank=1).tolist())
    magnitude = set(select_support(w, 12, "magnitude").tolist())
    assert len(grebsmo & set(spikes.tolist())) >= 11
    assert len(magnitude & set(spikes.tolist())) < len(grebsmo & set(spikes.tolist()))
    random = select_support(w, 12, "random", seed=3)
    assert torch.equal(random, select_support(w, 12, "random", seed=3)) and random.unique().numel() == 12


@pytest.mark.parametrize("kwargs, match", [
    ({"r": 0}, "r must be >= 1"),
    ({"sparse_size": 0}, "sparse_size must be > 0"),
    ({"sparse_size": -0.5}, "sparse_size must be > 0"),
    ({"sparse_init": "svd"}, "is not one of"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSEEConfig(target_modules=TARGETS, **kwargs)


def test_bad_layers_and_targets_are_refused():
    with pytest.raises(ValueError, match="larger than the layer"):
        get_peft_model(tiny_llama(), DSEEConfig(r=65, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="whole number"):
        get_peft_model(tiny_llama(), DSEEConfig(sparse_size=2.5, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="the layer has"):
        get_peft_model(tiny_llama(), DSEEConfig(sparse_size=10**6, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"not found in the base model|Target modules"):
        get_peft_model(tiny_llama(), DSEEConfig(target_modules=["no_such_proj"]))


def test_loading_without_the_plugin_fails_and_the_file_says_what_to_import(tmp_path):
    model = get_peft_model(tiny_llama(), DSEEConfig(r=2, sparse_size=8, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert "import sparseflow.peft_ext" in config["requires"]
    code = f"""
from peft import PeftConfig
PeftConfig.from_pretrained({str(tmp_path / 'a')!r})
"""
    # a fresh interpreter that never imported sparseflow.peft_ext: PEFT does not know the type
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "DSEE" in proc.stderr


def test_registration_refuses_a_peft_outside_the_tested_range(monkeypatch):
    import peft
    from sparseflow.peft_ext._registry import check_peft_version

    monkeypatch.setattr(peft, "__version__", "0.99.0")
    with pytest.raises(ImportError, match="tested with peft"):
        check_peft_version()


def test_unstructured_pruning_by_weight_or_by_update():
    from sparseflow.peft_ext.dsee import prune_unstructured

    results = {}
    for score in ("weight", "delta"):
        model = get_peft_model(tiny_llama(), DSEEConfig(r=4, sparse_size=48, target_modules=TARGETS))
        _train(model, 3)
        pruned, report = prune_unstructured(model, 0.5, score=score)
        assert not any(isinstance(m, DSEELinear) for m in pruned.modules())
        assert set(report) == {f"model.layers.{i}.{p}" for i in range(2) for p in
                               ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
        assert all(0.49 <= s <= 0.52 for s in report.values()), report
        assert torch.isfinite(pruned(input_ids=_batch()).logits).all()
        results[score] = pruned.model.layers[0].self_attn.q_proj.weight != 0
    assert not torch.equal(results["weight"], results["delta"])  # the two scores keep different weights
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune_unstructured(get_peft_model(tiny_llama(), DSEEConfig(target_modules=TARGETS)), 1.0)


def test_head_pruning_gives_a_smaller_model_that_saves_and_loads(tmp_path):
    from sparseflow.peft_ext.dsee import head_scores, prune_heads

    model = get_peft_model(tiny_llama(), DSEEConfig(r=4, sparse_size=16, target_modules=["q_proj", "o_proj"],
                                                init_weights=False))
    # make query head 1 (KV group 0) and head 2 (group 1) carry the big updates in layer 0
    layer0 = model.base_model.model.model.layers[0].self_attn
    with torch.no_grad():
        layer0.q_proj.dsee_B["default"][16:32] *= 50  # head 1 of 4 (head_dim 16)
        layer0.q_proj.dsee_B["default"][32:48] *= 50  # head 2
    scores = head_scores(model)
    assert set(scores) == {0, 1} and scores[0].shape == (4,)
    assert scores[0].argsort(descending=True)[:2].sort().values.tolist() == [1, 2]
    x = _batch()
    small = prune_heads(model, heads_per_group=1)
    assert small.config.num_attention_heads == 2 and small.model.layers[0].self_attn.q_proj.out_features == 32
    assert small.model.layers[0].self_attn.o_proj.in_features == 32
    with torch.no_grad():
        want = small(input_ids=x).logits
    small.save_pretrained(tmp_path / "small")
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "small").eval()
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in tiny_llama().parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, want)
    with pytest.raises(ValueError, match="heads_per_group must be in"):
        prune_heads(get_peft_model(tiny_llama(), DSEEConfig(target_modules=["q_proj"])), heads_per_group=2)


def test_loading_an_adapter_saved_by_another_method_is_refused(tmp_path):
    from sparseflow.peft_ext import GSLoRAConfig

    get_peft_model(tiny_llama(), GSLoRAConfig(r=2)).save_pretrained(tmp_path / "gs")
    model = get_peft_model(tiny_llama(), DSEEConfig(r=2, sparse_size=8, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"different peft types.*DSEE.*GS_LORA"):
        model.load_adapter(tmp_path / "gs", adapter_name="other")


def test_a_support_loaded_into_a_layer_that_already_ran_is_the_one_used():
    """The layer keeps Omega's rows and columns between steps; loading another adapter's state into it in place
    (after a forward filled that cache) must still use the loaded support."""
    from peft import set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    trained = get_peft_model(tiny_llama(), DSEEConfig(r=4, sparse_size=48, target_modules=TARGETS, seed=1,
                                                      init_weights=False))
    other = get_peft_model(tiny_llama(), DSEEConfig(r=4, sparse_size=48, target_modules=TARGETS, seed=2,
                                                    sparse_init="random"))
    x = _batch(5)
    with torch.no_grad():
        other(input_ids=x)
        set_peft_model_state_dict(other, get_peft_model_state_dict(trained))
        torch.testing.assert_close(other(input_ids=x).logits, trained(input_ids=x).logits)
