"""Running a model without changing it: eval mode that restores every module's own flag, and
batched predictions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from compaudit.data.base import batches, num_batches
from compaudit.progress import progress


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore each submodule's own train/eval flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@dataclass(frozen=True)
class Predictions:
    """Logits of one model on one split: ``logits`` (N, K) float32 on the CPU, ``labels`` (N,)."""

    logits: Tensor
    labels: Tensor

    @property
    def predicted(self) -> Tensor:
        return self.logits.argmax(dim=1)

    @property
    def probabilities(self) -> Tensor:
        return torch.softmax(self.logits.double(), dim=1).float()

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).double().mean().item())


def predict(
    model: nn.Module,
    dataset: Dataset[tuple[Tensor, Tensor]],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str = "predict",
) -> Predictions:
    """Logits of ``model`` on every sample of ``dataset``, in eval mode, without gradients;
    ``desc`` names the step in progress bars and log lines (``"vgg6-int8: predict test"``)."""
    out: list[Tensor] = []
    labels: list[Tensor] = []
    total = num_batches(dataset, batch_size)
    with eval_mode(model), torch.inference_mode():
        for xb, yb in progress(batches(dataset, batch_size, device=device), desc=desc, total=total):
            out.append(model(xb).float().cpu())
            labels.append(yb.cpu())
    return Predictions(torch.cat(out), torch.cat(labels))
