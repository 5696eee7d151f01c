"""Reader of the pre-generated CIFAR-10-C and CIFAR-100-C releases (Hendrycks & Dietterich, ICLR 2019).

A release is one folder (``CIFAR-10-C/`` or ``CIFAR-100-C/`` once its archive is extracted) holding
``labels.npy`` and one ``<corruption>.npy`` per corruption: the 15 of
:data:`compaudit.data.corruptions.CORRUPTIONS` plus the four extra ones (speckle_noise, gaussian_blur,
spatter, saturate). Every corruption file is a ``uint8`` array of shape (50000, 32, 32, 3): the 10,000
test images at severity 1, then the same images at severity 2, and so on to 5, so severity ``s`` occupies
rows ``(s - 1) * 10000`` to ``s * 10000``. ``labels.npy`` holds the matching 50,000 integer labels (the
test labels five times; ``uint8`` in the official files): 0..9 for CIFAR-10-C, 0..99 for CIFAR-100-C.

Files are opened memory-mapped, so only the rows asked for are read from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from compaudit.data.base import ArrayDataset
from compaudit.data.corruptions import CORRUPTIONS, SEVERITIES
from compaudit.errors import DataError

__all__ = ["CIFAR_C_CORRUPTIONS", "load_cifar_c"]

#: the files of the release: the 15 common corruptions and the 4 held-out ones
CIFAR_C_CORRUPTIONS: tuple[str, ...] = (*CORRUPTIONS, "speckle_noise", "gaussian_blur", "spatter", "saturate")

_IMAGE_SHAPE = (32, 32, 3)
_MAX_CLASSES = 100  # CIFAR-100-C
_LAYOUT = (
    "expected the CIFAR-10-C release: <corruption>.npy files of shape (50000, 32, 32, 3) uint8 and labels.npy"
)


def _open(path: Path) -> NDArray[Any]:
    if not path.is_file():
        raise DataError(f"missing file {str(path)!r}; {_LAYOUT}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {str(path)!r}: not a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive loads as a mapping
        raise DataError(f"cannot read {str(path)!r}: not a .npy array")
    return arr


def load_cifar_c(
    root: str | Path,
    corruption: str,
    severity: int,
    *,
    indices: torch.Tensor | None = None,
    per_severity: int = 10000,
) -> ArrayDataset:
    """The test images of one corruption at one severity from a CIFAR-10-C (or CIFAR-100-C) folder.

    Returns images as float32 (N, 3, 32, 32) in [0, 1] and int64 labels. ``indices`` picks test-set rows
    (0 to ``per_severity - 1``) inside the severity's block, in the order given; ``None`` reads the whole
    block. ``per_severity`` is the block length, 10,000 in the official release (tests use smaller files).
    A missing folder or file, an array of the wrong shape or dtype, or labels that do not match raise
    :class:`~compaudit.errors.DataError` naming the file.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"CIFAR-C folder {str(folder)!r} does not exist; {_LAYOUT}")
    if corruption not in CIFAR_C_CORRUPTIONS:
        raise DataError(
            f"unknown CIFAR-C corruption {corruption!r}; choose one of: {', '.join(CIFAR_C_CORRUPTIONS)}"
        )
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise DataError(f"CIFAR-C severity {severity!r} is out of range; choose one of: 1, 2, 3, 4, 5")
    if per_severity < 1:
        raise DataError(f"per_severity must be at least 1, got {per_severity}")

    n_rows = len(SEVERITIES) * per_severity
    path = folder / f"{corruption}.npy"
    data = _open(path)
    expected = (n_rows, *_IMAGE_SHAPE)
    if data.dtype != np.uint8 or data.shape != expected:
        raise DataError(
            f"{str(path)!r}: expected a uint8 array of shape {expected}, got {data.dtype} {tuple(data.shape)}"
        )
    labels_path = folder / "labels.npy"
    labels = _open(labels_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{str(labels_path)!r}: expected a 1-D integer array, got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.shape[0] != n_rows:
        raise DataError(
            f"{str(labels_path)!r} has {labels.shape[0]} labels but {str(path)!r} has {n_rows} images"
        )

    start = (int(severity) - 1) * per_severity
    if indices is None:
        rows: NDArray[np.int64] | slice = slice(start, start + per_severity)
    else:
        idx = torch.as_tensor(indices)
        if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise DataError(f"indices must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}")
        sel = idx.to(torch.int64).cpu().numpy()
        if sel.size and (sel.min() < 0 or sel.max() >= per_severity):
            raise DataError(
                f"indices must lie in 0..{per_severity - 1} (rows of one severity), "
                f"got {int(sel.min())}..{int(sel.max())}"
            )
        rows = sel + start
    images = np.array(data[rows], dtype=np.uint8, copy=True)  # reads just these rows from the map
    y = np.array(labels[rows], dtype=np.int64, copy=True)
    del data, labels  # drop the memory maps
    if y.size and (y.min() < 0 or y.max() >= _MAX_CLASSES):
        raise DataError(
            f"{str(labels_path)!r}: labels must lie in 0..{_MAX_CLASSES - 1}, "
            f"got {int(y.min())}..{int(y.max())}"
        )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return ArrayDataset(x.contiguous(), torch.from_numpy(y))
