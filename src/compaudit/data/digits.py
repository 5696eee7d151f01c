"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits.

1,797 images of 10 classes, shipped inside scikit-learn, so it needs no download and no root
folder. Images are scaled to ``[0, 1]`` and upsampled (bilinear) to ``size`` x ``size``
(default 32, the CIFAR resolution the seed papers' models expect). The split is fixed and
stratified: 20% test (359 images), then 10% of the rest for validation (143), 1,295 for training.

``style`` changes how every image looks, after resizing, to make a shifted domain of the same
digits for the ``shift`` probe (the digits analogue of seed 001's Office-31 domains):

- ``thick``: strokes thickened by a grey dilation, a maximum filter of radius ``size / 16``
  (2 px at 32 px: strokes one original 8x8 pixel wider);
- ``thin``: strokes thinned by a grey erosion of the same radius;
- ``rotated``: turned 20 degrees counter-clockwise about the centre (bilinear, zero fill);
- ``inverted``: ``1 - x`` (white digits on black become black on white).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from compaudit.data.base import DATASETS, ArrayDataset, DataBundle, DataParams, DataSource, stratified_split


class DigitsParams(DataParams):
    channels: int | None = Field(default=1, ge=1, le=4)
    size: int | None = Field(default=32, ge=8, le=256)
    style: Literal["none", "thick", "thin", "rotated", "inverted"] = Field(
        default="none", description="a fixed change of how the digits look (a shifted domain)"
    )


@DATASETS.register("digits")
class Digits(DataSource[DigitsParams]):
    """scikit-learn's bundled 8x8 digits, upsampled (embedded; no files needed)."""

    Params: ClassVar[type[DataParams]] = DigitsParams
    needs_root: ClassVar[bool] = False

    def load(self, root: Path | None) -> DataBundle:
        bundle = super().load(root)
        style = self.params.style
        if style == "none":
            return bundle
        splits = []
        for split in (bundle.train, bundle.val, bundle.test):
            assert isinstance(split, ArrayDataset)
            splits.append(ArrayDataset(apply_style(split.x, style), split.y))
        train, val, test = splits
        return DataBundle(
            f"digits[{style}]", train, val, test, bundle.classes, bundle.input_shape, bundle.bounds
        )

    def _load(self, root: Path | None) -> DataBundle:
        from sklearn.datasets import load_digits

        raw = load_digits()
        x = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.as_tensor(raw.target, dtype=torch.int64)
        rest, test = stratified_split(y, 0.2, seed=20240601)
        data = ArrayDataset(x, y)
        train = data.subset(rest)
        test_ds = data.subset(test)
        keep, val = stratified_split(train.y, self.params.val_fraction, seed=20240602)
        return DataBundle(
            name="digits",
            train=train.subset(keep),
            val=train.subset(val),
            test=test_ds,
            classes=tuple(str(i) for i in range(10)),
            input_shape=(1, 8, 8),
        )


def apply_style(x: Tensor, style: str) -> Tensor:
    """One of the documented styles applied to a (N, C, H, W) batch in [0, 1]."""
    r = max(1, round(x.shape[-1] / 16))
    if style == "thick":
        return F.max_pool2d(x, 2 * r + 1, stride=1, padding=r)
    if style == "thin":
        return -F.max_pool2d(-x, 2 * r + 1, stride=1, padding=r)
    if style == "inverted":
        return 1.0 - x
    if style == "rotated":
        a = math.radians(20.0)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    raise ValueError(f"unknown style {style!r}")
