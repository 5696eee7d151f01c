"""Gradient attacks inside an eps-ball: FGSM and PGD (L-inf and L2), one steepest-ascent loop.

:class:`SteepestAscent` owns the only loop (random start, ``steps`` ascent steps on the
cross-entropy, projection into the ball and the input bounds, restarts); a norm supplies three small
in-place operations: its random start, its steepest-ascent step and its projection. FGSM is the
L-inf loop with one step of size eps and no random start (Foolbox's gradient-descent base does the
same; torchattacks' copy-pasted loops are what we avoid).

The loop is written for speed: the adversarial batch is one leaf tensor updated in place under
``no_grad``, gradients come from ``torch.autograd.grad`` on the input only (the base has switched off
the parameters' gradients), and nothing inside the loop synchronises (no ``.item()``). The loss is the
batch-mean cross-entropy, as in torchattacks, so that FGSM and PGD without random start reproduce
torchattacks' results bit for bit (the sign of a gradient does not depend on the mean/sum scale,
but its rounding near zero can).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from compaudit.attacks.base import (
    ATTACKS,
    BP,
    AttackError,
    AttackParams,
    BoundedParams,
    FixedEpsilonAttack,
    Norm,
)


class PGDParams(BoundedParams):
    step_size: float | None = Field(
        default=None, gt=0.0, description="size of one ascent step (default eps/4; seed 002 uses 0.01)"
    )
    steps: int = Field(default=20, ge=1, description="ascent steps per restart")
    random_start: bool = Field(default=True, description="start at a uniform random point of the ball")
    restarts: int = Field(
        default=1, ge=1, description="independent runs; per sample keep one that fools, else the highest loss"
    )


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a (N,) tensor so that it broadcasts over a (N, ...) batch."""
    return t.view(-1, *([1] * (like.ndim - 1)))


#: ``(eps, step_size, steps, random_start, restarts)`` of one run of the loop
Schedule = tuple[float, float, int, bool, int]


def pgd_schedule(p: PGDParams) -> Schedule:
    """PGD's schedule from its parameters (step size eps/4 unless given)."""
    step = p.step_size if p.step_size is not None else p.eps / 4
    return p.eps, step, p.steps, p.random_start, p.restarts


