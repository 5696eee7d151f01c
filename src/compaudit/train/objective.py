"""Training objectives: one base (the loss of a batch) and one registry. The loop
(:mod:`compaudit.train.loop`) takes any of them; adversarial and distillation objectives live in
their own modules of this package."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from compaudit.registry import Registry


class Objective(ABC):
    """A training objective: the loss of a batch. Override :meth:`loss` only."""

    name: ClassVar[str] = ""

    @abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Scalar loss of ``model`` on the batch ``(x, y)``; the model is in train mode."""

    def start_epoch(self, seed: int) -> None:  # noqa: B027 - optional hook, default does nothing
        """Called before each epoch with a seed derived from the epoch, so an objective with its
        own randomness (PGD's random start) gives the same numbers after a resume."""


class CrossEntropy(Objective):
    """Standard training: cross-entropy on clean inputs."""

    name = "standard"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)


#: every training objective by name; a module of :mod:`compaudit.train` or a
#: ``compaudit.objectives`` entry point registers its objectives when imported
OBJECTIVES: Registry[type[Objective]] = Registry(
    "training objective", package="compaudit.train", entry_point_group="compaudit.objectives"
)
OBJECTIVES.add("standard", CrossEntropy)
