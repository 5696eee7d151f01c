"""Adversarial attacks: one small interface over our own loops and maintained libraries.

Every attack is an :class:`Attack` subclass generic in its ``Params`` model (``self.params`` is
typed), and of one of two kinds, each a base class, as Foolbox's ``FixedEpsilonAttack`` and
``MinimizationAttack``:

- :class:`FixedEpsilonAttack`: the worst perturbation inside the eps-ball of its norm (FGSM, PGD,
  APGD, Square); ``eps`` (required) is the ball's radius and the result is always projected into it;
- :class:`MinimizationAttack`: the smallest perturbation that fools (DeepFool, C&W, DDN, EAD, FAB);
  report its median norm. Its ``eps`` is an optional cap (the result is projected when it is set);
  an attack whose search needs one (FAB) says so with ``eps_required``.

Callers ask an attack's kind by its type (``isinstance(attack, MinimizationAttack)``) or read the
``kind`` class variable the two bases set, never what its ``eps`` field looks like. Either kind has
one method to override, :meth:`Attack._run`, which returns adversarial inputs. The public
:meth:`Attack.run` does the bookkeeping every caller needs and no implementation may skip
(Foolbox's ``Attack.run`` style):

- the model is put in eval mode and every module's own flag restored afterwards
  (:func:`compaudit.inference.frozen`); its parameters get no gradients (``requires_grad`` is
  restored); hooks are not touched;
- the result is clipped to the input bounds and, for bounded attacks, projected into the eps-ball,
  so a result outside the threat model is impossible;
- success is judged by the model itself on the returned inputs (untargeted: prediction differs from
  the label), and the perturbation norms are measured, both per sample;
- the time to fool is measured per sample: an attack's loop reports the logits of each iterate
  through :meth:`Attack.observe`, and a sample's time is the wall time from the start of the call to
  the first iterate the model misclassified (an attack that reports no iterates, as the library
  adapters, gives each fooled sample the time of the whole call: an upper bound).

Two choices of the caller, read by an attack's loop from :attr:`Attack.until` and
:attr:`Attack.early_exit` while :meth:`Attack.run` runs:

- ``until="fooled"`` (the default): success means *fooled at any iterate*. An iterative fixed-eps
  attack returns, for each sample, the first iterate its loop found misclassified (the start point
  counts), else its last one. ``until="end"``: the full schedule, and the last iterate, the
  loss-maximising image, for callers that need that image rather than a success (adversarial
  training, the t-SNE of adversarial points of seed 002, transfer examples crafted on another model).
- ``early_exit=True`` (the default): a loop stops working on a sample whose result is settled: one
  found fooled (under ``until="fooled"``), or one whose input gradient is exactly zero (it cannot
  move again: the naive route on a model without a gradient). ``False`` runs every iteration on
  every sample. Both give the same results: random starts come from one generator per sample
  (:func:`sample_generators`) and a loop's loss is scaled by the whole batch's size, so a sample's
  iterates do not depend on which others are still in the batch (up to the rounding of kernels on
  smaller batches). Minimum-norm attacks return their smallest fooling perturbation either way.

Returned shapes follow Foolbox: ``AttackResult.adv`` has the input's shape, ``success`` and
``norm`` have shape ``(N,)``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from typing_extensions import Self

from compaudit.errors import CompauditError
from compaudit.inference import frozen
from compaudit.registry import Registry

Norm = Literal["linf", "l2", "l1", "l0"]
#: what a fixed-eps attack returns for each sample (see the module docstring)
Until = Literal["fooled", "end"]
#: the two kinds of attack, one base class each
AttackKind = Literal["fixed_eps", "minimum_norm"]


class AttackError(CompauditError):
    """An attack cannot run on a model or input."""


class AttackParams(BaseModel):
    """Parameters of an attack; unknown keys are rejected. Bounded attacks have ``eps``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BoundedParams(AttackParams):
    """Parameters of a fixed-eps attack: the radius of its ball."""

    eps: float = Field(ge=0.0, description="radius of the threat model's ball, in the attack's norm")


class MinNormParams(AttackParams):
    """Parameters of a minimum-norm attack: an optional cap on the norm it may return."""

    eps: float | None = Field(default=None, gt=0.0, description="cap on the perturbation's norm (None: none)")


P = TypeVar("P", bound=AttackParams)
BP = TypeVar("BP", bound=BoundedParams)
MP = TypeVar("MP", bound=MinNormParams)


