"""ImageNet-layout ResNet-18/34/50/101/152 (He et al. 2016), as torchvision builds them.

Seed ``001_5343f4a55429e52f.txt`` fine-tunes ImageNet-pretrained ResNet-18 … -152 on Office-31 at
224x224 (and distils ResNet-152 into ResNet-18). These factories build that layout: a 7x7 stride-2
stem, a 3x3 stride-2 max-pool, four stages of BasicBlocks (18, 34) or Bottlenecks (50, 101, 152; the
stride on the 3x3 conv, "ResNet v1.5"), global average pooling and ``fc``. Module names, parameter
names and shapes are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``…), so a torchvision ``state_dict`` file (``resnet50-0676ba61.pth``) loads into them; the
committed fixture ``tests/data/torchvision_state_dicts.json`` holds torchvision's keys and shapes and
a test compares them. The only addition is ``normalize`` (see :mod:`compaudit.models.normalize`),
the ImageNet normalisation those weights expect, whose buffers are not in the ``state_dict``.

The CIFAR layout (3x3 stem, no max-pool: :mod:`compaudit.models.resnet`, ``resnet18`` …) stays the
network for 32x32 data; at 224x224 it costs about 16x the MACs of this one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compaudit.models._common import check_io
from compaudit.models.base import MODELS
from compaudit.models.hub import load_torchvision_weights
from compaudit.models.normalize import InputAdapter, NormalizeName, input_layer


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual connection (``downsample`` projects it when needed)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class Bottleneck(nn.Module):
    """1x1 → 3x3 (strided) → 1x1 convs with BN, expansion 4, and a residual connection."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class ImageNetResNet(nn.Module):
    """ResNet in torchvision's layout: ``normalize`` → 7x7/2 stem → 3x3/2 max-pool → four stages →
    ``avgpool`` → ``fc``."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        in_channels: int,
        num_classes: int,
        normalize: NormalizeName = "imagenet",
        input_adapter: InputAdapter = "none",
    ) -> None:
        super().__init__()
        self.normalize, conv_in = input_layer(in_channels, normalize, input_adapter)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(conv_in, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        logits: torch.Tensor = self.fc(x)
        return logits


_DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _factory(depth: int) -> Callable[..., nn.Module]:
    block, layers = _DEPTHS[depth]

    def factory(
        *,
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int],
        normalize: NormalizeName = "imagenet",
        input_adapter: InputAdapter = "none",
        weights: str | None = None,
    ) -> nn.Module:
        check_io(in_channels, num_classes, input_size)
        model = ImageNetResNet(
            block,
            layers,
            in_channels=in_channels,
            num_classes=num_classes,
            normalize=normalize,
            input_adapter=input_adapter,
        )
        if weights is not None:
            load_torchvision_weights(model, f"resnet{depth}", weights)
        return model

    factory.__name__ = factory.__qualname__ = f"resnet{depth}_imagenet"
    factory.__doc__ = (
        f"ImageNet-layout ResNet-{depth} (torchvision's keys; {block.__name__} stages "
        f"{'-'.join(map(str, layers))}), "
        "ImageNet normalisation inside (normalize: imagenet|none; input_adapter: repeat for grey images); "
        "weights: a torchvision weights name (IMAGENET1K_V1, DEFAULT) read from torch's hub cache."
    )
    return factory


resnet18_imagenet = _factory(18)
resnet34_imagenet = _factory(34)
resnet50_imagenet = _factory(50)
resnet101_imagenet = _factory(101)
resnet152_imagenet = _factory(152)

MODELS.add("resnet18_imagenet", resnet18_imagenet)
MODELS.add("resnet34_imagenet", resnet34_imagenet)
MODELS.add("resnet50_imagenet", resnet50_imagenet)
MODELS.add("resnet101_imagenet", resnet101_imagenet)
MODELS.add("resnet152_imagenet", resnet152_imagenet)
