"""Attacks backed by maintained libraries: Foolbox (EAD, salt and pepper), torchattacks (APGD, FAB,
Square L2, and torchattacks' Square L-inf as ``square_torchattacks``; ``square`` is our own,
:mod:`compaudit.attacks.square`).

Each class is a thin adapter: it maps our ``Params`` onto the library's constructor, seeds the
library's randomness from the caller's ``torch.Generator`` (the global RNG is left as it was), and
returns the library's adversarial inputs; :meth:`Attack.run` then does the clipping, projection and
bookkeeping. The libraries are imported when an attack runs, so listing attacks never needs them.
torchattacks is optional (the ``attacks`` extra): its attacks declare it when they are registered
(``requires=``), so an experiment that uses one without it is refused at validation, in one line
naming the extra (:meth:`compaudit.registry.Registry.missing`).

- Foolbox returns ``(raw, clipped, success)`` per epsilon; we use ``clipped``, which honours the
  optional ``eps`` cap in the attack's norm.
- torchattacks assumes inputs in ``[0, 1]``: any other bounds raise :class:`AttackError`. Its
  attacks reseed the global RNG themselves; we fork the RNG around every call.

The AutoAttack components (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein 2020) are registered one
by one, in an Linf and an L2 version each, so :mod:`compaudit.attacks.ensemble` builds AutoAttack
from registry entries.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from compaudit.attacks.base import (
    ATTACKS,
    MP,
    Attack,
    AttackError,
    BoundedParams,
    FixedEpsilonAttack,
    MinimizationAttack,
    MinNormParams,
    Norm,
)

#: what the torchattacks-backed attacks need: the ``attacks`` extra
TORCHATTACKS = {"torchattacks": "attacks"}

# ---------------------------------------------------------------- shared plumbing


@contextlib.contextmanager
def seeded(generator: torch.Generator, device: torch.device) -> Iterator[int]:
    """Fork the global RNG (CPU, and ``device`` if CUDA), seed it from ``generator``; yield the seed.

    Libraries that draw from the global RNG (Foolbox) or reseed it (torchattacks) then give the same
    result for the same generator state, and the caller's global RNG is restored afterwards.
    """
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    if device.type == "cuda":  # "cuda" without an index is the current device, not always 0
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield seed


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


# ---------------------------------------------------------------- Foolbox


class _FoolboxAttack(MinimizationAttack[MP]):
    """Runs a Foolbox attack built by :meth:`_foolbox_attack`; uses its clipped output."""

    def _foolbox_attack(self) -> Any:
        raise NotImplementedError

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        from foolbox.models.pytorch import PyTorchModel

        fmodel = PyTorchModel(model, bounds=bounds, device=x.device)
        attack = self._foolbox_attack()
        with seeded(generator, x.device):
            _, clipped, _ = attack(fmodel, x, y, epsilons=[self.eps])
        adv: Tensor = clipped[0]
        return adv.detach()


class SaltPepperParams(MinNormParams):
    steps: int = Field(1000, ge=1, description="noise levels tried, from none to full (Foolbox default)")
    across_channels: bool = Field(True, description="the same salt or pepper on every channel of a pixel")
    eps: float | None = Field(
        None, gt=0.0, description="optional cap on the L2 norm (Foolbox clips a larger noise to it)"
    )


@ATTACKS.register("salt_pepper")
class SaltPepper(_FoolboxAttack[SaltPepperParams]):
    """Salt-and-pepper noise, forward passes only (Foolbox; seed 001_5343f4a55429e52f.txt, light/heavy).

    Raises the density of pixels set to the bounds' min or max until the model errs, keeping the
    smallest noise found. Measured in L2 as Foolbox does (its minimisation and ``eps`` are L2), so the
    seed paper's numbers compare. Needs no gradient: the honest attack on a deployed int8 model.
    """

    Params = SaltPepperParams
    norm = "l2"
    gradient_free = True

    def _foolbox_attack(self) -> Any:
        from foolbox.attacks.saltandpepper import SaltAndPepperNoiseAttack

        p = self.params
        return SaltAndPepperNoiseAttack(steps=p.steps, across_channels=p.across_channels)


class EADParams(MinNormParams):
    binary_search_steps: int = Field(9, ge=1, description="binary search steps over the constant c")
    steps: int = Field(1000, ge=1, description="optimisation steps per constant")
    initial_stepsize: float = Field(0.01, gt=0.0)
    initial_const: float = Field(0.001, gt=0.0, description="first constant c trading loss against norm")
    confidence: float = Field(0.0, ge=0.0, description="logit margin required of an adversarial")
    regularization: float = Field(0.01, ge=0.0, description="beta: weight of the L1 term")
    decision_rule: Literal["EN", "L1"] = Field("EN", description="keep the best by elastic-net or L1 norm")
    abort_early: bool = True
    eps: float | None = Field(None, gt=0.0, description="optional cap on the L1 norm")


@ATTACKS.register("ead")
class EAD(_FoolboxAttack[EADParams]):
    """Elastic-net attack, L1 minimum norm (Chen et al. 2018, via Foolbox; seed 001_5343f4a55429e52f.txt)."""

    Params = EADParams
    norm = "l1"

    def _foolbox_attack(self) -> Any:
        from foolbox.attacks.ead import EADAttack

        p = self.params
        return EADAttack(
            binary_search_steps=p.binary_search_steps,
            steps=p.steps,
            initial_stepsize=p.initial_stepsize,
            confidence=p.confidence,
            initial_const=p.initial_const,
            regularization=p.regularization,
            decision_rule=p.decision_rule,
            abort_early=p.abort_early,
        )


# ---------------------------------------------------------------- torchattacks


def _torchattacks(name: str) -> Any:
    """The torchattacks module, or one line naming the extra that installs it."""
    missing = ATTACKS.missing(name) if name in ATTACKS else None
    try:
        import torchattacks
    except ImportError:
        raise AttackError(
            missing
            or f"attack {name!r} needs the optional package 'torchattacks': pip install 'compaudit[attacks]'"
        ) from None
    return torchattacks


class _TorchattacksAttack(Attack[Any]):
    """Runs a torchattacks attack built by :meth:`_build` (inputs must lie in [0, 1]). Mixed into a
    kind's base: ``class APGDCE(_TorchattacksAttack, FixedEpsilonAttack[APGDParams])``."""

    def _build(self, ta: Any, model: nn.Module, n_classes: int, seed: int) -> Any:
        """The torchattacks attack (``ta``: the torchattacks module) for ``model``."""
        raise NotImplementedError

    @property
    def _ta_norm(self) -> str:
        return {"linf": "Linf", "l2": "L2"}[self.norm]

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        if tuple(bounds) != (0.0, 1.0):
            raise AttackError(f"{self.name}: torchattacks assumes inputs in [0, 1], got bounds {bounds}")
        ta = _torchattacks(self.name)
        n_classes = _num_classes(model, x)
        with seeded(generator, x.device) as seed:
            # torchattacks prints (not warns) when a model has no parameters: keep stdout clean
            with contextlib.redirect_stdout(io.StringIO()):
                attack = self._build(ta, model, n_classes, seed)
            attack.set_device(x.device)
            adv: Tensor = attack(x, y)
        return adv.detach()


