"""Gradient attacks inside an eps-ball: FGSM and PGD (L-inf and L2), one steepest-ascent loop.

:class:`SteepestAscent` owns the only loop (random start, ``steps`` ascent steps on the
cross-entropy, projection into the ball and the input bounds, restarts); a norm supplies three small
in-place operations: its random start, its steepest-ascent step and its projection. FGSM is the
L-inf loop with one step of size eps and no random start (Foolbox's gradient-descent base does the
same; torchattacks' copy-pasted loops are what we avoid).

The loop is written for speed: the adversarial batch is one leaf tensor updated in place under
``no_grad``, gradients come from ``torch.autograd.grad`` on the input only (the base has switched off
the parameters' gradients), and it synchronises at most once per iteration, to drop the samples
whose result is settled (``early_exit``; see :mod:`compaudit.attacks.base`). The loss is the
batch-mean cross-entropy, as in torchattacks (the summed loss times 1 / the whole batch's size, so
a sample's gradient does not change when others leave the batch), so that FGSM and PGD without
random start reproduce torchattacks' results bit for bit under ``until="end"`` (the sign of a
gradient does not depend on the mean/sum scale, but its rounding near zero can).
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
    sample_generators,
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
    projection, and the schedule their parameters define.

    Under ``until="fooled"`` a sample's result is the first iterate found misclassified (of the
    first restart that fooled it), else the final iterate of its highest-loss restart; with
    ``early_exit`` a fooled sample leaves the batch and runs no further restart (AutoAttack's APGD
    does the same), and a sample whose input gradient is exactly zero leaves it too (it cannot
    move: its final iterate is its current one). Under ``until="end"`` every sample runs the whole
    schedule and returns its last iterate (a restart that fools wins, else the highest loss).
    """

    @abstractmethod
    def schedule(self) -> Schedule:
        """``(eps, step_size, steps, random_start, restarts)`` from the parameters."""

    # ---------------------------------------------------------------- what a norm supplies

    @staticmethod
    @abstractmethod
    def random_start(x: Tensor, eps: float, generators: list[torch.Generator]) -> Tensor:
        """A uniform random point of the eps-ball around each sample of ``x`` (not yet clipped to
        the bounds), sample ``i`` drawn from ``generators[i]``."""

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
        rows: Tensor,
        start: Tensor,
        *,
        eps: float,
        step: float,
        steps: int,
        bounds: tuple[float, float],
        scale: float,
        out: Tensor,
        fooled: Tensor,
    ) -> Tensor:
        """One run of the loop on the samples ``rows`` of the attacked batch (``x``, ``y`` and
        ``start`` are theirs) from ``start``: their last iterates. Under ``until="fooled"`` the
        first fooling iterate of a sample not yet ``fooled`` is written to ``out`` (batch-sized)
        and the sample marked ``fooled``. ``scale`` multiplies the summed loss (1 / the batch's
        size: the batch mean, whatever the samples still iterated)."""
        lo, hi = bounds
        first = self.until == "fooled"
        last = start
        pos = torch.arange(x.shape[0], device=x.device)  # the iterated samples, positions in ``rows``
        cur = start.clone().requires_grad_(True)
        xa, ya, ra = x, y, rows
        for _ in range(steps):
            logits = model(cur)
            self.observe(logits, ya, ra)
            loss = F.cross_entropy(logits, ya, reduction="sum") * scale
            if not loss.requires_grad:
                raise AttackError(f"{self.name}: the model's output has no gradient (not differentiable)")
            (grad,) = torch.autograd.grad(loss, cur)
            if not grad.is_contiguous():  # an expanded view (a model ignoring its input): own it first
                grad = grad.contiguous()
            with torch.no_grad():
                done = torch.zeros_like(ya, dtype=torch.bool)
                if first:  # keep each sample's first fooling iterate (no synchronisation)
                    done = logits.argmax(dim=1) != ya
                    new = _per_sample(done & ~fooled[ra], cur)
                    out[ra] = torch.where(new, cur, out[ra])
                    fooled[ra] |= done
                if self.early_exit:  # (before the step overwrites ``grad``) a sample that cannot move
                    done |= grad.flatten(1).abs().amax(dim=1) == 0
                self.ascend_(cur, grad, step)
                self.project_(cur, xa, eps)
                cur.clamp_(lo, hi)
                if self.early_exit and bool(done.any()):  # one synchronisation per iteration
                    last[pos] = cur
                    keep = ~done
                    pos, xa, ya, ra = pos[keep], xa[keep], ya[keep], ra[keep]
                    if pos.numel() == 0:
                        return last
                    cur = cur[keep].requires_grad_(True)
        with torch.no_grad():
            last[pos] = cur
        return last

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
        lo, hi = bounds
        n = x.shape[0]
        first = self.until == "fooled"
        gens = sample_generators(generator, n) if random_start and eps > 0 else None
        out = x.clone()
        # settled: ``out`` holds the sample's first fooling iterate
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        best = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)  # score of ``out`` otherwise
        everyone = torch.arange(n, device=x.device)
        for _ in range(restarts):
            rows = (~fooled).nonzero().flatten() if first and self.early_exit else everyone
            if rows.numel() == 0:
                break
            if gens is not None:
                picked = [gens[i] for i in rows.tolist()]
                start = self.random_start(x[rows], eps, picked).clamp_(lo, hi)
            else:
                start = x[rows].clone()
            adv = self.ascend(
                model,
                x[rows],
                y[rows],
                rows,
                start,
                eps=eps,
                step=step,
                steps=steps,
                bounds=bounds,
                scale=1.0 / n,
                out=out,
                fooled=fooled,
            )
            settled = fooled[rows]
            if restarts == 1:
                out[rows] = torch.where(_per_sample(settled, adv), out[rows], adv)
                break
            with torch.no_grad():
                logits = model(adv)
                loss = F.cross_entropy(logits, y[rows], reduction="none")
                wins = logits.argmax(dim=1) != y[rows]
            # a restart whose last iterate fools wins; else the highest loss (never over a settled one)
            score = torch.where(wins, torch.full_like(loss, math.inf), loss)
            better = (score > best[rows]) & ~settled
            out[rows] = torch.where(_per_sample(better, adv), adv, out[rows])
            best[rows] = torch.where(better, score, best[rows])
            if first:
                fooled[rows] |= wins & ~settled
        return out


class LinfSteepestAscent(SteepestAscent[BP]):
    """L-inf steps: the gradient's sign; projection: clamp the perturbation to [-eps, eps]."""

    norm: ClassVar[Norm] = "linf"

    @staticmethod
    def random_start(x: Tensor, eps: float, generators: list[torch.Generator]) -> Tensor:
        shape = x.shape[1:]
        noise = torch.stack([torch.rand(shape, generator=g, dtype=x.dtype) for g in generators])
        return noise.to(x.device).mul_(2 * eps).sub_(eps).add_(x)

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
    def random_start(x: Tensor, eps: float, generators: list[torch.Generator]) -> Tensor:
        shape, d = x.shape[1:], x[0].numel()
        # per sample: a direction, then a radius eps * U^(1/d) (uniform in the ball)
        draws = [
            (torch.randn(shape, generator=g, dtype=x.dtype), torch.rand(1, generator=g, dtype=x.dtype))
            for g in generators
        ]
        direction = torch.stack([dr for dr, _ in draws])
        direction /= direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        radius = torch.cat([r for _, r in draws]).pow_(1.0 / d).mul_(eps)
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
