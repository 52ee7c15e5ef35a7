"""Logging for the whole package; defined in the lowest layer (``sparseflow.kernels``)."""

from sparseflow.kernels._log import info_once, logger

__all__ = ["info_once", "logger"]
