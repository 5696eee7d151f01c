"""Plain conv-stack classifiers with a fully-connected head: VGG-6, the 8-layer CNN, LeNet-5.

All three have the same layout, which the layer-ablation method relies on:

* ``model.features`` is an ``nn.Sequential`` of conv blocks, one per conv layer
  (``Sequential(conv, bn, relu[, maxpool])`` for VGG-6 / CNN-8, ``Sequential(conv, relu, maxpool)``
  for LeNet-5);
* ``forward`` flattens the output of ``features``;
* ``model.classifier`` is an ``nn.Sequential`` whose first module is the first ``nn.Linear``.

Removing the last ``M`` conv layers is ``features = features[:-M]`` plus a new ``classifier[0]``
with ``in_features = model.flatten_dim(len(features) - M)``.
"""

from __future__ import annotations

import torch
from torch import nn

from compaudit.models._common import check_dropout, check_io, check_positive, pooled, scaled
from compaudit.models.base import MODELS


class PlainCNN(nn.Module):
    """Conv blocks (``features``) -> flatten -> fully-connected layers (``classifier``).

    ``conv_channels[i]`` is the output width of block ``i`` (padding ``paddings[i]``, "same" by
    default); a 2x2 max-pool ends every block whose 1-based index is in ``pool_after``. ``hidden``
    are the widths of the hidden FC layers, each followed by ReLU and dropout (kept even at
    ``dropout=0`` so state-dict keys do not depend on it).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int],
        conv_channels: tuple[int, ...],
        pool_after: tuple[int, ...],
        hidden: tuple[int, ...],
        dropout: float = 0.0,
        kernel_size: int = 3,
        paddings: tuple[int, ...] | None = None,
        batch_norm: bool = True,
        name: str = "model",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = input_size
        self.conv_channels = conv_channels
        self.pool_after = pool_after
        self.kernel_size = kernel_size
        self.paddings = paddings if paddings is not None else (kernel_size // 2,) * len(conv_channels)
        if len(self.paddings) != len(conv_channels):
            raise ValueError(f"{name}: {len(conv_channels)} conv layers but {len(self.paddings)} paddings")
        flat = self.flatten_dim()
        if flat < 1:
            h, w = input_size
            raise ValueError(
                f"{name} cannot take {h}x{w} inputs: the feature map shrinks below 1x1 "
                f"(its conv and pooling layers need a larger input)"
            )
        blocks: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(conv_channels):
            layers: list[nn.Module] = [
                nn.Conv2d(prev, ch, kernel_size, padding=self.paddings[i], bias=not batch_norm)
            ]
            if batch_norm:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.ReLU())
            if i + 1 in pool_after:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            prev = ch
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = []
        prev = flat
        for width in hidden:
            head += [nn.Linear(prev, width), nn.ReLU(), nn.Dropout(dropout)]
            prev = width
        head.append(nn.Linear(prev, num_classes))
        self.classifier = nn.Sequential(*head)

    def feature_size(self, num_blocks: int | None = None) -> tuple[int, int, int]:
        """``(C, H, W)`` of the output of the first ``num_blocks`` conv blocks (all by default)."""
        n = len(self.conv_channels) if num_blocks is None else num_blocks
        if not 0 <= n <= len(self.conv_channels):
            raise ValueError(f"num_blocks must be in [0, {len(self.conv_channels)}], got {n}")
        h, w = self.input_size
        for i in range(n):
            shrink = self.kernel_size - 1 - 2 * self.paddings[i]
            h, w = max(h - shrink, 0), max(w - shrink, 0)
            if i + 1 in self.pool_after:
                h, w = pooled(h, 1), pooled(w, 1)
        channels = self.conv_channels[n - 1] if n > 0 else self.in_channels
        return channels, h, w

    def flatten_dim(self, num_blocks: int | None = None) -> int:
        """Input width of the first FC layer when only the first ``num_blocks`` conv blocks are kept."""
        c, h, w = self.feature_size(num_blocks)
        return c * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(x)
        out = torch.flatten(out, 1)
        logits: torch.Tensor = self.classifier(out)
        return logits


class VGG6(PlainCNN):
    """VGG-6 of seed 000 (six 3x3 conv + BN + ReLU, max-pool after conv 2/4/6, FC 1024-512)."""


class CNN8(PlainCNN):
    """The 8-layer CNN of seed 002 (six conv blocks, two FC layers)."""


class LeNet5(PlainCNN):
    """LeNet-5 with ReLU and max-pooling."""


def vgg6(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    width: float = 1.0,
    dropout: float = 0.0,
) -> nn.Module:
    """VGG-6 (seed 000): 6 conv3x3+BN+ReLU (32-32-64-64-128-128), pool after 2/4/6, FC 1024-512."""
    check_io(in_channels, num_classes, input_size)
    check_positive("width", width)
    check_dropout(dropout)
    # 32x32 input: 128 * 4 * 4 = 2048 features into the first FC layer, the paper's "2048 by 1024".
    return VGG6(
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=input_size,
        conv_channels=tuple(scaled(c, width) for c in (32, 32, 64, 64, 128, 128)),
        pool_after=(2, 4, 6),
        hidden=(1024, 512),
        dropout=dropout,
        name="vgg6",
    )


def cnn8(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    width: float = 1.0,
    hidden: int = 256,
    dropout: float = 0.0,
) -> nn.Module:
    """8-layer CNN (seed 002): 6 conv3x3+BN+ReLU (32-32-64-64-128-128), pool after 2/4/6, FC 256."""
    # Seed 002 says only "6 convolutional blocks and 2 fully-connected layers"; the widths, the
    # pooling and the hidden FC width are our choice, mirroring VGG-6 with a smaller head.
    check_io(in_channels, num_classes, input_size)
    check_positive("width", width)
    check_dropout(dropout)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
    return CNN8(
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=input_size,
        conv_channels=tuple(scaled(c, width) for c in (32, 32, 64, 64, 128, 128)),
        pool_after=(2, 4, 6),
        hidden=(hidden,),
        dropout=dropout,
        name="cnn8",
    )


def lenet5(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    padding: int | None = None,
) -> nn.Module:
    """LeNet-5 (seed 003): conv5x5 6 -> pool -> conv5x5 16 -> pool -> FC 120-84, ReLU, max-pool."""
    h, w = check_io(in_channels, num_classes, input_size)
    if padding is None:
        # The standard trick: pad 28x28 (MNIST-sized) inputs by 2 so the maps match the 32x32 original.
        padding = 2 if min(h, w) < 32 else 0
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    return LeNet5(
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=input_size,
        conv_channels=(6, 16),
        pool_after=(1, 2),
        hidden=(120, 84),
        kernel_size=5,
        paddings=(padding, 0),
        batch_norm=False,
        name="lenet5",
    )


MODELS.add("vgg6", vgg6)
MODELS.add("cnn8", cnn8)
MODELS.add("lenet5", lenet5)
