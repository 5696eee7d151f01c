"""Retraining as a chain step: not a compression, the building block for seed 002's robust base.

Seed 002 (``002_ac3fedcbc364a839.txt``) compares compressed *standard* models with compressed
*robust* (adversarially trained) ones. ``retrain`` turns the incoming model into such a base inside
one experiment: ``from_scratch: true`` re-initialises it (seeded) and trains it with ``train``
(``objective: adversarial`` for f_rb); ``from_scratch: false`` continues from its weights. Later steps
of the chain (pruning, quantization) then start from it, and every variant sharing the prefix reuses
the one cached result.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams
from compaudit.config import TrainSpec


class RetrainParams(MethodParams):
    from_scratch: bool = Field(default=False, description="re-initialise the weights before training")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how to train (objective: adversarial)")


@METHODS.register("retrain")
class Retrain(Method[RetrainParams]):
    """Retrain the model (from scratch or its weights, standard or adversarial): seed 002's robust base."""

    Params: ClassVar[type[MethodParams]] = RetrainParams

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        if p.from_scratch:
            # re-initialised on the CPU, from the CPU generator: the same weights whatever the run's
            # device, and the global RNGs (CUDA's included) are left as they were
            device = next((t.device for t in model.parameters()), torch.device("cpu"))
            model.cpu()
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(ctx.seed)  # the CPU generator only: CUDA RNGs untouched
                for m in model.modules():
                    reset = getattr(m, "reset_parameters", None)
                    if callable(reset):
                        reset()
            model.to(device)
        if not ctx.restoring:  # the training objective (standard or adversarial) comes from p.train
            ctx.train(model, p.train, desc=f"{self.name} ({p.train.objective})")
        return model
