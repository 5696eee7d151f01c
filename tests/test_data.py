"""Readers of the on-disk data formats, exercised on small fixtures written in each real format."""

from __future__ import annotations

import gzip
import pickle
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch import Tensor

from compaudit.data import ArrayDataset, DataBundle, DataParams, load_dataset
from compaudit.data.base import finalize
from compaudit.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_NAMES = (
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


# ---------------------------------------------------------------- helpers


def _arrays(bundle: DataBundle) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    splits = (bundle.train, bundle.val, bundle.test)
    assert all(isinstance(s, ArrayDataset) for s in splits)
    return splits  # type: ignore[return-value]


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x * 255.0).round().to(torch.uint8).numpy()


def _rows(x: Tensor) -> Counter[bytes]:
    """Multiset of images, each as the bytes of its exact uint8 pixels."""
    u8 = _to_uint8(x)
    return Counter(u8[i].tobytes() for i in range(len(u8)))


def _check_common(bundle: DataBundle, shape: tuple[int, int, int], classes: tuple[str, ...]) -> None:
    assert bundle.classes == classes
    assert bundle.input_shape == shape
    for split in _arrays(bundle):
        assert len(split) > 0
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == shape
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
        assert int(split.y.min()) >= 0 and int(split.y.max()) < len(classes)


def _check_val_carved(bundle: DataBundle, written: Counter[bytes], written_labels: dict[bytes, int]) -> None:
    """Train and val are a disjoint partition of the written training images, labels intact."""
    train, val, _ = _arrays(bundle)
    tr, va = _rows(train.x), _rows(val.x)
    assert len(train) + len(val) == sum(written.values())
    assert not set(tr) & set(va)
    assert tr + va == written
    for split in (train, val):
        u8 = _to_uint8(split.x)
        for i in range(len(split)):
            assert written_labels[u8[i].tobytes()] == int(split.y[i])


def _assert_same(a: DataBundle, b: DataBundle) -> None:
    for sa, sb in zip(_arrays(a), _arrays(b), strict=True):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------- CIFAR


def _pickle(path: Path, obj: dict[bytes, Any]) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _write_cifar10(parent: Path, per_class: int = 2) -> dict[str, np.ndarray]:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = _rng()
    n = 10 * per_class
    out: dict[str, np.ndarray] = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        _pickle(
            folder / name,
            {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n},
        )
        out[name] = data
        out[name + "_labels"] = np.array(labels)
    meta = {b"num_cases_per_batch": n, b"label_names": [s.encode() for s in CIFAR10_NAMES], b"num_vis": 3072}
    _pickle(folder / "batches.meta", meta)
    return out


def test_cifar10_round_trip(tmp_path: Path) -> None:
    written = _write_cifar10(tmp_path)
    bundle = load_dataset("cifar10", tmp_path)
    _check_common(bundle, (3, 32, 32), tuple(CIFAR10_NAMES))
    train_rows = Counter(written[f"data_batch_{i}"][j].tobytes() for i in range(1, 6) for j in range(20))
    labels = {
        written[f"data_batch_{i}"][j].tobytes(): int(written[f"data_batch_{i}_labels"][j])
        for i in range(1, 6)
        for j in range(20)
    }
    _check_val_carved(bundle, train_rows, labels)
    test = _arrays(bundle)[2]
    data = written["test_batch"]
    assert len(test) == 20
    # channel-major rows: green plane, row 5, column 7 of image 3
    assert float(test.x[3, 1, 5, 7]) == pytest.approx(data[3, 1024 + 5 * 32 + 7] / 255.0, abs=1e-7)
    assert np.array_equal(_to_uint8(test.x).reshape(20, 3072), data)
    assert test.y.tolist() == written["test_batch_labels"].tolist()
    _assert_same(bundle, load_dataset("cifar10", tmp_path))


