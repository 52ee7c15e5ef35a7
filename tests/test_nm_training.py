"""N:M sparse training (SR-STE, MdGf, SdGf) with the real Hugging Face Trainer on a tiny Llama (CPU)."""

from __future__ import annotations

import pytest
import torch

from sparseflow.nm_training import NMSparseCallback, NMTrainingConfig, nm_mask

STEPS = 8


def _train(tiny_llama_dir, tmp_path, config: NMTrainingConfig):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 512, (16, 24))]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=2,
                             learning_rate=1e-3, logging_steps=4, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    callback = NMSparseCallback(config)
    result = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    return model, initial, callback, result


@pytest.mark.parametrize("method", ["srste", "mdgf", "sdgf"])
def test_training_leaves_exact_nm_weights(method, tiny_llama_dir, tmp_path):
    config = NMTrainingConfig(n=2, m=4, method=method, sad_interval=2)
    model, initial, callback, result = _train(tiny_llama_dir, tmp_path, config)
    assert torch.isfinite(torch.tensor(result.training_loss))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert len(linears) == 14
    for name, module in linears.items():
        w = module.weight
        assert isinstance(w, torch.nn.Parameter) and not hasattr(module, "parametrizations")
        assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2, name
        assert not torch.equal(w, initial[f"{name}.weight"] * nm_mask(initial[f"{name}.weight"], 2, 4)), name
    assert torch.equal(model.lm_head.weight != 0, torch.ones_like(model.lm_head.weight, dtype=torch.bool))
    history = callback.history
    assert history["step"] == [2, 4, 6, 8]
    assert history["sad"][0] is None and all(0.0 <= s <= 1.0 for s in history["sad"][1:])
    if method == "mdgf":
        assert history["beta"][0] > history["beta"][1] >= history["beta"][-1] == 0.0
    if method == "sdgf":
        assert history["kept"][0] == 3 and history["kept"][-1] == 2
    if method == "srste":
        assert set(history["kept"]) == {2} and set(history["beta"]) == {0.0}


def test_trained_model_compresses_to_the_same_weights(tiny_llama_dir, tmp_path):
    from sparseflow.compress import compress_nm
    from sparseflow.compressors.nm import NMRecipe
    from sparseflow.hf_loader import load_model

    model, _, _, _ = _train(tiny_llama_dir, tmp_path / "run", NMTrainingConfig(n=2, m=4))
    model.save_pretrained(tmp_path / "trained")
    out = compress_nm(tmp_path / "trained", tmp_path / "nm", NMRecipe(n=2, m=4, value_format="fp16"), progress=False)
    loaded = load_model(out)
    w = model.model.layers[0].mlp.up_proj.weight.detach()
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.dequantized_weight(), w.half().float())


def test_config_errors():
    with pytest.raises(ValueError, match="unknown N:M training method"):
        NMTrainingConfig(method="rigl")
    with pytest.raises(ValueError, match="0 < N < M"):
        NMTrainingConfig(n=0)
    with pytest.raises(ValueError, match="decay_fraction"):
        NMTrainingConfig(decay_fraction=0)
