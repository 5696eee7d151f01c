"""Running a model without changing it: eval mode that restores every module's own flag (the one
place that saves and restores train/eval flags: :func:`modes_restored`, :func:`eval_mode`,
:func:`frozen`), batched predictions, and where a model computes.

Devices. A probe or stage runs every model on the run's device (``device:`` of the experiment),
except a model whose kernels exist on one device only: it says so with a ``compute_device``
attribute (the int8 models of :mod:`compaudit.compress.quantize` have ``compute_device = cpu``, as
PyTorch's int8 kernels are CPU kernels) and its inputs are sent there instead of being copied
across devices for every call. :func:`execution_device` is that rule; :func:`device_name` is how a
result records the device its numbers were measured on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from compaudit.data.base import batches, num_batches
from compaudit.progress import progress
from compaudit.results import device_name as device_name


def channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in channels-last order (in place; values
    unchanged), so that convolutions and poolings take oneDNN's NHWC kernels: on this project's
    2-core CPU, VGG-6 at 16x16 runs a forward pass 1.5x faster and max-pooling 4x faster (outputs
    differ from the NCHW kernels' by rounding, about 1e-8 on logits). For the models compaudit
    builds and owns (the baseline it trains or loads, the variants), never a caller's object."""
    return _layout(model, torch.channels_last)


def nchw(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in PyTorch's default NCHW order (in place;
    values unchanged): what libraries that ``.view()`` weights expect."""
    return _layout(model, torch.contiguous_format)


def _layout(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    # nn.Module.to takes memory_format, but its typed overloads do not declare it
    model.to(memory_format=memory_format)  # type: ignore[call-overload]
    return model


def execution_device(model: nn.Module, default: torch.device | str) -> torch.device:
    """The device ``model`` computes on: its ``compute_device`` when it declares one (int8 models:
    the CPU), else ``default`` (the run's device). A model whose parameters are elsewhere is not
    moved and not silently run there: PyTorch raises on the first call."""
    declared = getattr(model, "compute_device", None)
    return torch.device(declared) if declared is not None else torch.device(default)


@contextmanager
def modes_restored(*models: nn.Module, by_name: bool = False) -> Iterator[None]:
    """Restore every submodule's own train/eval flag when the block ends, however it ends; the
    flags are not changed on entry (the training loop switches them itself).

    ``by_name``: match modules by their qualified name instead of by identity, for code that
    rebuilds parts of the model inside the block (a module new afterwards keeps its flag)."""
    if by_name:
        named = [{name: m.training for name, m in model.named_modules()} for model in models]
        try:
            yield
        finally:
            for model, modes in zip(models, named, strict=True):
                for name, m in model.named_modules():
                    m.training = modes.get(name, m.training)
        return
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def eval_mode(model: nn.Module, *others: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and ``others``) in eval mode and restore each submodule's own train/eval flag
    afterwards; yields ``model``."""
    with modes_restored(model, *others):
        for m in (model, *others):
            m.eval()
        yield model


def tensor_versions(tensors: Iterable[Tensor]) -> tuple[int, ...] | None:
    """The storage and version counter of each tensor: the key changes when one is replaced or
    changed in place (an optimiser step, ``load_state_dict``, ``.to()``). None when one has no
    version counter (an inference tensor): then nothing can be reused."""
    try:
        return tuple(v for t in tensors for v in (t.data_ptr(), t._version))
    except RuntimeError:
        return None


class Reused:
    """The last result of a computation on fixed tensors (fake-quantized weights), kept until its
    key (:func:`tensor_versions` of those tensors) changes. The result is made as a normal tensor
    without a graph, even under inference mode, so a later pass with gradients can use it; it is
    shared: never modify it in place."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._out: Tensor | None = None

    def get(self, key: tuple[object, ...] | None, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()``'s result for ``key``, computed again only when the key changed (every
        time when it is None)."""
        if key is None:
            return compute()
        if self._out is None or key != self._key:
            with torch.inference_mode(False), torch.no_grad():
                self._out = compute()
            self._key = key
        return self._out


class _ReusedWeights(nn.Module):
    """Stands in for a layer's weight fake-quantizer (torch.ao's ``weight_fake_quant``) while its
    weights are fixed: the quantizer's result is reused until a tensor of the layer (its weights,
    a batch norm's statistics when torch.ao folds them in) changes. The quantizer's own buffers
    are not watched: its observer re-derives the same scale from the same weights."""

    def __init__(self, owner: nn.Module, quantizer: nn.Module) -> None:
        super().__init__()
        self.quantizer = quantizer
        own = {id(t) for t in quantizer.parameters()} | {id(t) for t in quantizer.buffers()}
        self._watched = [t for t in (*owner.parameters(), *owner.buffers()) if id(t) not in own]
        self._reused = Reused()

    def forward(self, w: Tensor) -> Tensor:
        if torch.is_grad_enabled() and w.requires_grad:
            out: Tensor = self.quantizer(w)
            return out
        return self._reused.get(tensor_versions(self._watched), lambda: self.quantizer(w))


@contextmanager
def _weights_reused(model: nn.Module) -> Iterator[None]:
    """While the block runs, the weight fake-quantizers of torch.ao's QAT layers in ``model`` (the
    int8 surrogate) compute once per weight values instead of at every forward pass; the
    modules are put back afterwards. The results are the same tensors' values either way."""
    from torch.ao.quantization import FakeQuantizeBase  # torch's own; imported once, on first use

    swapped: list[tuple[nn.Module, nn.Module]] = []
    try:
        for m in list(model.modules()):
            fq = getattr(m, "weight_fake_quant", None)
            # torch.ao's quantizers only: their result is a function of the layer's tensors
            if isinstance(fq, FakeQuantizeBase):
                m.weight_fake_quant = _ReusedWeights(m, fq)
                swapped.append((m, fq))
        yield
    finally:
        for m, fq in swapped:
            m.weight_fake_quant = fq


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """:func:`eval_mode`, and no parameter of ``model`` requires a gradient (only the inputs and
    activations need one: attacks, saliency); every ``requires_grad`` flag is restored afterwards.
    With the weights fixed, fake-quantized weights are computed once (:class:`_ReusedWeights`)."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        try:
            for p, _ in grads:
                p.requires_grad_(False)
            with _weights_reused(model):
                yield model
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)


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
