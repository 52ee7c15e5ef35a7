"""Bit packing shared by the formats: integer codes of 2, 3, 4 or 8 bits laid LSB first into bytes."""

from __future__ import annotations

import torch

PACKED_BITS = (2, 3, 4, 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``[..., g]`` (values in ``[0, 2**bits)``) into bytes ``[..., g*bits/8]``.

    Codes are laid LSB first: code i occupies bits ``i*bits .. i*bits+bits-1`` of the group's bit
    string, byte 0 holding the lowest bits. ``g`` must be a multiple of 8.
    """
    if bits not in PACKED_BITS:
        raise ValueError(f"bits={bits} is not supported; choose one of {PACKED_BITS}")
    g = codes.shape[-1]
    if g % 8:
        raise ValueError(f"the last dimension of codes ({g}) must be a multiple of 8")
    c = codes.to(torch.int64)
    if bits == 8:
        return c.to(torch.uint8)
    # 8 codes of `bits` bits make exactly `bits` bytes (at most 32 bits, no int64 overflow).
    chunks = c.reshape(*c.shape[:-1], g // 8, 8)
    shifts = torch.arange(8, device=c.device, dtype=torch.int64) * bits
    word = (chunks << shifts).sum(-1)  # [..., g/8]
    byte_shifts = torch.arange(bits, device=c.device, dtype=torch.int64) * 8
    packed = (word.unsqueeze(-1) >> byte_shifts) & 0xFF  # [..., g/8, bits]
    return packed.reshape(*c.shape[:-1], g * bits // 8).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: bytes ``[..., g*bits/8]`` -> int64 codes ``[..., g]``."""
    if bits not in PACKED_BITS:
        raise ValueError(f"bits={bits} is not supported; choose one of {PACKED_BITS}")
    p = packed.to(torch.int64)
    if bits == 8:
        return p
    nbytes = p.shape[-1]
    if nbytes % bits:
        raise ValueError(f"{nbytes} packed bytes per group do not hold whole chunks of 8 {bits}-bit codes")
    chunks = p.reshape(*p.shape[:-1], nbytes // bits, bits)
    byte_shifts = torch.arange(bits, device=p.device, dtype=torch.int64) * 8
    word = (chunks << byte_shifts).sum(-1)  # [..., g/8]
    shifts = torch.arange(8, device=p.device, dtype=torch.int64) * bits
    codes = (word.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*p.shape[:-1], nbytes * 8 // bits)
