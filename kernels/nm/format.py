"""The N:M sparse format, defined once: ``n`` kept weights in every ``m`` consecutive inputs of each row.

A dense weight ``W [N, K]`` (``K`` a multiple of ``m``) keeps, in every block of ``m`` inputs of a row, exactly
``n`` entries (``0 < n < m``, ``m`` in 4, 8, 16). Row ``r`` keeps ``P = K*n/m`` values, in order of their input
index. Tensors:

    values   [N, P]            bfloat16 / float16 ("bf16", "fp16"), or
             int8 [N, P]        symmetric codes q in [-127, 127]               ("int8"), or
             uint8 [N, P/2]     two 4-bit codes per byte, low nibble first,    ("int4")
                                stored as q + 8 with q in [-8, 7]
    indices  uint8 [N, B]      each kept value's position inside its block (log2(m) bits: 2, 3 or 4),
                                packed LSB first (``pack_codes``), the row's P positions padded to a multiple
                                of 8, so B = ceil(P/8) * log2(m)
    scales   float16 [N, P/group_size]   int formats only: value = q * scale of its group of kept values

    W[r, (j // n) * m + pos[r, j]] = value[r, j]      for kept value j of row r; every other entry is 0

Bytes per weight, 2:4: bf16 values 1.0 + indices 0.125 = 1.125 (dense bf16: 2); int4 g128 0.25 + 0.125 +
0.0078 = 0.383. The compressor, the kernels, the vLLM method and the transformers loader all use this one
definition (``NMWeight``); a checkpoint stores ``<module>.<name>`` for each name of ``tensor_names``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..naming import CheckpointConfigBase
from ..packing import pack_codes, unpack_codes

FORMAT_NAME = "sparse_nm"
FORMAT_VERSION = 1
SUPPORTED_M = (4, 8, 16)
FLOAT_VALUES = {"bf16": torch.bfloat16, "fp16": torch.float16}
INT_VALUES = {"int8": 8, "int4": 4}
VALUE_FORMATS = tuple(FLOAT_VALUES) + tuple(INT_VALUES)
INDEX_BITS = {4: 2, 8: 3, 16: 4}


def check_pattern(n: int, m: int, in_features: int | None = None) -> None:
    """Raise ``ValueError`` naming what is wrong with an ``n:m`` pattern (for ``in_features`` inputs)."""
    if m not in SUPPORTED_M:
        raise ValueError(f"N:M pattern {n}:{m}: M must be one of {SUPPORTED_M}")
    if not 0 < n < m:
        raise ValueError(f"N:M pattern {n}:{m}: need 0 < N < M")
    if in_features is not None and (in_features <= 0 or in_features % m):
        raise ValueError(f"N:M pattern {n}:{m} does not divide in_features={in_features} (K must be a multiple of M)")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``, validated."""
    try:
        n_str, m_str = pattern.split(":")
        n, m = int(n_str), int(m_str)
    except ValueError as err:
        raise ValueError(f"N:M pattern {pattern!r} is not of the form 'N:M' (e.g. '2:4')") from err
    check_pattern(n, m)
    return n, m


def check_values(value_format: str, group_size: int, kept_per_row: int | None = None) -> None:
    if value_format not in VALUE_FORMATS:
        raise ValueError(f"value format {value_format!r} is not supported; choose one of {VALUE_FORMATS}")
    if value_format in INT_VALUES:
        if group_size <= 0 or group_size % 8:
            raise ValueError(f"{value_format} values need group_size (kept values per scale) a positive multiple "
                             f"of 8, got {group_size}")
        if kept_per_row is not None and kept_per_row % group_size:
            raise ValueError(f"{kept_per_row} kept values per row are not a multiple of group_size={group_size}; "
                             f"choose a group size dividing K*N/M")
    elif group_size:
        raise ValueError(f"{value_format} values carry no scales: group_size must be 0, got {group_size}")


def tensor_names(value_format: str) -> tuple[str, ...]:
    return ("values", "indices", "scales") if value_format in INT_VALUES else ("values", "indices")


