"""The one training loop and its objectives."""

from compaudit.train.adversarial import PGDAdversarial, pgd_linf
from compaudit.train.loop import TrainResult, fit
from compaudit.train.objective import OBJECTIVES, CrossEntropy, Objective

__all__ = ["OBJECTIVES", "CrossEntropy", "Objective", "PGDAdversarial", "TrainResult", "fit", "pgd_linf"]
