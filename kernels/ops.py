"""``gqsa_linear`` and ``nm_linear`` as torch custom ops (``torch.ops.sparseflow.*``) with fake implementations.

torch.compile (vLLM compiles every model) cannot trace into Triton launches, host-side shape checks or
dispatch by batch size; a custom op is one opaque node whose output shape the fake implementation gives, so
the graph has no break inside a linear layer and CUDA graphs capture the op's launches. The ops take the
format's tensors and its ``kernel_tables`` one by one (an op's schema holds tensors, not the dataclasses) and
rebuild the format object inside, where nothing is traced.

Importing this module registers the ops; importing it twice is harmless.
"""

from __future__ import annotations

import torch

from .gqsa import GQSAWeight, gqsa_linear
from .nm import NMWeight, nm_linear


def _out_shape(x: torch.Tensor, n: int) -> list[int]:
    return [*x.shape[:-1], n]


@torch.library.custom_op("sparseflow::gqsa_linear", mutates_args=())
def gqsa_linear_op(x: torch.Tensor, codes: torch.Tensor, group_col: torch.Tensor, row_ptr: torch.Tensor,
                   scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None,
                   group_mask: torch.Tensor | None, group_prefix: torch.Tensor | None,
                   il_words: torch.Tensor | None, il_col: torch.Tensor | None, il_scale_zero: torch.Tensor | None,
                   il_step_ptr: torch.Tensor | None, il_rows: torch.Tensor | None,
                   in_features: int, group_size: int, bits: int) -> torch.Tensor:
    """``gqsa_linear(x, GQSAWeight(...), bias, tables)``: ``x [..., K] -> [..., N]``, N = ``row_ptr.numel() - 1``;
    the other tensors are ``kernel_tables`` entries (each may be absent; the ``il_*`` five come together)."""
    w = GQSAWeight(codes, group_col, row_ptr, scale, zero, in_features=in_features, group_size=group_size, bits=bits)
    il = (il_words, il_col, il_scale_zero, il_step_ptr, il_rows)
    if any(t is None for t in il) and any(t is not None for t in il):
        raise ValueError("gqsa_linear: pass all five il_* tables (kernel_tables) or none")
    given = {"group_mask": group_mask, "group_prefix": group_prefix,
             "il_words": il_words, "il_col": il_col, "il_scale_zero": il_scale_zero, "il_step_ptr": il_step_ptr,
             "il_rows": il_rows}
    tables = {name: t for name, t in given.items() if t is not None} or None
    return gqsa_linear(x, w, bias, tables=tables)


@gqsa_linear_op.register_fake
def _(x, codes, group_col, row_ptr, scale, zero, bias, group_mask, group_prefix, il_words, il_col,
      il_scale_zero, il_step_ptr, il_rows, in_features, group_size, bits):
    return x.new_empty(_out_shape(x, row_ptr.shape[0] - 1))


@torch.library.custom_op("sparseflow::nm_linear", mutates_args=())
def nm_linear_op(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor | None,
                 bias: torch.Tensor | None, packed_codes: torch.Tensor | None, packed_meta: torch.Tensor | None,
                 packed_scales: torch.Tensor | None, in_features: int, n: int, m: int, value_format: str,
                 group_size: int) -> torch.Tensor:
    """``nm_linear(x, NMWeight(...), bias, tables)``: ``x [..., K] -> [..., N]``, N = ``values.shape[0]``; the
    ``packed_*`` tensors are the sparse-tensor-core copy from ``kernel_tables`` (all three or none)."""
    w = NMWeight(values, indices, scales, in_features, n, m, value_format, group_size)
    packed = (packed_codes, packed_meta, packed_scales)
    if any(t is None for t in packed) and any(t is not None for t in packed):
        raise ValueError("nm_linear: pass all three packed_* tables (kernel_tables) or none")
    tables = None
    if packed_codes is not None:
        tables = {"packed_codes": packed_codes, "packed_meta": packed_meta, "packed_scales": packed_scales}
    return nm_linear(x, w, bias, tables=tables)


@nm_linear_op.register_fake
def _(x, values, indices, scales, bias, packed_codes, packed_meta, packed_scales, in_features, n, m, value_format,
      group_size):
    return x.new_empty(_out_shape(x, values.shape[0]))
