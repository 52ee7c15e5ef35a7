"""`sparseflow bench serve` on CPU with the tiny preset: the random checkpoint, the GPTQ writer, and one real vLLM
CPU engine per variant end to end (the H200 run uses the same code with Llama-3-8B shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from sparseflow.benchmarks.serve_models import PRESETS, gptq_pack, gptq_unpack, write_random_llama


def test_gptq_pack_round_trips_and_matches_symmetric_rtn():
    torch.manual_seed(0)
    w = torch.randn(24, 256)
    packed = gptq_pack(w, 128)
    assert packed["qweight"].shape == (32, 24) and packed["qweight"].dtype == torch.int32
    assert packed["scales"].shape == (2, 24) and packed["qzeros"].shape == (2, 3)
    assert torch.equal(packed["g_idx"], torch.arange(256, dtype=torch.int32) // 128)
    scale = packed["scales"].float().t().repeat_interleave(128, dim=1)
    want = torch.round(w / scale).clamp(-8, 7) * scale
    torch.testing.assert_close(gptq_unpack(packed, 128), want)
    assert (gptq_unpack(packed, 128) - w).abs().max() <= scale.max() / 2 + 1e-6
    with pytest.raises(ValueError, match="K % 128"):
        gptq_pack(torch.randn(8, 100), 128)


def test_random_llama_loads_in_transformers_with_the_preset_shapes(tmp_path):
    from transformers import AutoModelForCausalLM

    path = write_random_llama(tmp_path / "m", PRESETS["tiny"])
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 256
    assert model.model.layers[1].mlp.down_proj.weight.shape == (256, 512)
    assert abs(float(model.model.layers[0].mlp.up_proj.weight.float().std()) - 0.02) < 0.002


@pytest.mark.slow
def test_bench_serve_tiny_runs_every_cpu_variant_through_vllm(tmp_path):
    out = tmp_path / "out"
    cmd = [os.path.join(os.path.dirname(sys.executable), "sparseflow"), "bench", "serve", "--preset", "tiny",
           "--variants", "dense,fp8,gqsa-w4s50,nm24-int4", "--batches", "1,2", "--new-tokens", "4",
           "--prompt-len", "8", "--prefill-len", "64", "--prefill-batch", "2", "--repeats", "1",
           "--work", str(tmp_path / "work"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "serve-cpu.json").read_text())
    assert report["environment"]["vllm"] and report["shape"]["num_hidden_layers"] == 2
    variants = report["variants"]
    assert variants["fp8"]["skipped"].startswith("needs CUDA")
    for name in ("dense", "gqsa-w4s50", "nm24-int4"):
        result = variants[name]
        assert set(result["decode"]) == {"1", "2"}, result
        assert all(d["ms_per_step"] > 0 and d["tokens_per_s"] > 0 for d in result["decode"].values())
        assert result["prefill_tokens_per_s"] > 0 and result["engine_start_s"] > 0
        assert result["weight_bytes"] > 0
    assert (out / "serve-cpu.png").stat().st_size > 0
    assert "GQSA W4S50 g16" in proc.stdout
    # --resume: the measured variants are reused, not measured again (a long GPU run split over several calls)
    proc = subprocess.run([*cmd, "--resume", "--variants", "dense,gqsa-w4s50"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads((out / "serve-cpu.json").read_text())["variants"]
    assert again["dense"]["reused"] and again["dense"]["decode"] == variants["dense"]["decode"]


def test_build_only_writes_each_needed_checkpoint_once_and_rejects_unknown_variants(tmp_path):
    from sparseflow.benchmarks import serve

    settings = serve.Settings(preset="tiny", tp=2)
    paths = serve.build(tmp_path, settings, ["dense", "fp8", "gqsa-w4s50"])
    assert [p.name for p in paths] == ["dense", "gqsa_w4s50g16"]  # fp8 is online: it serves the dense checkpoint
    assert all((p / "config.json").exists() for p in paths)
    assert json.loads((paths[1] / "config.json").read_text())["quantization_config"]["quant_method"] == "gqsa"
    with pytest.raises(ValueError, match="unknown variants"):
        serve.build(tmp_path, settings, ["dense", "gqsa-w9"])


def test_collect_reports_only_variants_measured_with_the_same_settings(tmp_path):
    from dataclasses import asdict

    from sparseflow.benchmarks import serve

    settings = serve.Settings(preset="tiny", batches=(1,))
    result = {"engine_start_s": 1.0, "weight_bytes": 10, "prefill_tokens_per_s": 5.0,
              "decode": {"1": {"ms_per_step": 2.0, "tokens_per_s": 500.0}}, "environment": {"device": "X"}}
    for name, s in (("dense", settings), ("nm24-int4", settings), ("gqsa-w4s50", serve.Settings(preset="tiny"))):
        (tmp_path / f"{name}.spec.json").write_text(json.dumps({"settings": asdict(s)}))
        (tmp_path / f"{name}.result.json").write_text(json.dumps(result))
    report = serve.collect(tmp_path, settings, ["dense", "gqsa-w4s50", "nm24-int4", "fp8"])
    assert list(report["variants"]) == ["dense", "nm24-int4"]  # gqsa: other batches; fp8: never measured
    assert report["environment"] == {"device": "X"}
    path = serve.save(report, tmp_path / "out")
    saved = json.loads(path.read_text())
    assert path.name == "serve-X.json" and saved["environment"]["device"] == "X"
    assert "environment" not in saved["variants"]["dense"]
    assert "N:M 2:4 int4 g128" in serve.table(saved)
