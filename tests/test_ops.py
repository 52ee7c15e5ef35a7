"""The custom ops vLLM calls (``torch.ops.sparseflow.*``): schema and fake implementations pass torch's own
``opcheck``, and a torch.compile'd module built on them compiles with ``fullgraph=True`` (no graph break inside a
linear layer) and matches eager. On CPU the ops run the torch reference; the GPU runs the same ops (device)."""

import pytest
import sparseflow.kernels.ops  # noqa: F401
import torch
from sparseflow.kernels.gqsa import gqsa_linear_reference, quantize_rtn
from sparseflow.kernels.nm import from_dense, nm_linear_reference


def _gqsa(n=24, k=64, seed=0):
    torch.manual_seed(seed)
    keep = torch.rand(n, k // 16) >= 0.5
    return quantize_rtn(torch.randn(n, k), bits=4, group_size=16, keep=keep)


def _nm(n=24, k=64, value_format="int4", group=16, seed=0):
    from sparseflow.compressors.baselines import nm_prune

    torch.manual_seed(seed)
    return from_dense(nm_prune(torch.randn(n, k), 2, 4), 2, 4, value_format, group)


def _gqsa_args(x, w, bias=None):
    # the seven kernel_tables slots (group_mask, group_prefix, il_*) empty: the op's CPU path
    return (x, w.codes, w.group_col, w.row_ptr, w.scale, w.zero, bias, *[None] * 7, w.in_features, w.group_size,
            w.bits)


def _nm_args(x, w, bias=None):
    return (x, w.values, w.indices, w.scales, bias, None, None, None, w.in_features, w.n, w.m, w.value_format,
            w.group_size)


@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gqsa_op_passes_opcheck_and_matches_the_reference(shape, with_bias):
    w = _gqsa()
    x = torch.randn(*shape)
    bias = torch.randn(24) if with_bias else None
    torch.library.opcheck(torch.ops.sparseflow.gqsa_linear.default, _gqsa_args(x, w, bias))
    y = torch.ops.sparseflow.gqsa_linear(*_gqsa_args(x, w, bias))
    assert y.shape == (*shape[:-1], 24)
    torch.testing.assert_close(y, gqsa_linear_reference(x, w, bias))


@pytest.mark.parametrize("value_format, group", [("int4", 16), ("bf16", 0), ("int8", 32)])
def test_nm_op_passes_opcheck_and_matches_the_reference(value_format, group):
    w = _nm(value_format=value_format, group=group)
    x = torch.randn(2, 3, 64)
    bias = torch.randn(24)
    torch.library.opcheck(torch.ops.sparseflow.nm_linear.default, _nm_args(x, w, bias))
    y = torch.ops.sparseflow.nm_linear(*_nm_args(x, w, bias))
    torch.testing.assert_close(y, nm_linear_reference(x, w, bias))


def test_nm_op_wants_all_packed_tables_or_none():
    w = _nm()
    args = list(_nm_args(torch.randn(1, 64), w))
    args[5] = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="all three packed"):
        torch.ops.sparseflow.nm_linear(*args)


class _TwoSparseLayers(torch.nn.Module):
    """x -> GQSA linear -> SiLU -> N:M linear, as a model's MLP would chain them."""

    def __init__(self):
        super().__init__()
        self.g = _gqsa(n=64, k=64)
        self.m = _nm(n=16, k=64)

    def forward(self, x):
        h = torch.nn.functional.silu(torch.ops.sparseflow.gqsa_linear(*_gqsa_args(x, self.g)))
        return torch.ops.sparseflow.nm_linear(*_nm_args(h, self.m))


def test_compiled_module_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    model = _TwoSparseLayers()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for rows in (1, 3, 7):  # dynamic batch, as vLLM compiles
        x = torch.randn(rows, 64)
        torch.testing.assert_close(compiled(x), model(x))
