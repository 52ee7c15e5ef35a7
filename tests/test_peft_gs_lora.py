"""GS-LoRA through PEFT and the transformers Trainer on a real (tiny) Llama, CPU: groups per block or module, the
proximal group lasso (exact zeros), the bounded forgetting loss, save/load."""

from __future__ import annotations

import pytest
import sparseflow.peft_ext  # noqa: F401
import torch
from helpers import TokenDataset, tiny_llama
from peft import PeftModel, get_peft_model
from sparseflow.peft_ext import GSLoRAConfig
from sparseflow.peft_ext.gs_lora import (
    ForgettingTrainer,
    GroupSparsityCallback,
    GSLoRALinear,
    forgetting_loss,
    group_norms,
    group_of,
    group_soft_threshold,
)
from transformers import TrainingArguments


def test_default_targets_are_the_feed_forward_modules_grouped_by_block():
    model = get_peft_model(tiny_llama(3), GSLoRAConfig(r=4))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, GSLoRALinear)}
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"gate_proj", "up_proj", "down_proj"}
    assert set(group_norms(model)) == {"block 0", "block 1", "block 2"}
    per_module = get_peft_model(tiny_llama(3), GSLoRAConfig(r=4, group_by="module"))
    assert len(group_norms(per_module)) == 9
    assert group_of("model.layers.11.mlp.up_proj", "block") == "block 11"


def test_the_proximal_step_zeroes_whole_groups_exactly():
    model = get_peft_model(tiny_llama(3), GSLoRAConfig(r=4, init_weights=False))
    norms = group_norms(model)
    assert all(v > 0 for v in norms.values())
    assert group_soft_threshold(model, 0.0) == 0 and group_norms(model) == norms
    cut = sorted(norms.values())[1] + 1e-6  # between the 2nd and 3rd smallest group norms
    assert group_soft_threshold(model, cut) == 2
    after = group_norms(model)
    assert sum(v == 0.0 for v in after.values()) == 2
    survivor = max(norms, key=norms.get)
    assert after[survivor] == pytest.approx(norms[survivor] - cut, rel=1e-5)  # shrunk by the threshold in norm


def test_forgetting_loss_is_bounded():
    retain, forget = torch.tensor(2.0), torch.tensor(3.0)
    assert forgetting_loss(retain, forget, beta=0.5, bound=5.0).item() == pytest.approx(3.0)
    assert forgetting_loss(retain, torch.tensor(7.0), beta=0.5, bound=5.0).item() == pytest.approx(2.0)


def test_trainer_with_group_lasso_trains_and_switches_groups_off(tmp_path):
    model = get_peft_model(tiny_llama(3), GSLoRAConfig(r=4, group_lasso=200.0, warmup_steps=2))
    callback = GroupSparsityCallback()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=6,
                             learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
                             remove_unused_columns=False, use_cpu=True)
    trainer = ForgettingTrainer(model=model, args=args, train_dataset=TokenDataset(forget=True), callbacks=[callback],
                                beta=0.5, bound=8.0)
    trainer.train()
    assert [s for s, _ in callback.zeroed] == list(range(6))
    assert callback.zeroed[-1][1] == 3  # a strong lasso switches every block's group off, exactly
    assert all(v == 0.0 for v in group_norms(model).values())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_save_and_load_round_trip(tmp_path):
    model = get_peft_model(tiny_llama(3), GSLoRAConfig(r=4, init_weights=False, target_modules=["up_proj"]))
    x = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        want = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "a")
    loaded = PeftModel.from_pretrained(tiny_llama(3), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, want)
    assert set(group_norms(loaded)) == {"block 0", "block 1", "block 2"}


@pytest.mark.parametrize("kwargs, match", [
    ({"r": 0}, "r must be >= 1"),
    ({"group_by": "head"}, "is not one of"),
    ({"group_lasso": -1.0}, "must be >= 0"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GSLoRAConfig(**kwargs)


def test_rank_larger_than_the_layer_is_refused():
    with pytest.raises(ValueError, match="larger than the layer"):
        get_peft_model(tiny_llama(3), GSLoRAConfig(r=65, target_modules=["down_proj"]))


def test_sequential_tasks_add_their_own_groups_and_keep_earlier_ones_frozen_and_in_force():
    from sparseflow.peft_ext.gs_lora import add_forgetting_task

    model = get_peft_model(tiny_llama(3), GSLoRAConfig(r=4, init_weights=False))
    x = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        first_only = model(input_ids=x).logits
    add_forgetting_task(model, "task2", GSLoRAConfig(r=2, init_weights=False))
    assert set(group_norms(model, "task2")) == {"block 0", "block 1", "block 2"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".task2") for n in trainable)
    with torch.no_grad():
        both = model(input_ids=x).logits
        for m in model.modules():
            if isinstance(m, GSLoRALinear):
                m.gs_lora_B["task2"].zero_()
        torch.testing.assert_close(model(input_ids=x).logits, first_only)  # task 1's adapter is still applied
    assert not torch.allclose(both, first_only)
    with pytest.raises(ValueError, match="already exists"):
        add_forgetting_task(model, "task2")


def test_prototype_terms_gs_lora_plus_plus(tmp_path):
    """GS-LoRA++: prototypes from the frozen model (adapters off), the bounded prototype loss, and a trainer run with
    it that moves the forgotten data's features away from their prototype."""
    from sparseflow.peft_ext.gs_lora import prototype, prototype_loss

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(3), GSLoRAConfig(r=4, init_weights=False))
    data = TokenDataset(forget=True)
    retain = [{"input_ids": data.ids[0::2]}]
    forget = [{"input_ids": data.ids[1::2]}]
    protos = {"retain": prototype(model, retain), "forget": prototype(model, forget)}
    with model.disable_adapter():
        base = prototype(model.base_model.model, forget)
    torch.testing.assert_close(protos["forget"], base)  # adapters were off
    h = torch.randn(3, protos["forget"].numel())
    assert prototype_loss(h[:0], protos["forget"][None].repeat(2, 1), protos["retain"], protos["forget"],
                          margin=0.5) == pytest.approx(0.5, abs=1e-5)  # cos 1 against margin 0.5
    assert prototype_loss(protos["retain"][None], h[:0], protos["retain"], protos["forget"]) == pytest.approx(
        0.0, abs=1e-6)

    def forget_cos():
        with torch.no_grad():
            out = model(input_ids=data.ids[1::2], output_hidden_states=True)
        feats = out.hidden_states[-1].mean(1)
        return float(torch.nn.functional.cosine_similarity(feats, protos["forget"][None]).mean())

    before = forget_cos()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=8,
                             learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
                             remove_unused_columns=False, use_cpu=True)
    trainer = ForgettingTrainer(model=model, args=args, train_dataset=data, beta=0.0, bound=0.0, prototypes=protos,
                                gamma=10.0)
    trainer.train()
    assert forget_cos() < before
    with pytest.raises(ValueError, match="'retain' and 'forget'"):
        ForgettingTrainer(model=model, args=args, train_dataset=data, prototypes={"retain": protos["retain"]})
