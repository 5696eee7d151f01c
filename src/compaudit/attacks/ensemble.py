"""Attacks composed by wrapping others: a generic :class:`Ensemble` and AutoAttack built from it.

An ensemble runs its member attacks in sequence, each only on the samples still classified
correctly, and keeps for each sample the first successful adversarial (Croce & Hein 2020's
protocol): its accuracy is the worst case over the members, at the cost of one attack per sample
that survives. Members are ordinary :class:`Attack` instances (registry entries), each run through
its own :meth:`Attack.run`, so each one's clipping, projection and success check apply unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from compaudit.attacks.base import (
    ATTACKS,
    BP,
    Attack,
    AttackError,
    AttackParams,
    BoundedParams,
    FixedEpsilonAttack,
)


class Ensemble(FixedEpsilonAttack[BP]):
    """Member attacks in sequence, each on the samples still robust; first success per sample wins.

    Every member must measure perturbations in the ensemble's ``norm`` (a subclass sets it; the
    default is Linf), so the ensemble's norms and eps-ball are those of each member. An ensemble is
    a fixed-eps attack: its result is projected into its own eps-ball (members of either kind).
    """

    def __init__(self, name: str, params: BP, attacks: Sequence[Attack[Any]]) -> None:
        super().__init__(name, params)
        if not attacks:
            raise AttackError(f"{name}: an ensemble needs at least one attack")
        for attack in attacks:
            if attack.norm != self.norm:
                raise AttackError(
                    f"{name}: member {attack.name!r} measures {attack.norm}, the ensemble {self.norm}"
                )
        self.attacks: tuple[Attack[Any], ...] = tuple(attacks)

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        adv = x.clone()
        with torch.no_grad():
            robust = model(x).argmax(dim=1) == y
        for attack in self.attacks:
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            start = time.perf_counter()
            result = attack.run(
                model,
                x[idx],
                y[idx],
                bounds=bounds,
                generator=generator,
                until=self.until,
                early_exit=self.early_exit,
            )
            won = idx[result.success]
            if self._clock is not None:  # the member's times to fool, from the ensemble's start
                hit = result.success.cpu()
                times = (start - self._clock.t0) + result.fooled_seconds[hit]
                self._clock.first[won] = times.to(self._clock.first.device)
            adv[won] = result.adv[result.success]
            robust[won] = False
        return adv


class AutoAttackParams(BoundedParams):
    version: Literal["standard", "fast"] = Field(
        "standard",
        description="standard: 100 steps, 5000 Square queries (Croce & Hein 2020); fast: 20 and 500",
    )


#: APGD and FAB come from torchattacks (``square`` is our own)
TORCHATTACKS = {"torchattacks": "attacks"}

#: AutoAttack's members in order, and their settings by version (n_restarts 1, 9 target classes)
_STEPS = {"standard": 100, "fast": 20}
_QUERIES = {"standard": 5000, "fast": 500}


class _AutoAttackBase(Ensemble[AutoAttackParams]):
    Params: ClassVar[type[AttackParams]] = AutoAttackParams
    #: registry names of APGD-CE, APGD-T, FAB-T and Square in this norm
    members: tuple[str, str, str, str] = ("apgd_ce", "apgd_t", "fab", "square")

    def __init__(self, name: str, params: AutoAttackParams) -> None:
        steps, queries = _STEPS[params.version], _QUERIES[params.version]
        apgd_ce, apgd_t, fab, square = self.members
        specs: list[tuple[str, dict[str, float | int]]] = [
            (apgd_ce, {"eps": params.eps, "steps": steps}),
            (apgd_t, {"eps": params.eps, "steps": steps}),
            (fab, {"eps": params.eps, "steps": steps}),
            (square, {"eps": params.eps, "n_queries": queries}),
        ]
        attacks = [ATTACKS.get(member).from_spec(member, spec) for member, spec in specs]
        super().__init__(name, params, attacks)


@ATTACKS.register("autoattack", requires=TORCHATTACKS)
class AutoAttack(_AutoAttackBase):
    """AutoAttack, Linf: APGD-CE, APGD-T, FAB-T, Square on survivors (Croce & Hein 2020; the standard)."""

    norm = "linf"


@ATTACKS.register("autoattack_l2", requires=TORCHATTACKS)
class AutoAttackL2(_AutoAttackBase):
    """AutoAttack, L2: APGD-CE, APGD-T, FAB-T, Square on survivors (Croce & Hein 2020; the standard)."""

    norm = "l2"
    members = ("apgd_ce_l2", "apgd_t_l2", "fab_l2", "square_l2")
