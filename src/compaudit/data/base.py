"""Data sets: one abstract base, one registry, one batch iterator.

Every data set yields images as float32 tensors of shape ``(C, H, W)`` with values inside
``bounds`` (``[0, 1]`` for all built-ins) and integer labels. Normalisation, if any, belongs
inside the model, so attacks and saliency work in the natural input space.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from compaudit.errors import DataError
from compaudit.registry import Registry


class ArrayDataset(Dataset[tuple[Tensor, Tensor]]):
    """An in-memory data set: ``x`` of shape (N, C, H, W) float32, ``y`` of shape (N,) int64."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if x.ndim != 4:
            raise DataError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise DataError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        self.x = x.to(torch.float32).contiguous()
        self.y = y.to(torch.int64).contiguous()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def subset(self, indices: Tensor | Sequence[int]) -> ArrayDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class DataBundle:
    """Train/validation/test splits of one data set, with what a model and a probe need to know."""

    name: str
    train: Dataset[tuple[Tensor, Tensor]]
    val: Dataset[tuple[Tensor, Tensor]]
    test: Dataset[tuple[Tensor, Tensor]]
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    bounds: tuple[float, float] = (0.0, 1.0)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Dataset[tuple[Tensor, Tensor]]:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose one of: train, val, test")
        ds: Dataset[tuple[Tensor, Tensor]] = getattr(self, name)
        return ds


class DataParams(BaseModel):
    """Options every data set accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int | None = Field(default=None, ge=1, le=4, description="convert images to 1 or 3 channels")
    size: int | None = Field(default=None, ge=4, le=1024, description="resize images to size x size")
    val_fraction: float = Field(
        default=0.1, gt=0.0, lt=0.5, description="share of train carved out for validation when no val split"
    )
    max_train: int | None = Field(default=None, ge=1, description="keep at most this many training images")
    max_test: int | None = Field(default=None, ge=1, description="keep at most this many test images")

    #: parameters that change how the data is read (threads, caches), never what is read: left out
    #: of the keys of results, so changing them reruns nothing
    runtime_fields: ClassVar[frozenset[str]] = frozenset()


def result_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` of data set ``name`` without its :attr:`DataParams.runtime_fields` (what a result's
    key covers)."""
    skip = DATASETS.get(name).Params.runtime_fields if name in DATASETS else frozenset()
    return {k: v for k, v in params.items() if k not in skip}


DP = TypeVar("DP", bound=DataParams)


class DataSource(ABC, Generic[DP]):
    """Base of every data set, generic in its parameters (``DataSource[XParams]``, with ``Params =
    XParams`` for validation). Subclasses override :meth:`_load` only.

    :meth:`load` checks the root folder, applies the common options (channels, size, validation
    carve-out, subsampling) and validates the result: finite values inside bounds, labels in range.
    """

    #: validates a spec's parameters; must be (a subclass of) the class's type argument ``DP``
    Params: ClassVar[type[DataParams]] = DataParams
    #: whether the data set reads files from a root folder (the embedded ``digits`` does not)
    needs_root: ClassVar[bool] = True
    #: what the user must put under the root folder, shown when it is missing
    layout_hint: ClassVar[str] = ""

    def __init__(self, name: str, params: DP) -> None:
        self.name = name
        self.params: DP = params

    def load(self, root: Path | None) -> DataBundle:
        if self.needs_root:
            if root is None:
                raise DataError(f"data set {self.name!r} needs a root folder (data.root); {self.layout_hint}")
            root = Path(root).expanduser()
            if not root.is_dir():
                raise DataError(
                    f"data folder {str(root)!r} for {self.name!r} does not exist; {self.layout_hint}"
                )
        bundle = self._load(root)
        return finalize(bundle, self.params)

    @abstractmethod
    def _load(self, root: Path | None) -> DataBundle:
        """Read the splits. A format without a validation split returns an empty ArrayDataset as ``val``;
        :func:`finalize` then carves it from train."""


#: every data set by name; a module of :mod:`compaudit.data` or a ``compaudit.datasets`` entry point
#: registers its data sets when imported
DATASETS: Registry[type[DataSource[Any]]] = Registry(
    "data set", error=DataError, package="compaudit.data", entry_point_group="compaudit.datasets"
)


