"""Model architectures of the seed papers and checkpoint loading.

:data:`MODELS` imports every module of this package (and every ``compaudit.models`` entry point) on
its first lookup, so a new architecture is one new file that registers its factory.
"""

from compaudit.models.base import (
    MODELS,
    build_model,
    load_checkpoint,
    load_state_strict,
    read_state_dict,
    resolve_factory,
)

__all__ = [
    "MODELS",
    "build_model",
    "load_checkpoint",
    "load_state_strict",
    "read_state_dict",
    "resolve_factory",
]
