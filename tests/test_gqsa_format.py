"""The GQSA format: packing, quantization, validation and the tensor-parallel shard arithmetic."""

from __future__ import annotations

import pytest
import torch
from sparseflow.kernels.gqsa import (
    GQSACheckpointConfig,
    GQSAWeight,
    dequantize_reference,
    pack_codes,
    quantize_rtn,
    unpack_codes,
)
from sparseflow.kernels.testing import sqnr_db


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("g", [8, 16, 128])
def test_pack_unpack_roundtrip(bits, g):
    codes = torch.randint(0, 1 << bits, (7, 3, g))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 3, g * bits // 8)
    assert torch.equal(unpack_codes(packed, bits), codes)


def test_pack_layout_is_lsb_first():
    # codes 1, 2 at 4 bits -> one byte 0x21: code 0 in the low nibble
    assert pack_codes(torch.tensor([[1, 2, 0, 0, 0, 0, 0, 0]]), 4)[0, 0].item() == 0x21


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("g", [8, 16, 32, 64, 128])
def test_quantize_rtn_error_is_half_a_step(bits, g):
    """Round-to-nearest: every weight within half a quantization step of the original.

    Slack: the scale is rounded to float16 before the codes are chosen, which can stretch the
    last step by qmax * 2**-11 of a step.
    """
    torch.manual_seed(bits * 1000 + g)
    w = torch.randn(48, 256)
    q = quantize_rtn(w, bits=bits, group_size=g).validate()
    assert q.nnz_groups == 48 * 256 // g and q.density() == 1.0
    err = (dequantize_reference(q) - w).abs().reshape(48 * 256 // g, g).amax(1)
    step = q.scale.float()
    assert torch.all(err <= step * (0.5 + ((1 << bits) - 1) * 2**-11) + 1e-6)


def test_quantize_rtn_sqnr_at_4_and_8_bits():
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    # about 6 dB per bit; measured 23.2 dB (w4 g16) and 47.8 dB (w8 g16) on this seed
    assert sqnr_db(dequantize_reference(quantize_rtn(w, bits=4, group_size=16)), w) > 22.0
    assert sqnr_db(dequantize_reference(quantize_rtn(w, bits=8, group_size=16)), w) > 45.0


def test_pruned_groups_are_zero_and_not_stored():
    torch.manual_seed(0)
    w = torch.randn(9, 64)
    keep = torch.rand(9, 4) > 0.5
    keep[3] = False  # an empty row
    q = quantize_rtn(w, bits=4, group_size=16, keep=keep).validate()
    assert q.nnz_groups == int(keep.sum())
    dense = dequantize_reference(q).reshape(9, 4, 16)
    assert torch.all(dense[~keep] == 0)
    assert q.bits_per_weight() < quantize_rtn(w, bits=4, group_size=16).bits_per_weight()


def test_bits_per_weight_at_w4_g16():
    q = quantize_rtn(torch.randn(128, 256), bits=4, group_size=16)
    expected = 8 * (0.5 + 6 / 16) + 8 * 4 * 129 / (128 * 256)  # codes, scale+zero+col, row_ptr
    assert q.bits_per_weight() == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 5}, "bits=5 is not supported"),
        ({"group_size": 12}, "group_size=12 is not supported"),
    ],
)
def test_unsupported_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_rtn(torch.randn(4, 128), **kwargs)


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize_rtn(torch.randn(4, 100), group_size=16)
    with pytest.raises(ValueError, match="2-D"):
        quantize_rtn(torch.randn(4, 4, 16))
    with pytest.raises(ValueError, match="floating point"):
        quantize_rtn(torch.ones(4, 16, dtype=torch.int32))


def _weight(n=12, k=64, g=16, seed=0, density=0.6):
    torch.manual_seed(seed)
    keep = torch.rand(n, k // g) < density
    return quantize_rtn(torch.randn(n, k), bits=4, group_size=g, keep=keep)


def test_validate_catches_corruption():
    w = _weight()
    with pytest.raises(ValueError, match="dtype"):
        GQSAWeight(**{**w.tensors(), "scale": w.scale.float()}, in_features=64, group_size=16, bits=4).validate()
    with pytest.raises(ValueError, match="shape"):
        GQSAWeight(**{**w.tensors(), "codes": w.codes[:-1]}, in_features=64, group_size=16, bits=4).validate()
    bad_col = w.group_col.clone()
    bad_col[0] = 4
    with pytest.raises(ValueError, match="out of range"):
        GQSAWeight(**{**w.tensors(), "group_col": bad_col}, in_features=64, group_size=16, bits=4).validate()
    bad_ptr = w.row_ptr.clone()
    bad_ptr[-1] += 1
    with pytest.raises(ValueError, match="row_ptr"):
        GQSAWeight(**{**w.tensors(), "row_ptr": bad_ptr}, in_features=64, group_size=16, bits=4).validate()
    with pytest.raises(ValueError, match="missing tensors"):
        GQSAWeight.from_tensors({"x.codes": w.codes}, prefix="x.", in_features=64, group_size=16, bits=4)


@pytest.mark.parametrize("tp", [2, 4])
def test_shard_arithmetic_matches_dense_slicing(tp):
    w = _weight(n=16, k=128)
    dense = dequantize_reference(w)
    rows = 16 // tp
    for rank in range(tp):
        col_part = w.slice_rows(rank * rows, (rank + 1) * rows).validate()
        assert torch.equal(dequantize_reference(col_part), dense[rank * rows:(rank + 1) * rows])
        cols = 128 // tp
        row_part = w.slice_inputs(rank * cols, (rank + 1) * cols).validate()
        assert torch.equal(dequantize_reference(row_part), dense[:, rank * cols:(rank + 1) * cols])


def test_concat_rows_is_merged_qkv():
    q, k, v = _weight(n=8, seed=1), _weight(n=4, seed=2), _weight(n=4, seed=3)
    merged = GQSAWeight.concat_rows([q, k, v]).validate()
    expected = torch.cat([dequantize_reference(x) for x in (q, k, v)])
    assert torch.equal(dequantize_reference(merged), expected)
    with pytest.raises(ValueError, match="different"):
        GQSAWeight.concat_rows([q, _weight(k=128)])


def test_input_slice_off_group_boundary_raises():
    with pytest.raises(ValueError, match="group boundaries"):
        _weight().slice_inputs(0, 24)


def test_checkpoint_config_validation():
    cfg = GQSACheckpointConfig.from_dict({"quant_method": "gqsa", "bits": 4, "group_size": 16})
    assert cfg.is_quantized("model.layers.0.mlp.up_proj") and not cfg.is_quantized("lm_head")
    assert GQSACheckpointConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="format_version=2"):
        GQSACheckpointConfig.from_dict({"format_version": 2})
    with pytest.raises(ValueError, match="unknown GQSA quantization_config keys"):
        GQSACheckpointConfig.from_dict({"bitz": 4})
    with pytest.raises(ValueError, match="sparsity"):
        GQSACheckpointConfig(sparsity=1.5)
