"""Small student networks for distillation: a 4-layer CNN and a depthwise-separable CNN.

Both are ``features`` (conv blocks) -> ``avgpool`` (global average pooling) -> ``fc``, so the
output of ``model.features`` is the last convolutional feature map (what class activation maps use).
"""

from __future__ import annotations

import torch
from torch import nn

from compaudit.models._common import check_io, check_positive, pooled, scaled
from compaudit.models.base import MODELS


def _conv_bn_relu(
    in_planes: int, out_planes: int, *, stride: int = 1, groups: int = 1, kernel: int = 3
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_planes, out_planes, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(),
    )


class GapCNN(nn.Module):
    """``features`` -> global average pooling (``avgpool``) -> linear head (``fc``)."""

    def __init__(self, features: nn.Sequential, feature_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(feature_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(x)
        out = torch.flatten(self.avgpool(out), 1)
        logits: torch.Tensor = self.fc(out)
        return logits


class StudentCNN(GapCNN):
    """Four conv3x3+BN+ReLU blocks, max-pool after blocks 2 and 3, GAP + linear."""


class MobileCNN(GapCNN):
    """A conv3x3 stem and depthwise-separable blocks, GAP + linear."""


def student_cnn(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], width: float = 1.0
) -> nn.Module:
    """Small student CNN: 4 conv3x3+BN+ReLU (16-32-64-64), max-pool after 2 and 3, GAP + linear."""
    h, w = check_io(in_channels, num_classes, input_size)
    check_positive("width", width)
    if min(pooled(h, 2), pooled(w, 2)) < 1:
        raise ValueError(f"student_cnn needs inputs of at least 4x4 (two 2x2 max-pools), got {h}x{w}")
    c1, c2, c3, c4 = (scaled(c, width) for c in (16, 32, 64, 64))
    features = nn.Sequential(
        _conv_bn_relu(in_channels, c1),
        nn.Sequential(*_conv_bn_relu(c1, c2), nn.MaxPool2d(2)),
        nn.Sequential(*_conv_bn_relu(c2, c3), nn.MaxPool2d(2)),
        _conv_bn_relu(c3, c4),
    )
    return StudentCNN(features, c4, num_classes)


def _separable(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""
    return nn.Sequential(
        _conv_bn_relu(in_planes, in_planes, stride=stride, groups=in_planes),
        _conv_bn_relu(in_planes, out_planes, kernel=1),
    )


def mobile_cnn(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], width: float = 1.0
) -> nn.Module:
    """MobileNet-style student: conv3x3 32, depthwise-separable 64-128/2-128-256/2-256, GAP + linear."""
    check_io(in_channels, num_classes, input_size)
    check_positive("width", width)
    # (out channels, stride) of the separable blocks; strided 3x3 convs with padding 1 never reach 0x0.
    plan = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
    stem = scaled(32, width)
    blocks: list[nn.Module] = [_conv_bn_relu(in_channels, stem)]
    prev = stem
    for channels, stride in plan:
        out = scaled(channels, width)
        blocks.append(_separable(prev, out, stride))
        prev = out
    return MobileCNN(nn.Sequential(*blocks), prev, num_classes)


MODELS.add("student_cnn", student_cnn)
MODELS.add("mobile_cnn", mobile_cnn)
