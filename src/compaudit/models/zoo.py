"""The built-in model zoo: the architectures of the seed papers, registered in :data:`MODELS`.

============  =====================================================================  ============
name          architecture                                                           seed paper
============  =====================================================================  ============
vgg6          6 conv3x3+BN+ReLU (32-32-64-64-128-128), FC 1024-512                   000
cnn8          6 conv3x3+BN+ReLU (same widths, our choice), FC 256                    002
lenet5        LeNet-5 with ReLU and max-pooling                                      003
resnet18/34   CIFAR ResNet with BasicBlocks (kuangliu layout)                        -
resnet50      CIFAR ResNet with Bottlenecks                                          -
wrn           Wide ResNet WRN-depth-k (pre-activation)                               004
wrn28_10      WRN-28-10, the seed-004 teacher                                        004
student_cnn   4 conv3x3+BN+ReLU (16-32-64-64), GAP + linear                          students
mobile_cnn    depthwise-separable CNN, GAP + linear                                  004
============  =====================================================================  ============

Conventions every built-in model follows:

* the output is logits (no softmax); any ``in_channels`` and ``num_classes`` work;
* the first ``nn.Conv2d`` in ``model.modules()`` is the input layer;
* plain conv-stack models (vgg6, cnn8, lenet5) have ``features`` (one ``nn.Sequential`` block per
  conv layer) and ``classifier`` (``classifier[0]`` is the first FC layer), see
  :mod:`compaudit.models.plain`;
* global-average-pooling models (resnets, wrn, student_cnn, mobile_cnn) end in ``avgpool`` and a
  linear ``fc``; the input of ``avgpool`` is the last convolutional feature map (for CAM).
"""

from __future__ import annotations

from compaudit.models import plain, resnet, small
from compaudit.models.plain import CNN8, VGG6, LeNet5, PlainCNN, cnn8, lenet5, vgg6
from compaudit.models.resnet import ResNet, WideResNet, resnet18, resnet34, resnet50, wrn, wrn28_10
from compaudit.models.small import GapCNN, MobileCNN, StudentCNN, mobile_cnn, student_cnn

__all__ = [
    "CNN8",
    "VGG6",
    "GapCNN",
    "LeNet5",
    "MobileCNN",
    "PlainCNN",
    "ResNet",
    "StudentCNN",
    "WideResNet",
    "cnn8",
    "lenet5",
    "mobile_cnn",
    "plain",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "small",
    "student_cnn",
    "vgg6",
    "wrn",
    "wrn28_10",
]
