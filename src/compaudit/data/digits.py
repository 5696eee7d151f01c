"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits.

1,797 images of 10 classes, shipped inside scikit-learn, so it needs no download and no root
folder. Images are scaled to ``[0, 1]`` and upsampled (bilinear) to ``size`` x ``size``
(default 32, the CIFAR resolution the seed papers' models expect). The split is fixed and
stratified: 20% test (359 images), then 10% of the rest for validation (143), 1,295 for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field

from compaudit.data.base import DATASETS, ArrayDataset, DataBundle, DataParams, DataSource, stratified_split


class DigitsParams(DataParams):
    channels: int | None = Field(default=1, ge=1, le=4)
    size: int | None = Field(default=32, ge=8, le=256)


@DATASETS.register("digits")
class Digits(DataSource):
    """scikit-learn's bundled 8x8 digits, upsampled (embedded; no files needed)."""

    Params: ClassVar[type[DataParams]] = DigitsParams
    needs_root: ClassVar[bool] = False

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
