"""Common corruptions (compaudit.data.corruptions) and the CIFAR-10-C reader (compaudit.data.cifar_c).

Parity: every corruption is compared with ``imagecorruptions`` 1.1.2 (the packaged ImageNet-C code) on a
224 px image, and 13 of them with a transcription of ``make_cifar_c.py`` (the CIFAR-10-C generator) on a
32 px image. The reference draws from numpy's global random state; the tests replay our generator's
draws through it (``np.random.normal`` and friends replaced by the bound methods of the generator our
code uses for that image), so the random corruptions are compared value for value too.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from compaudit.data import corruptions as C
from compaudit.data.base import ArrayDataset
from compaudit.data.cifar_c import CIFAR_C_CORRUPTIONS, load_cifar_c
from compaudit.data.corruptions import CORRUPTION_GROUPS, CORRUPTIONS, available_corruptions, corrupt
from compaudit.errors import DataError

EXPECTED_ORDER = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: the corruptions that draw nothing: the seed must not matter
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
SEVERITIES = (1, 2, 3, 4, 5)


def _skip_unavailable(name: str) -> None:
    if name not in available_corruptions():
        pytest.skip(f"{name} needs the imagecorruptions package (frost photographs)")


def textured(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w, c) uint8 images with smooth regions, hard-edged discs and some fine noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, c), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        base = ndimage.gaussian_filter(rng.random((h, w, c)), sigma=(max(h, w) / 40, max(h, w) / 40, 0))
        base = (base - base.min()) / (base.max() - base.min() + 1e-12)
        for _ in range(6):
            r0, c0 = rng.integers(0, h), rng.integers(0, w)
            rad = rng.integers(max(h, w) // 20 + 1, max(h, w) // 4 + 2)
            base[(yy - r0) ** 2 + (xx - c0) ** 2 < rad**2] = rng.random(c)
        base = 0.85 * base + 0.15 * rng.random((h, w, c))
        out[i] = np.round(np.clip(base, 0, 1) * 255)
    return out


def as_tensor(images: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (n, h, w, c) -> float (n, c, h, w) in [0, 1]; float64 keeps k / 255 exact."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2) / 255.0).to(dtype)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return as_tensor(textured(3, 3, 32, 32, seed=1))


# ---------------------------------------------------------------- names


def test_names_order_and_groups() -> None:
    assert CORRUPTIONS == EXPECTED_ORDER
    assert tuple(CORRUPTION_GROUPS) == ("noise", "blur", "weather", "digital")
    flat = tuple(n for group in CORRUPTION_GROUPS.values() for n in group)
    assert flat == CORRUPTIONS
    assert CORRUPTION_GROUPS["weather"] == ("snow", "frost", "fog", "brightness")
    assert set(available_corruptions()) >= set(CORRUPTIONS) - {"frost"}
    assert CIFAR_C_CORRUPTIONS[:15] == CORRUPTIONS and len(set(CIFAR_C_CORRUPTIONS)) == 19


def test_frost_photographs_are_installed_for_the_test_suite() -> None:
    """`pip install -c constraints.txt -e '.[dev]'` brings imagecorruptions; frost must be usable."""
    assert "frost" in available_corruptions()


def test_frost_without_imagecorruptions_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, batch: torch.Tensor
) -> None:
    monkeypatch.setattr(C, "_frost_dir", lambda: None)
    assert "frost" not in available_corruptions()
    assert len(available_corruptions()) == 14
    with pytest.raises(DataError, match=r"pip install 'compaudit\[corruptions\]'") as err:
        corrupt(batch, "frost", 1, seed=0)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the contract, every name and severity


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_contract(name: str, severity: int, batch: torch.Tensor) -> None:
    _skip_unavailable(name)
    x = batch.clone()
    y = corrupt(x, name, severity, seed=3)
    assert torch.equal(x, batch), "the input was modified"
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all() and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(y, x), "the corruption changed nothing"
    assert torch.equal(corrupt(x, name, severity, seed=3), y), "not deterministic for a seed"
    # image i depends on its position only, not on the rest of the batch
    assert torch.equal(corrupt(x[:2], name, severity, seed=3), y[:2])
    other = corrupt(x, name, severity, seed=4)
    if name in DETERMINISTIC:
        assert torch.equal(other, y)
    else:
        assert not torch.equal(other, y), "another seed gave the same output"
        for i in range(len(x)):  # every image of the batch gets its own noise
            assert not torch.equal(other[i], y[i])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_grey_odd_sizes_and_bounds(name: str) -> None:
    _skip_unavailable(name)
    cases = [(2, 1, 28, 28), (2, 3, 20, 37), (1, 3, 8, 8), (1, 1, 9, 50), (1, 3, 70, 60), (1, 1, 120, 116)]
    for n, c, h, w in cases:
        x = as_tensor(textured(n, c, h, w, seed=h * w))
        for severity in (1, 5):
            y = corrupt(x, name, severity, seed=0)
            assert y.shape == x.shape and y.dtype == torch.float32, (n, c, h, w)
            assert torch.isfinite(y).all() and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # other bounds: the same corruption, mapped affinely
    x = as_tensor(textured(2, 3, 32, 32, seed=5))
    y01 = corrupt(x, name, 3, seed=1)
    ypm = corrupt(x * 2 - 1, name, 3, seed=1, bounds=(-1.0, 1.0))
    assert float(ypm.min()) >= -1.0 and float(ypm.max()) <= 1.0
    torch.testing.assert_close(ypm, y01 * 2 - 1, atol=2e-6, rtol=0)


def test_noise_on_grey_images_keeps_its_strength() -> None:
    """Grey images are corrupted on their single channel: no averaging of three noisy channels."""
    x = torch.full((4, 1, 32, 32), 0.5)
    y = corrupt(x, "gaussian_noise", 3, seed=0)
    sigma = C._CIFAR.params["gaussian_noise"][2]
    assert abs(float((y - x).std()) / sigma - 1.0) < 0.05


@pytest.mark.parametrize("name", sorted(C._COLOUR))
def test_colour_corruptions_on_grey_are_the_luminance_of_rgb(name: str) -> None:
    _skip_unavailable(name)
    grey = as_tensor(textured(2, 1, 32, 32, seed=7))
    out = corrupt(grey, name, 4, seed=2)
    rgb = corrupt(grey.expand(-1, 3, -1, -1), name, 4, seed=2)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (rgb * luma).sum(1, keepdim=True), atol=1e-5, rtol=0)


def test_float64_and_tables_by_size(batch: torch.Tensor) -> None:
    assert corrupt(batch.double(), "contrast", 2, seed=0).dtype == torch.float32
    assert C._table_for(32, 32) is C._CIFAR and C._table_for(48, 20) is C._CIFAR
    assert C._table_for(49, 49) is C._TINY and C._table_for(112, 64) is C._TINY
    assert C._table_for(113, 100) is C._IMAGENET and C._table_for(224, 224) is C._IMAGENET
    for table in (C._CIFAR, C._TINY, C._IMAGENET):
        assert set(table.params) == set(CORRUPTIONS)
        assert all(len(v) == 5 for v in table.params.values())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("fogg", 1), "unknown corruption 'fogg'; choose one of: gaussian_noise, shot_noise"),
        (("fog", 0), "severity 0 of 'fog' is out of range; choose one of: 1, 2, 3, 4, 5"),
        (("fog", 6), "severity 6"),
        (("fog", 2.0), "severity 2.0"),
        (("fog", True), "severity True"),
    ],
)
def test_bad_name_or_severity(args: tuple[Any, Any], match: str, batch: torch.Tensor) -> None:
    with pytest.raises(DataError, match=match) as err:
        corrupt(batch, *args, seed=0)
    assert "\n" not in str(err.value)
    if "unknown" in match:
        assert all(n in str(err.value) for n in CORRUPTIONS)


@pytest.mark.parametrize(
    ("x", "bounds", "match"),
    [
        (torch.rand(3, 32, 32), (0.0, 1.0), "shape"),
        (torch.rand(1, 2, 32, 32), (0.0, 1.0), "1 or 3 channels"),
        (torch.rand(1, 4, 32, 32), (0.0, 1.0), "1 or 3 channels"),
        (torch.rand(1, 3, 7, 32), (0.0, 1.0), "at least 8 x 8"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), (0.0, 1.0), "float tensor"),
        (torch.rand(1, 3, 32, 32) * 2, (0.0, 1.0), "inside the bounds"),
        (torch.full((1, 3, 32, 32), float("nan")), (0.0, 1.0), "finite"),
        (torch.rand(1, 3, 32, 32), (1.0, 0.0), "lower < upper"),
    ],
)
def test_bad_images(x: torch.Tensor, bounds: tuple[float, float], match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        corrupt(x, "contrast", 1, seed=0, bounds=bounds)
    assert "\n" not in str(err.value)


def test_empty_batch() -> None:
    y = corrupt(torch.zeros(0, 3, 32, 32), "snow", 2, seed=0)
    assert y.shape == (0, 3, 32, 32) and y.dtype == torch.float32


# ---------------------------------------------------------------- glass blur's vectorised loop


def _sequential_glass(img: np.ndarray, offsets: np.ndarray, delta: int) -> None:
    """The reference's loop, one pixel at a time (copy semantics, see the next test)."""
    h, w = img.shape[:2]
    for it in range(offsets.shape[0]):
        for i, r in enumerate(range(h - delta, delta, -1)):
            for j, c in enumerate(range(w - delta, delta, -1)):
                dx, dy = offsets[it, i, j]
                img[r, c] = img[r + dy, c + dx]


