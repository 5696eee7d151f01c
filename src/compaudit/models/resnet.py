"""CIFAR-style residual networks: ResNet-18/34/50 and Wide ResNets.

Both families end in ``avgpool`` (global average pooling) and an ``fc`` linear head, so the input of
``model.avgpool`` is the last convolutional feature map (what class activation maps use).
"""

from __future__ import annotations

import torch
from torch import nn

from compaudit.models._common import check_dropout, check_io, check_positive_int
from compaudit.models.base import MODELS


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 conv + BN projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; post-activation residual block of ResNet-18/34."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        result: torch.Tensor = self.relu(out)
        return result


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided) - 1x1 convs with BN, expansion 4; the block of ResNet-50."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + self.shortcut(x)
        result: torch.Tensor = self.relu(out)
        return result


class ResNet(nn.Module):
    """CIFAR ResNet ("kuangliu" layout): 3x3 stem, no stem max-pool, four stages, GAP, ``fc``."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: tuple[int, int, int, int],
        *,
        in_channels: int,
        num_classes: int,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self._in_planes = width
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, count: int, stride: int
    ) -> nn.Sequential:
        layers: list[nn.Module] = []
        for s in [stride] + [1] * (count - 1):
            layers.append(block(self._in_planes, planes, s))
            self._in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(self.avgpool(out), 1)
        logits: torch.Tensor = self.fc(out)
        return logits


def _resnet(
    block: type[BasicBlock | Bottleneck],
    num_blocks: tuple[int, int, int, int],
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    width: int,
) -> ResNet:
    check_io(in_channels, num_classes, input_size)
    check_positive_int("width", width)
    return ResNet(block, num_blocks, in_channels=in_channels, num_classes=num_classes, width=width)


def resnet18(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], width: int = 64
) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem, BasicBlock stages 2-2-2-2 of width w/2w/4w/8w (w=64), GAP + fc."""
    return _resnet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, input_size, width)


def resnet34(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], width: int = 64
) -> nn.Module:
    """CIFAR ResNet-34: 3x3 stem, BasicBlock stages 3-4-6-3 of width w/2w/4w/8w (w=64), GAP + fc."""
    return _resnet(BasicBlock, (3, 4, 6, 3), in_channels, num_classes, input_size, width)


def resnet50(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], width: int = 64
) -> nn.Module:
    """CIFAR ResNet-50: 3x3 stem, Bottleneck (x4) stages 3-4-6-3 of width w/2w/4w/8w (w=64), GAP + fc."""
    return _resnet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, input_size, width)


class WideBasicBlock(nn.Module):
    """Pre-activation block of Wide ResNet: BN-ReLU-conv3x3 (-dropout) -BN-ReLU-conv3x3 + shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.equal_in_out = stride == 1 and in_planes == out_planes
        # A plain 1x1 conv projection (no BN), as in the reference implementation.
        self.shortcut: nn.Module | None = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre: torch.Tensor = self.relu(self.bn1(x))
        out: torch.Tensor = self.conv1(pre)
        out = self.dropout(self.relu(self.bn2(out)))
        out = self.conv2(out)
        # The projection shortcut sees the pre-activated input; the identity one the raw input.
        skip: torch.Tensor = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis) for CIFAR: 3x3 stem 16, three groups of width
    16k/32k/64k with strides 1/2/2, BN-ReLU, GAP, ``fc``."""

    def __init__(
        self, *, depth: int, widen_factor: int, dropout: float, in_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_group(widths[0], widths[1], n, 1, dropout)
        self.layer2 = self._make_group(widths[1], widths[2], n, 2, dropout)
        self.layer3 = self._make_group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_group(
        in_planes: int, out_planes: int, count: int, stride: int, dropout: float
    ) -> nn.Sequential:
        return nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout
                )
                for i in range(count)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv1(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.relu(self.bn(out))
        out = torch.flatten(self.avgpool(out), 1)
        logits: torch.Tensor = self.fc(out)
        return logits


def wrn(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> nn.Module:
    """Wide ResNet WRN-depth-k for CIFAR (pre-activation blocks); (depth - 4) must be divisible by 6."""
    check_io(in_channels, num_classes, input_size)
    check_positive_int("depth", depth)
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"Wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}"
        )
    check_positive_int("widen_factor", widen_factor)
    check_dropout(dropout)
    return WideResNet(
        depth=depth,
        widen_factor=widen_factor,
        dropout=dropout,
        in_channels=in_channels,
        num_classes=num_classes,
    )


def wrn28_10(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], dropout: float = 0.0
) -> nn.Module:
    """Wide ResNet-28-10 for CIFAR (the seed-004 teacher; 36.5 M parameters at 10 classes)."""
    return wrn(
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=input_size,
        depth=28,
        widen_factor=10,
        dropout=dropout,
    )


MODELS.add("resnet18", resnet18)
MODELS.add("resnet34", resnet34)
MODELS.add("resnet50", resnet50)
MODELS.add("wrn", wrn)
MODELS.add("wrn28_10", wrn28_10)
