"""Adversarial training objective: PGD (Madry et al. 2018), as used by seed 002
(``002_ac3fedcbc364a839.txt``: L-inf, 20 steps, step size 0.01) for adversarial training and
adversarial fine-tuning of compressed models.

The inner maximisation runs with the model in eval mode (BatchNorm statistics are not updated by
adversarial search), then the outer step trains on the adversarial batch in train mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compaudit.attacks import ATTACKS
from compaudit.config import PGDSpec
from compaudit.train.objective import OBJECTIVES, Objective


def pgd_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L-inf PGD on the cross-entropy: an adversarial batch within ``eps`` of ``x`` and inside
    ``bounds``. It is the registry's ``pgd`` attack (one loop for training and evaluation), so the
    model's modes and parameters are left as they were. Training needs the loss-maximising image:
    the full schedule's last iterate (``until="end"``), not the first that fools."""
    attack = ATTACKS.get("pgd").from_spec(
        "pgd", {"eps": eps, "step_size": step_size, "steps": steps, "random_start": random_start}
    )
    return attack.run(model, x, y, bounds=bounds, generator=generator, until="end").adv


class PGDAdversarial(Objective):
    """Adversarial training: cross-entropy on PGD examples crafted against the current model."""

    name = "adversarial"

    def __init__(self, spec: PGDSpec, *, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        self.spec = spec
        self.bounds = bounds
        self.generator = torch.Generator().manual_seed(seed)

    def start_epoch(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # the attack runs the model in eval mode (BatchNorm statistics untouched) and restores it
        adv = pgd_linf(
            model,
            x,
            y,
            eps=self.spec.eps,
            step_size=self.spec.step_size,
            steps=self.spec.steps,
            bounds=self.bounds,
            random_start=self.spec.random_start,
            generator=self.generator,
        )
        return F.cross_entropy(model(adv), y)


OBJECTIVES.add("adversarial", PGDAdversarial)
