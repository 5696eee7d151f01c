"""The one training loop and its objectives."""

from compaudit.train.loop import OBJECTIVES, CrossEntropy, Objective, TrainResult, fit

__all__ = ["OBJECTIVES", "CrossEntropy", "Objective", "TrainResult", "fit"]
