"""Running a model without changing it: eval mode that restores every module's own flag, batched
predictions, and where a model computes.

Devices. A probe or stage runs every model on the run's device (``device:`` of the experiment),
except a model whose kernels exist on one device only: it says so with a ``compute_device``
attribute (the int8 models of :mod:`compaudit.compress.quantize` have ``compute_device = cpu``, as
PyTorch's int8 kernels are CPU kernels) and its inputs are sent there instead of being copied
across devices for every call. :func:`execution_device` is that rule; :func:`device_name` is how a
result records the device its numbers were measured on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from compaudit.data.base import batches, num_batches
from compaudit.progress import progress


def execution_device(model: nn.Module, default: torch.device | str) -> torch.device:
    """The device ``model`` computes on: its ``compute_device`` when it declares one (int8 models:
    the CPU), else ``default`` (the run's device). A model whose parameters are elsewhere is not
    moved and not silently run there: PyTorch raises on the first call."""
    declared = getattr(model, "compute_device", None)
    return torch.device(declared) if declared is not None else torch.device(default)


def device_name(device: torch.device | str) -> str:
    """``device`` as results record it: ``cpu``, ``cuda:0`` (the index filled in), ``mps``."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


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
    ``desc`` names the step in progress bars and log lines (``"vgg6-int8: predict test"``).

    The batches go to :func:`execution_device` of ``model`` (``device``, or the CPU for an int8
    model); the logits stay there until the last batch and come to the CPU in one copy."""
    where = execution_device(model, device)
    out: list[Tensor] = []
    labels: list[Tensor] = []
    total = num_batches(dataset, batch_size)
    with eval_mode(model), torch.inference_mode():
        for xb, yb in progress(batches(dataset, batch_size, device=where), desc=desc, total=total):
            out.append(model(xb).float())
            labels.append(yb)
    return Predictions(torch.cat(out).cpu(), torch.cat(labels).cpu())
