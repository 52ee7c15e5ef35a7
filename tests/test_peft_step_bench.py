"""The PEFT step-time benchmark runs end to end (CPU, tiny model); its numbers matter only on the H200."""

from sparseflow.benchmarks.harness import format_table, get


def test_peft_step_benchmark_times_every_method_against_lora():
    rows = get("peft_step")(quick=True)
    assert [r.impl for r in rows] == ["LoRA (PEFT)", "DSEE", "GS-LoRA", "PST 50%"]
    assert all(r.ms > 0 and r.extra["trainable"] > 0 for r in rows)
    table = format_table(rows, "LoRA (PEFT)")
    assert table.count("x LoRA time") == 4 and " 0%" not in table  # no byte floor is claimed for training steps
