"""The 224x224 path of the image-folder reader: torchvision's Resize + CenterCrop geometry, JPEG
draft decoding, parallel decoding, and the decoded-image cache (in-process memo + files)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compaudit import load_dataset
from compaudit.data import _imagecache
from compaudit.data import imagefolder as imf
from compaudit.data.base import ArrayDataset
from compaudit.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own cache folder and an empty memo."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("COMPAUDIT_CACHE_DIR", str(folder))
    monkeypatch.delenv("COMPAUDIT_DATA_WORKERS", raising=False)
    _imagecache.MEMO.clear()
    yield folder / "imagefolder"
    _imagecache.MEMO.clear()


def _coords_image(width: int, height: int) -> Image.Image:
    """Pixels that encode their coordinates: R = x mod 256, G = y mod 256, B = x // 256 + 16 * (y // 256)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x & 255, y & 255, (x >> 8) | ((y >> 8) << 4)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _decode_coords(img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) coordinate maps of a (3, H, W) float image written by :func:`_coords_image`."""
    v = (img * 255).round().to(torch.int64).numpy()
    return v[0] + 256 * (v[2] & 15), v[1] + 256 * (v[2] >> 4)


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth random content (upsampled noise), like a photograph at the scale of a few pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)


def _tree(root: Path, images: dict[str, list[Image.Image]], ext: str = ".png") -> list[Path]:
    paths = []
    for cls, imgs in images.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(imgs):
            path = root / cls / f"img{i}{ext}"
            img.save(path, quality=90) if ext == ".jpg" else img.save(path)
            paths.append(path)
    return paths


def _split_tree(root: Path, test: dict[str, list[Image.Image]], ext: str = ".png") -> list[Path]:
    """train/ with ten small images per class (so a validation split can be carved), test/ as given."""
    train = {
        cls: [_random_image(40 + i, 30 + j, 10 * i + j) for j in range(10)] for i, cls in enumerate(test)
    }
    _tree(root / "train", train)
    return _tree(root / "test", test, ext)


def _all_x(bundle: object) -> torch.Tensor:
    splits = [getattr(bundle, s) for s in ("train", "val", "test")]
    assert all(isinstance(s, ArrayDataset) for s in splits)
    return torch.cat([s.x for s in splits])


# ---------------------------------------------------------------- geometry (torchvision semantics)


