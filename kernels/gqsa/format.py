"""The GQSA weight format, defined once: block-sparse rows of quantized weight groups.

A dense weight ``W [N, K]`` (``N`` outputs, ``K`` inputs) is cut, row by row, into groups of
``g`` consecutive inputs. Pruned groups are not stored. Every stored group has its own
``scale`` and ``zero``, and ``g`` codes of ``bits`` bits each:

    W[r, c*g + i] = (code[j, i] - zero[j]) * scale[j]     for the stored group j = (r, c)
    W[r, c*g + i] = 0                                      for a pruned group

Tensors (``nnz`` = stored groups; rows in order, group columns ascending within a row):

    codes      uint8   [nnz, g*bits/8]  codes packed little-endian, LSB first (``pack_codes``)
    group_col  int16   [nnz]            group column c of each stored group (input index c*g)
    row_ptr    int32   [N + 1]          row r owns stored groups row_ptr[r] : row_ptr[r+1]
    scale      float16 [nnz]
    zero       float16 [nnz]            (float, so end-to-end tuning can move it)

Bytes per weight at 4 bits, g=16, no pruning: 0.5 (codes) + 6/16 (scale, zero, column) = 0.875,
against 2 for bf16. The compressor, the kernels, the vLLM method and the transformers loader all
read and write this one definition (``GQSAWeight``); the checkpoint stores the five tensors
under ``<module>.<name>`` for each tensor name in ``TENSOR_NAMES``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..naming import CheckpointConfigBase
from ..packing import pack_codes

FORMAT_NAME = "gqsa"
FORMAT_VERSION = 1
SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUP_SIZES = (8, 16, 32, 64, 128)
TENSOR_NAMES = ("codes", "group_col", "row_ptr", "scale", "zero")
TENSOR_DTYPES = {
    "codes": torch.uint8,
    "group_col": torch.int16,
    "row_ptr": torch.int32,
    "scale": torch.float16,
    "zero": torch.float16,
}
# int16 group columns: K / g must stay below 2**15.
MAX_GROUP_COLUMNS = 2**15


def check_bits_and_group_size(bits: int, group_size: int) -> None:
    """Raise ``ValueError`` naming the allowed values if either is unsupported."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; choose one of {SUPPORTED_BITS}")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size={group_size} is not supported; choose one of {SUPPORTED_GROUP_SIZES}")


def bytes_per_group(bits: int, group_size: int) -> int:
    return group_size * bits // 8


