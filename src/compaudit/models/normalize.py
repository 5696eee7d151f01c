"""Input normalisation inside the model, so pretrained weights see what they were trained on.

Every data set of compaudit yields images in ``[0, 1]`` (the attacks' eps are in those units);
ImageNet-pretrained weights (torchvision, timm) expect ``(x - mean) / std`` with ImageNet's mean and
std. :class:`Normalize` is the model's first module (``model.normalize``). Its mean and std are
*non-persistent* buffers: they follow ``.to(device)`` but are not in the ``state_dict``, so the
model's keys stay those of the library whose weights it loads.

The one input adaptation compaudit offers is ``input_adapter: repeat``: a one-channel (grey) image
is repeated into three identical channels before normalisation, which is exactly what an RGB
network sees of a grey picture, so a 3-channel pretrained first layer is used unchanged. Any other
channel count with 3-channel weights is an error (see :func:`compaudit.models.load_pretrained`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

#: ImageNet's per-channel mean and std (RGB), what torchvision's and timm's weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NormalizeName = Literal["imagenet", "none"]
InputAdapter = Literal["none", "repeat"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, after repeating a grey image to ``repeat_to`` channels when
    given. ``mean`` / ``std`` of length 0 means no normalisation (the module is then the identity,
    or only the repetition)."""

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: Sequence[float] = (), std: Sequence[float] = (), *, repeat_to: int | None = None
    ) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"normalisation mean and std differ in length: {len(mean)} vs {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"normalisation std must be positive, got {tuple(std)}")
        self.repeat_to = repeat_to
        shape = (1, len(mean), 1, 1)
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).reshape(shape), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32).reshape(shape), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat_to is not None and x.shape[1] == 1:
            x = x.expand(-1, self.repeat_to, -1, -1)
        if self.mean.numel() == 0:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = tuple(round(float(v), 4) for v in self.mean.flatten())
        std = tuple(round(float(v), 4) for v in self.std.flatten())
        rep = f", repeat_to={self.repeat_to}" if self.repeat_to is not None else ""
        return f"mean={mean}, std={std}{rep}"


def input_layer(
    in_channels: int, normalize: NormalizeName, input_adapter: InputAdapter
) -> tuple[Normalize, int]:
    """The :class:`Normalize` module for a network built for RGB weights and ``in_channels`` of the
    data, and the channel count its first conv must take."""
    if normalize not in ("imagenet", "none"):
        raise ValueError(f"normalize must be 'imagenet' or 'none', got {normalize!r}")
    if input_adapter not in ("none", "repeat"):
        raise ValueError(f"input_adapter must be 'none' or 'repeat', got {input_adapter!r}")
    conv_in = in_channels
    repeat_to = None
    if input_adapter == "repeat":
        if in_channels != 1:
            raise ValueError(
                "input_adapter 'repeat' turns a 1-channel image into RGB; "
                f"the data has {in_channels} channels"
            )
        conv_in, repeat_to = 3, 3
    if normalize == "imagenet":
        if conv_in != 3:
            raise ValueError(
                f"normalize 'imagenet' needs 3-channel (RGB) inputs, the data has {in_channels}; set "
                "input_adapter: repeat for grey images or normalize: none"
            )
        return Normalize(IMAGENET_MEAN, IMAGENET_STD, repeat_to=repeat_to), conv_in
    return Normalize(repeat_to=repeat_to), conv_in
