"""Knowledge-distillation objective: vanilla KD (Hinton et al. 2015) as used by the seed papers.

Seed 001 (``001_5343f4a55429e52f.txt``, Eq. 5) trains the student with

    L = alpha * tau^2 * L_KD + (1 - alpha) * L_CE,

where ``L_KD`` compares the teacher's and the student's temperature-softened softmax outputs and
``L_CE`` is the usual cross-entropy on the labels; it sets ``alpha = 0.2`` and ``tau = 10``. Seed 004
(``004_9257ed4b372e5512.txt``) uses the same loss to distil WRN-28-10 into ResNet-18.

``alpha`` weights the *soft* (teacher) term: ``alpha = 0`` is plain cross-entropy, ``alpha = 1``
learns from the teacher alone. The soft term is computed as ``KL(p_teacher || q_student)``, which
differs from seed 001's cross-entropy ``-sum p log q`` only by the teacher's entropy, a constant with
respect to the student: the gradients are the same and the value is 0 when the student matches the
teacher. ``tau^2`` keeps the soft term's gradient scale independent of the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compaudit.inference import eval_mode
from compaudit.train.objective import OBJECTIVES, Objective


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, y: Tensor, *, alpha: float, tau: float
) -> Tensor:
    """``alpha * tau^2 * KL(softmax(t/tau) || softmax(s/tau)) + (1 - alpha) * CE(s, y)``, batch mean.

    ``student_logits`` and ``teacher_logits`` are ``(N, K)``; ``y`` holds ``N`` class indices.
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / tau, dim=1),
        F.log_softmax(teacher_logits / tau, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, y)
    return alpha * tau * tau * soft + (1.0 - alpha) * hard


class Distillation(Objective):
    """Vanilla knowledge distillation from ``teacher`` (seed ``001_5343f4a55429e52f.txt``, Eq. 5).

    ``alpha`` weights the soft-target term (seed 001: ``alpha = 0.2``, ``tau = 10``). The teacher runs
    in eval mode under ``torch.no_grad()`` (no dropout, no BatchNorm statistics update, no gradient);
    its train/eval flags are restored after every batch, so the teacher is left as it was. It must
    already be on the device the batches come from.
    """

    name = "distill"

    def __init__(self, teacher: nn.Module, alpha: float = 0.2, tau: float = 10.0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not tau > 0.0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.teacher = teacher
        self.alpha = alpha
        self.tau = tau

    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's logits for ``x``, computed in eval mode without gradient."""
        with eval_mode(self.teacher), torch.no_grad():
            out: Tensor = self.teacher(x)
        return out

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        t = self.teacher_logits(x)
        return distillation_loss(model(x), t, y, alpha=self.alpha, tau=self.tau)


OBJECTIVES.add("distill", Distillation)
