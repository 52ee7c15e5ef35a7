"""What the checkpoint configs of every format share: module-name matching and the dict round trip."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any


def is_ignored(module_name: str, ignore: tuple[str, ...]) -> bool:
    """True if ``module_name`` is listed in ``ignore`` by its full name or its last component (``"lm_head"``)."""
    return module_name in ignore or module_name.rsplit(".", 1)[-1] in ignore


class CheckpointConfigBase:
    """Mixin for the frozen dataclasses holding a format's ``quantization_config`` block. Subclasses set
    ``LABEL`` (for messages), ``FORMAT_NAME``, ``FORMAT_VERSION`` and have ``quant_method``, ``format_version``
    and ``ignore`` fields; their ``__post_init__`` calls ``_check_header``."""

    LABEL = ""
    FORMAT_NAME = ""
    FORMAT_VERSION = 0

    def _check_header(self) -> None:
        if self.quant_method != self.FORMAT_NAME:
            raise ValueError(f"quant_method={self.quant_method!r} is not {self.FORMAT_NAME!r}")
        if self.format_version != self.FORMAT_VERSION:
            raise ValueError(
                f"{self.LABEL} format_version={self.format_version} is not supported by this sparseflow "
                f"(reads version {self.FORMAT_VERSION}); upgrade sparseflow or re-compress the model"
            )
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]):
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown {cls.LABEL} quantization_config keys {unknown}; known: {sorted(known)}")
        return cls(**dict(config))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ignore"] = list(self.ignore)
        return d

    def is_quantized(self, module_name: str) -> bool:
        return not is_ignored(module_name, self.ignore)
