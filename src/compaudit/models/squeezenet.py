"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016) in torchvision's layout.

Seed ``003_…`` studies SqueezeNet (~750k parameters at 10 classes) beside LeNet-5 and ResNet-18 on
CIFAR-10 and GTSRB. ``features`` is the stem and the fire modules, ``classifier`` is dropout, a 1x1
conv to the classes (``classifier.1``), ReLU and global average pooling; the logits are that pool's
output, flattened. Module and parameter names are torchvision's, so ``squeezenet1_1-b8a52dc0.pth``
loads into it. SqueezeNet 1.1 at 10 classes has 727,626 parameters and runs on 32x32 inputs (its
last feature map is then 1x1). Each fire module concatenates two expand branches, which filter
pruning follows (Torch-Pruning's dependency graph). Class activation maps apply: the class conv and
its ReLU, averaged, are the logits, so the class conv's map is the CAM (:mod:`compaudit.explain.layers`).
"""

from __future__ import annotations

import torch
from torch import nn

from compaudit.models._common import check_dropout, check_io
from compaudit.models.base import MODELS
from compaudit.models.hub import load_torchvision_weights
from compaudit.models.normalize import InputAdapter, NormalizeName, input_layer


class Fire(nn.Module):
    """1x1 squeeze conv, then 1x1 and 3x3 expand convs whose outputs are concatenated."""

    def __init__(
        self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int
    ) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet(nn.Module):
    """``normalize`` → ``features`` → ``classifier`` (dropout, 1x1 class conv, ReLU, GAP) → flatten."""

    def __init__(
        self,
        version: str,
        *,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.5,
        normalize: NormalizeName = "imagenet",
        input_adapter: InputAdapter = "none",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize, conv_in = input_layer(in_channels, normalize, input_adapter)
        pool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(conv_in, 96, kernel_size=7, stride=2),
                nn.ReLU(),
                pool,
                Fire(96, 16, 64, 64),
                Fire(128, 16, 64, 64),
                Fire(128, 32, 128, 128),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(256, 32, 128, 128),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(512, 64, 256, 256),
            )
        elif version == "1_1":
            self.features = nn.Sequential(
                nn.Conv2d(conv_in, 64, kernel_size=3, stride=2),
                nn.ReLU(),
                pool,
                Fire(64, 16, 64, 64),
                Fire(128, 16, 64, 64),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(128, 32, 128, 128),
                Fire(256, 32, 128, 128),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            )
        else:
            raise ValueError(f"SqueezeNet version must be '1_0' or '1_1', got {version!r}")
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.features(self.normalize(x)))
        return torch.flatten(x, 1)


def _squeezenet(
    version: str,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float,
    normalize: NormalizeName,
    input_adapter: InputAdapter,
    weights: str | None,
) -> SqueezeNet:
    h, w = check_io(in_channels, num_classes, input_size)
    check_dropout(dropout)
    smallest = 21 if version == "1_0" else 17  # the stem and three ceil-mode pools need a 1x1 map to remain
    if min(h, w) < smallest:
        raise ValueError(
            f"SqueezeNet {version.replace('_', '.')} needs inputs of at least {smallest}x{smallest}"
        )
    model = SqueezeNet(
        version,
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        normalize=normalize,
        input_adapter=input_adapter,
    )
    if weights is not None:
        load_torchvision_weights(model, f"squeezenet{version}", weights)
    return model


def squeezenet1_0(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float = 0.5,
    normalize: NormalizeName = "imagenet",
    input_adapter: InputAdapter = "none",
    weights: str | None = None,
) -> nn.Module:
    """SqueezeNet 1.0 (torchvision's keys), ImageNet normalisation inside; ``weights``: a torchvision
    weights name read from torch's hub cache."""
    return _squeezenet(
        "1_0", in_channels, num_classes, input_size, dropout, normalize, input_adapter, weights
    )


def squeezenet1_1(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float = 0.5,
    normalize: NormalizeName = "imagenet",
    input_adapter: InputAdapter = "none",
    weights: str | None = None,
) -> nn.Module:
    """SqueezeNet 1.1 (seed 003; torchvision's keys; 0.73 M parameters at 10 classes), ImageNet
    normalisation inside; ``weights``: a torchvision weights name read from torch's hub cache."""
    return _squeezenet(
        "1_1", in_channels, num_classes, input_size, dropout, normalize, input_adapter, weights
    )


MODELS.add("squeezenet1_0", squeezenet1_0)
MODELS.add("squeezenet1_1", squeezenet1_1)