@dataclass(frozen=True)
class AttackResult:
    """What an attack produced on a batch.

    ``adv``: adversarial inputs, same shape as ``x``, inside the bounds (and the eps-ball for
    bounded attacks). ``success``: (N,) bool, the model misclassifies ``adv``. ``norm``: (N,) float,
    the perturbation's size in the attack's norm (0 where the input was left unchanged).
    ``seconds``: wall time of the attack on the whole batch. ``fooled_seconds``: (N,) float64 on the
    CPU, per sample the wall time from the start of the call until the model first misclassified an
    iterate of it (``inf`` where ``success`` is false).
    """

    adv: Tensor
    success: Tensor
    norm: Tensor
    seconds: float
    fooled_seconds: Tensor


class _Clock:
    """When each sample of a batch was first misclassified, in seconds since ``t0``. Kept on the
    device of the attack's logits, so observing an iterate never synchronises with a GPU (the time
    recorded there is that of the launch, not of the completion)."""

    def __init__(self, n: int, t0: float, device: torch.device) -> None:
        self.t0 = t0
        self.first = torch.full((n,), math.inf, dtype=torch.float64, device=device)

    def see(self, fooled: Tensor, rows: Tensor | None) -> None:
        now = time.perf_counter() - self.t0
        if rows is None:
            self.first = torch.where(fooled & torch.isinf(self.first), now, self.first)
        else:
            first = self.first[rows]
            self.first[rows] = torch.where(fooled & torch.isinf(first), now, first)


def perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a (N, ...) perturbation."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.pow(2).sum(dim=1).sqrt()
    if norm == "l1":
        return flat.abs().sum(dim=1)
    if norm == "l0":
        return (flat != 0).sum(dim=1).to(delta.dtype)
    raise ValueError(f"unknown norm {norm!r}")


