"""VGG-16 and VGG-16-BN (Simonyan & Zisserman 2015) in torchvision's layout.

Seed ``000_a193888e59fb5ab2.txt`` studies VGG-16 with batch norm pretrained on ImageNet beside its
VGG-6. ``features`` is one flat ``nn.Sequential`` (conv, [BN,] ReLU, …, max-pool) with torchvision's
indices, ``avgpool`` an adaptive 7x7 average pool, ``classifier`` Linear 25088-4096-4096-classes with
ReLU and dropout, so a torchvision ``state_dict`` (``vgg16-397923af.pth``, ``vgg16_bn-6c64b313.pth``)
loads into it. Layer ablation (``ablate``) cuts the last conv layers of ``features`` exactly as for
VGG-6 (a cut conv takes its BN, ReLU and the max-pool that follows it); the t-SNE of the first FC
layer reads ``classifier.0``. ``normalize`` holds the ImageNet normalisation
(:mod:`compaudit.models.normalize`), outside the ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from compaudit.models._common import check_dropout, check_io
from compaudit.models.base import MODELS
from compaudit.models.hub import load_torchvision_weights
from compaudit.models.normalize import InputAdapter, NormalizeName, input_layer

#: configuration "D" of the VGG paper: conv widths, "M" a 2x2 max-pool
VGG16_LAYERS: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(nn.Module):
    """``normalize`` → ``features`` → ``avgpool`` (7x7) → flatten → ``classifier``."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        batch_norm: bool,
        dropout: float = 0.5,
        normalize: NormalizeName = "imagenet",
        input_adapter: InputAdapter = "none",
    ) -> None:
        super().__init__()
        self.normalize, prev = input_layer(in_channels, normalize, input_adapter)
        layers: list[nn.Module] = []
        for v in VGG16_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(prev, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            prev = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(self.normalize(x)))
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


def _vgg16(
    batch_norm: bool,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float,
    normalize: NormalizeName,
    input_adapter: InputAdapter,
    weights: str | None,
) -> VGG:
    check_io(in_channels, num_classes, input_size)
    check_dropout(dropout)
    model = VGG(
        in_channels=in_channels,
        num_classes=num_classes,
        batch_norm=batch_norm,
        dropout=dropout,
        normalize=normalize,
        input_adapter=input_adapter,
    )
    if weights is not None:
        load_torchvision_weights(model, "vgg16_bn" if batch_norm else "vgg16", weights)
    return model


def vgg16(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float = 0.5,
    normalize: NormalizeName = "imagenet",
    input_adapter: InputAdapter = "none",
    weights: str | None = None,
) -> nn.Module:
    """VGG-16 (configuration D, torchvision's keys), ImageNet normalisation inside; ``weights``: a
    torchvision weights name read from torch's hub cache (:mod:`compaudit.models.hub`)."""
    return _vgg16(False, in_channels, num_classes, input_size, dropout, normalize, input_adapter, weights)


def vgg16_bn(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float = 0.5,
    normalize: NormalizeName = "imagenet",
    input_adapter: InputAdapter = "none",
    weights: str | None = None,
) -> nn.Module:
    """VGG-16 with batch norm (seed 000; torchvision's keys), ImageNet normalisation inside;
    ``weights``: a torchvision weights name read from torch's hub cache."""
    return _vgg16(True, in_channels, num_classes, input_size, dropout, normalize, input_adapter, weights)


MODELS.add("vgg16", vgg16)
MODELS.add("vgg16_bn", vgg16_bn)
