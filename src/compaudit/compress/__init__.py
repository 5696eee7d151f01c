"""Compression methods and chains.

Every module of this package that registers a method in :data:`METHODS` is imported here, so a new
method is one new file.
"""

import importlib
import pkgutil

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams, make_permanent

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "CompressContext", "Method", "MethodParams", "make_permanent"]
