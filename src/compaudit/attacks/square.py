"""Square attack, L-inf: score-based random search with square-shaped updates (Andriushchenko et
al. 2020, "Square Attack: a query-efficient black-box adversarial attack via random search").

Our own implementation, so the demo's gradient-free attack needs no optional package. It follows the
authors' algorithm as torchattacks 3.5 implements it (``torchattacks/attacks/square.py``, itself
from the AutoAttack code) step for step, and draws its random numbers in the same order from a
generator seeded the same way, so it returns the very same tensors as the torchattacks adapter
(``square_torchattacks``) for the same generator (``tests/test_square.py`` checks ``torch.equal``):

- **start**: vertical stripes, ``x + eps * s`` with one random sign ``s`` per (sample, channel,
  column), clipped to the bounds; every sample the model already misclassifies is left alone;
- **loss**: the margin ``z_y - max_{k != y} z_k`` (or minus the cross-entropy, ``loss="ce"``); a
  sample is done once its margin is <= 0;
- **one query per iteration** for every sample not yet fooled: a square window of side
  ``s = max(round(sqrt(p * H * W)), 1)`` at a random position (the same for the batch), set to
  ``+-2 eps`` (one sign per channel) on top of the best point so far, projected back into the
  eps-ball and the bounds; the candidate replaces the best point when its loss is lower or it
  fools the model;
- **p schedule** (``p_selection``): ``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000,
  4000, 6000 and 8000 of a 10,000-query budget, rescaled to ``n_queries``;
- **restarts**: each restart runs on the samples still classified correctly; a sample's result is
  the restart's point only when the model misclassifies it, else the clean input.

The random draws, in order: one seed from the caller's generator (as the adapter forks the global
RNG with it), then from a CPU generator seeded with it the start's signs and, per iteration, the
window's row, its column and the per-channel signs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compaudit.attacks.base import ATTACKS, AttackParams, FixedEpsilonAttack, Norm
from compaudit.attacks.library import SquareParams

#: the iterations (of a 10,000-query budget) after which ``p`` is halved again
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """The fraction of pixels a square covers at iteration ``it`` (the authors' schedule, written
    for 10,000 queries and rescaled to ``n_queries``)."""
    it = int(it / n_queries * 10000)
    halvings = sum(1 for t in _HALVINGS if it > t)
    return p_init / 2**halvings if halvings else p_init


def _signs(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Random signs (+-1) of ``shape``, drawn as uniform numbers in [-1, 1) as the reference does."""
    return torch.sign(2 * torch.rand(shape, generator=generator) - 1)


def _position(span: int, generator: torch.Generator) -> int:
    """A random offset in ``[0, span)`` (0 when ``span`` is 0), drawn as the reference does."""
    return int((0 + span * torch.rand([1], generator=generator)).long())


@ATTACKS.register("square")
class Square(FixedEpsilonAttack[SquareParams]):
    """Square attack, Linf random search, forward passes only (Andriushchenko et al. 2020; our own).

    Needs no gradient, so it attacks a deployed int8 model directly, and no optional package. For the
    same generator it returns exactly what torchattacks' Square returns (``square_torchattacks``).
    """

    Params: ClassVar[type[AttackParams]] = SquareParams
    norm: ClassVar[Norm] = "linf"
    gradient_free: ClassVar[bool] = True

    def query(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One query: the logits, the margin (<= 0: fooled) and the loss the search lowers."""
        logits = model(x)
        correct = logits.gather(1, y[:, None]).squeeze(1)
        margin = correct - logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
        if self.params.loss == "ce":
            return logits, margin, -F.cross_entropy(logits, y, reduction="none")
        return logits, margin, margin

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        p = self.params
        # one seed from the caller's generator, as the torchattacks adapter draws it
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        gen = torch.Generator().manual_seed(seed)
        adv = x.clone()
        with torch.no_grad():
            robust = model(x).max(dim=1).indices == y
            for _ in range(p.n_restarts):
                rows = robust.nonzero().flatten()
                if rows.numel() == 0:
                    continue
                found = self.search(model, x[rows].clone(), y[rows], rows, bounds=bounds, generator=gen)
                fooled = model(found).max(dim=1).indices != y[rows]
                robust[rows[fooled]] = False
                adv[rows[fooled]] = found[fooled]
        return adv

    def search(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        rows: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        """One run of the random search on ``x`` (labels ``y``; ``rows``: their positions in the
        attacked batch, for the time to fool): the best point found per sample."""
        p = self.params
        eps, (lo, hi), device = p.eps, bounds, x.device
        n, c, h, w = x.shape
        n_features = c * h * w
        best = torch.clamp(x + eps * _signs((n, c, 1, w), generator).to(device), lo, hi)
        logits, margin_min, loss_min = self.query(model, best, y)
        self.observe(logits, y, rows)
        for i in range(p.n_queries):
            todo = (margin_min > 0.0).nonzero().flatten()
            if todo.numel() == 0:
                break
            x_cur, best_cur, y_cur = x[todo], best[todo], y[todo]
            frac = p_selection(p.p_init, i, p.n_queries)
            s = max(int(round(math.sqrt(frac * n_features / c))), 1)
            vh = _position(h - s, generator)
            vw = _position(w - s, generator)
            window = torch.zeros([c, h, w], device=device)
            window[:, vh : vh + s, vw : vw + s] = 2.0 * eps * _signs((c, 1, 1), generator).to(device)
            cand = torch.minimum(torch.maximum(best_cur + window, x_cur - eps), x_cur + eps)
            cand = torch.clamp(cand, lo, hi)
            logits, margin, loss = self.query(model, cand, y_cur)
            self.observe(logits, y_cur, rows[todo])
            improved = loss < loss_min[todo]
            loss_min[todo] = torch.where(improved, loss, loss_min[todo])
            improved = improved | (margin <= 0.0)
            margin_min[todo] = torch.where(improved, margin, margin_min[todo])
            best[todo] = torch.where(improved.view(-1, 1, 1, 1), cand, best_cur)
        return best
