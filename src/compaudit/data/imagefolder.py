"""Image-folder trees: one sub-folder of image files per class.

Two layouts are read:

* split: ``<root>/train/<class>/...`` and ``<root>/test/<class>/...``, and optionally
  ``<root>/val/<class>/...`` (otherwise the validation split is carved from train);
* single tree: ``<root>/<class>/...``; a fixed, stratified ``test_fraction`` of every class is held
  out for test (and the validation split is carved from the rest).

Class names are the sorted names of the class folders (of ``train/`` in the split layout); a class
folder under ``test/`` or ``val/`` that is not under ``train/`` is an error. Files are found
recursively inside each class folder, by extension (.png .jpg .jpeg .bmp .ppm .gif .tif .tiff .webp,
any case); hidden files and folders (name starting with ``.``) are skipped. Every image is read with
Pillow as RGB (or greyscale when ``channels`` is 1) and resized, without cropping, to ``size`` x
``size`` with bilinear filtering as it is read, so only the small copies are kept in memory.

This reader serves GTSRB once converted to class folders, ImageNet subsets, and each Office-31 domain
(``amazon/``, ``webcam/``, ``dslr/``: point ``root`` at one domain, a single tree of class folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field

from compaudit.data.base import (
    DATASETS,
    ArrayDataset,
    DataBundle,
    DataParams,
    DataSource,
    stratified_split,
)
from compaudit.errors import DataError

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"})
_SPLIT_SEED = 20240611


class ImageFolderParams(DataParams):
    size: int = Field(default=32, ge=4, le=1024, description="resize every image to size x size")
    test_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="share of every class held out for test (single tree only)"
    )


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.suffix.lower() in EXTENSIONS and all(_visible(Path(p)) for p in rel.parts) and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _scan(folder: Path, classes: dict[str, int] | None, hint: str) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of a tree of class folders; ``classes`` None: the tree defines the classes."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"no class folders in {str(folder)!r}; {hint}")
    names = [d.name for d in dirs]
    mapping = {name: i for i, name in enumerate(names)} if classes is None else classes
    files: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in mapping:
            raise DataError(f"class folder {str(d)!r} has no counterpart among the training classes")
        found = _image_files(d)
        if not found and classes is None:
            raise DataError(f"class folder {str(d)!r} holds no images; {hint}")
        files.extend(found)
        labels.extend([mapping[d.name]] * len(found))
    if not files:
        raise DataError(f"no images in {str(folder)!r}; {hint}")
    return files, labels, names


def _read_images(files: list[Path], size: int, mode: str) -> NDArray[np.uint8]:
    from PIL import Image

    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img.draft(mode, (size, size))  # JPEG: decode at a reduced scale, still >= size
                small = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {str(path)!r}: {type(exc).__name__}") from None
        out[i] = np.asarray(small, dtype=np.uint8).reshape(size, size, channels).transpose(2, 0, 1)
    return out


def _dataset(files: list[Path], labels: list[int], size: int, mode: str) -> ArrayDataset:
    x = torch.from_numpy(_read_images(files, size, mode)).to(torch.float32).div_(255.0)
    return ArrayDataset(x, torch.tensor(labels, dtype=torch.int64))


@DATASETS.register("imagefolder")
class ImageFolder(DataSource[ImageFolderParams]):
    """Images in one folder per class: train/ and test/ trees, or one tree split by test_fraction."""

    Params: ClassVar[type[DataParams]] = ImageFolderParams
    layout_hint: ClassVar[str] = (
        "expected <root>/train/<class>/<image> and <root>/test/<class>/<image> (optionally "
        "<root>/val/<class>/<image>), or a single tree <root>/<class>/<image>"
    )

    def _load(self, root: Path | None) -> DataBundle:
        assert root is not None
        params = self.params
        hint = self.layout_hint
        mode = "L" if params.channels == 1 else "RGB"
        c, s = (1 if mode == "L" else 3), params.size
        empty = ArrayDataset(torch.empty(0, c, s, s), torch.empty(0, dtype=torch.long))
        if (root / "train").is_dir() or (root / "test").is_dir():
            for split in ("train", "test"):
                if not (root / split).is_dir():
                    raise DataError(f"missing folder {str(root / split)!r}; {hint}")
            files, labels, names = _scan(root / "train", None, hint)
            mapping = {name: i for i, name in enumerate(names)}
            train = _dataset(files, labels, s, mode)
            test = _dataset(*_scan(root / "test", mapping, hint)[:2], s, mode)
            val = (
                _dataset(*_scan(root / "val", mapping, hint)[:2], s, mode)
                if (root / "val").is_dir()
                else empty
            )
        else:
            files, labels, names = _scan(root, None, hint)
            data = _dataset(files, labels, s, mode)
            keep, held = stratified_split(data.y, params.test_fraction, seed=_SPLIT_SEED)
            train, test, val = data.subset(keep), data.subset(held), empty
        return DataBundle(
            name=self.name,
            train=train,
            val=val,
            test=test,
            classes=tuple(names),
            input_shape=(c, s, s),
        )