def test_reference_swap_of_numpy_views_is_a_copy() -> None:
    """Why glass_blur copies: the reference's tuple swap of two pixels of an (H, W, 3) array."""
    x = np.arange(2 * 1 * 3).reshape(2, 1, 3)
    x[0, 0], x[1, 0] = x[1, 0], x[0, 0]
    assert x[0, 0].tolist() == [3, 4, 5] and x[1, 0].tolist() == [3, 4, 5]


@pytest.mark.parametrize(("h", "w", "delta", "iterations"), [(32, 32, 1, 2), (19, 27, 2, 3), (40, 23, 4, 2)])
def test_glass_wavefronts_equal_the_sequential_loop(h: int, w: int, delta: int, iterations: int) -> None:
    rng = np.random.default_rng(h * w)
    images = rng.random((3, h, w, 2))
    offsets = np.stack([C._glass_offsets(rng, h, w, delta, iterations) for _ in range(3)])
    expected = images.copy()
    for i in range(3):
        _sequential_glass(expected[i], offsets[i], delta)
    got = images.copy()
    C._glass_shuffle(got, offsets, delta)
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, images)


# ---------------------------------------------------------------- strength grows with severity

#: corruptions whose published parameters do not make the pixel distance grow with severity, per table
NOT_MONOTONE: dict[str, dict[str, str]] = {
    "cifar": {
        "glass_blur": "(sigma, delta, iterations) go (0.4, 1, 1) then (0.25, 1, 2): blur, shuffle alternate",
        "frost": "the image weight drops 0.9 -> 0.75 while the frost weight only goes 0.4 -> 0.45",
        "elastic_transform": "the random affine shrinks from 8% to 3% of the side while the warp grows",
    },
    "tiny": {
        "glass_blur": "(0.5, 1, 1) is weaker than (0.1, 1, 1) in distance, (0.7, 2, 1) than (0.6, 1, 2)",
        "frost": "severities 2 to 4 trade image weight for frost weight",
        "elastic_transform": "the random affine shrinks from 8% to 2% of the side while the warp grows",
    },
    "imagenet": {
        "glass_blur": "(0.9, 2, 1) is weaker than (0.7, 1, 2) in distance, (1.1, 3, 2) than (1, 2, 3)",
        "frost": "the image weight drops 0.7 -> 0.6 while the frost weight only goes 0.7 -> 0.75",
        "snow": "severity 3 raises the flake threshold from 0.5 to 0.9: fewer, larger flakes",
    },
}