class SteepestAscent(FixedEpsilonAttack[BP]):
    """Projected steepest ascent on the cross-entropy; subclasses give the norm's step and
    projection, and the schedule their parameters define."""

    @abstractmethod
    def schedule(self) -> Schedule:
        """``(eps, step_size, steps, random_start, restarts)`` from the parameters."""

    # ---------------------------------------------------------------- what a norm supplies

    @staticmethod
    @abstractmethod
    def random_start(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        """A uniform random point of the eps-ball around ``x`` (not yet clipped to the bounds)."""

    @staticmethod
    @abstractmethod
    def ascend_(adv: Tensor, grad: Tensor, step: float) -> None:
        """One steepest-ascent step of size ``step`` in place (``grad`` may be overwritten)."""

    @staticmethod
    @abstractmethod
    def project_(adv: Tensor, x: Tensor, eps: float) -> None:
        """Project ``adv`` into the eps-ball around ``x`` in place."""

    # ---------------------------------------------------------------- the one loop

    def ascend(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        eps: float,
        step: float,
        steps: int,
        random_start: bool,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        """One run of the loop from ``x`` (or a random start): the adversarial batch."""
        lo, hi = bounds
        start = random_start and eps > 0
        adv = self.random_start(x, eps, generator).clamp_(lo, hi) if start else x.clone()
        adv.requires_grad_(True)
        for _ in range(steps):
            logits = model(adv)
            self.observe(logits, y)
            loss = F.cross_entropy(logits, y)
            if not loss.requires_grad:
                raise AttackError(f"{self.name}: the model's output has no gradient (not differentiable)")
            (grad,) = torch.autograd.grad(loss, adv)
            if not grad.is_contiguous():  # an expanded view (a model ignoring its input): own it first
                grad = grad.contiguous()
            with torch.no_grad():
                self.ascend_(adv, grad, step)
                self.project_(adv, x, eps)
                adv.clamp_(lo, hi)
        return adv.detach()

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        eps, step, steps, random_start, restarts = self.schedule()
        best: Tensor | None = None
        best_score = torch.empty(0)
        for _ in range(restarts):
            adv = self.ascend(
                model,
                x,
                y,
                eps=eps,
                step=step,
                steps=steps,
                random_start=random_start,
                bounds=bounds,
                generator=generator,
            )
            if restarts == 1:
                return adv
            with torch.no_grad():
                logits = model(adv)
                loss = F.cross_entropy(logits, y, reduction="none")
                score = torch.where(logits.argmax(dim=1) != y, torch.full_like(loss, math.inf), loss)
            if best is None:
                best, best_score = adv, score
            else:
                better = score > best_score
                best = torch.where(_per_sample(better, x), adv, best)
                best_score = torch.maximum(score, best_score)
        assert best is not None
        return best


class LinfSteepestAscent(SteepestAscent[BP]):
    """L-inf steps: the gradient's sign; projection: clamp the perturbation to [-eps, eps]."""

    norm: ClassVar[Norm] = "linf"

    @staticmethod
    def random_start(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return noise.mul_(2 * eps).sub_(eps).add_(x)

    @staticmethod
    def ascend_(adv: Tensor, grad: Tensor, step: float) -> None:
        adv.add_(grad.sign_(), alpha=step)

    @staticmethod
    def project_(adv: Tensor, x: Tensor, eps: float) -> None:
        # the same operations, in the same order, as torchattacks' PGD (bit-identical results)
        adv.sub_(x).clamp_(-eps, eps).add_(x)


class L2SteepestAscent(SteepestAscent[BP]):
    """L2 steps: the L2-normalised gradient; projection: rescale perturbations longer than eps."""

    norm: ClassVar[Norm] = "l2"

    @staticmethod
    def random_start(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        n, d = x.shape[0], x[0].numel()
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        direction /= direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        # uniform in the ball: radius eps * U^(1/d)
        radius = torch.rand(n, generator=generator, dtype=x.dtype).pow_(1.0 / d).mul_(eps)
        return direction.mul_(_per_sample(radius, x)).to(x.device).add_(x)

    @staticmethod
    def ascend_(adv: Tensor, grad: Tensor, step: float) -> None:
        g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        adv.add_(grad.mul_(_per_sample(step / g_norm, grad)))

    @staticmethod
    def project_(adv: Tensor, x: Tensor, eps: float) -> None:
        delta = adv - x
        factor = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp_(max=1.0)
        adv.copy_(delta.mul_(_per_sample(factor, delta)).add_(x))


class FGSM(LinfSteepestAscent[BoundedParams]):
    """Fast Gradient Sign Method: one L-inf step of size eps (Goodfellow et al. 2015; seed 001).

    Seed ``001_5343f4a55429e52f.txt`` reports FGSM at a light and a heavy eps. Equal to
    ``torchattacks.FGSM`` and Foolbox's ``LinfFastGradientAttack`` on the same inputs.
    """

    Params: ClassVar[type[AttackParams]] = BoundedParams

    def schedule(self) -> Schedule:
        eps = self.params.eps
        return eps, eps, 1, False, 1


class PGD(LinfSteepestAscent[PGDParams]):
    """Projected Gradient Descent, L-inf (Madry et al. 2018; seeds 001 and 002).

    Seed ``002_ac3fedcbc364a839.txt`` uses PGD-20 with step size 0.01 at eps 0.1 (Fashion-MNIST)
    and 8/255 (CIFAR-10); seed ``001_5343f4a55429e52f.txt`` reports PGD at two strengths. Without
    random start it equals ``torchattacks.PGD(random_start=False)`` with the same eps, step and steps.
    """

    Params: ClassVar[type[AttackParams]] = PGDParams

    def schedule(self) -> Schedule:
        return pgd_schedule(self.params)


class PGDL2(L2SteepestAscent[PGDParams]):
    """Projected Gradient Descent, L2: normalised-gradient steps in the L2 ball (Madry et al. 2018).

    The L2 counterpart of :class:`PGD` (seed ``001_5343f4a55429e52f.txt`` uses PGD); random start
    uniform in the L2 ball.
    """

    Params: ClassVar[type[AttackParams]] = PGDParams

    def schedule(self) -> Schedule:
        return pgd_schedule(self.params)


ATTACKS.add("fgsm", FGSM)
ATTACKS.add("pgd", PGD)
ATTACKS.add("pgd_l2", PGDL2)
