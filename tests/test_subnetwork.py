"""RL-subnetwork tracking with the real TRL GRPO trainer on the reference model (CPU): the report, the fp32 / bf16
views, the mask export, training only a recorded subnetwork, and the measurement functions on known updates."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from sparseflow.trl_ext.subnetwork import (
    SubnetworkOnly,
    SubnetworkTracker,
    mask_overlap,
    update_rank,
    update_sparsity,
)
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from sparseflow.reference import reference_model_dir


def _grpo(tmp_path, callbacks, steps=3, seed=0):
    tok = AutoTokenizer.from_pretrained(str(reference_model_dir()))
    model = AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32)
    args = GRPOConfig(output_dir=str(tmp_path / "run"), num_generations=2, per_device_train_batch_size=2,
                      max_completion_length=6, max_steps=steps, learning_rate=1e-4, logging_steps=1, report_to=[],
                      use_cpu=True, seed=seed, save_strategy="no", bf16=False, beta=0.0, weight_decay=0.1)
    data = Dataset.from_dict({"prompt": ["It was a dark night", "The sea", "She opened the letter", "Nobody"]})
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [len(c) / 10 for c in completions],
                          args=args, train_dataset=data, processing_class=tok, callbacks=callbacks)
    return trainer, model


def test_measurements_on_known_updates():
    start = {"w": torch.zeros(4, 5)}
    now = {"w": torch.zeros(4, 5)}
    now["w"][0, 0] = 1.0  # a real update
    now["w"][1, 1] = 1e-6  # below the tolerance 1e-5
    r = update_sparsity(now, start, tolerances=(0.0, 1e-5))
    assert r["overall"]["fp32"]["0.0"] == pytest.approx(18 / 20)
    assert r["overall"]["fp32"]["1e-05"] == pytest.approx(19 / 20)
    # bf16 of 1 + 2**-10 rounds back to 1: the update vanishes in the bf16 view only
    start2, now2 = {"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}
    now2["w"][0, 0] += 2**-10
    r2 = update_sparsity(now2, start2, tolerances=(0.0,))
    assert r2["overall"]["fp32"]["0.0"] == 0.75 and r2["overall"]["bf16"]["0.0"] == 1.0
    assert update_rank(torch.outer(torch.arange(1.0, 5), torch.ones(3)), torch.zeros(4, 3)) == 1
    a = {"x": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    b = {"x": torch.tensor([1, 0, 1, 0], dtype=torch.bool)}
    o = mask_overlap(a, b)
    assert o["jaccard"] == pytest.approx(1 / 3) and o["chance"] == pytest.approx(0.25 / 0.75)
    with pytest.raises(ValueError, match="different matrices"):
        mask_overlap(a, {"y": b["x"]})


def test_tracker_reports_grpo_update_sparsity_and_exports_masks(tmp_path):
    tracker = SubnetworkTracker(every=1, tolerances=(0.0, 1e-5), rank_of=("layers.0.self_attn.q_proj",),
                                out_dir=tmp_path / "report")
    trainer, model = _grpo(tmp_path, [tracker])
    trainer.train()
    report = json.loads((tmp_path / "report" / "subnetwork.json").read_text())
    assert [h["step"] for h in report["history"]] == [1, 2, 3]
    final = report["final"]
    assert len(final["per_matrix"]) == sum(1 for p in model.parameters() if p.dim() >= 2)
    for view in ("fp32", "bf16"):
        assert 0.0 <= final["overall"][view]["0.0"] <= final["overall"][view]["1e-05"] <= 1.0
        assert final["overall"][view]["0.0"] < 1.0  # training moved something
    assert final["overall"]["bf16"]["0.0"] >= final["overall"]["fp32"]["0.0"]  # rounding hides updates, never adds
    assert final["update_rank"]["model.layers.0.self_attn.q_proj.weight"] >= 1
    assert (tmp_path / "report" / "subnetwork_layers.png").stat().st_size > 0
    assert (tmp_path / "report" / "subnetwork_tolerance.png").stat().st_size > 0
    masks = tracker.masks()
    name = "model.layers.0.mlp.up_proj.weight"
    sparsity = final["per_matrix"][name]["fp32"]["0.0"]
    assert float((~masks[name]).float().mean()) == pytest.approx(sparsity)
    path = tracker.save_masks(tmp_path / "mask.safetensors")
    assert SubnetworkOnly.from_file(path).masks.keys() == masks.keys()


def test_training_only_a_subnetwork_leaves_everything_else_untouched(tmp_path):
    torch.manual_seed(0)
    model0 = AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32)
    masks = {n: torch.rand(p.shape) < 0.3 for n, p in model0.named_parameters() if p.dim() >= 2}
    only = SubnetworkOnly(masks)
    trainer, model = _grpo(tmp_path, [only])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    moved = 0
    for n, p in model.named_parameters():
        if n in masks:
            assert torch.equal(p.detach()[~masks[n]], before[n][~masks[n]]), n  # weight decay included
            moved += int((p.detach() != before[n]).sum())
    assert moved > 0


def test_clear_errors(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32)
    with pytest.raises(ValueError, match="does not have"):
        SubnetworkOnly({"model.nope.weight": torch.ones(2, 2, dtype=torch.bool)}).attach(model)
    with pytest.raises(ValueError, match="mask shapes do not match"):
        SubnetworkOnly({"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2, dtype=torch.bool)}).attach(model)
    good = tmp_path / "mask.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64, 64, dtype=torch.bool)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        SubnetworkOnly.from_file(cut)
    with pytest.raises(FileNotFoundError, match="no subnetwork mask"):
        SubnetworkOnly.from_file(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="every must be"):
        SubnetworkTracker(every=0)
    model.model.layers[0].mlp.up_proj.weight.ds_numel = 123  # how DeepSpeed ZeRO-3 marks a partitioned weight
    with pytest.raises(ValueError, match=r"sharded.*whole weights"):
        SubnetworkTracker().attach(model)
