"""Model architectures of the seed papers and checkpoint loading.

:data:`MODELS` imports every module of this package (and every ``compaudit.models`` entry point) on
its first lookup, so a new architecture is one new file that registers its factory.
"""

from compaudit.models.base import MODELS, build_model, resolve_factory
from compaudit.models.weights import (
    Pretrained,
    classifier_head,
    load_checkpoint,
    load_pretrained,
    load_state_strict,
    pretrained_of,
    read_state_dict,
)

__all__ = [
    "MODELS",
    "Pretrained",
    "build_model",
    "classifier_head",
    "load_checkpoint",
    "load_pretrained",
    "load_state_strict",
    "pretrained_of",
    "read_state_dict",
    "resolve_factory",
]