@pytest.mark.parametrize(
    ("wh", "resized", "box"),
    [
        # shorter side to 256, the other int(256 * long / short); offsets int(round(d / 2.0))
        (
            (500, 375),
            (341, 256),
            (58, 16, 282, 240),
        ),  # 341.33 -> 341; (341-224)/2 = 58.5 -> 58 (half to even)
        ((375, 500), (256, 341), (16, 58, 240, 282)),
        ((300, 300), (256, 256), (16, 16, 240, 240)),
        ((256, 301), (256, 301), (16, 38, 240, 262)),  # no resize; 38.5 -> 38
        ((259, 256), (259, 256), (18, 16, 242, 240)),  # 17.5 -> 18 (half to even)
        ((1000, 1333), (256, 341), (16, 58, 240, 282)),  # 341.248 -> 341
        ((1920, 1080), (455, 256), (116, 16, 340, 240)),  # 455.11 -> 455; 115.5 -> 116
        ((100, 50), (512, 256), (144, 16, 368, 240)),  # upscaling follows the same rule
    ],
)
def test_resize_and_crop_geometry_is_torchvisions(
    wh: tuple[int, int], resized: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    assert imf.resized_size(*wh, 256) == resized
    assert imf.centre_crop_box(*resized, 224) == box


def test_centre_crop_picks_the_hand_computed_pixels(tmp_path: Path) -> None:
    """Images whose shorter side is already 256 are not resampled (torchvision skips the resize), so
    every output pixel must carry exactly the coordinates of the source pixel it was cropped from."""
    _split_tree(tmp_path, {"a": [_coords_image(256, 301)], "b": [_coords_image(259, 256)]})
    bundle = load_dataset("imagefolder", tmp_path, {"size": 224, "resize": 256})
    assert bundle.input_shape == (3, 224, 224)
    test = bundle.test
    assert isinstance(test, ArrayDataset) and test.y.tolist() == [0, 1]
    rows, cols = np.mgrid[0:224, 0:224]
    for img, (left, top) in zip(test.x, [(16, 38), (18, 16)], strict=True):
        x, y = _decode_coords(img)
        np.testing.assert_array_equal(x, cols + left)
        np.testing.assert_array_equal(y, rows + top)


def test_downscale_then_crop_keeps_the_geometry(tmp_path: Path) -> None:
    """512 x 1024 -> 256 x 512 (exactly 2x) -> centre 224 at left 16, top 144. R = x // 2 is a ramp
    that an antialiased bilinear 2x reduction maps exactly to the output column."""
    y, x = np.mgrid[0:1024, 0:512]
    ramp = np.stack([x // 2, y // 4, np.zeros_like(x)], axis=-1).astype(np.uint8)
    _split_tree(tmp_path, {"a": [Image.fromarray(ramp, "RGB")]})
    test = load_dataset("imagefolder", tmp_path, {"size": 224, "resize": 256}).test
    assert isinstance(test, ArrayDataset)
    v = (test.x[0] * 255).round().to(torch.int64).numpy()
    np.testing.assert_array_equal(v[0], np.broadcast_to(np.arange(16, 240), (224, 224)))
    # row i of the crop is row 144 + i of the resized image, centred on source y = 2 * (144 + i) + 1
    centre_y = 2 * (144 + np.arange(224)) + 1
    assert np.abs(v[1] - (centre_y / 4 - 0.5)[:, None]).max() <= 1.0


def test_crop_matches_a_hand_written_pil_pipeline(tmp_path: Path) -> None:
    """Resize(256) + CenterCrop(224) written out with PIL calls gives the very same bytes (PNG)."""
    shapes = [(500, 375), (375, 500), (257, 700), (640, 480), (300, 300)]
    images = [_random_image(w, h, i) for i, (w, h) in enumerate(shapes)]
    _split_tree(tmp_path, {"a": images})
    test = load_dataset("imagefolder", tmp_path, {"size": 224, "resize": 256, "workers": 2}).test
    assert isinstance(test, ArrayDataset)
    for img, (w, h), got in zip(images, shapes, test.x, strict=True):
        short, long = min(w, h), max(w, h)
        nw, nh = (256, int(256 * long / short)) if w <= h else (int(256 * long / short), 256)
        left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
        ref = img.resize((nw, nh), Image.Resampling.BILINEAR).crop((left, top, left + 224, top + 224))
        want = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float() / 255.0
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)


def test_jpeg_draft_keeps_the_geometry_and_full_decode_is_exact(tmp_path: Path) -> None:
    shapes = [(1200, 900), (1000, 1333), (330, 300)]
    images = [_random_image(w, h, 10 + i) for i, (w, h) in enumerate(shapes)]
    paths = _split_tree(tmp_path, {"a": images}, ext=".jpg")
    params = {"size": 224, "resize": 256}
    drafted = load_dataset("imagefolder", tmp_path, params).test
    full = load_dataset("imagefolder", tmp_path, {**params, "draft": False}).test
    assert isinstance(drafted, ArrayDataset) and isinstance(full, ArrayDataset)
    for path, got in zip(paths, full.x, strict=True):  # draft off: exactly the full-decode pipeline
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        nw, nh = imf.resized_size(w, h, 256)
        ref = rgb.resize((nw, nh), Image.Resampling.BILINEAR).crop(imf.centre_crop_box(nw, nh, 224))
        want = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float() / 255.0
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
    # draft on: same geometry; the DCT-scaled decode differs by a few levels at most on average
    diff = (drafted.x - full.x).abs() * 255
    assert diff.mean(dim=(1, 2, 3)).max().item() < 3.0
    assert diff[2].max().item() == 0.0  # 330 x 300 -> 281 x 256 leaves no room for a draft scale


def test_default_transform_is_unchanged(tmp_path: Path) -> None:
    """Without ``resize``: JPEG draft at (size, size), then a plain bilinear resize, as before."""
    images = [_random_image(w, h, i) for i, (w, h) in enumerate([(640, 480), (90, 200), (33, 33)])]
    paths = _split_tree(tmp_path / "jpg", {"a": images}, ext=".jpg")
    paths += _split_tree(tmp_path / "png", {"a": images})
    for root, mode, channels in [("jpg", "RGB", 3), ("png", "L", 1)]:
        test = load_dataset("imagefolder", tmp_path / root, {"size": 24, "channels": channels}).test
        assert isinstance(test, ArrayDataset)
        for path, got in zip([p for p in paths if root in p.parts], test.x, strict=True):
            with Image.open(path) as img:
                img.draft(mode, (24, 24))
                ref = img.convert(mode).resize((24, 24), Image.Resampling.BILINEAR)
            want = torch.from_numpy(np.array(ref).reshape(24, 24, channels)).permute(2, 0, 1).float() / 255
            torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)


def test_resize_below_size_is_an_error(tmp_path: Path) -> None:
    _split_tree(tmp_path, {"a": [_random_image(40, 40, 0)]})
    with pytest.raises(DataError, match=r"data\.params\.resize: .*at least size \(224\)"):
        load_dataset("imagefolder", tmp_path, {"size": 224, "resize": 200})


# ---------------------------------------------------------------- parallel decoding


def test_threads_give_the_serial_result_and_name_the_first_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [_random_image(60 + 7 * i, 50 + 3 * i, i) for i in range(20)]
    _tree(tmp_path / "t", {"a": images[:10], "b": images[10:]}, ext=".jpg")
    params = {"size": 16, "resize": 20, "cache": False}
    serial = _all_x(load_dataset("imagefolder", tmp_path / "t", {**params, "workers": 1}))
    _imagecache.MEMO.clear()
    monkeypatch.setenv("COMPAUDIT_DATA_WORKERS", "3")
    threaded = _all_x(load_dataset("imagefolder", tmp_path / "t", params))
    torch.testing.assert_close(serial, threaded, rtol=0.0, atol=0.0)

    (tmp_path / "t" / "a" / "img2.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "t" / "b" / "img4.jpg").write_bytes(b"\xff\xd8 not a jpeg either")
    for _ in range(3):
        with pytest.raises(DataError, match=r"cannot read image '.*a/img2\.jpg'"):
            load_dataset("imagefolder", tmp_path / "t", {**params, "workers": 4})

    monkeypatch.setenv("COMPAUDIT_DATA_WORKERS", "many")
    with pytest.raises(DataError, match="COMPAUDIT_DATA_WORKERS='many'"):
        load_dataset("imagefolder", tmp_path / "t", params)


def test_decode_workers_default_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _imagecache.decode_workers(5) == 5
    assert _imagecache.decode_workers(None) == _imagecache.usable_cpus() >= 1
    monkeypatch.setenv("COMPAUDIT_DATA_WORKERS", "7")
    assert _imagecache.decode_workers(None) == 7
    monkeypatch.setenv("COMPAUDIT_DATA_WORKERS", "0")
    with pytest.raises(DataError, match="at least 1"):
        _imagecache.decode_workers(None)


# ---------------------------------------------------------------- the cache


class _Counter:
    """Wraps imagefolder._read_images and counts the images it decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        self.calls = 0
        real = imf._read_images

        def counted(files: list[Path], t: imf.Transform, workers: int = 1) -> np.ndarray:
            self.calls += 1
            self.images += len(files)
            return real(files, t, workers)

        monkeypatch.setattr(imf, "_read_images", counted)


def _colour_tree(root: Path, n: int = 8, ext: str = ".png") -> None:
    colours = {"cat": (200, 10, 30), "dog": (5, 120, 250)}
    for cls, colour in colours.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (30 + 5 * i, 20 + 3 * i), colour).save(root / cls / f"img{i}{ext}")


def test_a_tree_is_decoded_once_then_read_from_memo_then_from_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache: Path
) -> None:
    _colour_tree(tmp_path / "t")
    count = _Counter(monkeypatch)
    params = {"size": 8, "resize": 10}
    first = _all_x(load_dataset("imagefolder", tmp_path / "t", params))
    assert (count.calls, count.images) == (1, 16)
    files = sorted(_cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".bin"  # one file per tree, no temporary left over

    # the same process: from the memo, the cache file not even opened
    def no_read(*args: object) -> None:
        raise AssertionError("the memo should have answered")

    with monkeypatch.context() as m:
        m.setattr(_imagecache, "read", no_read)
        again = _all_x(load_dataset("imagefolder", tmp_path / "t", params))
    torch.testing.assert_close(first, again, rtol=0.0, atol=0.0)

    # a fresh process (empty memo): from the file, nothing decoded
    _imagecache.MEMO.clear()
    cached = _all_x(load_dataset("imagefolder", tmp_path / "t", params))
    torch.testing.assert_close(first, cached, rtol=0.0, atol=0.0)
    assert count.calls == 1
    # another transform is another key
    load_dataset("imagefolder", tmp_path / "t", {"size": 8})
    assert count.calls == 2 and len(list(_cache.iterdir())) == 2


def test_changed_added_or_removed_files_invalidate_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "t"
    _colour_tree(root, ext=".bmp")  # uncompressed: new content of the same dimensions, same size
    count = _Counter(monkeypatch)

    def load() -> torch.Tensor:
        _imagecache.MEMO.clear()  # as a new process would: only the file cache can answer
        bundle = load_dataset("imagefolder", root, {"size": 8})
        return torch.cat([bundle.train.x, bundle.val.x, bundle.test.x])  # type: ignore[attr-defined]

    load()
    load()
    assert count.calls == 1
    # same size, new content and modification time
    target = root / "cat" / "img0.bmp"
    size = target.stat().st_size
    Image.new("RGB", (30, 20), (0, 255, 0)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert st.st_size == size
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    assert any(torch.equal(x, green.expand_as(x)) for x in load())
    assert count.calls == 2
    # only the modification time changes (touch): decoded again too
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    load()
    assert count.calls == 3
    # a file added, then removed
    Image.new("RGB", (12, 12), (200, 10, 30)).save(root / "cat" / "new.bmp")
    assert len(load()) == 17 and count.calls == 4
    (root / "dog" / "img1.bmp").unlink()
    assert len(load()) == 16 and count.calls == 5
    (root / "cat" / "new.bmp").unlink()
    assert len(load()) == 15 and count.calls == 6
    load()
    assert count.calls == 6


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_corrupt_cache_file_is_ignored_logged_and_rewritten(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    _cache: Path,
    damage: str,
) -> None:
    _colour_tree(tmp_path / "t")
    first = _all_x(load_dataset("imagefolder", tmp_path / "t", {"size": 8}))
    (path,) = _cache.iterdir()
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 17]
    elif damage == "flip":
        data[-5] ^= 0x40  # a payload byte: only the CRC can tell
    elif damage == "garbage":
        data = bytearray(b"\x00" * len(data))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))

    _imagecache.MEMO.clear()
    count = _Counter(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="compaudit"):
        again = _all_x(load_dataset("imagefolder", tmp_path / "t", {"size": 8}))
    torch.testing.assert_close(first, again, rtol=0.0, atol=0.0)
    assert count.calls == 1
    assert any("ignoring unreadable image cache" in r.getMessage() for r in caplog.records)
    # rewritten: valid again, and a fresh memo reads it without decoding
    shape = (16, 3, 8, 8)
    assert _imagecache.read(path, path.stem, shape) is not None
    _imagecache.MEMO.clear()
    load_dataset("imagefolder", tmp_path / "t", {"size": 8})
    assert count.calls == 1


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, _cache: Path
) -> None:
    _colour_tree(tmp_path / "t")

    def crash(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("compaudit.data._imagecache.os.replace", crash)
    with caplog.at_level(logging.WARNING, logger="compaudit"):
        bundle = load_dataset("imagefolder", tmp_path / "t", {"size": 8})
    assert len(_all_x(bundle)) == 16  # the run goes on without the cache
    assert list(_cache.iterdir()) == []  # neither a half-written file nor a temporary
    assert any("cannot write the image cache" in r.getMessage() for r in caplog.records)


def test_cache_false_writes_no_file(tmp_path: Path, _cache: Path) -> None:
    _colour_tree(tmp_path / "t")
    load_dataset("imagefolder", tmp_path / "t", {"size": 8, "cache": False})
    assert not _cache.exists()


def test_memo_drops_the_least_recently_used() -> None:
    memo = _imagecache.Memo(max_bytes=250)
    for key in ("a", "b", "c"):
        memo.put(key, np.zeros(100, dtype=np.uint8))
    assert memo.get("a") is None and memo.get("b") is not None and len(memo) == 2
    memo.put("d", np.zeros(100, dtype=np.uint8))  # "c" is now the oldest
    assert memo.get("c") is None and memo.get("b") is not None
    memo.put("huge", np.zeros(1000, dtype=np.uint8))  # larger than the whole memo: not kept
    assert memo.get("huge") is None and len(memo) == 2
    arr = memo.get("b")
    assert arr is not None and not arr.flags.writeable  # shared: nobody may write into it


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _imagecache.cache_dir() == tmp_path / "cache" / "imagefolder"
    monkeypatch.delenv("COMPAUDIT_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _imagecache.cache_dir() == tmp_path / "home" / ".cache" / "compaudit" / "imagefolder"


def test_a_domain_is_cropped_as_its_source(tmp_path: Path) -> None:
    """A domain without its own resize is read with the source's (resize + centre crop); before, it
    was silently resized whole while the source was cropped (same shape, other pixels)."""
    from compaudit.data import load_dataset
    from compaudit.run.prepare import load_domain
    from compaudit.run.validate import experiment_from_dict

    images = {c: [_random_image(48, 24, seed=20 * i + j) for j in range(12)] for i, c in enumerate("ab")}
    _tree(tmp_path / "src", images)
    _tree(tmp_path / "dom", images)
    exp = experiment_from_dict(
        {
            "name": "t",
            "data": {
                "name": "imagefolder",
                "root": str(tmp_path / "src"),
                "params": {"size": 16, "resize": 20},
            },
            "domains": {"dom": {"name": "imagefolder", "root": str(tmp_path / "dom")}},
            "probes": [{"name": "accuracy"}],
        }
    )
    source = load_dataset("imagefolder", tmp_path / "src", {"size": 16, "resize": 20})
    domain = load_domain(exp, "dom", source)
    cropped = load_dataset("imagefolder", tmp_path / "dom", {"size": 16, "resize": 20, "channels": 3})
    whole = load_dataset("imagefolder", tmp_path / "dom", {"size": 16, "channels": 3})
    x = domain.test.x  # split: all, so the domain's test split is every image of it
    assert torch.equal(x, _all_x(cropped))
    assert not torch.equal(x, _all_x(whole))
