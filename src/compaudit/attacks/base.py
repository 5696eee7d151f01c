"""Adversarial attacks: one small interface over our own loops and maintained libraries.

Every attack is an :class:`Attack` subclass with a ``Params`` model and one method to override,
:meth:`Attack._run`, which returns adversarial inputs. The public :meth:`Attack.run` does the
bookkeeping every caller needs and no implementation may skip (Foolbox's ``Attack.run`` style):

- the model is put in eval mode and every module's own flag restored afterwards; its parameters get
  no gradients (``requires_grad`` is restored); hooks are not touched;
- the result is clipped to the input bounds and, for bounded attacks, projected into the eps-ball,
  so a result outside the threat model is impossible;
- success is judged by the model itself on the returned inputs (untargeted: prediction differs from
  the label), and the perturbation norms are measured, both per sample;
- the time to fool is measured per sample: an attack's loop reports the logits of each iterate
  through :meth:`Attack.observe`, and a sample's time is the wall time from the start of the call to
  the first iterate the model misclassified (an attack that reports no iterates, as the library
  adapters, gives each fooled sample the time of the whole call: an upper bound).

Returned shapes follow Foolbox: ``AttackResult.adv`` has the input's shape, ``success`` and
``norm`` have shape ``(N,)``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from compaudit.errors import CompauditError
from compaudit.registry import Registry

Norm = Literal["linf", "l2", "l1", "l0"]


class AttackError(CompauditError):
    """An attack cannot run on a model or input."""


class AttackParams(BaseModel):
    """Parameters of an attack; unknown keys are rejected. Bounded attacks have ``eps``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BoundedParams(AttackParams):
    eps: float = Field(ge=0.0, description="radius of the threat model's ball, in the attack's norm")


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


class Attack(ABC):
    """Base of every attack. Subclasses set ``norm``, ``Params`` and override :meth:`_run`."""

    Params: ClassVar[type[AttackParams]] = AttackParams
    #: the norm perturbations are measured (and, for bounded attacks, bounded) in
    norm: ClassVar[Norm] = "linf"
    #: needs no gradient of the model (works on deployed int8 models)
    gradient_free: ClassVar[bool] = False
    #: finds a small perturbation rather than the worst one inside an eps-ball (DeepFool, C&W, DDN,
    #: EAD): report its median norm; its eps, if any, only caps the result
    minimum_norm: ClassVar[bool] = False

    def __init__(self, name: str, params: AttackParams) -> None:
        self.name = name
        self.params = params
        self._clock: _Clock | None = None

    def observe(self, logits: Tensor, y: Tensor, rows: Tensor | None = None) -> None:
        """Report the model's ``logits`` on the current iterate (labels ``y``) so that the time to
        fool of each sample is measured; ``rows``: the batch positions of the iterate's samples when
        the loop runs on a subset (fooled samples dropped). A no-op outside :meth:`run`."""
        if self._clock is not None:
            self._clock.see(logits.detach().argmax(dim=1) != y, rows)

    @classmethod
    def from_spec(cls, name: str, params: dict[str, Any]) -> Attack:
        return cls(name, cls.Params.model_validate(params))

    @property
    def eps(self) -> float | None:
        return getattr(self.params, "eps", None)

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack ``model`` on the batch ``(x, y)``; see the module docstring for the guarantees."""
        if x.shape[0] != y.shape[0]:
            raise AttackError(f"{self.name}: {x.shape[0]} inputs but {y.shape[0]} labels")
        lo, hi = bounds
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise AttackError(f"{self.name}: inputs leave the bounds [{lo}, {hi}]")
        flags = [(m, m.training) for m in model.modules()]
        grads = [(p, p.requires_grad) for p in model.parameters()]
        t0 = time.perf_counter()
        self._clock = clock = _Clock(x.shape[0], t0, x.device)
        try:
            model.eval()
            for p, _ in grads:
                p.requires_grad_(False)
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            try:
                adv = self._run(model, x.detach(), y, bounds=bounds, generator=gen).detach()
            except RuntimeError as exc:
                if "does not require grad" not in str(exc):
                    raise
                raise AttackError(
                    f"{self.name}: the model has no gradient (a deployed int8 model?); attack its surrogate "
                    "or use a gradient-free attack"
                ) from None
            if adv.shape != x.shape:
                raise AttackError(
                    f"{self.name} returned shape {tuple(adv.shape)} for inputs {tuple(x.shape)}"
                )
            if not torch.isfinite(adv).all():
                raise AttackError(f"{self.name} returned NaN or infinite inputs")
            eps = self.eps
            if eps is not None and self.norm in ("linf", "l2"):
                adv = project(x, adv, eps, self.norm)
            adv = adv.clamp(lo, hi)
            with torch.no_grad():
                pred = model(adv).argmax(dim=1)
            seconds = time.perf_counter() - t0
        finally:
            self._clock = None
            for m, flag in flags:
                m.training = flag
            for p, flag in grads:
                p.requires_grad_(flag)
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


ATTACKS: Registry[type[Attack]] = Registry("attack", error=AttackError)


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the summed cross-entropy with respect to the input (zeros where there is none)."""
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g
