"""Model architectures of the seed papers and checkpoint loading."""

from compaudit.models import zoo as _zoo  # noqa: F401  (registers the built-in architectures)
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
