"""CIFAR-10 and CIFAR-100 in the official "python version" pickle layout.

``cifar-10-python.tar.gz`` extracts to ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``) and ``cifar-100-python.tar.gz`` to ``cifar-100-python/`` (``train``,
``test``, ``meta``). Each data file is a pickled dict with byte-string keys: ``b"data"`` is an
``N x 3072`` uint8 array whose rows are 32x32 colour images stored channel-major (the 1,024 red values,
then green, then blue, each plane row by row), and the labels are a list under ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100; the 20 coarse labels are not used). Class names come
from the meta file (``b"label_names"`` and ``b"fine_label_names"``).

The files were written by Python 2, so they are unpickled with ``encoding="bytes"``. Unpickling can
execute arbitrary code: these readers treat the files as the trusted official data, so point ``root``
only at files obtained from the official source.

Neither data set has a validation split; it is carved from train by
:func:`compaudit.data.base.finalize`.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from compaudit.data.base import DATASETS, ArrayDataset, DataBundle, DataParams, DataSource
from compaudit.errors import DataError

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"


def _locate(root: Path, folder: str) -> Path:
    """``root/folder`` when it exists, else ``root`` itself (the user pointed at the folder directly)."""
    sub = root / folder
    return sub if sub.is_dir() else root


def _unpickle(path: Path, hint: str) -> dict[Any, Any]:
    if not path.is_file():
        raise DataError(f"missing file {str(path)!r}; {hint}")
    try:
        with path.open("rb") as fh:
            obj = pickle.load(fh, encoding="bytes")  # trusted official data, see the module docstring
    except Exception as exc:  # a damaged pickle can raise almost anything (EOFError, UnpicklingError, ...)
        raise DataError(
            f"cannot read {str(path)!r}: truncated or not a CIFAR pickle ({type(exc).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{str(path)!r} is not a CIFAR pickle: expected a dict, got {type(obj).__name__}")
    return obj


def _entry(obj: dict[Any, Any], key: str, path: Path) -> Any:
    """``obj[b"key"]`` (as unpickled from Python 2), or ``obj["key"]`` for a file re-pickled by Python 3."""
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise DataError(f"{str(path)!r} has no key b{key!r}; is it the right CIFAR file?")


def _class_names(path: Path, key: str, expected: int, hint: str) -> tuple[str, ...]:
    names = _entry(_unpickle(path, hint), key, path)
    if not isinstance(names, Sequence) or len(names) != expected:
        raise DataError(f"{str(path)!r}: b{key!r} must list {expected} class names")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _batch(
    path: Path, label_key: str, num_classes: int, hint: str
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    obj = _unpickle(path, hint)
    data = np.asarray(_entry(obj, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{str(path)!r}: b'data' must be an N x 3072 uint8 array, got {data.dtype} {tuple(data.shape)}"
        )
    labels = np.asarray(_entry(obj, label_key, path))
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{str(path)!r}: b{label_key!r} must hold {data.shape[0]} integer labels, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{str(path)!r}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _dataset(parts: list[tuple[NDArray[np.uint8], NDArray[np.int64]]]) -> ArrayDataset:
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ArrayDataset(torch.from_numpy(x.astype(np.float32)).div_(255.0), torch.from_numpy(y))


def _empty() -> ArrayDataset:
    return ArrayDataset(torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.long))


def _bundle(name: str, train: ArrayDataset, test: ArrayDataset, classes: tuple[str, ...]) -> DataBundle:
    return DataBundle(
        name=name, train=train, val=_empty(), test=test, classes=classes, input_shape=(3, 32, 32)
    )


@DATASETS.register("cifar10")
class Cifar10(DataSource[DataParams]):
    """CIFAR-10: 60,000 32x32 colour images of 10 classes, from the official python pickles."""

    layout_hint: ClassVar[str] = (
        f"expected <root>/{_CIFAR10_DIR}/ (or <root> itself) holding data_batch_1 .. data_batch_5, "
        "test_batch and batches.meta, as extracted from cifar-10-python.tar.gz"
    )

    def _load(self, root: Path | None) -> DataBundle:
        assert root is not None
        folder = _locate(root, _CIFAR10_DIR)
        hint = self.layout_hint
        classes = _class_names(folder / "batches.meta", "label_names", 10, hint)
        train = [_batch(folder / f"data_batch_{i}", "labels", 10, hint) for i in range(1, 6)]
        test = [_batch(folder / "test_batch", "labels", 10, hint)]
        return _bundle(self.name, _dataset(train), _dataset(test), classes)


@DATASETS.register("cifar100")
class Cifar100(DataSource[DataParams]):
    """CIFAR-100: 60,000 32x32 colour images of 100 fine classes, from the official python pickles."""

    layout_hint: ClassVar[str] = (
        f"expected <root>/{_CIFAR100_DIR}/ (or <root> itself) holding train, test and meta, "
        "as extracted from cifar-100-python.tar.gz"
    )

    def _load(self, root: Path | None) -> DataBundle:
        assert root is not None
        folder = _locate(root, _CIFAR100_DIR)
        hint = self.layout_hint
        classes = _class_names(folder / "meta", "fine_label_names", 100, hint)
        train = _batch(folder / "train", "fine_labels", 100, hint)
        test = _batch(folder / "test", "fine_labels", 100, hint)
        return _bundle(self.name, _dataset([train]), _dataset([test]), classes)
