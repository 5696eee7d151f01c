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
Pillow as RGB (or greyscale when ``channels`` is 1), transformed as it is read, so only the small
copies are kept in memory, and stored as floats in [0, 1] (normalisation belongs to the model).

Transforms (``params``):

* default (``resize`` unset): resized, without cropping, to ``size`` x ``size`` (bilinear);
* ``resize: R`` (>= ``size``): torchvision's ``Resize(R)`` + ``CenterCrop(size)`` on PIL images, the
  evaluation transform of the ImageNet-pretrained models: the shorter side scaled to ``R`` and the
  other to ``int(R * long / short)`` (bilinear, antialiased as Pillow always is), then the centre
  ``size`` x ``size`` taken at ``int(round((h - size) / 2.0))``, ``int(round((w - size) / 2.0))``.
  Seed 001 (Office-31) uses ``{size: 224, resize: 256}``.

JPEG files are decoded at a reduced DCT scale (Pillow's ``draft``) that keeps the image at least as
large as the resize target in both dimensions, and the final resize maps the drafted image onto the
same geometry as the full image (Pillow's draft box), so sizes and crop offsets are exactly those of
a full decode and the pixel values differ only by the decoder's downscaling; ``draft: false``
decodes every JPEG at full size, as torchvision's own loader does (slower).

Decoding runs on a pool of threads (Pillow releases the GIL while it decodes and resizes):
``workers``, else ``$COMPAUDIT_DATA_WORKERS``, else the usable CPUs. The decoded uint8 images are
kept in an in-process memo and, unless ``cache: false``, in a file under
``$COMPAUDIT_CACHE_DIR/imagefolder/`` (default ``~/.cache/compaudit/imagefolder/``; delete it to
clear the cache), keyed by the files' paths, sizes and modification times and the transform: a tree
is decoded once per machine, not once per probe, cell or worker, and a changed, added or removed
file is decoded afresh (see :mod:`compaudit.data._imagecache`).

This reader serves GTSRB once converted to class folders, ImageNet subsets, and each Office-31 domain
(``amazon/``, ``webcam/``, ``dslr/``: point ``root`` at one domain, a single tree of class folders).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field, ValidationInfo, field_validator

from compaudit.data import _imagecache
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
log = logging.getLogger(__name__)


class ImageFolderParams(DataParams):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"cache", "workers"})

    size: int = Field(
        default=32,
        ge=4,
        le=1024,
        description="images are size x size (resized, or centre-cropped with resize)",
    )
    resize: int | None = Field(
        default=None,
        ge=4,
        le=4096,
        description="scale the shorter side to resize, then centre-crop size x size (torchvision's "
        "Resize + CenterCrop); unset: resize to size x size without cropping",
    )
    test_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="share of every class held out for test (single tree only)"
    )
    draft: bool = Field(
        default=True,
        description="decode JPEGs at a reduced scale still >= the resize target (false: full decode)",
    )
    cache: bool = Field(
        default=True,
        description="keep the decoded images on disk ($COMPAUDIT_CACHE_DIR/imagefolder, else "
        "~/.cache/compaudit/imagefolder) for later runs",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="decoding threads (default: $COMPAUDIT_DATA_WORKERS or the CPUs)",
    )

    @field_validator("resize")
    @classmethod
    def _resize_covers_crop(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("size")
        if value is not None and isinstance(size, int) and value < size:
            raise ValueError(f"must be at least size ({size}) for a centre crop of size x size")
        return value


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


@dataclass(frozen=True)
class Transform:
    """What is done to every image as it is read; :meth:`key` names it in the cache key."""

    mode: str  # "RGB" or "L"
    size: int
    resize: int | None = None  # None: plain resize to size x size; else shorter side to resize + crop
    draft: bool = True

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def key(self) -> dict[str, object]:
        return {"mode": self.mode, "size": self.size, "resize": self.resize, "draft": self.draft}


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """``(width, height)`` after scaling the shorter side to ``resize``: torchvision's
    ``_compute_resized_output_size`` for an int size, the longer side ``int(resize * long / short)``
    (torchvision/transforms/functional.py, pytorch/vision, without ``max_size``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def centre_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Pillow crop box ``(left, top, right, bottom)`` of the centre ``size`` x ``size`` of a
    ``width`` x ``height`` image: torchvision's ``center_crop`` (torchvision/transforms/
    functional.py: ``crop_top = int(round((image_height - crop_height) / 2.0))``, the same for the
    left; Python's round, halves to even), applied through ``F_pil.crop`` as
    ``img.crop((left, top, left + width, top + height))``. Needs ``size`` <= both sides (the
    ``resize`` >= ``size`` check guarantees it), so torchvision's zero padding never applies."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def _decode(path: Path, t: Transform) -> NDArray[np.uint8]:
    """One image, transformed, as an (H, W, C) uint8 array."""
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    try:
        with Image.open(path) as img:
            if t.resize is None:
                if t.draft:
                    img.draft(t.mode, (t.size, t.size))  # JPEG: decode at a reduced scale, still >= size
                small = img.convert(t.mode).resize((t.size, t.size), bilinear)
            else:
                # torchvision: Resize(resize) then CenterCrop(size), on the PIL image that
                # datasets.folder.pil_loader returns (img.convert("RGB")); PIL's bilinear filter
                # is always antialiased (its support widens with the downscaling factor)
                w, h = img.size
                new_w, new_h = resized_size(w, h, t.resize)
                # JPEG draft: the DCT scale keeps both sides >= the resize target; its box maps the
                # drafted pixels back onto the full image's coordinates (as Image.thumbnail does)
                drafted = img.draft(t.mode, (new_w, new_h)) if t.draft else None
                box = drafted[1] if drafted is not None else None
                scaled = img.convert(t.mode).resize((new_w, new_h), bilinear, box=box)
                small = scaled.crop(centre_crop_box(new_w, new_h, t.size))
            out = np.asarray(small, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {type(exc).__name__}") from None
    return out.reshape(t.size, t.size, t.channels)


def _read_images(files: list[Path], t: Transform, workers: int = 1) -> NDArray[np.uint8]:
    """Decode ``files`` into an (N, C, size, size) uint8 array, on ``workers`` threads; a file that
    cannot be read raises :class:`DataError` naming it (the first such file in list order)."""
    out = np.empty((len(files), t.channels, t.size, t.size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = _decode(files[i], t).transpose(2, 0, 1)

    if workers <= 1 or len(files) <= 1:
        for i in range(len(files)):
            one(i)
        return out
    with ThreadPoolExecutor(max_workers=min(workers, len(files)), thread_name_prefix="imagefolder") as pool:
        futures = [pool.submit(one, i) for i in range(len(files))]
        try:
            for fut in futures:  # in order: the first failure raised is the first bad file
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return out


def _pixels(files: list[Path], t: Transform, params: ImageFolderParams, where: Path) -> NDArray[np.uint8]:
    """The decoded images of ``files``: from the memo, else the cache file, else decoded (and then
    stored in both). The returned array is read-only and shared: never write into it."""
    key = _imagecache.cache_key(_imagecache.file_stats(files), t.key())
    arr = _imagecache.MEMO.get(key)
    if arr is not None:
        return arr
    shape = (len(files), t.channels, t.size, t.size)
    path = _imagecache.cache_dir() / f"{key}.bin"
    if params.cache:
        arr = _imagecache.read(path, key, shape)
        if arr is not None:
            log.debug("read %d decoded images of %s from %s", len(files), where, path)
    if arr is None:
        workers = _imagecache.decode_workers(params.workers)
        t0 = time.perf_counter()
        arr = _read_images(files, t, workers)
        log.info(
            "decoded %d images of %s in %.1f s on %d threads",
            len(files),
            where,
            time.perf_counter() - t0,
            workers,
        )
        if params.cache:
            _imagecache.write(path, key, arr)
    _imagecache.MEMO.put(key, arr)
    return arr


def _floats(
    pixels: NDArray[np.uint8], labels: torch.Tensor, index: torch.Tensor | None = None
) -> ArrayDataset:
    """The images (those at ``index``, if given) as floats in [0, 1], each value ``uint8 / 255``
    in float32; selecting on the uint8 array first spares a copy of the floats."""
    if index is not None:
        pixels, labels = pixels[index.numpy()], labels[index]
    return ArrayDataset(torch.from_numpy(np.divide(pixels, np.float32(255.0), dtype=np.float32)), labels)


def _dataset(
    files: list[Path], labels: list[int], t: Transform, params: ImageFolderParams, where: Path
) -> ArrayDataset:
    return _floats(_pixels(files, t, params, where), torch.tensor(labels, dtype=torch.int64))


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
        t = Transform(mode=mode, size=params.size, resize=params.resize, draft=params.draft)
        c, s = t.channels, t.size
        empty = ArrayDataset(torch.empty(0, c, s, s), torch.empty(0, dtype=torch.long))
        if (root / "train").is_dir() or (root / "test").is_dir():
            for split in ("train", "test"):
                if not (root / split).is_dir():
                    raise DataError(f"missing folder {str(root / split)!r}; {hint}")
            files, labels, names = _scan(root / "train", None, hint)
            mapping = {name: i for i, name in enumerate(names)}
            train = _dataset(files, labels, t, params, root / "train")
            test = _dataset(*_scan(root / "test", mapping, hint)[:2], t, params, root / "test")
            val = (
                _dataset(*_scan(root / "val", mapping, hint)[:2], t, params, root / "val")
                if (root / "val").is_dir()
                else empty
            )
        else:
            files, labels, names = _scan(root, None, hint)
            pixels = _pixels(files, t, params, root)
            y = torch.tensor(labels, dtype=torch.int64)
            keep, held = stratified_split(y, params.test_fraction, seed=_SPLIT_SEED)
            train, test, val = _floats(pixels, y, keep), _floats(pixels, y, held), empty
        return DataBundle(
            name=self.name,
            train=train,
            val=val,
            test=test,
            classes=tuple(names),
            input_shape=(c, s, s),
        )