@pytest.fixture(scope="module")
def colour_digits(digits16: Any) -> Callable[[int, int], torch.Tensor]:
    """The digits' test images, resized and coloured (a random foreground and background per image)."""

    def make(size: int, n: int) -> torch.Tensor:
        x = F.interpolate(digits16.test.x[:n], size=(size, size), mode="bilinear", align_corners=False)
        g = torch.Generator().manual_seed(size)
        fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
        return (bg + (fg - bg) * x.clamp(0, 1)).clamp(0, 1)

    return make


@pytest.mark.parametrize(("size", "n", "table"), [(32, 48, "cifar"), (64, 12, "tiny"), (128, 6, "imagenet")])
def test_pixel_distance_grows_with_severity(
    size: int, n: int, table: str, colour_digits: Callable[[int, int], torch.Tensor]
) -> None:
    x = colour_digits(size, n)
    assert C._table_for(size, size).name == table
    for name in available_corruptions():
        d = [float((corrupt(x, name, s, seed=0) - x).abs().mean()) for s in SEVERITIES]
        assert min(d) > 1e-4, (name, d)
        if name not in NOT_MONOTONE[table]:
            slack = 0.03 * d[-1]
            assert all(b >= a - slack for a, b in itertools.pairwise(d)), (name, d)
        elif name != "elastic_transform":
            assert d[-1] > d[0], (name, d)


