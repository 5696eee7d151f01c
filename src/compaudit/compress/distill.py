"""Knowledge distillation as a compression method: the incoming model teaches a smaller student.

Vanilla KD as in seed 001 (``001_5343f4a55429e52f.txt``, Eq. 5: ``alpha * tau^2 * L_KD + (1 - alpha)
* L_CE`` with ``alpha = 0.2``, ``tau = 10``; a larger teacher, a smaller student of another
architecture) and seed 004 (``004_9257ed4b372e5512.txt``: WRN-28-10 distilled into ResNet-18).

The student is any model the registry can build (``student: resnet18``) or a user factory
(``student: mypkg.models:tiny``), sized for the data set like the base model. It is initialised from
the step's seed, then trained with :class:`compaudit.train.distill.Distillation` through the one
training loop (best-on-validation weights kept, resumable). The teacher is only read: it runs in
eval mode without gradient, and its modes are restored.

When the step's cached result is restored, the student is built the same way and returned untrained:
the saved weights are loaded next.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams
from compaudit.config import TrainSpec
from compaudit.models import MODELS, build_model
from compaudit.train.distill import Distillation


class DistillParams(MethodParams):
    student: str = Field(min_length=1, description="a registered model name or package.module:function")
    student_params: dict[str, Any] = Field(default_factory=dict, description="the student factory's options")
    alpha: float = Field(default=0.2, ge=0.0, le=1.0, description="weight of the soft (teacher) term")
    tau: float = Field(default=10.0, gt=0.0, description="softmax temperature of the soft term")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the student is trained")

    @field_validator("student")
    @classmethod
    def _known(cls, v: str) -> str:
        if ":" not in v and v not in MODELS:
            raise ValueError(f"unknown model {v!r}; choose one of: {', '.join(MODELS.names())}")
        return v


@METHODS.register("distill")
class Distill(Method[DistillParams]):
    """Vanilla knowledge distillation (seeds 001, 004): train a small student on the model's soft targets."""

    Params: ClassVar[type[MethodParams]] = DistillParams

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        # The seed fixes the student's initial weights wherever the method runs; the global RNG is
        # left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(ctx.seed)  # the CPU generator only: CUDA RNGs untouched
            student = build_model(
                p.student,
                input_shape=ctx.data.input_shape,
                num_classes=ctx.data.num_classes,
                params=p.student_params,
            )
        student.to(ctx.device)
        if ctx.restoring:
            return student
        teacher = model.to(ctx.device)  # a private copy (Method.apply); only read from here on
        ctx.train(
            student,
            p.train,
            objective=Distillation(teacher, alpha=p.alpha, tau=p.tau),
            desc=f"{self.name}: {type(model).__name__} -> {p.student}",
        )
        return student
