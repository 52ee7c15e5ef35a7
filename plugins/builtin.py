"""sparseflow's own features, registered through the same hooks as any third-party plugin."""

from __future__ import annotations

from .features import Feature
from .hookspecs import hookimpl


@hookimpl
def sparseflow_linear_methods() -> list[Feature]:
    return [
        Feature(
            kind="linear_method",
            name="gqsa",
            summary="group-quantized (2/3/4/8-bit), group-sparse linear; block-sparse-row format",
            target="sparseflow.vllm_ext.gqsa:GQSAConfig",
        ),
        Feature(
            kind="linear_method",
            name="sparse_nm",
            summary="N:M sparse linear (2:4, 1:4, 2:8, 4:8, ...), bf16/fp16 values or int8/int4 with group scales",
            target="sparseflow.vllm_ext.nm:NMConfig",
        ),
    ]


@hookimpl
def sparseflow_peft_methods() -> list[Feature]:
    return [
        Feature(
            kind="peft_method",
            name="dsee",
            summary="DSEE: LoRA pair + a sparse update on a support fixed from W (indices + values), for PEFT",
            target="sparseflow.peft_ext:DSEEConfig",
        ),
        Feature(
            kind="peft_method",
            name="gs_lora",
            summary="GS-LoRA: FFN LoRA in groups switched off by a proximal group lasso; bounded forgetting loss",
            target="sparseflow.peft_ext:GSLoRAConfig",
        ),
        Feature(
            kind="peft_method",
            name="pst",
            summary="PST: sparse fine-tuning with a learnt mask (cubic schedule); exports N:M / GQSA checkpoints",
            target="sparseflow.peft_ext:PSTConfig",
        ),
    ]
