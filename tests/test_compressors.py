"""Calibrated compressors on the reference model and on small synthetic layers (plain torch, CPU)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from sparseflow.kernels.gqsa import dequantize_reference

from sparseflow.compressors.baselines import group_quantize, nm_prune
from sparseflow.compressors.gqsa import GQSARecipe, compress_model
from sparseflow.compressors.obs import obs_sweep
from sparseflow.compressors.saliency import group_saliency, keep_mask


def _layer(n=24, k=64, tokens=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    # correlated inputs with uneven scales, like real activations (OBS compensation lives on the correlations)
    mix = torch.randn(k, k, generator=gen) / k**0.5 + torch.eye(k)
    x = (torch.randn(tokens, k, generator=gen) @ mix) * torch.linspace(0.1, 3.0, k)
    return w, x, x.T @ x


def _out_err(w_new, w, x):
    return ((x @ w_new.T - x @ w.T).square().sum() / (x @ w.T).square().sum()).item()


def test_keep_mask_prunes_the_exact_fraction_of_least_salient_groups():
    scores = torch.tensor([[5.0, 1.0, 3.0, 0.5], [2.0, 7.0, 0.1, 4.0]])
    keep = keep_mask(scores, 0.5)
    assert keep.tolist() == [[True, False, True, False], [False, True, False, True]]  # 0.1, 0.5, 1, 2 pruned
    assert keep_mask(scores, 0.0).all()
    with pytest.raises(ValueError, match="sparsity"):
        keep_mask(scores, 1.0)


def test_data_aware_saliency_beats_magnitude_on_output_error():
    w, x, h = _layer()
    errs = {}
    for method in ("magnitude", "wanda", "obs"):
        keep = keep_mask(group_saliency(w, 16, method, h), 0.5).repeat_interleave(16, dim=1)
        errs[method] = _out_err(w * keep, w, x)
    assert errs["wanda"] < errs["magnitude"]
    with pytest.raises(ValueError, match="Hessian"):
        group_saliency(w, 16, "wanda")
    with pytest.raises(ValueError, match="unknown saliency"):
        group_saliency(w, 16, "random")
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_saliency(w[:, :60], 16, "magnitude")


def test_obs_compensation_lowers_the_error_of_a_fixed_mask():
    w, x, h = _layer()
    keep = keep_mask(group_saliency(w, 16, "wanda", h), 0.5).repeat_interleave(16, dim=1)
    compensated = obs_sweep(w, h, keep=keep)
    assert (compensated[~keep] == 0).all()
    assert _out_err(compensated, w, x) < 0.8 * _out_err(w * keep, w, x)


def test_nm_baselines_keep_n_of_m_and_sparsegpt_is_best():
    w, x, h = _layer()
    errs = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = nm_prune(w, 2, 4, method, h)
        assert ((pruned.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
        errs[method] = _out_err(pruned, w, x)
    assert errs["sparsegpt"] < errs["magnitude"]
    with pytest.raises(ValueError, match="N:M"):
        nm_prune(w, 4, 4)
    with pytest.raises(ValueError, match="Hessian"):
        nm_prune(w, 2, 4, "wanda")


def test_gptq_beats_rtn_and_stays_on_the_grid():
    w, x, h = _layer(k=256)
    rtn = group_quantize(w, 2, 128, "rtn")
    gptq = group_quantize(w, 2, 128, "gptq", h)
    assert _out_err(gptq, w, x) < _out_err(rtn, w, x)
    for g in range(2):  # at most 2**bits distinct values per row and group
        assert all(len(torch.unique(row)) <= 4 for row in gptq[:, g * 128:(g + 1) * 128])
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_quantize(w[:, :200], 4, 128)


def test_recipe_rejects_contradictions():
    with pytest.raises(ValueError, match="group_size"):
        GQSARecipe(group_size=12)
    with pytest.raises(ValueError, match="sparsity"):
        GQSARecipe(sparsity=1.2)
    with pytest.raises(ValueError, match="batch_size"):
        GQSARecipe(samples=6, batch_size=4)


@pytest.fixture(scope="module")
def small_calibration():
    from sparseflow.compressors.data import calibration_ids
    from sparseflow.evaluate import load_tokenizer
    from sparseflow.reference import reference_model_dir
    from sparseflow.texts import builtin_text

    return calibration_ids(load_tokenizer(reference_model_dir()), builtin_text(), samples=4, seq_len=64)


def _reference_fp32():
    from transformers import AutoModelForCausalLM

    from sparseflow.reference import reference_model_dir

    return AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32).eval()


def test_gqsa_pipeline_on_reference_model(small_calibration):
    """All stages on (a few steps): every linear but lm_head becomes GQSA at the asked sparsity, and the
    exported format computes what the trained fake-quantized module computes (up to float16 parameters)."""
    recipe = GQSARecipe(sparsity=0.5, samples=4, seq_len=64, batch_size=2, stage1_steps=2, stage2_steps=2)
    model = _reference_fp32()
    weights, log = compress_model(model, small_calibration, recipe, progress=False)
    assert len(weights) == 8 * 7 and not any(n.endswith("lm_head") for n in weights)
    assert set(log["stage1_loss"]) == set(range(8)) and len(log["stage2_loss"]) == 2
    for name, w in weights.items():
        assert abs(w.density() - 0.5) < 0.01
        fake = model.get_submodule(name)
        ref = fake.dequantized().detach()
        assert (dequantize_reference(w) - ref).abs().max() <= 2e-3 * ref.abs().max() + 1e-6


def test_gqsa_stages_reduce_the_loss(small_calibration):
    """Stage 1 (block reconstruction, surviving weights training too) and stage 2 (end-to-end LM loss) both
    descend; measured on CPU: block 0's relative error 0.60 -> 0.32 in 20 steps."""
    recipe = GQSARecipe(sparsity=0.5, samples=4, seq_len=64, batch_size=4, stage1_steps=20, stage2_steps=20,
                        compensate=False)
    _, log = compress_model(_reference_fp32(), small_calibration, recipe, progress=False)
    for block_losses in log["stage1_loss"].values():
        assert block_losses[-1] < 0.9 * block_losses[0]
    assert log["stage2_loss"][-1] < 0.8 * log["stage2_loss"][0]


def test_rtn_recipe_needs_no_calibration():
    recipe = replace(GQSARecipe(), sparsity=0.25, saliency="magnitude", compensate=False, stage1=False,
                     stage2=False)
    assert not recipe.needs_calibration
    weights, _ = compress_model(_reference_fp32(), None, recipe, progress=False)
    assert all(abs(w.density() - 0.75) < 0.01 for w in weights.values())
    with pytest.raises(ValueError, match="calibration"):
        compress_model(_reference_fp32(), None, GQSARecipe(), progress=False)


def test_compress_without_recipe_reads_no_calibration_data(tmp_path, monkeypatch):
    """The documented data-free path (`--rtn`): RTN codes and magnitude pruning, no calibration text read."""
    import sparseflow.texts
    from sparseflow.compress import compress_gqsa
    from sparseflow.hf_loader import load_model
    from sparseflow.nn import GQSALinear
    from sparseflow.reference import reference_model_dir

    def no_text(name):
        raise AssertionError(f"calibration text {name!r} was read")

    monkeypatch.setattr(sparseflow.texts, "load_text", no_text)
    out = compress_gqsa(reference_model_dir(), tmp_path / "rtn", sparsity=0.5, progress=False)
    linears = [m for m in load_model(out).modules() if isinstance(m, GQSALinear)]
    assert all(abs(m.weight_format().density() - 0.5) < 0.01 for m in linears)
