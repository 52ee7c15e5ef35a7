"""The PEFT step-time benchmark runs end to end (CPU, tiny model); its numbers matter only on the H200."""

from sparseflow.benchmarks.harness import format_table, get


def test_peft_step_benchmark_times_every_method_against_lora():
    rows = get("peft_step")(quick=True)
    assert [r.impl for r in rows] == ["LoRA (PEFT)", "DSEE", "GS-LoRA", "PST 50%"]
    assert all(r.ms > 0 and r.extra["trainable"] > 0 for r in rows)
    table = format_table(rows, "LoRA (PEFT)")
    assert table.count("x LoRA time") == 4 and " 0%" not in table  # no byte floor is claimed for training steps


def test_the_cli_runs_it_without_a_gpu_and_saves_json(tmp_path, monkeypatch):
    """`sparseflow bench run peft_step --quick` on a machine without CUDA: the GPU warm-up steps aside (it used to
    fail there), the table prints, the JSON saves, and the profile mode reports host time."""
    import json

    from typer.testing import CliRunner

    from sparseflow.cli import app

    monkeypatch.setenv("SPARSEFLOW_PROFILE", "1")
    result = CliRunner().invoke(app, ["bench", "run", "peft_step", "--quick", "--out-dir", str(tmp_path),
                                      "--baseline", "LoRA (PEFT)"])
    assert result.exit_code == 0, result.output
    saved = json.loads(next(tmp_path.glob("peft_step-*.json")).read_text())
    assert [r["impl"] for r in saved["rows"]] == ["LoRA (PEFT)", "DSEE", "GS-LoRA", "PST 50%"]
    assert all("Self CPU time total" in r["extra"]["profile"] for r in saved["rows"])
    assert "syncs n/a (CPU)" in result.output
