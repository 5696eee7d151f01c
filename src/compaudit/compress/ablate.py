"""Layer ablation (seed ``000_a193888e59fb5ab2.txt``, Algorithm 2 and "Our VGG-6 Ablation").

Cut the last ``M`` convolutional layers of a trained CNN, reshape the first fully-connected layer to
the new flattened size, freeze every convolutional layer and retrain the fully-connected layers, so
the model must classify from its more generic early features.

Works on models laid out like :class:`compaudit.models.plain.PlainCNN` (``vgg6``, ``cnn8``,
``lenet5``, or a user model with the same layout) and on torchvision's VGG-16 / VGG-16-BN
(``vgg16``, ``vgg16_bn``): seed 000 applies the same recipe to its ImageNet VGG-16 as to VGG-6
("Our VGG-6 Ablation"; Table I's "ImageNet Ablated" row, 531 MB). VGG-16's ``features`` is one flat
``Sequential`` of conv, [BN,] ReLU and max-pool modules, so a cut conv layer takes its BN, ReLU and
the max-pool that follows it; its adaptive 7x7 average pool (between ``features`` and
``classifier``) keeps the width reaching ``classifier.0`` at ``channels x 7 x 7`` whatever the
resolution: 25,088 while a conv of the two 512-wide stages remains (``layers`` 1 to 5), then
12,544, 6,272 and 3,136 as the cut reaches the 256-, 128- and 64-wide stages (``layers`` 6, 9 and
11; at most 12: one conv must remain). So the ablated VGG-16, cut as VGG-6 is (its last conv
layer), keeps its size: "the deeper the original model, the less impact this type of ablation will
have on the physical model size, as observed with VGG-16" (seed 000), while VGG-6's flattened map
grows when its last conv goes. ResNets (no ``features`` Sequential) and SqueezeNet (its classifier
is a conv) do not have this layout and are refused with a one-line error.

- ``model.features`` is an ``nn.Sequential``; a *conv block* is a child that contains an
  ``nn.Conv2d`` together with the conv-free children that follow it (BN, ReLU, pooling) — for
  ``PlainCNN`` each child is one block; a flat ``Sequential(conv, bn, relu, pool, conv, ...)`` works too;
- ``model.classifier`` is an ``nn.Sequential`` whose first module is an ``nn.Linear``.

The new input width of ``classifier[0]`` is measured, not computed from assumed shapes: the model runs
once (eval mode, no gradient) on a zero input of the data set's shape and a pre-hook reads the width
that arrives at ``classifier[0]`` — so whatever the model's ``forward`` does between ``features``
and ``classifier`` (flatten, pooling) counts. The new layer is initialised from the step's seed.

Freezing (``freeze: true``, the paper's recipe): every parameter outside ``classifier`` gets
``requires_grad = False`` during retraining, and every module outside ``classifier`` is kept in
**eval mode** during retraining, so BatchNorm layers normalise with (and never update) their running
statistics — the frozen part is exactly the feature extractor used at inference, and its state dict
comes out bit-identical (momentum 0 was not chosen: it would freeze the statistics but still
normalise with batch statistics while training, unlike at inference). Dropout inside ``classifier``
stays active. Afterwards every parameter gets back the ``requires_grad`` flag it had before (normally
``True``), so a later fine-tuning step (``finetune:``) trains the whole model as usual; leave it out
to keep the convolutional layers as the trained baseline had them. ``freeze: false`` retrains the
whole truncated model instead.

``on_unsupported`` does not apply: a model without this layout is an error naming its class.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams
from compaudit.config import TrainSpec
from compaudit.errors import MethodError
from compaudit.inference import eval_mode
from compaudit.models.plain import PlainCNN
from compaudit.train.objective import CrossEntropy


class RecoverySpec(TrainSpec):
    """Retraining of the fully-connected layers after the cut (seed 000's recovery epochs)."""

    epochs: int = Field(default=5, ge=0, le=10_000)


class AblateParams(MethodParams):
    layers: int = Field(default=1, ge=1, description="how many of the last conv layers (blocks) to remove")
    train: RecoverySpec = Field(default_factory=RecoverySpec, description="retraining after the cut")
    freeze: bool = Field(default=True, description="retrain only the fully-connected layers")


class _Reached(Exception):
    """Stops the measuring forward pass once the first FC layer's input is known."""


class _FrozenFeatures(CrossEntropy):
    """Cross-entropy with the frozen modules held in eval mode (BatchNorm uses, and keeps, its running
    statistics) while the rest of the model trains."""

    def __init__(self, frozen: list[nn.Module], label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing)
        self.frozen = frozen

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        for m in self.frozen:
            m.training = False
        return super().loss(model, x, y)


def _layout(model: nn.Module, method: str) -> tuple[nn.Sequential, nn.Sequential, nn.Linear]:
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if (
        not isinstance(features, nn.Sequential)
        or not isinstance(classifier, nn.Sequential)
        or len(classifier) == 0
        or not isinstance(classifier[0], nn.Linear)
    ):
        raise MethodError(
            f"method {method!r} cannot ablate {type(model).__name__}: layer ablation needs `features` "
            f"(an nn.Sequential of conv blocks) and `classifier` (an nn.Sequential starting with "
            f"nn.Linear), as vgg6, cnn8 and lenet5 have"
        )
    fc = classifier[0]
    assert isinstance(fc, nn.Linear)
    return features, classifier, fc


def conv_block_starts(features: nn.Sequential) -> list[int]:
    """Indices of the children of ``features`` that contain an ``nn.Conv2d`` (the conv blocks)."""
    return [i for i, child in enumerate(features) if any(isinstance(m, nn.Conv2d) for m in child.modules())]


def fc_input_width(model: nn.Module, fc: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Width of what reaches ``fc`` when ``model`` runs on one input of ``input_shape`` (C, H, W).

    The model runs in eval mode without gradient and stops at ``fc``; its modes are restored.
    """
    seen: list[int] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(int(args[0].shape[-1]))
        raise _Reached

    ref = next(model.parameters())
    x = torch.zeros(1, *input_shape, device=ref.device, dtype=ref.dtype)
    handle = fc.register_forward_pre_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    except _Reached:
        pass
    except Exception as exc:
        raise MethodError(
            f"{type(model).__name__} cannot run on inputs of shape {tuple(x.shape)} after ablation: {exc}"
        ) from None
    finally:
        handle.remove()
    if not seen:
        raise MethodError(f"{type(model).__name__}'s forward never reaches classifier[0]; cannot size it")
    return seen[0]


@METHODS.register("ablate")
class Ablate(Method[AblateParams]):
    """Layer ablation (seed 000): cut the last conv layers, resize the first FC layer, retrain FC layers."""

    Params: ClassVar[type[MethodParams]] = AblateParams

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        features, classifier, old_fc = _layout(model, self.name)
        starts = conv_block_starts(features)
        if p.layers >= len(starts):
            hint = f"use layers <= {len(starts) - 1}" if len(starts) > 1 else "there is nothing to ablate"
            raise MethodError(
                f"method {self.name!r}: layers={p.layers} but {type(model).__name__} has {len(starts)} "
                f"conv block(s); at least one must remain ({hint})"
            )
        del features[starts[-p.layers] :]
        if isinstance(model, PlainCNN) and len(model.conv_channels) == len(starts):
            # keep the size helpers (feature_size / flatten_dim) truthful for the truncated model
            kept = len(starts) - p.layers
            model.conv_channels = model.conv_channels[:kept]
            model.paddings = model.paddings[:kept]
        width = fc_input_width(model, old_fc, ctx.data.input_shape)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(ctx.seed)  # the CPU generator only: CUDA RNGs untouched
            new_fc = nn.Linear(width, old_fc.out_features, bias=old_fc.bias is not None)
        classifier[0] = new_fc.to(device=old_fc.weight.device, dtype=old_fc.weight.dtype)
        if ctx.restoring:
            return model

        grads = [(q, q.requires_grad) for q in model.parameters()]
        head = {id(m) for m in classifier.modules()}
        head_params = {id(q) for q in classifier.parameters()}
        try:
            objective = None
            if p.freeze:
                for q in model.parameters():
                    if id(q) not in head_params:
                        q.requires_grad_(False)
                frozen = [m for m in model.modules() if m is not model and id(m) not in head]
                objective = _FrozenFeatures(frozen, p.train.label_smoothing)
            ctx.train(
                model,
                p.train,
                objective=objective,
                desc=f"{self.name}: {type(model).__name__} without its last {p.layers} conv block(s)",
            )
        finally:
            for q, flag in grads:
                q.requires_grad_(flag)
        return model
