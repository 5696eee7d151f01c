"""Compression methods and chains.

:data:`METHODS` imports every module of this package (and every ``compaudit.methods`` entry point)
on its first lookup, so a new method is one new file that registers it.
"""

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams, make_permanent

__all__ = ["METHODS", "CompressContext", "Method", "MethodParams", "make_permanent"]
