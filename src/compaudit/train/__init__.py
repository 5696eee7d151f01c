"""The one training loop and its objectives."""

from compaudit.train.adversarial import PGDAdversarial, pgd_linf
from compaudit.train.loop import OBJECTIVES, CrossEntropy, Objective, TrainResult, fit

__all__ = ["OBJECTIVES", "CrossEntropy", "Objective", "PGDAdversarial", "TrainResult", "fit", "pgd_linf"]
