"""Module-name matching shared by the checkpoint configs."""

from __future__ import annotations


def is_ignored(module_name: str, ignore: tuple[str, ...]) -> bool:
    """True if ``module_name`` is listed in ``ignore`` by its full name or its last component (``"lm_head"``)."""
    return module_name in ignore or module_name.rsplit(".", 1)[-1] in ignore