def load_dataset(
    name: str, root: str | Path | None = None, params: dict[str, Any] | None = None
) -> DataBundle:
    """Build the data set called ``name`` from the registry."""
    from pydantic import ValidationError

    cls = DATASETS.get(name)
    try:
        p = cls.Params.model_validate(params or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise DataError(f"data.params.{loc}: {err['msg']}") from None
    source: DataSource[Any] = cls(name, p)
    return source.load(Path(root) if root is not None else None)


# ---------------------------------------------------------------- helpers shared by readers


def stratified_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (keep, held_out) with ``fraction`` of every class held out; deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    keep: list[Tensor] = []
    held: list[Tensor] = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c, as_tuple=False).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(len(idx) * fraction))
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def convert_images(x: Tensor, channels: int | None, size: int | None) -> Tensor:
    """Change channel count (grey <-> RGB) and resize (bilinear, antialiased) a (N, C, H, W) batch."""
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1 and x.shape[1] >= 3:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
            x = (x[:, :3] * w).sum(1, keepdim=True)
        else:
            raise DataError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if size is not None and (x.shape[2] != size or x.shape[3] != size):
        out = []
        for chunk in torch.split(x, 1024):
            out.append(
                F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            )
        x = torch.cat(out).clamp_(0.0, 1.0)
    return x.contiguous()


def finalize(bundle: DataBundle, params: DataParams) -> DataBundle:
    """Apply the common options to an in-memory bundle and validate it."""
    train, val, test = bundle.train, bundle.val, bundle.test
    if isinstance(train, ArrayDataset) and isinstance(test, ArrayDataset) and isinstance(val, ArrayDataset):
        if len(val) == 0:
            keep, held = stratified_split(train.y, params.val_fraction, seed=0)
            train, val = train.subset(keep), train.subset(held)
        if params.max_train is not None and len(train) > params.max_train:
            train = train.subset(sample_indices(train.y, params.max_train, seed=1))
        if params.max_test is not None and len(test) > params.max_test:
            test = test.subset(sample_indices(test.y, params.max_test, seed=2))
        splits = []
        for split in (train, val, test):
            x = convert_images(split.x, params.channels, params.size)
            splits.append(ArrayDataset(x, split.y))
        train, val, test = splits
        for split_name, split in zip(("train", "val", "test"), splits, strict=True):
            _validate(bundle, split_name, split)
        shape = (int(train.x.shape[1]), int(train.x.shape[2]), int(train.x.shape[3]))
        return DataBundle(bundle.name, train, val, test, bundle.classes, shape, bundle.bounds)
    return bundle


def sample_indices(y: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices of a stratified subsample of at most ``n`` of the labels ``y``; deterministic."""
    if n >= len(y):
        return torch.arange(len(y))
    keep, _ = stratified_split(y, 1.0 - n / len(y), seed=seed)
    if len(keep) > n:  # per-class rounding can keep a few too many: drop the excess at random
        g = torch.Generator().manual_seed(seed)
        keep = torch.sort(keep[torch.randperm(len(keep), generator=g)[:n]]).values
    return keep


def _validate(bundle: DataBundle, split_name: str, split: ArrayDataset) -> None:
    if len(split) == 0:
        raise DataError(f"data set {bundle.name!r}: the {split_name} split is empty")
    if not torch.isfinite(split.x).all():
        raise DataError(f"data set {bundle.name!r}: the {split_name} split contains NaN or infinite values")
    lo, hi = bundle.bounds
    if split.x.min().item() < lo - 1e-6 or split.x.max().item() > hi + 1e-6:
        raise DataError(f"data set {bundle.name!r}: {split_name} values leave the bounds [{lo}, {hi}]")
    if split.y.min().item() < 0 or split.y.max().item() >= len(bundle.classes):
        raise DataError(f"data set {bundle.name!r}: {split_name} labels outside 0..{len(bundle.classes) - 1}")


def batches(
    dataset: Dataset[tuple[Tensor, Tensor]],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Iterate ``(x, y)`` batches; in-memory data sets are sliced directly (no per-sample collation)."""
    if isinstance(dataset, ArrayDataset):
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for i in range(math.ceil(n / batch_size)):
            if order is None:
                sl = slice(i * batch_size, (i + 1) * batch_size)
                xb, yb = dataset.x[sl], dataset.y[sl]
            else:
                idx = order[i * batch_size : (i + 1) * batch_size]
                xb, yb = dataset.x[idx], dataset.y[idx]
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
    for xb, yb in loader:
        yield xb.to(device), yb.to(device)


def num_batches(dataset: Dataset[tuple[Tensor, Tensor]], batch_size: int) -> int:
    return math.ceil(len(dataset) / batch_size)  # type: ignore[arg-type]
