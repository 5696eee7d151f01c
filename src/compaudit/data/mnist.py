"""MNIST and Fashion-MNIST in the IDX file format.

Both data sets ship as four IDX files with the same names: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each usually
gzipped (``.gz``); either form is read. An IDX file starts with a big-endian header: a 32-bit magic
number (``0x00000803`` for a 3-d unsigned-byte array of images, ``0x00000801`` for a 1-d one of
labels), then one 32-bit size per dimension, then the values row by row. The magic number and the
file length are checked against the header, and images against labels.

Images are 28x28 greyscale, scaled to ``[0, 1]``. Neither data set has a validation split; it is
carved from train by :func:`compaudit.data.base.finalize`.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from compaudit.data.base import DATASETS, ArrayDataset, DataBundle, DataParams, DataSource
from compaudit.errors import DataError

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_LAYOUT = "expected <root>/ (or <root>/raw/) holding " + ", ".join(_FILES) + ", each optionally gzipped (.gz)"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _find(root: Path, name: str, hint: str) -> Path:
    """The file ``name`` or ``name.gz`` in ``root`` or ``root/raw``, the uncompressed one first."""
    for folder in (root, root / "raw"):
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                return path
    raise DataError(f"missing file {name!r} (or {name}.gz) in {str(root)!r}; {hint}")


def _read_idx(path: Path, magic: int) -> NDArray[np.uint8]:
    """The unsigned-byte array stored in the IDX file ``path`` (gzipped when named ``*.gz``)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {str(path)!r}: corrupted or truncated ({type(exc).__name__})") from None
    if len(raw) < 4:
        raise DataError(f"{str(path)!r} is truncated: {len(raw)} bytes, shorter than an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{str(path)!r} is not an IDX file of the expected kind: magic number {found:#010x}, "
            f"expected {magic:#010x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{str(path)!r} is truncated: {len(raw)} bytes, shorter than its {header}-byte header"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "corrupted"
        raise DataError(
            f"{str(path)!r} is {what}: {len(raw)} bytes, expected {expected} for shape {tuple(shape)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _split(root: Path, images: str, labels: str, hint: str) -> ArrayDataset:
    img_path, lbl_path = _find(root, images, hint), _find(root, labels, hint)
    x = _read_idx(img_path, _IMAGES_MAGIC)
    y = _read_idx(lbl_path, _LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{str(img_path)!r} holds {x.shape[0]} images but {str(lbl_path)!r} {y.shape[0]} labels"
        )
    if y.size and y.max() > 9:
        raise DataError(f"{str(lbl_path)!r}: labels outside 0..9")
    xt = torch.from_numpy(x.astype(np.float32)).div_(255.0).unsqueeze(1)
    return ArrayDataset(xt, torch.from_numpy(y.astype(np.int64)))


class _Idx(DataSource[DataParams]):
    classes: ClassVar[tuple[str, ...]] = tuple(str(i) for i in range(10))

    def _load(self, root: Path | None) -> DataBundle:
        assert root is not None
        hint = self.layout_hint
        train = _split(root, _FILES[0], _FILES[1], hint)
        test = _split(root, _FILES[2], _FILES[3], hint)
        h, w = int(train.x.shape[2]), int(train.x.shape[3])
        if test.x.shape[1:] != train.x.shape[1:]:
            raise DataError(
                f"data set {self.name!r}: test images are {tuple(test.x.shape[2:])} but train images {(h, w)}"
            )
        return DataBundle(
            name=self.name,
            train=train,
            val=ArrayDataset(torch.empty(0, 1, h, w), torch.empty(0, dtype=torch.long)),
            test=test,
            classes=self.classes,
            input_shape=(1, h, w),
        )


@DATASETS.register("mnist")
class Mnist(_Idx):
    """MNIST: 70,000 28x28 greyscale handwritten digits of 10 classes, from the IDX files."""

    layout_hint: ClassVar[str] = _LAYOUT


@DATASETS.register("fashion_mnist")
class FashionMnist(_Idx):
    """Fashion-MNIST: 70,000 28x28 greyscale clothing images of 10 classes, from the IDX files."""

    layout_hint: ClassVar[str] = _LAYOUT
    classes: ClassVar[tuple[str, ...]] = FASHION_CLASSES