class APGDParams(BoundedParams):
    steps: int = Field(100, ge=1, description="iterations per restart (AutoAttack standard: 100)")
    n_restarts: int = Field(1, ge=1)
    rho: float = Field(0.75, gt=0.0, lt=1.0, description="step-size halving threshold")


@ATTACKS.register("apgd_ce", requires=TORCHATTACKS)
class APGDCE(_TorchattacksAttack, FixedEpsilonAttack[APGDParams]):
    """Auto-PGD on cross-entropy, Linf (Croce & Hein 2020, AutoAttack's first component; torchattacks)."""

    Params = APGDParams
    norm: ClassVar[Norm] = "linf"

    def _build(self, ta: Any, model: nn.Module, n_classes: int, seed: int) -> Any:
        p = self.params
        return ta.APGD(
            model,
            norm=self._ta_norm,
            eps=p.eps,
            steps=p.steps,
            n_restarts=p.n_restarts,
            seed=seed,
            loss="ce",
            rho=p.rho,
        )


@ATTACKS.register("apgd_ce_l2", requires=TORCHATTACKS)
class APGDCEL2(APGDCE):
    """Auto-PGD on cross-entropy, L2 (Croce & Hein 2020, AutoAttack-L2's first component; torchattacks)."""

    norm = "l2"


class APGDTParams(APGDParams):
    n_target_classes: int = Field(
        9, ge=1, description="targets tried: the most likely wrong classes (AutoAttack standard: 9)"
    )


