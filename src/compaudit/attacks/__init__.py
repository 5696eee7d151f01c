"""Adversarial attacks behind one interface, in two kinds (fixed-eps and minimum-norm).

:data:`ATTACKS` imports every module of this package (and every ``compaudit.attacks`` entry point)
on its first lookup, so a new attack is one new file that registers it.
"""

from compaudit.attacks.base import (
    ATTACKS,
    Attack,
    AttackError,
    AttackKind,
    AttackParams,
    AttackResult,
    BoundedParams,
    FixedEpsilonAttack,
    MinimizationAttack,
    MinNormParams,
    Until,
    input_gradient,
    perturbation_norm,
    project,
    sample_generators,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackError",
    "AttackKind",
    "AttackParams",
    "AttackResult",
    "BoundedParams",
    "FixedEpsilonAttack",
    "MinNormParams",
    "MinimizationAttack",
    "Until",
    "input_gradient",
    "perturbation_norm",
    "project",
    "sample_generators",
]