def _index_bytes(kept: int, m: int) -> int:
    return -(-kept // 8) * INDEX_BITS[m]


@dataclass
class NMWeight:
    """One linear layer's weight in the N:M format (see the module docstring for the layout).

    Shapes: ``values [N, P]`` (int4: ``[N, P/2]``), ``indices [N, ceil(P/8)*log2(m)]``, ``scales
    [N, P/group_size]`` or ``None``; ``P = in_features * n / m``.
    """

    values: torch.Tensor
    indices: torch.Tensor
    scales: torch.Tensor | None
    in_features: int
    n: int
    m: int
    value_format: str
    group_size: int = 0

    @property
    def out_features(self) -> int:
        return self.values.shape[0]

    @property
    def kept_per_row(self) -> int:
        return self.in_features * self.n // self.m

    @property
    def device(self) -> torch.device:
        return self.values.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in tensor_names(self.value_format)}

    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def bits_per_weight(self) -> float:
        return 8.0 * self.storage_bytes() / (self.out_features * self.in_features)

    def to(self, device: torch.device | str) -> NMWeight:
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def clone(self) -> NMWeight:
        return replace(self, **{name: t.clone() for name, t in self.tensors().items()})

    def validate(self, *, deep: bool = True) -> NMWeight:
        """Check dtypes and shapes (and, ``deep``, that every position is inside its block); raise ``ValueError``
        saying what is wrong."""
        check_pattern(self.n, self.m, self.in_features)
        check_values(self.value_format, self.group_size, self.kept_per_row)
        n_rows, kept = self.values.shape[0], self.kept_per_row
        if self.value_format in FLOAT_VALUES:
            want_values = (FLOAT_VALUES[self.value_format], (n_rows, kept))
        elif self.value_format == "int8":
            want_values = (torch.int8, (n_rows, kept))
        else:
            if kept % 2:
                raise ValueError(f"int4 values need an even number of kept values per row, got {kept}")
            want_values = (torch.uint8, (n_rows, kept // 2))
        expected = {"values": want_values, "indices": (torch.uint8, (n_rows, _index_bytes(kept, self.m)))}
        if self.value_format in INT_VALUES:
            expected["scales"] = (torch.float16, (n_rows, kept // self.group_size))
        elif self.scales is not None:
            raise ValueError(f"{self.value_format} N:M weights carry no scales")
        for name, (dtype, shape) in expected.items():
            t = getattr(self, name)
            if t is None:
                raise ValueError(f"N:M tensor {name!r} is missing ({self.value_format} values need it)")
            if t.dtype != dtype:
                raise ValueError(f"N:M tensor {name!r} has dtype {t.dtype}; the format needs {dtype}")
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"N:M tensor {name!r} has shape {tuple(t.shape)}; expected {shape} for {n_rows} rows, "
                    f"in_features={self.in_features}, pattern {self.n}:{self.m}, {self.value_format}"
                    + (f" g{self.group_size}" if self.group_size else "")
                )
            if t.device != self.device:
                raise ValueError(f"N:M tensor {name!r} is on {t.device}, values on {self.device}")
        if deep and kept:
            pos = self.positions()
            if int(pos.max()) >= self.m:
                raise ValueError(f"N:M indices point outside their block of {self.m}")
            blocks = pos.reshape(n_rows, -1, self.n)
            if self.n > 1 and bool((blocks[..., 1:] <= blocks[..., :-1]).any()):
                raise ValueError("N:M indices must be strictly ascending within each block (metadata corrupt?)")
        return self

    def positions(self) -> torch.Tensor:
        """``[N, P]`` int64: each kept value's position inside its block."""
        kept = self.kept_per_row
        return unpack_codes(self.indices, INDEX_BITS[self.m])[:, :kept]

    def input_columns(self) -> torch.Tensor:
        """``[N, P]`` int64: each kept value's input index ``k``."""
        kept = self.kept_per_row
        block = torch.arange(kept, device=self.device) // self.n
        return block[None, :] * self.m + self.positions()

    def dequantized_values(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[N, P]`` kept values in ``dtype`` (integer codes times their scale, in float32)."""
        if self.value_format in FLOAT_VALUES:
            return self.values.to(dtype)
        if self.value_format == "int8":
            q = self.values.float()
        else:
            q = unpack_codes(self.values, 4).float() - 8.0
        scale = self.scales.float().repeat_interleave(self.group_size, dim=1)
        return (q * scale).to(dtype)

    # ---- tensor-parallel shard arithmetic (rows, inputs on block and scale-group boundaries) ----

    def slice_rows(self, start: int, stop: int) -> NMWeight:
        if not 0 <= start <= stop <= self.out_features:
            raise ValueError(f"row slice {start}:{stop} is outside 0:{self.out_features}")
        return replace(self, **{name: t[start:stop] for name, t in self.tensors().items()})

    def slice_inputs(self, start: int, stop: int) -> NMWeight:
        """Inputs ``start:stop``: both on block boundaries and, for int values, on scale-group boundaries."""
        step = self.m if not self.group_size else max(self.m, self.group_size * self.m // self.n)
        if start % step or stop % step or not 0 <= start < stop <= self.in_features:
            raise ValueError(f"input slice {start}:{stop} must lie in 0:{self.in_features} on multiples of {step} "
                             f"(N:M block, scale group); is the tensor-parallel size too large?")
        k0, k1 = start * self.n // self.m, stop * self.n // self.m
        if self.value_format == "int4":
            values = pack_codes(unpack_codes(self.values, 4)[:, k0:k1], 4)
        else:
            values = self.values[:, k0:k1]
        scales = None
        if self.scales is not None:
            scales = self.scales[:, k0 // self.group_size: k1 // self.group_size]
        positions = self.positions()[:, k0:k1]
        return NMWeight(values=values.contiguous(), indices=pack_positions(positions, self.m), scales=scales,
                        in_features=stop - start, n=self.n, m=self.m, value_format=self.value_format,
                        group_size=self.group_size)

    @staticmethod
    def concat_rows(parts: Sequence[NMWeight]) -> NMWeight:
        if not parts:
            raise ValueError("concat_rows needs at least one weight")
        first = parts[0]
        for p in parts[1:]:
            if (p.in_features, p.n, p.m, p.value_format, p.group_size) != (
                first.in_features, first.n, first.m, first.value_format, first.group_size
            ):
                raise ValueError("concat_rows: parts differ in in_features, pattern or value format")
        if len(parts) == 1:
            return first
        return replace(first, **{name: torch.cat([p.tensors()[name] for p in parts]) for name in first.tensors()})

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], *, in_features: int, n: int, m: int,
                     value_format: str, group_size: int = 0, prefix: str = "") -> NMWeight:
        """Build from a checkpoint mapping holding ``<prefix><name>`` for every name in ``tensor_names``."""
        names = tensor_names(value_format)
        missing = [prefix + name for name in names if prefix + name not in tensors]
        if missing:
            raise ValueError(f"N:M checkpoint is missing tensors: {', '.join(missing)}")
        return cls(values=tensors[prefix + "values"], indices=tensors[prefix + "indices"],
                   scales=tensors.get(prefix + "scales") if "scales" in names else None, in_features=in_features,
                   n=n, m=m, value_format=value_format, group_size=group_size).validate()


def pack_positions(positions: torch.Tensor, m: int) -> torch.Tensor:
    """``[N, P]`` positions in ``[0, m)`` -> packed ``uint8 [N, ceil(P/8)*log2(m)]`` (padding positions 0)."""
    rows, kept = positions.shape
    padded = torch.zeros(rows, -(-kept // 8) * 8, dtype=torch.int64, device=positions.device)
    padded[:, :kept] = positions
    return pack_codes(padded, INDEX_BITS[m])


def from_dense(weight: torch.Tensor, n: int, m: int, value_format: str = "bf16", group_size: int = 0, *,
               scales: torch.Tensor | None = None) -> NMWeight:
    """The N:M weight of ``weight [N, K]``, which must already be N:M sparse (at most ``n`` non-zeros per block).

    Blocks with fewer non-zeros keep zero-valued entries to make ``n``. Int formats quantize the kept values
    symmetrically per ``group_size`` kept values (scale = max|v| / 127 or / 7), or with the given ``scales
    [N, P/group_size]`` (e.g. GPTQ's, so values already on that grid stay exactly there).
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    rows, k = weight.shape
    check_pattern(n, m, k)
    kept = k * n // m
    check_values(value_format, group_size, kept)
    w = weight.detach().float()
    blocks = w.reshape(rows, k // m, m)
    nonzero = (blocks != 0).sum(-1)
    if bool((nonzero > n).any()):
        bad = int((nonzero > n).sum())
        raise ValueError(f"weight is not {n}:{m} sparse: {bad} blocks of {m} hold more than {n} non-zeros; "
                         f"prune it first (sparseflow.compressors.baselines.nm_prune)")
    # the n largest |w| of each block (non-zeros first; ties among zeros: lowest position), in position order
    order = torch.sort(blocks.abs(), dim=-1, descending=True, stable=True).indices[..., :n]
    positions = order.sort(dim=-1).values  # [rows, K/m, n]
    kept_values = blocks.gather(-1, positions).reshape(rows, kept)
    positions = positions.reshape(rows, kept)
    indices = pack_positions(positions, m)
    if value_format in FLOAT_VALUES:
        return NMWeight(kept_values.to(FLOAT_VALUES[value_format]), indices, None, k, n, m, value_format)
    bits = INT_VALUES[value_format]
    qmax = 127 if bits == 8 else 7
    groups = kept_values.reshape(rows, kept // group_size, group_size)
    if scales is None:
        scales = groups.abs().amax(-1) / qmax
    scales16 = scales.to(torch.float16)
    safe = torch.where(scales16 == 0, torch.ones_like(scales16), scales16).float()
    q = (groups / safe[..., None]).round().clamp(-qmax - (bits == 4), qmax).to(torch.int64).reshape(rows, kept)
    values = q.to(torch.int8) if bits == 8 else pack_codes(q + 8, 4)
    return NMWeight(values, indices, scales16, k, n, m, value_format, group_size)


@dataclass(frozen=True)
class NMCheckpointConfig(CheckpointConfigBase):
    """The ``quantization_config`` block of an N:M checkpoint's config.json (data only, validated).

    ``ignore``: modules left dense, by full name or last name component. ``recipe``: how the file was made.
    """

    LABEL = "N:M"
    FORMAT_NAME = FORMAT_NAME
    FORMAT_VERSION = FORMAT_VERSION

    n: int = 2
    m: int = 4
    value_format: str = "bf16"
    group_size: int = 0
    ignore: tuple[str, ...] = field(default=("lm_head",))
    format_version: int = FORMAT_VERSION
    quant_method: str = FORMAT_NAME
    recipe: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_pattern(self.n, self.m)
        check_values(self.value_format, self.group_size)
        self._check_header()