@ATTACKS.register("apgd_t", requires=TORCHATTACKS)
class APGDT(_TorchattacksAttack, FixedEpsilonAttack[APGDTParams]):
    """Targeted Auto-PGD on the DLR loss, Linf (Croce & Hein 2020, AutoAttack's APGD-T; torchattacks)."""

    Params = APGDTParams
    norm: ClassVar[Norm] = "linf"

    def _build(self, ta: Any, model: nn.Module, n_classes: int, seed: int) -> Any:
        p = self.params
        attack = ta.APGDT(
            model,
            norm=self._ta_norm,
            eps=p.eps,
            steps=p.steps,
            n_restarts=p.n_restarts,
            seed=seed,
            rho=p.rho,
            n_classes=n_classes,
        )
        attack.n_target_classes = min(p.n_target_classes, n_classes - 1)
        return attack


@ATTACKS.register("apgd_t_l2", requires=TORCHATTACKS)
class APGDTL2(APGDT):
    """Targeted Auto-PGD on the DLR loss, L2 (Croce & Hein 2020, AutoAttack-L2's APGD-T; torchattacks)."""

    norm = "l2"


class FABParams(MinNormParams):
    eps: float = Field(ge=0.0, description="the radius FAB searches within; a cap on the norm it returns")
    steps: int = Field(100, ge=1, description="iterations per restart and target (AutoAttack standard: 100)")
    n_restarts: int = Field(1, ge=1)
    targeted: bool = Field(True, description="FAB-T over the likeliest wrong classes, as in AutoAttack")
    n_target_classes: int = Field(9, ge=1, description="targets tried by FAB-T (AutoAttack standard: 9)")
    alpha_max: float = Field(0.1, gt=0.0)
    eta: float = Field(1.05, gt=0.0)
    beta: float = Field(0.9, gt=0.0)


@ATTACKS.register("fab", requires=TORCHATTACKS)
class FAB(_TorchattacksAttack, MinimizationAttack[FABParams]):
    """Fast adaptive boundary attack, Linf, kept within eps (Croce & Hein 2020, AutoAttack's FAB-T)."""

    Params = FABParams
    norm: ClassVar[Norm] = "linf"
    eps_required = True

    def _build(self, ta: Any, model: nn.Module, n_classes: int, seed: int) -> Any:
        p = self.params
        attack = ta.FAB(
            model,
            norm=self._ta_norm,
            eps=p.eps,
            steps=p.steps,
            n_restarts=p.n_restarts,
            alpha_max=p.alpha_max,
            eta=p.eta,
            beta=p.beta,
            seed=seed,
            multi_targeted=p.targeted,
            n_classes=n_classes,
        )
        attack.n_target_classes = min(p.n_target_classes, n_classes - 1)
        return attack


@ATTACKS.register("fab_l2", requires=TORCHATTACKS)
class FABL2(FAB):
    """Fast adaptive boundary attack, L2, kept within eps (Croce & Hein 2020, AutoAttack-L2's FAB-T)."""

    norm = "l2"


class SquareParams(BoundedParams):
    n_queries: int = Field(5000, ge=1, description="model queries per sample (AutoAttack standard: 5000)")
    n_restarts: int = Field(1, ge=1)
    p_init: float = Field(0.8, gt=0.0, le=1.0, description="initial fraction of pixels in a square")
    loss: Literal["margin", "ce"] = "margin"


@ATTACKS.register("square_torchattacks", requires=TORCHATTACKS)
class SquareTorchattacks(_TorchattacksAttack, FixedEpsilonAttack[SquareParams]):
    """Square attack, Linf random search, forward passes only (Andriushchenko et al. 2020; torchattacks).

    The reference our own ``square`` (:class:`compaudit.attacks.square.Square`) is held to: the same
    parameters, identical results for the same generator (``tests/test_square.py``).
    """

    Params = SquareParams
    norm: ClassVar[Norm] = "linf"
    gradient_free = True

    def _build(self, ta: Any, model: nn.Module, n_classes: int, seed: int) -> Any:
        p = self.params
        return ta.Square(
            model,
            norm=self._ta_norm,
            eps=p.eps,
            n_queries=p.n_queries,
            n_restarts=p.n_restarts,
            p_init=p.p_init,
            loss=p.loss,
            seed=seed,
        )


@ATTACKS.register("square_l2", requires=TORCHATTACKS)
class SquareL2(SquareTorchattacks):
    """Square attack, L2 random search, forward passes only (Andriushchenko et al. 2020; torchattacks)."""

    norm = "l2"
