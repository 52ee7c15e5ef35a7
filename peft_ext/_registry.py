"""The one place sparseflow's PEFT methods enter PEFT.

PEFT's ``register_peft_method`` only accepts names already in its own ``PeftType`` enum, so out-of-tree methods
get their own ``str`` enum (``SparseflowPeftType``: its members compare and hash equal to their names, which is
what PEFT's mapping dicts and saved ``adapter_config.json`` files key on) and are written into PEFT's three
mapping dicts directly, with the prefix PEFT derives from the type (``<lowercased type>_``). That reaches into
PEFT's internals, so the supported PEFT versions are pinned here and checked on import: a PEFT outside the
range, or one whose mapping dicts moved, fails loudly instead of half-registering.

PEFT has no entry points: loading a saved adapter needs ``import sparseflow.peft_ext`` first. Without it PEFT
stops at the unknown type; every sparseflow config therefore saves ``LOAD_HINT`` in ``adapter_config.json``,
where whoever reads the failing file finds what to import.
"""

from __future__ import annotations

import enum

PEFT_MIN, PEFT_BELOW = (0, 21), (0, 22)  # tested range: PEFT 0.21.x (pyproject pins the same)
LOAD_HINT = "a sparseflow adapter: `import sparseflow.peft_ext` (pip install 'sparseflow[peft]') before loading it"


class SparseflowPeftType(str, enum.Enum):
    """PEFT types of sparseflow's methods (``peft_config.peft_type``)."""

    DSEE = "DSEE"
    PST = "PST"
    GS_LORA = "GS_LORA"


def prefix_of(peft_type: SparseflowPeftType) -> str:
    """The parameter-name prefix PEFT expects for a type: ``dsee_``, ``pst_``, ``gs_lora_``."""
    return f"{peft_type.value.lower()}_"


def check_peft_version() -> None:
    """Raise ``ImportError`` unless the installed PEFT is in the tested range and has the mapping dicts."""
    import peft

    version = tuple(int(p) for p in peft.__version__.split(".")[:2] if p.isdigit())
    if not (PEFT_MIN <= version < PEFT_BELOW):
        raise ImportError(
            f"sparseflow's PEFT methods are tested with peft >={'.'.join(map(str, PEFT_MIN))},"
            f"<{'.'.join(map(str, PEFT_BELOW))}; found peft {peft.__version__}. They register through PEFT "
            f"internals that change between releases: install a supported version (pip install 'sparseflow[peft]')"
        )
    import peft.mapping as mapping

    for name in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING"):
        if not isinstance(getattr(mapping, name, None), dict):
            raise ImportError(f"peft {peft.__version__} has no peft.mapping.{name}: sparseflow cannot register with it")


def register(peft_type: SparseflowPeftType, config_cls: type, model_cls: type) -> None:
    """Make ``get_peft_model`` / ``PeftModel.from_pretrained`` know ``peft_type``. Idempotent; refuses to
    overwrite another package's registration under the same name."""
    import peft.mapping as mapping

    check_peft_version()
    owner = mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if owner is not None and owner is not config_cls:
        raise RuntimeError(f"PEFT type {peft_type.value} is already registered by {owner.__module__}.{owner.__name__}")
    if getattr(model_cls, "prefix", None) != prefix_of(peft_type):
        raise ValueError(f"{model_cls.__name__}.prefix must be {prefix_of(peft_type)!r} for PEFT to find its weights")
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix_of(peft_type)
