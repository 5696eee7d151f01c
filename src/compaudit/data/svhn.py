"""SVHN (Street View House Numbers), cropped digits ("Format 2"), from the official ``.mat`` files.

``train_32x32.mat`` (73,257 images), ``test_32x32.mat`` (26,032) and the optional, easier
``extra_32x32.mat`` (531,131) each hold two MATLAB variables, read with :func:`scipy.io.loadmat`:
``X``, a ``32 x 32 x 3 x N`` uint8 array (row, column, channel, image), and ``y``, an ``N x 1``
array of labels 1..10 where 10 stands for the digit 0 (mapped here to label 0, so label ``k`` is
digit ``k``). ``extra`` is added to train only when ``use_extra`` is set.

SVHN has no validation split; it is carved from train by :func:`compaudit.data.base.finalize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field

from compaudit.data.base import DATASETS, ArrayDataset, DataBundle, DataParams, DataSource
from compaudit.errors import DataError


class SvhnParams(DataParams):
    use_extra: bool = Field(default=False, description="also train on extra_32x32.mat (531,131 more images)")


def _read_mat(path: Path, hint: str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    if not path.is_file():
        raise DataError(f"missing file {str(path)!r}; {hint}")
    from scipy.io import loadmat

    try:
        mat: dict[str, Any] = loadmat(str(path), variable_names=["X", "y"])
    except NotImplementedError:  # MATLAB v7.3 (HDF5) files, which loadmat cannot read
        raise DataError(f"cannot read {str(path)!r}: not a MATLAB v5 file as published for SVHN") from None
    except Exception as exc:  # truncated or corrupted files raise ValueError, OSError, MatReadError, ...
        raise DataError(f"cannot read {str(path)!r}: truncated or corrupted ({type(exc).__name__})") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{str(path)!r} lacks the variables 'X' and 'y' of the SVHN cropped-digits format")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DataError(f"{str(path)!r}: X must be a 32 x 32 x 3 x N uint8 array, got {x.dtype} {x.shape}")
    n = x.shape[3]
    if y.size != n or y.ndim > 2 or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{str(path)!r}: y must be an {n} x 1 array of labels, got {y.dtype} {y.shape}")
    labels = y.reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() > 10 or not np.all(labels == np.round(labels))):
        raise DataError(f"{str(path)!r}: labels must be the integers 1..10 (10 meaning the digit 0)")
    labels = labels.astype(np.int64)
    labels[labels == 10] = 0
    return x.transpose(3, 2, 0, 1), labels  # (N, C, H, W); copied once, by _dataset


def _dataset(parts: list[tuple[NDArray[np.uint8], NDArray[np.int64]]], path: Path) -> ArrayDataset:
    shapes = {p[0].shape[1:] for p in parts}
    if len(shapes) != 1:
        raise DataError(f"{str(path)!r}: images of shape {sorted(shapes)} cannot be combined")
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ArrayDataset(torch.from_numpy(x.astype(np.float32)).div_(255.0), torch.from_numpy(y))


@DATASETS.register("svhn")
class Svhn(DataSource[SvhnParams]):
    """SVHN cropped digits: 32x32 colour house-number digits of 10 classes, from the .mat files."""

    Params: ClassVar[type[DataParams]] = SvhnParams
    layout_hint: ClassVar[str] = (
        "expected <root>/ holding train_32x32.mat and test_32x32.mat (and extra_32x32.mat when "
        "use_extra is set), the SVHN cropped-digits (Format 2) files"
    )

    def _load(self, root: Path | None) -> DataBundle:
        assert root is not None
        params = self.params
        hint = self.layout_hint
        train_parts = [_read_mat(root / "train_32x32.mat", hint)]
        if params.use_extra:
            train_parts.append(_read_mat(root / "extra_32x32.mat", hint))
        test_parts = [_read_mat(root / "test_32x32.mat", hint)]
        train = _dataset(train_parts, root / "extra_32x32.mat")
        test = _dataset(test_parts, root / "test_32x32.mat")
        c, h, w = (int(s) for s in train.x.shape[1:])
        if tuple(test.x.shape[1:]) != (c, h, w):
            raise DataError(
                f"{str(root / 'test_32x32.mat')!r}: images are {tuple(test.x.shape[2:])}, "
                f"train images {(h, w)}"
            )
        return DataBundle(
            name=self.name,
            train=train,
            val=ArrayDataset(torch.empty(0, c, h, w), torch.empty(0, dtype=torch.long)),
            test=test,
            classes=tuple(str(i) for i in range(10)),
            input_shape=(c, h, w),
        )
