"""PST through PEFT and the transformers Trainer on a real (tiny) Llama, CPU: masks and the schedule, only the
low-rank factors train, straight-through gradients reach the importance, and export into N:M / GQSA checkpoints
that sparseflow's transformers loader (and so vLLM) reads."""

from __future__ import annotations

import pytest
import sparseflow.peft_ext  # noqa: F401
import torch
from helpers import TokenDataset, tiny_llama
from peft import PeftModel, get_peft_model
from sparseflow.peft_ext import PSTConfig
from sparseflow.peft_ext.pst import (
    PSTLinear,
    SparsityScheduleCallback,
    cubic_sparsity,
    group_mask,
    nm_mask,
    save_sparse_checkpoint,
    set_sparsity,
    sparse_weights,
    unstructured_mask,
)
from transformers import Trainer, TrainingArguments

TARGETS = ["q_proj", "v_proj", "up_proj"]


def test_masks_keep_what_they_promise():
    score = torch.randn(6, 16)
    m = unstructured_mask(score, 0.25)
    assert m.sum() == 72 and score[m].min() >= score[~m].max()
    nm = nm_mask(score, 2, 4)
    assert (nm.view(6, 4, 4).sum(-1) == 2).all()
    g = group_mask(score, 0.5, 8)
    assert g.view(6, 2, 8).all(-1).sum() == 6 and (g.view(6, 2, 8).any(-1) == g.view(6, 2, 8).all(-1)).all()
    assert cubic_sparsity(0, 0.8, 0, 10) == 0.0 and cubic_sparsity(10, 0.8, 0, 10) == 0.8
    assert cubic_sparsity(5, 0.8, 0, 10) == pytest.approx(0.8 * (1 - 0.5**3))


def test_only_the_factors_train_and_the_importance_gets_gradients():
    model = get_peft_model(tiny_llama(), PSTConfig(r=4, importance_rank=4, sparsity=0.5, target_modules=TARGETS,
                                               init_weights=False))
    trainable = {n.rsplit(".", 2)[-2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"pst_U", "pst_V", "pst_A", "pst_B", "pst_R", "pst_C"}
    set_sparsity(model, 0.5)
    x = torch.randint(0, 100, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, PSTLinear))
    for name in ("pst_U", "pst_V", "pst_A", "pst_B", "pst_R", "pst_C"):
        grad = getattr(layer, name)["default"].grad
        assert grad is not None and grad.abs().sum() > 0, name  # A, B, R, C only through the straight-through mask
    weight = sparse_weights(model)["model.layers.0.self_attn.q_proj"]
    assert (weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


def test_trainer_with_the_schedule_reaches_the_final_sparsity_and_the_adapter_reloads(tmp_path):
    model = get_peft_model(tiny_llama(), PSTConfig(r=4, importance_rank=4, sparsity=0.7, target_modules=TARGETS))
    callback = SparsityScheduleCallback()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=8,
                             learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback]).train()
    levels = [level for _, level in callback.history]
    assert levels[0] == 0.0 and levels[-1] == pytest.approx(0.7) and levels == sorted(levels)
    for w in sparse_weights(model).values():
        assert (w == 0).float().mean() == pytest.approx(0.7, abs=0.01)
    x = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        want = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "a")
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, want)