def test_accuracy_does_not_rise_with_severity(trained_cnn: torch.nn.Module, digits16: Any) -> None:
    x, y = digits16.test.x, digits16.test.y

    def accuracy(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float((trained_cnn(images).argmax(1) == y).float().mean())

    clean = accuracy(x)
    names = available_corruptions()
    acc = [float(np.mean([accuracy(corrupt(x, nm, s, seed=0)) for nm in names])) for s in SEVERITIES]
    assert clean > 0.8
    assert all(b <= a + 0.01 for a, b in itertools.pairwise(acc)), acc
    assert acc[-1] < clean - 0.1, (clean, acc)
    assert acc[0] < clean


# ---------------------------------------------------------------- parity with the reference code

SEED = 11


@pytest.fixture(scope="module")
def ic() -> Any:
    """imagecorruptions' corruption module (1.1.2 imports pkg_resources: setuptools < 81)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import imagecorruptions.corruptions as module
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        pytest.skip(f"imagecorruptions is not importable: {exc}")
    return module


def _replay(monkeypatch: pytest.MonkeyPatch, ic: Any, gen: np.random.Generator, pairs: Any = None) -> None:
    """Make the reference draw from ``gen`` and run on numpy 2 / scikit-image 0.26."""
    import skimage.util

    monkeypatch.setattr(np.random, "normal", gen.normal)
    monkeypatch.setattr(np.random, "poisson", gen.poisson)
    monkeypatch.setattr(np.random, "uniform", gen.uniform)
    if pairs is None:
        monkeypatch.setattr(np.random, "randint", gen.integers)
    else:  # glass_blur: one (dx, dy) pair per call, in the order our code drew them
        it: Iterator[np.ndarray] = iter(pairs.reshape(-1, 2))
        monkeypatch.setattr(np.random, "randint", lambda *a, **k: next(it))
    monkeypatch.setattr(skimage.util, "random_noise", functools.partial(skimage.util.random_noise, rng=gen))
    gaussian = ic.gaussian

    def gaussian_compat(*a: Any, multichannel: bool | None = None, **k: Any) -> Any:
        return gaussian(*a, channel_axis=-1 if multichannel else None, **k)

    monkeypatch.setattr(ic, "gaussian", gaussian_compat)  # `multichannel` is gone from scikit-image
    monkeypatch.setattr(np, "float_", np.float64, raising=False)  # removed in numpy 2


def _glass_pairs(gen: np.random.Generator, h: int, w: int, table: Any, severity: int) -> np.ndarray:
    _, delta, iterations = table.params["glass_blur"][severity - 1]
    return C._glass_offsets(gen, h, w, delta, iterations)


@pytest.fixture(scope="module")
def image224() -> np.ndarray:
    return textured(1, 3, 224, 224, seed=0)[0]


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_parity_with_imagecorruptions(
    name: str, severity: int, ic: Any, image224: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tolerances: 1e-6 (float32 output) for 13 corruptions; frost's photographs are resized with an
    emulation of OpenCV's bicubic filter that differs by one 8-bit level on about 1e-5 of the pixels,
    so at most 1/255 on 1e-4 of the values; pixelate at most 1/255, since the reference works on 8-bit
    images and we do not round."""
    gen = C._image_rng(SEED, name, severity, 0)
    pairs = _glass_pairs(gen, 224, 224, C._IMAGENET, severity) if name == "glass_blur" else None
    _replay(monkeypatch, ic, gen, pairs)
    ref = np.asarray(getattr(ic, name)(Image.fromarray(image224), severity), dtype=np.float64) / 255.0
    monkeypatch.undo()
    ours = corrupt(as_tensor(image224[None], torch.float64), name, severity, seed=SEED)[0]
    diff = np.abs(ours.numpy().transpose(1, 2, 0) - ref)
    if name == "pixelate":
        assert diff.max() <= 1 / 255 + 1e-6
    elif name == "frost":
        assert diff.max() <= 1 / 255 + 1e-6 and (diff > 1e-6).mean() < 1e-4
    else:
        assert diff.max() <= 1e-6


@pytest.mark.parametrize(("scale", "cubic"), [(0.3, False), (0.47, False), (1.1, True), (0.3, True)])
def test_frost_resize_matches_opencv(scale: float, cubic: bool, ic: Any) -> None:
    """The frost photographs are resized as OpenCV does: bicubic (imagecorruptions) equal but for one
    8-bit level on a few values in 100,000; bilinear (make_cifar_c, make_tinyimagenet_c: OpenCV's
    default) within one level, OpenCV rounding its 8-bit bilinear in fixed point."""
    import cv2

    folder = C._frost_dir()
    assert folder is not None
    for index, name in enumerate(C._FROST_FILES):
        photo = np.ascontiguousarray(cv2.imread(str(folder / name))[..., ::-1])
        flag = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
        ref = cv2.resize(photo, (0, 0), fx=scale, fy=scale, interpolation=flag).astype(np.int64)
        ours = C._frost_resized(index, ref.shape[0], ref.shape[1], 1 / scale, 1 / scale, cubic)
        diff = np.abs(np.round(ours * 255).astype(np.int64) - ref)
        assert diff.max() <= 1
        assert (diff > 0).mean() < (1e-4 if cubic else 0.2)


# make_cifar_c.py (github.com/hendrycks/robustness, ImageNet-C/create_c/) restated for the 13
# corruptions it does not hand to ImageMagick (motion_blur and snow's streaks go through Wand there).
# Each takes a uint8 RGB image (32, 32, 3) and a severity and returns floats in [0, 255]; its
# random draws go through np.random, which _replay redirects.


def _cifar_reference(name: str, x8: np.ndarray, severity: int, ic: Any) -> np.ndarray:
    import cv2
    import skimage.color
    import skimage.util
    from scipy.ndimage import map_coordinates
    from scipy.ndimage import zoom as scizoom

    p = C._CIFAR.params[name][severity - 1]
    x = x8 / 255.0
    if name == "gaussian_noise":
        return np.clip(x + np.random.normal(size=x.shape, scale=p), 0, 1) * 255
    if name == "shot_noise":
        return np.clip(np.random.poisson(x * p) / p, 0, 1) * 255
    if name == "impulse_noise":
        return np.clip(skimage.util.random_noise(x, mode="s&p", amount=p), 0, 1) * 255
    if name == "defocus_blur":
        kernel = ic.disk(radius=p[0], alias_blur=p[1])
        return np.clip(np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)], 2), 0, 1) * 255
    if name == "glass_blur":
        sigma, delta, iterations = p
        img = np.uint8(ic.gaussian(x, sigma=sigma, multichannel=True) * 255)
        for _ in range(iterations):
            for h in range(32 - delta, delta, -1):
                for w in range(32 - delta, delta, -1):
                    dx, dy = np.random.randint(-delta, delta, size=(2,))
                    img[h, w], img[h + dy, w + dx] = img[h + dy, w + dx], img[h, w]
        return np.clip(ic.gaussian(img / 255.0, sigma=sigma, multichannel=True), 0, 1) * 255
    if name == "zoom_blur":
        xf = x.astype(np.float32)
        out = np.zeros_like(xf)
        for z in np.arange(*p):
            ch = int(np.ceil(32 / z))
            top = (32 - ch) // 2
            zoomed = scizoom(xf[top : top + ch, top : top + ch], (z, z, 1), order=1)
            trim = (zoomed.shape[0] - 32) // 2
            out += zoomed[trim : trim + 32, trim : trim + 32]
        return np.clip((xf + out) / (len(np.arange(*p)) + 1), 0, 1) * 255
    if name == "frost":
        idx = np.random.randint(5)
        frost = cv2.imread(str(C._frost_dir() / C._FROST_FILES[idx]))
        frost = cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)
        top, left = np.random.randint(0, frost.shape[0] - 32), np.random.randint(0, frost.shape[1] - 32)
        frost = frost[top : top + 32, left : left + 32][..., [2, 1, 0]]
        return np.clip(p[0] * x8.astype(np.float64) + p[1] * frost, 0, 255)
    if name == "fog":
        max_val = x.max()
        x = x + p[0] * ic.plasma_fractal(mapsize=32, wibbledecay=p[1])[:32, :32][..., np.newaxis]
        return np.clip(x * max_val / (max_val + p[0]), 0, 1) * 255
    if name == "brightness":
        hsv = skimage.color.rgb2hsv(x)
        hsv[:, :, 2] = np.clip(hsv[:, :, 2] + p, 0, 1)
        return np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255
    if name == "contrast":
        means = np.mean(x, axis=(0, 1), keepdims=True)
        return np.clip((x - means) * p + means, 0, 1) * 255
    if name == "pixelate":
        im = Image.fromarray(x8).resize((int(32 * p), int(32 * p)), Image.Resampling.BOX)
        return np.asarray(im.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    if name == "jpeg_compression":
        buf = BytesIO()
        Image.fromarray(x8).save(buf, "JPEG", quality=p)
        return np.asarray(Image.open(buf), dtype=np.float64)
    if name == "elastic_transform":
        alpha, sigma, affine = (32 * v for v in p)
        image = x8.astype(np.float32) / 255.0
        centre = np.float32((32, 32)) // 2
        square = 32 // 3
        pts1 = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
        pts2 = pts1 + np.random.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
        m = cv2.getAffineTransform(pts1, pts2)
        image = cv2.warpAffine(image, m, (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        dx, dy = (
            (
                ic.gaussian(np.random.uniform(-1, 1, size=(32, 32)), sigma, mode="reflect", truncate=3)
                * alpha
            ).astype(np.float32)[..., None]
            for _ in range(2)
        )
        xx, yy, zz = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
        coords = (np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1)))
        warped = map_coordinates(image, coords, order=1, mode="reflect").reshape(32, 32, 3)
        return np.clip(warped, 0, 1) * 255
    raise AssertionError(name)


CIFAR_PARITY = [n for n in CORRUPTIONS if n not in ("motion_blur", "snow")]


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CIFAR_PARITY)
def test_parity_with_make_cifar_c(name: str, severity: int, ic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tolerances: 1e-6 (float32 output) except pixelate (1/255: the reference rounds to 8 bits) and
    elastic_transform, 1e-5: its affine step goes through OpenCV's warpAffine in single precision
    (about 1e-6 observed)."""
    image = textured(1, 3, 32, 32, seed=4)[0]
    gen = C._image_rng(SEED, name, severity, 0)
    pairs = _glass_pairs(gen, 32, 32, C._CIFAR, severity) if name == "glass_blur" else None
    _replay(monkeypatch, ic, gen, pairs)
    ref = np.asarray(_cifar_reference(name, image, severity, ic), dtype=np.float64) / 255.0
    monkeypatch.undo()
    ours = corrupt(as_tensor(image[None], torch.float64), name, severity, seed=SEED)[0]
    diff = np.abs(ours.numpy().transpose(1, 2, 0) - ref)
    if name == "pixelate":
        assert diff.max() <= 1 / 255 + 1e-6
    elif name == "elastic_transform":
        assert diff.max() <= 1e-5, diff.max()
    else:
        assert diff.max() <= 1e-6, diff.max()


# ---------------------------------------------------------------- the CIFAR-10-C reader


def _write_release(
    folder: Path, n: int, *, num_classes: int = 10, names: tuple[str, ...] = ("fog", "snow")
) -> tuple[np.ndarray, np.ndarray]:
    """A release in the real layout with ``n`` rows per severity: pixel (r, c, k) of row i is
    (i + 7 * r + 3 * c + k) % 256, so every row is recognisable; labels cycle over the classes."""
    folder.mkdir(parents=True, exist_ok=True)
    i = np.arange(5 * n)[:, None, None, None]
    r = np.arange(32)[None, :, None, None]
    c = np.arange(32)[None, None, :, None]
    k = np.arange(3)[None, None, None, :]
    data = ((i + 7 * r + 3 * c + k) % 256).astype(np.uint8)
    labels = np.tile(np.arange(n) % num_classes, 5).astype(np.uint8)
    for name in names:
        np.save(folder / f"{name}.npy", data)
    np.save(folder / "labels.npy", labels)
    return data, labels


def test_reader_reads_the_severity_block(tmp_path: Path) -> None:
    data, labels = _write_release(tmp_path, 7)
    ds = load_cifar_c(tmp_path, "fog", 3, per_severity=7)
    assert isinstance(ds, ArrayDataset)
    assert ds.x.shape == (7, 3, 32, 32) and ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    expected = torch.from_numpy(data[14:21]).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(ds.x, expected)
    assert ds.y.tolist() == labels[14:21].tolist()
    assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0

    picked = load_cifar_c(str(tmp_path), "snow", 5, indices=torch.tensor([6, 0, 6]), per_severity=7)
    assert torch.equal(picked.x, torch.from_numpy(data[[34, 28, 34]]).permute(0, 3, 1, 2).float() / 255.0)
    assert picked.y.tolist() == labels[[34, 28, 34]].tolist()
    assert (
        len(load_cifar_c(tmp_path, "fog", 1, indices=torch.tensor([], dtype=torch.long), per_severity=7)) == 0
    )


def test_reader_tolerates_cifar100_labels(tmp_path: Path) -> None:
    _write_release(tmp_path, 120, num_classes=100, names=("contrast",))
    ds = load_cifar_c(tmp_path, "contrast", 2, per_severity=120)
    assert int(ds.y.max()) == 99 and int(ds.y.min()) == 0


def test_reader_default_layout_reads_only_the_rows_asked_for(tmp_path: Path) -> None:
    """The real size (50000 x 32 x 32 x 3, 150 MB) as a sparse file: only the touched rows exist."""
    data = np.lib.format.open_memmap(
        tmp_path / "frost.npy", mode="w+", dtype=np.uint8, shape=(50000, 32, 32, 3)
    )
    data[40000] = 17
    data[49999] = 200
    data[9999, 0, 0] = (1, 2, 3)
    data.flush()
    del data
    labels = np.zeros(50000, dtype=np.uint8)
    labels[40000], labels[49999] = 3, 9
    np.save(tmp_path / "labels.npy", labels)
    ds = load_cifar_c(tmp_path, "frost", 5, indices=torch.tensor([0, 9999]))
    assert ds.x.shape == (2, 3, 32, 32)
    assert torch.all(ds.x[0] == 17 / 255.0) and torch.all(ds.x[1] == 200 / 255.0)
    assert ds.y.tolist() == [3, 9]
    first = load_cifar_c(tmp_path, "frost", 1, indices=torch.tensor([9999, 1]))
    assert first.x[0, :, 0, 0].tolist() == pytest.approx([1 / 255, 2 / 255, 3 / 255])
    assert float(first.x[1].abs().max()) == 0.0


def _one_line_naming(err: pytest.ExceptionInfo[DataError], *names: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg, (name, msg)


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as err:
        load_cifar_c(tmp_path / "nowhere", "fog", 1)
    _one_line_naming(err, str(tmp_path / "nowhere"))

    _write_release(tmp_path, 4)
    with pytest.raises(DataError, match="missing file") as err:
        load_cifar_c(tmp_path, "frost", 1, per_severity=4)
    _one_line_naming(err, str(tmp_path / "frost.npy"))
    with pytest.raises(DataError, match="unknown CIFAR-C corruption 'fogg'"):
        load_cifar_c(tmp_path, "fogg", 1, per_severity=4)
    for bad in (0, 6, True, 1.0):
        with pytest.raises(DataError, match="severity"):
            load_cifar_c(tmp_path, "fog", bad, per_severity=4)  # type: ignore[arg-type]
    # the block size does not match the file
    with pytest.raises(DataError, match=r"expected a uint8 array of shape \(50000, 32, 32, 3\)") as err:
        load_cifar_c(tmp_path, "fog", 1)
    _one_line_naming(err, str(tmp_path / "fog.npy"), "(20, 32, 32, 3)")
    for bad_idx, match in (
        (torch.tensor([4]), r"indices must lie in 0\.\.3"),
        (torch.tensor([-1]), "indices must lie"),
        (torch.tensor([0.5]), "integer tensor"),
        (torch.tensor([[0]]), "1-D integer tensor"),
    ):
        with pytest.raises(DataError, match=match):
            load_cifar_c(tmp_path, "fog", 1, indices=bad_idx, per_severity=4)


@pytest.mark.parametrize(
    ("what", "array", "match"),
    [
        ("fog", np.zeros((20, 32, 32, 3), dtype=np.float32), "expected a uint8 array"),
        ("fog", np.zeros((20, 32, 32), dtype=np.uint8), "expected a uint8 array"),
        ("fog", np.zeros((20, 3, 32, 32), dtype=np.uint8), "expected a uint8 array"),
        ("labels", np.zeros(19, dtype=np.uint8), "has 19 labels but"),
        ("labels", np.zeros((20, 1), dtype=np.uint8), "1-D integer array"),
        ("labels", np.zeros(20, dtype=np.float32), "1-D integer array"),
        ("labels", np.full(20, 100, dtype=np.int64), r"labels must lie in 0\.\.99"),
        ("labels", np.full(20, -1, dtype=np.int64), r"labels must lie in 0\.\.99"),
    ],
)
def test_reader_rejects_malformed_files(tmp_path: Path, what: str, array: np.ndarray, match: str) -> None:
    _write_release(tmp_path, 4)
    np.save(tmp_path / f"{what}.npy", array)
    with pytest.raises(DataError, match=match) as err:
        load_cifar_c(tmp_path, "fog", 2, per_severity=4)
    _one_line_naming(err, str(tmp_path / f"{what}.npy"))


def test_reader_rejects_files_that_are_not_npy(tmp_path: Path) -> None:
    _write_release(tmp_path, 4)
    (tmp_path / "fog.npy").write_bytes(b"not an array at all")
    with pytest.raises(DataError, match=r"not a \.npy array") as err:
        load_cifar_c(tmp_path, "fog", 1, per_severity=4)
    _one_line_naming(err, str(tmp_path / "fog.npy"))
    np.save(tmp_path / "fog.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"not a \.npy array"):
        load_cifar_c(tmp_path, "fog", 1, per_severity=4)