@dataclass
class GQSAWeight:
    """One linear layer's weight in the GQSA format (see the module docstring for the layout).

    Shapes: ``codes [nnz, g*bits/8]``, ``group_col [nnz]``, ``row_ptr [N+1]``, ``scale [nnz]``,
    ``zero [nnz]``; the dense weight it stands for is ``[N, K]`` with ``K = in_features``.
    """

    codes: torch.Tensor
    group_col: torch.Tensor
    row_ptr: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    in_features: int
    group_size: int
    bits: int

    @property
    def out_features(self) -> int:
        return self.row_ptr.numel() - 1

    @property
    def nnz_groups(self) -> int:
        return self.group_col.numel()

    @property
    def num_group_columns(self) -> int:
        return self.in_features // self.group_size

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in TENSOR_NAMES}

    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def bits_per_weight(self) -> float:
        """Stored bits over the dense weight count (what decode has to read, per weight)."""
        return 8.0 * self.storage_bytes() / (self.out_features * self.in_features)

    def density(self) -> float:
        """Fraction of weight groups kept."""
        return self.nnz_groups / max(1, self.out_features * self.num_group_columns)

    def clone(self) -> GQSAWeight:
        return replace(self, **{name: t.clone() for name, t in self.tensors().items()})

    def to(self, device: torch.device | str) -> GQSAWeight:
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def validate(self, *, deep: bool = True) -> GQSAWeight:
        """Check dtypes, shapes and (``deep``) index ranges; raise ``ValueError`` saying what is wrong.

        ``deep`` reads the index tensors (a device sync on GPU): do it on load, not per call.
        """
        check_bits_and_group_size(self.bits, self.group_size)
        if self.in_features <= 0 or self.in_features % self.group_size:
            raise ValueError(
                f"in_features={self.in_features} must be a positive multiple of group_size={self.group_size}"
            )
        if self.num_group_columns > MAX_GROUP_COLUMNS:
            raise ValueError(
                f"in_features/group_size = {self.num_group_columns} exceeds the int16 column index "
                f"limit {MAX_GROUP_COLUMNS}; use a larger group_size"
            )
        for name, dtype in TENSOR_DTYPES.items():
            t = getattr(self, name)
            if t.dtype != dtype:
                raise ValueError(f"GQSA tensor {name!r} has dtype {t.dtype}; the format needs {dtype}")
            if t.device != self.device:
                raise ValueError(f"GQSA tensor {name!r} is on {t.device}, codes on {self.device}")
        nnz = self.group_col.numel()
        expected = {
            "codes": (nnz, bytes_per_group(self.bits, self.group_size)),
            "group_col": (nnz,),
            "scale": (nnz,),
            "zero": (nnz,),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"GQSA tensor {name!r} has shape {tuple(getattr(self, name).shape)}; expected {shape} "
                    f"(nnz={nnz} stored groups, group_size={self.group_size}, bits={self.bits})"
                )
        if self.row_ptr.dim() != 1 or self.row_ptr.numel() < 2:
            raise ValueError(f"GQSA row_ptr must be 1-D with N+1 >= 2 entries, got shape {tuple(self.row_ptr.shape)}")
        if deep:
            rp = self.row_ptr.cpu()
            if rp[0].item() != 0 or rp[-1].item() != nnz or bool((rp[1:] < rp[:-1]).any()):
                raise ValueError(f"GQSA row_ptr must rise from 0 to nnz={nnz}; got {rp[0].item()}..{rp[-1].item()}")
            cols = self.group_col.cpu().to(torch.int64)
            if nnz and (cols.min().item() < 0 or cols.max().item() >= self.num_group_columns):
                raise ValueError(
                    f"GQSA group_col out of range [0, {self.num_group_columns}): "
                    f"min {cols.min().item()}, max {cols.max().item()}"
                )
            if nnz > 1:
                row_of = torch.repeat_interleave(torch.arange(self.out_features), rp.diff().to(torch.int64))
                same_row = row_of[1:] == row_of[:-1]
                if bool((cols[1:][same_row] <= cols[:-1][same_row]).any()):
                    raise ValueError("GQSA group_col must be strictly ascending within each row")
        return self

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], *, in_features: int, group_size: int,
                     bits: int, prefix: str = "") -> GQSAWeight:
        """Build from a checkpoint mapping holding ``<prefix><name>`` for every name in ``TENSOR_NAMES``."""
        missing = [prefix + name for name in TENSOR_NAMES if prefix + name not in tensors]
        if missing:
            raise ValueError(f"GQSA checkpoint is missing tensors: {', '.join(missing)}")
        return cls(**{name: tensors[prefix + name] for name in TENSOR_NAMES},
                   in_features=in_features, group_size=group_size, bits=bits).validate()

    # ---- tensor-parallel shard arithmetic -------------------------------------------------

    def slice_rows(self, start: int, stop: int) -> GQSAWeight:
        """Output rows ``start:stop`` (column-parallel sharding)."""
        if not 0 <= start <= stop <= self.out_features:
            raise ValueError(f"row slice {start}:{stop} is outside 0:{self.out_features}")
        lo, hi = int(self.row_ptr[start]), int(self.row_ptr[stop])
        return replace(
            self,
            codes=self.codes[lo:hi], group_col=self.group_col[lo:hi], scale=self.scale[lo:hi],
            zero=self.zero[lo:hi], row_ptr=(self.row_ptr[start:stop + 1] - lo).to(torch.int32),
        )

    def slice_inputs(self, start: int, stop: int) -> GQSAWeight:
        """Input features ``start:stop`` (row-parallel sharding); both must be multiples of group_size."""
        g = self.group_size
        if start % g or stop % g or not 0 <= start < stop <= self.in_features:
            raise ValueError(
                f"input slice {start}:{stop} must lie in 0:{self.in_features} on group boundaries "
                f"(group_size={g}); is the tensor-parallel size too large for this group size?"
            )
        cols = self.group_col.to(torch.int64)
        keep = (cols >= start // g) & (cols < stop // g)
        row_of = torch.repeat_interleave(
            torch.arange(self.out_features, device=self.device), self.row_ptr.diff().to(torch.int64)
        )
        counts = torch.bincount(row_of[keep], minlength=self.out_features)
        row_ptr = torch.zeros(self.out_features + 1, dtype=torch.int32, device=self.device)
        row_ptr[1:] = counts.cumsum(0).to(torch.int32)
        return replace(
            self,
            codes=self.codes[keep], group_col=(cols[keep] - start // g).to(torch.int16),
            scale=self.scale[keep], zero=self.zero[keep], row_ptr=row_ptr, in_features=stop - start,
        )

    @staticmethod
    def concat_rows(parts: Sequence[GQSAWeight]) -> GQSAWeight:
        """Stack weights along the output dimension (merged QKV, gate/up)."""
        if not parts:
            raise ValueError("concat_rows needs at least one weight")
        first = parts[0]
        for p in parts[1:]:
            if (p.in_features, p.group_size, p.bits) != (first.in_features, first.group_size, first.bits):
                raise ValueError(
                    "cannot concatenate GQSA weights with different (in_features, group_size, bits): "
                    f"{(first.in_features, first.group_size, first.bits)} vs {(p.in_features, p.group_size, p.bits)}"
                )
        offsets, ptrs = 0, [torch.zeros(1, dtype=torch.int32, device=first.device)]
        for p in parts:
            ptrs.append(p.row_ptr[1:] + offsets)
            offsets += p.nnz_groups
        return replace(
            first,
            codes=torch.cat([p.codes for p in parts]), group_col=torch.cat([p.group_col for p in parts]),
            scale=torch.cat([p.scale for p in parts]), zero=torch.cat([p.zero for p in parts]),
            row_ptr=torch.cat(ptrs).to(torch.int32),
        )


def from_dense_groups(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, keep: torch.Tensor,
                      *, bits: int, group_size: int) -> GQSAWeight:
    """Assemble the format from per-group arrays over the full grid of groups.

    Args:
        codes: integer codes ``[N, K/g, g]``.
        scale, zero: ``[N, K/g]`` (any float dtype; stored as float16).
        keep: bool ``[N, K/g]``; False marks a pruned group.
    """
    check_bits_and_group_size(bits, group_size)
    n, ncols, g = codes.shape
    if g != group_size or keep.shape != (n, ncols) or scale.shape != (n, ncols) or zero.shape != (n, ncols):
        raise ValueError(
            f"from_dense_groups: codes {tuple(codes.shape)}, scale {tuple(scale.shape)}, zero {tuple(zero.shape)}, "
            f"keep {tuple(keep.shape)} do not describe [N, K/g, g={group_size}] groups"
        )
    keep = keep.to(torch.bool)
    row_ptr = torch.zeros(n + 1, dtype=torch.int32, device=codes.device)
    row_ptr[1:] = keep.sum(1).cumsum(0).to(torch.int32)
    col_grid = torch.arange(ncols, device=codes.device).expand(n, ncols)
    return GQSAWeight(
        codes=pack_codes(codes[keep], bits),
        group_col=col_grid[keep].to(torch.int16),
        row_ptr=row_ptr,
        scale=scale[keep].to(torch.float16),
        zero=zero[keep].to(torch.float16),
        in_features=ncols * g,
        group_size=group_size,
        bits=bits,
    )


@dataclass(frozen=True)
class GQSACheckpointConfig(CheckpointConfigBase):
    """The ``quantization_config`` block of a GQSA checkpoint's config.json (data only, validated).

    Args:
        bits: code width, one of ``SUPPORTED_BITS``.
        group_size: inputs per group, one of ``SUPPORTED_GROUP_SIZES``.
        sparsity: fraction of groups pruned (informational; the tensors are the truth).
        ignore: modules left dense, matched by full name or last name component (``"lm_head"``).
            Merged vLLM modules (qkv_proj, gate_up_proj) are quantized only if all their parts are.
        format_version: layout version; readers refuse versions they do not know.
        recipe: how the compressor made the file (not read by the loaders).
    """

    LABEL = "GQSA"
    FORMAT_NAME = FORMAT_NAME
    FORMAT_VERSION = FORMAT_VERSION

    bits: int = 4
    group_size: int = 16
    sparsity: float = 0.0
    ignore: tuple[str, ...] = field(default=("lm_head",))
    format_version: int = FORMAT_VERSION
    quant_method: str = FORMAT_NAME
    recipe: dict[str, Any] | None = None  # how the file was made (saliency, stages, calibration); informational

    def __post_init__(self) -> None:
        check_bits_and_group_size(self.bits, self.group_size)
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity={self.sparsity} must be in [0, 1)")
        self._check_header()