@pytest.mark.parametrize("mask, fmt", [("nm", "bf16"), ("nm", "int4"), ("gqsa", None)])
def test_export_to_a_sparseflow_checkpoint_the_loader_serves(mask, fmt, tmp_path):
    from sparseflow.hf_loader import load_model

    config = PSTConfig(r=4, importance_rank=4, sparsity=0.5, mask=mask, group_size=16, target_modules=TARGETS,
                       init_weights=False)
    model = get_peft_model(tiny_llama(), config)
    set_sparsity(model, 0.5)
    x = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        want = model(input_ids=x).logits
    kwargs = {"value_format": fmt} if fmt else {"bits": 8}
    out = save_sparse_checkpoint(model, tmp_path / "ckpt", quant_group_size=16, **kwargs)
    served = load_model(out)
    with torch.no_grad():
        got = served(input_ids=x).logits
    tol = {"bf16": 2e-2, "int4": 0.3, None: 5e-2}[fmt]
    assert (got - want).abs().max() < tol * want.abs().max()
    assert type(served.model.layers[0].self_attn.q_proj).__name__ in ("NMLinear", "GQSALinear")
    assert type(served.model.layers[0].self_attn.k_proj).__name__ == "Linear"  # not sparsified: left dense


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"mask": "blocks"}, "is not one of"),
    ({"mask": "nm", "nm_pattern": "4:4"}, "need 0 < n < m"),
    ({"mask": "nm", "nm_pattern": "two:four"}, "must look like"),
    ({"r": 0}, "must be >= 1"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PSTConfig(target_modules=TARGETS, **kwargs)


def test_unstructured_masks_do_not_export_to_a_serving_format(tmp_path):
    model = get_peft_model(tiny_llama(), PSTConfig(target_modules=["q_proj"], r=2, importance_rank=2))
    with pytest.raises(ValueError, match="structured mask"):
        save_sparse_checkpoint(model, tmp_path / "x")


def test_nm_masks_start_as_the_identity_and_export_only_at_the_final_pattern(tmp_path):
    model = get_peft_model(tiny_llama(), PSTConfig(r=2, importance_rank=2, mask="nm", nm_pattern="2:4",
                                               target_modules=["q_proj"]))
    x = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=x).logits
        torch.testing.assert_close(model(input_ids=x).logits, base)  # level 0: nothing masked yet
    set_sparsity(model, 0.3)  # on the way: unstructured
    with pytest.raises(ValueError, match="not yet at its final"):
        save_sparse_checkpoint(model, tmp_path / "early")
    set_sparsity(model, 0.5)
    w = sparse_weights(model)["model.layers.0.self_attn.q_proj"]
    assert ((w.view(64, 16, 4) != 0).sum(-1) <= 2).all()


def test_the_level_each_forward_reads_follows_every_way_the_buffer_changes():
    """The layer keeps the level as a float (no GPU sync per forward); it must still see set_sparsity's fill_, a
    state-dict load (copy_ in place) and a replaced buffer."""
    model = get_peft_model(tiny_llama(), PSTConfig(r=4, importance_rank=4, sparsity=0.5, target_modules=TARGETS))
    layer = next(m for m in model.modules() if isinstance(m, PSTLinear))
    assert layer.level("default") == 0.0
    set_sparsity(model, 0.3)
    assert layer.level("default") == pytest.approx(0.3)
    layer.load_state_dict({**layer.state_dict(), "pst_level.default": torch.tensor(0.45)})
    assert layer.level("default") == pytest.approx(0.45)
    layer.pst_level["default"] = torch.tensor(0.1)
    assert layer.level("default") == pytest.approx(0.1)
    assert (layer.sparse_weight("default") == 0).float().mean() == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("mask", ["unstructured", "gqsa"])
def test_the_hand_written_backward_matches_autograd_through_the_same_ops(mask):
    """sparse_weight's one-node backward against autograd over the op-by-op composition (masks.py's
    masked_straight_through), for every factor, at a mask that drops 40%."""
    from sparseflow.peft_ext.pst import masked_straight_through

    torch.manual_seed(0)
    config = PSTConfig(r=3, importance_rank=2, sparsity=0.4, mask=mask, group_size=4, target_modules=["q"],
                       init_weights=False)
    layer = PSTLinear(torch.nn.Linear(16, 7, bias=False).double(), "default", config).double()
    layer.pst_level["default"].fill_(0.4)
    names = PSTLinear.adapter_layer_names
    upstream = torch.randn(7, 16, dtype=torch.double)
    (layer.sparse_weight("default") * upstream).sum().backward()
    fused = {n: getattr(layer, n)["default"].grad.clone() for n in names}
    for n in names:
        getattr(layer, n)["default"].grad = None
    updated = layer.updated_weight("default")
    score = layer.importance("default", updated)
    want = masked_straight_through(updated, score, layer.mask("default", score.detach()))
    torch.testing.assert_close(layer.sparse_weight("default"), want)
    (want * upstream).sum().backward()
    for n in names:
        torch.testing.assert_close(fused[n], getattr(layer, n)["default"].grad, msg=n)
