"""One closeness measure for every test and benchmark: relative RMS error and SQNR, NaN-checked.

Tolerances are chosen per *precision* (what the arithmetic can deliver), never per test.
"""

from __future__ import annotations

import math

import torch

# ||out - ref|| / ||ref|| that each compute precision lands under (fp32 accumulate in all cases).
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative RMS error ``||actual - reference|| / ||reference||`` computed in float64."""
    a, r = actual.detach().double(), reference.detach().double()
    denom = r.norm().item()
    return (a - r).norm().item() / denom if denom > 0 else (a - r).norm().item()


def sqnr_db(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (``inf`` when identical)."""
    err = rel_error(actual, reference)
    return math.inf if err == 0 else -20.0 * math.log10(err)


def assert_close(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype | None = None,
                 *, rel_tol: float | None = None, name: str = "output") -> None:
    """Raise ``AssertionError`` with the numbers if ``actual`` is not ``reference`` to precision.

    Args:
        actual, reference: same shape.
        dtype: the compute dtype whose tolerance applies (default: ``actual.dtype``).
        rel_tol: override, for quantities whose error is known to be larger (say why at the call).
    """
    if actual.shape != reference.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != reference {tuple(reference.shape)}")
    if torch.isnan(actual).any() or torch.isinf(actual).any():
        raise AssertionError(f"{name}: contains NaN/inf")
    tol = rel_tol if rel_tol is not None else REL_TOL[dtype or actual.dtype]
    err = rel_error(actual, reference)
    if not err <= tol:
        raise AssertionError(
            f"{name}: relative RMS error {err:.3e} > {tol:.1e} (SQNR {sqnr_db(actual, reference):.1f} dB)"
        )
