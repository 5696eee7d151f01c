"""Adversarial attacks behind one interface; every module here that registers one is imported."""

import importlib
import pkgutil

from compaudit.attacks.base import (
    ATTACKS,
    Attack,
    AttackError,
    AttackParams,
    AttackResult,
    BoundedParams,
    input_gradient,
    perturbation_norm,
    project,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackError",
    "AttackParams",
    "AttackResult",
    "BoundedParams",
    "input_gradient",
    "perturbation_norm",
    "project",
]
