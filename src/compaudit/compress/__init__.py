"""Compression methods and chains."""

from compaudit.compress import prune as _prune  # noqa: F401  (registers)
from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams, make_permanent

__all__ = ["METHODS", "CompressContext", "Method", "MethodParams", "make_permanent"]