def project(x: Tensor, adv: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``adv`` into the ``norm`` ball of radius ``eps`` around ``x``."""
    delta = adv - x
    if norm == "linf":
        return x + delta.clamp(-eps, eps)
    if norm == "l2":
        n = delta.flatten(1).pow(2).sum(dim=1).sqrt().clamp_min(1e-12)
        factor = (eps / n).clamp(max=1.0).view(-1, *([1] * (x.ndim - 1)))
        return x + delta * factor
    return adv  # l1/l0 attacks (EAD, salt and pepper) are minimum-norm, not projected


class Attack(ABC, Generic[P]):
    """Base of every attack: subclass :class:`FixedEpsilonAttack` or :class:`MinimizationAttack`,
    set ``norm`` and ``Params`` and override :meth:`_run`."""

    #: validates a spec's parameters; must be (a subclass of) the class's type argument ``P``
    Params: ClassVar[type[AttackParams]] = AttackParams
    #: which of the two kinds the attack is (set by the two bases, from the type)
    kind: ClassVar[AttackKind]
    #: the norm perturbations are measured (and, when there is an eps, bounded) in
    norm: ClassVar[Norm] = "linf"
    #: needs no gradient of the model (works on deployed int8 models)
    gradient_free: ClassVar[bool] = False
    #: draws nothing from the generator and reads no ``until``: the same parameters, model and
    #: samples give the same tensors whatever the seed and whichever ``until``, so one run can stand
    #: for another (the adversarial probe's baseline reuses its transfer examples as its white-box
    #: run); ``tests/test_adversarial_savings.py`` checks every attack that sets it
    deterministic: ClassVar[bool] = False

    def __init__(self, name: str, params: P) -> None:
        self.name = name
        self.params: P = params
        self._clock: _Clock | None = None
        #: the caller's choices for the call in progress (see the module docstring)
        self.until: Until = "fooled"
        self.early_exit: bool = True

    def observe(self, logits: Tensor, y: Tensor, rows: Tensor | None = None) -> None:
        """Report the model's ``logits`` on the current iterate (labels ``y``) so that the time to
        fool of each sample is measured; ``rows``: the batch positions of the iterate's samples when
        the loop runs on a subset (fooled samples dropped). A no-op outside :meth:`run`."""
        if self._clock is not None:
            self._clock.see(logits.detach().argmax(dim=1) != y, rows)

    @classmethod
    def from_spec(cls, name: str, params: Mapping[str, Any]) -> Self:
        """The attack ``name`` with ``params`` validated by :attr:`Params` (unknown keys refused)."""
        validated: Any = cls.Params.model_validate(dict(params))
        return cls(name, validated)

    @abstractmethod
    def constrain(self, x: Tensor, adv: Tensor) -> Tensor:
        """``adv`` inside the threat model around ``x`` (before the clip to the bounds): what each
        kind makes of its ``eps``."""

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None,
        until: Until = "fooled",
        early_exit: bool = True,
    ) -> AttackResult:
        """Attack ``model`` on the batch ``(x, y)``; see the module docstring for the guarantees and
        for ``until`` and ``early_exit``."""
        if until not in ("fooled", "end"):
            raise AttackError(f"{self.name}: until must be 'fooled' or 'end', not {until!r}")
        self.until, self.early_exit = until, early_exit
        if x.shape[0] != y.shape[0]:
            raise AttackError(f"{self.name}: {x.shape[0]} inputs but {y.shape[0]} labels")
        lo, hi = bounds
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise AttackError(f"{self.name}: inputs leave the bounds [{lo}, {hi}]")
        t0 = time.perf_counter()
        self._clock = clock = _Clock(x.shape[0], t0, x.device)
        try:
            with frozen(model):
                gen = generator if generator is not None else torch.Generator().manual_seed(0)
                try:
                    adv = self._run(model, x.detach(), y, bounds=bounds, generator=gen).detach()
                except RuntimeError as exc:
                    if "does not require grad" not in str(exc):
                        raise
                    raise AttackError(
                        f"{self.name}: the model has no gradient (a deployed int8 model?); attack its "
                        "surrogate or use a gradient-free attack"
                    ) from None
                if adv.shape != x.shape:
                    raise AttackError(
                        f"{self.name} returned shape {tuple(adv.shape)} for inputs {tuple(x.shape)}"
                    )
                if not torch.isfinite(adv).all():
                    raise AttackError(f"{self.name} returned NaN or infinite inputs")
                adv = self.constrain(x, adv).clamp(lo, hi)
                with torch.no_grad():
                    pred = model(adv).argmax(dim=1)
                seconds = time.perf_counter() - t0
        finally:
            self._clock = None
        success = pred != y
        norm = perturbation_norm(adv - x, self.norm)
        ok = success.cpu()
        # a sample fooled after the last iterate reported (or by an attack reporting none): the whole call
        seen = clock.first.cpu()  # after the prediction above: no extra synchronisation
        first = torch.where(torch.isinf(seen), torch.full_like(seen, seconds), seen)
        fooled_seconds = torch.where(ok, first.clamp(max=seconds), torch.full_like(first, math.inf))
        return AttackResult(
            adv=adv, success=success, norm=norm, seconds=seconds, fooled_seconds=fooled_seconds
        )

    @abstractmethod
    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        """Adversarial versions of ``x`` (untargeted, labels ``y``); the model is in eval mode and
        its parameters need no gradient. Clipping and projection are done by :meth:`run`."""

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, "params": self.params.model_dump(mode="json")}


class FixedEpsilonAttack(Attack[BP]):
    """An attack that looks for the worst perturbation inside the eps-ball of its norm (FGSM, PGD,
    APGD, Square): ``params.eps`` is the ball's radius, and :meth:`Attack.run` projects every
    result into it. It runs once per strength. Override :meth:`Attack._run`."""

    Params: ClassVar[type[AttackParams]] = BoundedParams
    kind: ClassVar[AttackKind] = "fixed_eps"

    @property
    def eps(self) -> float:
        """The radius of the ball."""
        return self.params.eps

    def constrain(self, x: Tensor, adv: Tensor) -> Tensor:
        return project(x, adv, self.params.eps, self.norm)


class MinimizationAttack(Attack[MP]):
    """An attack that looks for the smallest perturbation that fools (DeepFool, C&W, DDN, EAD, FAB):
    report the median norm of its successes. ``params.eps`` is an optional cap: when set, the result
    is projected into that ball (L-inf and L2; an L1 attack honours its own cap). Override
    :meth:`Attack._run`."""

    Params: ClassVar[type[AttackParams]] = MinNormParams
    kind: ClassVar[AttackKind] = "minimum_norm"
    #: the search needs a cap (FAB searches within it): the attack runs once per strength, each a
    #: cap, instead of once with the strengths read as thresholds on the norms it found
    eps_required: ClassVar[bool] = False

    @property
    def eps(self) -> float | None:
        """The cap on the norm (None: none)."""
        return self.params.eps

    def constrain(self, x: Tensor, adv: Tensor) -> Tensor:
        cap = self.params.eps
        return adv if cap is None else project(x, adv, cap, self.norm)


#: every attack by name; a module of :mod:`compaudit.attacks` or a ``compaudit.attacks`` entry point
#: registers its attacks when imported
ATTACKS: Registry[type[Attack[Any]]] = Registry(
    "attack", error=AttackError, package="compaudit.attacks", entry_point_group="compaudit.attacks"
)


def sample_generators(generator: torch.Generator, n: int) -> list[torch.Generator]:
    """One CPU generator per sample of a batch of ``n``, each seeded by one draw from ``generator``:
    a sample's random numbers (starts, restarts) do not depend on which other samples are in the
    batch or still attacked, and batches drawn one after the other from the same ``generator`` get
    the seeds one batch of all their samples would."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64).tolist()
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the summed cross-entropy with respect to the input (zeros where there is none)."""
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g