def test_cifar10_root_is_the_batches_folder_and_options(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    a = load_dataset("cifar10", tmp_path)
    b = load_dataset("cifar10", tmp_path / "cifar-10-batches-py")
    _assert_same(a, b)
    c = load_dataset("cifar10", tmp_path, {"channels": 1, "size": 16, "max_train": 30, "max_test": 10})
    train, val, test = _arrays(c)
    assert c.input_shape == (1, 16, 16)
    assert len(train) == 30 and len(test) == 10 and len(val) == 10
    assert sorted(Counter(train.y.tolist()).values()) == [3] * 10  # stratified subsample


def test_cifar10_missing_and_corrupted_files(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3.*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", tmp_path)
    _write_cifar10(tmp_path / "again")
    batch = tmp_path / "again" / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"data_batch_2.*truncated"):
        load_dataset("cifar10", tmp_path / "again")


def test_cifar100_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = _rng()
    names = [f"class{i:03d}" for i in range(100)]
    splits = {}
    for name, per_class in (("train", 6), ("test", 1)):
        n = 100 * per_class
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [i % 100 for i in range(n)]
        coarse = [i % 20 for i in range(n)]
        _pickle(folder / name, {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse})
        splits[name] = (data, fine)
    _pickle(folder / "meta", {b"fine_label_names": [s.encode() for s in names], b"coarse_label_names": []})
    bundle = load_dataset("cifar100", tmp_path)
    _check_common(bundle, (3, 32, 32), tuple(names))
    data, fine = splits["train"]
    _check_val_carved(
        bundle, Counter(r.tobytes() for r in data), {r.tobytes(): y for r, y in zip(data, fine, strict=True)}
    )
    test = _arrays(bundle)[2]
    assert np.array_equal(_to_uint8(test.x).reshape(100, 3072), splits["test"][0])
    assert test.y.tolist() == splits["test"][1]
    _assert_same(bundle, load_dataset("cifar100", folder))


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x00000800 | arr.ndim  # unsigned byte, arr.ndim dimensions
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1").tobytes()


def _write_idx(folder: Path, gz: bool = False, per_class: tuple[int, int] = (8, 2)) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng()
    out: dict[str, np.ndarray] = {}
    for prefix, k in (("train", per_class[0]), ("t10k", per_class[1])):
        n = 10 * k
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.array([(3 * i) % 10 for i in range(n)], dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            name = f"{prefix}-{kind}"
            payload = _idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
            out[name] = arr
    return out


def test_mnist_round_trip(tmp_path: Path) -> None:
    written = _write_idx(tmp_path)
    bundle = load_dataset("mnist", tmp_path)
    _check_common(bundle, (1, 28, 28), tuple(str(i) for i in range(10)))
    images, labels = written["train-images-idx3-ubyte"], written["train-labels-idx1-ubyte"]
    _check_val_carved(
        bundle,
        Counter(im.tobytes() for im in images),
        {im.tobytes(): int(y) for im, y in zip(images, labels, strict=True)},
    )
    test = _arrays(bundle)[2]
    timages = written["t10k-images-idx3-ubyte"]
    assert float(test.x[3, 0, 10, 12]) == pytest.approx(timages[3, 10, 12] / 255.0, abs=1e-7)
    assert np.array_equal(_to_uint8(test.x)[:, 0], timages)
    assert test.y.tolist() == written["t10k-labels-idx1-ubyte"].tolist()
    _assert_same(bundle, load_dataset("mnist", tmp_path))


def test_mnist_options(tmp_path: Path) -> None:
    _write_idx(tmp_path)
    bundle = load_dataset("mnist", tmp_path, {"channels": 3, "size": 32, "max_train": 20, "max_test": 10})
    train, val, test = _arrays(bundle)
    assert bundle.input_shape == (3, 32, 32)
    assert len(train) == 20 and len(val) == 10 and len(test) == 10
    assert torch.equal(train.x[:, 0], train.x[:, 1]) and torch.equal(train.x[:, 0], train.x[:, 2])
    assert sorted(Counter(test.y.tolist()).values()) == [1] * 10


def test_fashion_mnist_gzipped_in_raw(tmp_path: Path) -> None:
    plain = _write_idx(tmp_path / "plain")
    _write_idx(tmp_path / "zipped" / "raw", gz=True)
    bundle = load_dataset("fashion_mnist", tmp_path / "zipped")
    _check_common(bundle, (1, 28, 28), FASHION_NAMES)
    assert np.array_equal(_to_uint8(_arrays(bundle)[2].x)[:, 0], plain["t10k-images-idx3-ubyte"])
    _assert_same(bundle, load_dataset("fashion_mnist", tmp_path / "plain"))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file_is_named(tmp_path: Path, gz: bool) -> None:
    _write_idx(tmp_path, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*(truncated|corrupted)") as info:
        load_dataset("mnist", tmp_path)
    assert "\n" not in str(info.value)


def test_idx_wrong_magic_and_mismatched_counts(tmp_path: Path) -> None:
    written = _write_idx(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(written["t10k-images-idx3-ubyte"]))  # an images file under a labels name
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*magic number 0x00000803"):
        load_dataset("mnist", tmp_path)
    labels.write_bytes(_idx_bytes(written["t10k-labels-idx1-ubyte"][:7]))
    with pytest.raises(DataError, match=r"20 images but .*t10k-labels-idx1-ubyte.* 7 labels"):
        load_dataset("mnist", tmp_path)


def test_idx_missing_file_names_it(tmp_path: Path) -> None:
    _write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*\(or <root>/raw/\)"):
        load_dataset("fashion_mnist", tmp_path)


# ---------------------------------------------------------------- SVHN


def _write_svhn(folder: Path, name: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = np.array([[i % 10 + 1] for i in range(n)], dtype=np.uint8)  # 1..10, 10 is the digit 0
    savemat(str(folder / name), {"X": x, "y": y})
    return x, y


def test_svhn_round_trip_and_label_10_is_0(tmp_path: Path) -> None:
    x_train, y_train = _write_svhn(tmp_path, "train_32x32.mat", 6, 1)
    x_test, y_test = _write_svhn(tmp_path, "test_32x32.mat", 2, 2)
    _write_svhn(tmp_path, "extra_32x32.mat", 3, 3)
    bundle = load_dataset("svhn", tmp_path)
    _check_common(bundle, (3, 32, 32), tuple(str(i) for i in range(10)))
    test = _arrays(bundle)[2]
    assert float(test.x[4, 2, 7, 19]) == pytest.approx(x_test[7, 19, 2, 4] / 255.0, abs=1e-7)
    assert np.array_equal(_to_uint8(test.x), x_test.transpose(3, 2, 0, 1))
    assert y_test[9, 0] == 10 and int(test.y[9]) == 0
    assert test.y.tolist() == [int(v) % 10 for v in y_test[:, 0]]
    images = x_train.transpose(3, 2, 0, 1)
    _check_val_carved(  # extra_32x32.mat is present but ignored by default
        bundle,
        Counter(im.tobytes() for im in images),
        {im.tobytes(): int(v) % 10 for im, v in zip(images, y_train[:, 0], strict=True)},
    )
    _assert_same(bundle, load_dataset("svhn", tmp_path))


def test_svhn_use_extra(tmp_path: Path) -> None:
    _write_svhn(tmp_path, "train_32x32.mat", 6, 1)
    _write_svhn(tmp_path, "test_32x32.mat", 2, 2)
    with pytest.raises(DataError, match=r"extra_32x32\.mat"):
        load_dataset("svhn", tmp_path, {"use_extra": True})
    _write_svhn(tmp_path, "extra_32x32.mat", 3, 3)
    train, val, _ = _arrays(load_dataset("svhn", tmp_path, {"use_extra": True}))
    assert len(train) + len(val) == 60 + 30


def test_svhn_corrupted_file(tmp_path: Path) -> None:
    _write_svhn(tmp_path, "train_32x32.mat", 6, 1)
    path = tmp_path / "test_32x32.mat"
    _write_svhn(tmp_path, "test_32x32.mat", 2, 2)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"test_32x32\.mat"):
        load_dataset("svhn", tmp_path)


# ---------------------------------------------------------------- image folders

COLOURS = {"cat": (200, 10, 30), "dog": (5, 120, 250), "owl": (90, 90, 0)}


def _write_images(folder: Path, colour: tuple[int, int, int], count: int, start: int = 0) -> None:
    """Solid-colour images of varying sizes: a bilinear resize keeps their exact colour."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.new("RGB", (20 + 7 * i, 40 - 3 * i), colour).save(folder / f"img{i}.png")


def _expected(colour: tuple[int, int, int], mode: str) -> Tensor:
    pixel = Image.new("RGB", (1, 1), colour).convert(mode).getpixel((0, 0))
    values = pixel if isinstance(pixel, tuple) else (pixel,)
    return torch.tensor(values, dtype=torch.float32) / 255.0


def _assert_colours(split: ArrayDataset, classes: tuple[str, ...], mode: str) -> None:
    for i in range(len(split)):
        want = _expected(COLOURS[classes[int(split.y[i])]], mode).view(-1, 1, 1).expand_as(split.x[i])
        torch.testing.assert_close(split.x[i], want, rtol=0.0, atol=1e-6)


def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        _write_images(tmp_path / "train" / name, COLOURS[name], 10)
        _write_images(tmp_path / "test" / name, COLOURS[name], 2)
    # a JPEG with an upper-case extension, in a nested folder; and hidden / non-image files that are skipped
    nested = tmp_path / "train" / "dog" / "more"
    nested.mkdir()
    Image.new("RGB", (33, 33), COLOURS["dog"]).save(nested / "photo.JPG", quality=95)
    (tmp_path / "train" / "cat" / "._img0.png").write_bytes(b"not an image")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("hello")
    bundle = load_dataset("imagefolder", tmp_path)
    _check_common(bundle, (3, 32, 32), ("cat", "dog"))
    train, val, test = _arrays(bundle)
    assert len(train) + len(val) == 21 and len(test) == 4
    assert test.y.tolist() == [0, 0, 1, 1]
    _assert_colours(test, bundle.classes, "RGB")
    jpeg = (train.y == 1) & (
        (train.x - _expected(COLOURS["dog"], "RGB").view(1, 3, 1, 1)).abs().amax((1, 2, 3)) > 0
    )
    assert int(jpeg.sum()) <= 1  # only the lossy JPEG may differ from its colour
    _assert_same(bundle, load_dataset("imagefolder", tmp_path))

    grey = load_dataset("imagefolder", tmp_path, {"channels": 1, "size": 12})
    assert grey.input_shape == (1, 12, 12)
    _assert_colours(_arrays(grey)[2], grey.classes, "L")


def test_imagefolder_val_folder_is_used(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        _write_images(tmp_path / "train" / name, COLOURS[name], 4)
        _write_images(tmp_path / "val" / name, COLOURS[name], 1)
        _write_images(tmp_path / "test" / name, COLOURS[name], 1)
    train, val, test = _arrays(load_dataset("imagefolder", tmp_path, {"size": 8}))
    assert (len(train), len(val), len(test)) == (8, 2, 2)


def test_imagefolder_single_tree_split(tmp_path: Path) -> None:
    for name, colour in COLOURS.items():
        _write_images(tmp_path / name, colour, 10)
    bundle = load_dataset("imagefolder", tmp_path, {"size": 16})
    _check_common(bundle, (3, 16, 16), ("cat", "dog", "owl"))
    train, val, test = _arrays(bundle)
    assert len(train) + len(val) + len(test) == 30
    assert Counter(test.y.tolist()) == {0: 2, 1: 2, 2: 2}  # test_fraction 0.2 of every class
    for split in (train, val, test):
        _assert_colours(split, bundle.classes, "RGB")
    _assert_same(bundle, load_dataset("imagefolder", tmp_path, {"size": 16}))
    other = _arrays(load_dataset("imagefolder", tmp_path, {"size": 16, "test_fraction": 0.4}))[2]
    assert len(other) == 12


def test_imagefolder_errors(tmp_path: Path) -> None:
    _write_images(tmp_path / "a" / "train" / "cat", COLOURS["cat"], 3)
    _write_images(tmp_path / "a" / "test" / "cat", COLOURS["cat"], 1)
    _write_images(tmp_path / "a" / "test" / "zebra", COLOURS["owl"], 1)
    with pytest.raises(DataError, match="zebra"):
        load_dataset("imagefolder", tmp_path / "a")

    (tmp_path / "b" / "cat").mkdir(parents=True)
    (tmp_path / "b" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"'.*b/cat' holds no images"):
        load_dataset("imagefolder", tmp_path / "b")

    _write_images(tmp_path / "c" / "train" / "cat", COLOURS["cat"], 3)
    (tmp_path / "c" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images in '.*c/test'"):
        load_dataset("imagefolder", tmp_path / "c")

    _write_images(tmp_path / "d" / "train" / "cat", COLOURS["cat"], 3)
    with pytest.raises(DataError, match=r"missing folder '.*d/test'"):
        load_dataset("imagefolder", tmp_path / "d")

    _write_images(tmp_path / "e" / "cat", COLOURS["cat"], 5)
    (tmp_path / "e" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_dataset("imagefolder", tmp_path / "e")

    with pytest.raises(DataError, match="size"):
        load_dataset("imagefolder", tmp_path / "e", {"size": None})


# ---------------------------------------------------------------- registry and common errors


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "data_batch_1"),
        ("cifar100", "cifar-100-python"),
        ("mnist", "train-images-idx3-ubyte"),
        ("fashion_mnist", "t10k-labels-idx1-ubyte"),
        ("svhn", "train_32x32.mat"),
        ("imagefolder", "<root>/train/<class>/"),
    ],
)
def test_missing_root_names_the_expected_files(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset(name, tmp_path / "nowhere")
    assert expected in str(info.value)
    with pytest.raises(DataError, match="needs a root folder"):
        load_dataset(name)


def test_unknown_name_and_param() -> None:
    with pytest.raises(
        DataError, match=r"unknown data set 'cifar11'; choose one of: cifar10, cifar100, digits"
    ):
        load_dataset("cifar11")
    with pytest.raises(DataError, match=r"data\.params\.bogus"):
        load_dataset("digits", params={"bogus": 1})
    with pytest.raises(DataError, match=r"data\.params\.use_extra"):
        load_dataset("mnist", "/nonexistent", params={"use_extra": True})


@pytest.mark.parametrize("limit", [5, 12, 25, 149])
def test_max_train_and_max_test_are_upper_bounds(limit: int) -> None:
    # 15 images of each of 10 classes: per-class rounding alone would keep 10 for a limit of 5
    data = ArrayDataset(torch.rand(150, 1, 4, 4), torch.arange(150) % 10)
    val = ArrayDataset(torch.rand(10, 1, 4, 4), torch.arange(10))
    bundle = DataBundle("t", data, val, data, tuple("0123456789"), (1, 4, 4))
    train, _, test = _arrays(finalize(bundle, DataParams(max_train=limit, max_test=limit)))
    assert 0.8 * limit <= len(train) <= limit and 0.8 * limit <= len(test) <= limit
    if limit >= 10:
        assert set(train.y.tolist()) == set(range(10))


# ---------------------------------------------------------------- digits (embedded)


def test_digits() -> None:
    bundle = load_dataset("digits")
    _check_common(bundle, (1, 32, 32), tuple(str(i) for i in range(10)))
    splits = _arrays(bundle)
    assert sum(len(s) for s in splits) == 1797
    for split in splits:
        assert set(split.y.tolist()) == set(range(10))  # stratified: every class in every split
    rows = [{s.x[i].numpy().tobytes() for i in range(len(s))} for s in splits]
    assert sum(len(r) for r in rows) == 1797  # no image appears twice, within or across splits
    _assert_same(bundle, load_dataset("digits"))
    rgb = load_dataset("digits", params={"channels": 3})
    assert rgb.input_shape == (3, 32, 32)
    assert torch.equal(_arrays(rgb)[0].x[:, 2], splits[0].x[:, 0])
