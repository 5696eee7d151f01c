"""The 15 common corruptions of ImageNet-C and CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) as
functions of image tensors.

``corrupt(x, name, severity, seed=...)`` takes a float batch ``(N, C, H, W)`` (C = 1 or 3, any H, W >= 8,
values inside ``bounds``) and returns a new float32 batch of the same shape, inside the same bounds.
The algorithms follow the authors' published generators, re-implemented with numpy, scipy and
Pillow (no OpenCV, scikit-image or ImageMagick at run time):

- ``make_cifar_c.py`` (CIFAR-10-C) supplies the parameters for images whose larger side is at most 48;
- ``make_tinyimagenet_c.py`` (Tiny-ImageNet-C, 64 px) for a larger side of 49 to 112;
- ``make_imagenet_c.py`` as packaged by ``imagecorruptions`` 1.1.2 (ImageNet-C, 224 px; the package
  makes a few corruptions work at any size) above 112.

All three live in ``github.com/hendrycks/robustness`` under ``ImageNet-C/create_c/`` and
``github.com/bethgelab/imagecorruptions``. :data:`CORRUPTIONS` lists the names in the usual order and
:data:`CORRUPTION_GROUPS` the four families (noise, blur, weather, digital).

Randomness. Image ``i`` of a batch draws from its own ``numpy.random.Generator``, seeded by child ``i``
of ``SeedSequence((seed, crc32(name), severity))``. So the same ``(x, name, severity, seed)`` gives
bit-identical output, another seed gives other noise, ``corrupt(x[:k]) == corrupt(x)[:k]``, and an
image's corruption does not depend on the other images in the batch - only on its position. Corrupting
a data set chunk by chunk with one seed therefore repeats the same noise pattern at the same position
of every chunk: pass the whole set at once, or give every chunk its own seed. Global random state is
never read or changed. Six corruptions draw nothing: defocus_blur, zoom_blur, brightness, contrast,
pixelate and jpeg_compression.

Grey images (C = 1). The colour-based corruptions (snow, frost, brightness, jpeg_compression) see a grey
image as RGB with three equal channels and return the luminance of their result
(0.299 R + 0.587 G + 0.114 B, the weights of :func:`compaudit.data.base.convert_images`). All the others
act on the single channel directly, so the noise corruptions keep their full strength.

Frost. It overlays crops of six photographs of frost that ship inside the ``imagecorruptions`` package
(only the first five are ever drawn, as in the reference). compaudit does not redistribute them and
does not fake them with a procedural texture: it finds the installed package's folder without
importing the package (so a broken OpenCV or a missing ``pkg_resources`` does not matter) and raises
:class:`~compaudit.errors.DataError` when it is absent. ``pip install 'compaudit[corruptions]'`` adds
it; :func:`available_corruptions` lists the names usable in the current environment.

Where this module departs from the reference, on purpose:

- the output is float, not the ``uint8`` the released data sets store (the reference truncates to
  ``uint8`` at the end); only jpeg_compression quantises its input (JPEG is 8-bit), and glass_blur keeps
  the reference's ``uint8`` truncation between its two blurs;
- motion_blur and the streaks of snow use one line kernel: a one-sided Gaussian over ``2 * radius + 1``
  pixels along a random angle, with the edge pixel repeated where the line leaves the image. That is
  ImageMagick's MotionBlurImage (which the CIFAR and Tiny generators call through Wand) and
  ``imagecorruptions``' shift-and-add, except that the latter drops the remaining weights once the line
  leaves the image, darkening small images; snow follows ``imagecorruptions``' floating-point streaks;
- glass_blur runs the reference's pixel loop (which copies a random neighbour onto each pixel: its
  "swap" of numpy views is a copy) in a wavefront order that vectorises; steps that could touch the same
  pixel keep their order, so the result equals the sequential loop bit for bit;
- frost: the photographs are rescaled by the reference's factor (0.2 for CIFAR, 0.3 for Tiny) times
  ``side / 32`` (``side / 64``), so other sizes see the same texture scale; OpenCV's resize is emulated
  with the generator's filter (bilinear for CIFAR and Tiny, bicubic for ImageNet) to within one 8-bit
  level;
- elastic_transform: CIFAR and Tiny use the original random affine plus elastic warp with the table's
  sizes multiplied by the image's larger side (the reference's ``IMSIZE``); ImageNet uses
  ``imagecorruptions``' size-aware elastic warp (no affine);
- pixelate upsamples with a box filter for CIFAR and Tiny (as their generators) and nearest neighbour
  for ImageNet (as ``imagecorruptions``), in floating point.

``tests/test_corruptions.py`` compares all 15 corruptions with ``imagecorruptions`` on a 224 px image
and 13 with a restatement of ``make_cifar_c.py`` on a 32 px image (all but motion_blur and snow, which
need ImageMagick there), replaying our random draws through the reference, and states the tolerances.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import operator
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from compaudit.errors import DataError

__all__ = ["CORRUPTIONS", "CORRUPTION_GROUPS", "SEVERITIES", "available_corruptions", "corrupt"]

Array = NDArray[np.float64]

#: the 15 corruptions of ImageNet-C / CIFAR-10-C, in the usual order
CORRUPTIONS: tuple[str, ...] = (
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

#: the four families of the ImageNet-C paper
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": CORRUPTIONS[0:3],
    "blur": CORRUPTIONS[3:7],
    "weather": CORRUPTIONS[7:11],
    "digital": CORRUPTIONS[11:15],
}

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: corruptions that draw random numbers (the others ignore the seed)
_RANDOM = frozenset(
    {
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "glass_blur",
        "motion_blur",
        "snow",
        "frost",
        "fog",
        "elastic_transform",
    }
)
#: corruptions that need colour: a grey image goes through RGB and comes back as luminance
_COLOUR = frozenset({"snow", "frost", "brightness", "jpeg_compression"})
_LUMA = np.array([0.299, 0.587, 0.114])


# ---------------------------------------------------------------- parameter tables
#
# One entry per corruption, five per severity. zoom_blur entries are np.arange(start, stop, step)
# arguments, kept as the reference writes them so the zoom factors are the same floats.


@dataclass(frozen=True)
class _Table:
    name: str
    #: the image side the generator was written for
    ref_side: int
    params: dict[str, tuple[Any, ...]]
    #: factor by which the generator shrinks the frost photographs before cropping (None: ImageNet rule)
    frost_scale: float | None
    #: whether the generator resizes them with OpenCV's bicubic filter (else its default, bilinear)
    frost_cubic: bool
    #: how pixelate upsamples back
    pixelate_up: Image.Resampling
    #: elastic_transform flavour: "affine" (original, sizes times the side) or "scaled" (imagecorruptions)
    elastic: str


# CIFAR-10-C: ImageNet-C/create_c/make_cifar_c.py in github.com/hendrycks/robustness
_CIFAR = _Table(
    name="cifar",
    ref_side=32,
    params={
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        # (sigma, max_delta, iterations)
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        # (radius, sigma)
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        # (image weight, frost weight)
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        # (fractal weight, wibble decay)
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        # (alpha, sigma, affine) as fractions of the image side (the reference's IMSIZE * ...)
        "elastic_transform": (
            (0, 0, 0.08),
            (0.05, 0.2, 0.07),
            (0.08, 0.06, 0.06),
            (0.1, 0.04, 0.05),
            (0.1, 0.03, 0.03),
        ),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
    },
    frost_scale=0.2,
    frost_cubic=False,
    pixelate_up=Image.Resampling.BOX,
    elastic="affine",
)

# Tiny-ImageNet-C (64 px): ImageNet-C/create_c/make_tinyimagenet_c.py in github.com/hendrycks/robustness
_TINY = _Table(
    name="tiny",
    ref_side=64,
    params={
        "gaussian_noise": (0.04, 0.08, 0.12, 0.15, 0.18),
        "shot_noise": (250, 100, 50, 30, 15),
        "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),
        "defocus_blur": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
        "glass_blur": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
        "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.8),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
        ),
        "frost": ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)),
        "fog": ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": (
            (0, 0, 0.08),
            (0.05, 0.3, 0.06),
            (0.1, 0.08, 0.06),
            (0.1, 0.03, 0.03),
            (0.16, 0.03, 0.02),
        ),
        "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),
        "jpeg_compression": (65, 58, 50, 40, 25),
    },
    frost_scale=0.3,
    frost_cubic=False,
    pixelate_up=Image.Resampling.BOX,
    elastic="affine",
)

# ImageNet-C (224 px): imagecorruptions 1.1.2, imagecorruptions/corruptions.py (github.com/bethgelab/
# imagecorruptions), whose constants are those of make_imagenet_c.py in github.com/hendrycks/robustness
# except elastic_transform, which it rewrote to work at any size.
_IMAGENET = _Table(
    name="imagenet",
    ref_side=224,
    params={
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        "snow": (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        # alpha; sigma is 1% of each side and the raw displacement at most 0.5% of the height
        "elastic_transform": (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
    },
    frost_scale=None,
    frost_cubic=True,
    pixelate_up=Image.Resampling.NEAREST,
    elastic="scaled",
)


def _table_for(h: int, w: int) -> _Table:
    """The parameter table for an image: by its larger side (<= 48 CIFAR, <= 112 Tiny, else ImageNet)."""
    side = max(h, w)
    if side <= 48:
        return _CIFAR
    if side <= 112:
        return _TINY
    return _IMAGENET


@dataclass(frozen=True)
class _Ctx:
    table: _Table
    #: one generator per image (empty for the corruptions that draw nothing)
    rngs: Sequence[np.random.Generator]


# ---------------------------------------------------------------- randomness


def _image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of a batch: child ``index`` of SeedSequence((seed, crc32(name),
    severity)); negative seeds are taken modulo 2**64."""
    entropy = (seed % 2**64, zlib.crc32(name.encode()), severity)
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(index,)))


# ---------------------------------------------------------------- shared helpers


def _linear_resize_axis(a: Array, axis: int, n_out: int) -> Array:
    """Linear resampling of one axis, corners aligned: ``scipy.ndimage.zoom(order=1)``'s mapping."""
    n_in = a.shape[axis]
    if n_out == n_in:
        return a
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    coords = np.arange(n_out) * scale
    i0 = np.clip(np.floor(coords).astype(np.intp), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = np.clip(coords - i0, 0.0, 1.0)
    shape = [1] * a.ndim
    shape[axis] = n_out
    f = frac.reshape(shape)
    return np.asarray(np.take(a, i0, axis=axis) * (1.0 - f) + np.take(a, i1, axis=axis) * f)


def _clipped_zoom(img: Array, zoom: float, *, crop: bool = True) -> Array:
    """Zoom the centre of a (N, H, W, C) batch by ``zoom`` (bilinear); with ``crop`` keep the top-left
    H x W, as ``imagecorruptions``' ``clipped_zoom`` and the callers that crop after it."""
    h, w = img.shape[1], img.shape[2]
    ch0 = int(np.ceil(h / float(zoom)))
    ch1 = int(np.ceil(w / float(zoom)))
    top0, top1 = (h - ch0) // 2, (w - ch1) // 2
    out = img[:, top0 : top0 + ch0, top1 : top1 + ch1]
    out = _linear_resize_axis(out, 1, int(round(ch0 * zoom)))
    out = _linear_resize_axis(out, 2, int(round(ch1 * zoom)))
    return out[:, :h, :w] if crop else out


def _motion_blur_one(img: Array, radius: int, sigma: float, angle: float) -> Array:
    """Blur a (H, W, C) image along a line at ``angle`` degrees: weights of a one-sided Gaussian over
    ``2 * radius + 1`` pixels, border pixels repeated (ImageMagick's MotionBlurImage)."""
    width = 2 * radius + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    py = width * np.sin(np.deg2rad(angle))
    px = width * np.cos(np.deg2rad(angle))
    hyp = math.hypot(py, px)
    h, w = img.shape[0], img.shape[1]
    rows, cols = np.arange(h), np.arange(w)
    out = np.zeros_like(img)
    for i in range(width):
        dy = -math.ceil((i * py) / hyp - 0.5)
        dx = -math.ceil((i * px) / hyp - 0.5)
        r = np.clip(rows - dy, 0, h - 1)
        c = np.clip(cols - dx, 0, w - 1)
        out = out + kernel[i] * img[r][:, c]
    return out


def _clip01(a: NDArray[Any]) -> Array:
    return np.asarray(np.clip(a, 0.0, 1.0), dtype=np.float64)


def _luminance(x: Array) -> Array:
    return np.asarray(x @ _LUMA)[..., None]


# ---------------------------------------------------------------- noise


def _gaussian_noise(x: Array, c: float, ctx: _Ctx) -> Array:
    out = np.empty_like(x)
    for i, rng in enumerate(ctx.rngs):
        out[i] = x[i] + rng.normal(size=x.shape[1:], scale=c)
    return _clip01(out)


def _shot_noise(x: Array, c: float, ctx: _Ctx) -> Array:
    out = np.empty_like(x)
    for i, rng in enumerate(ctx.rngs):
        out[i] = rng.poisson(x[i] * c) / float(c)
    return _clip01(out)


def _impulse_noise(x: Array, c: float, ctx: _Ctx) -> Array:
    """Salt and pepper, per value: with probability ``c`` a value becomes 0 or 1 (evenly), as
    ``skimage.util.random_noise(mode="s&p")``."""
    out = x.copy()
    for i, rng in enumerate(ctx.rngs):
        flipped = rng.random(x.shape[1:]) <= c
        salted = rng.random(x.shape[1:]) <= 0.5
        out[i][flipped & salted] = 1.0
        out[i][flipped & ~salted] = 0.0
    return out


# ---------------------------------------------------------------- blur


def _gaussian_taps(ksize: int, sigma: float) -> Array:
    """OpenCV's getGaussianKernel for sigma > 0."""
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    return np.asarray(g / g.sum())


def _disk(radius: float, alias_blur: float) -> Array:
    """The reference's anti-aliased disk kernel, trimmed to its non-zero support."""
    grid: NDArray[Any]
    if radius <= 8:
        grid = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        grid = np.arange(-radius, radius + 1)
        ksize = 5
    xx, yy = np.meshgrid(grid, grid)
    disk = np.asarray(xx**2 + yy**2 <= radius**2, dtype=np.float64)
    disk /= disk.sum()
    taps = _gaussian_taps(ksize, alias_blur)
    # OpenCV's GaussianBlur, border reflect-101 (scipy's "mirror")
    disk = ndimage.correlate1d(disk, taps, axis=0, mode="mirror")
    disk = ndimage.correlate1d(disk, taps, axis=1, mode="mirror")
    nz = np.argwhere(disk != 0)
    half = int(np.abs(nz - np.array(disk.shape) // 2).max())
    c0, c1 = disk.shape[0] // 2, disk.shape[1] // 2
    return np.asarray(disk[c0 - half : c0 + half + 1, c1 - half : c1 + half + 1])


def _defocus_blur(x: Array, c: tuple[float, float], ctx: _Ctx) -> Array:
    kernel = _disk(radius=c[0], alias_blur=c[1])
    out = ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")  # OpenCV filter2D's border
    return _clip01(out)


def _glass_offsets(
    rng: np.random.Generator, h: int, w: int, delta: int, iterations: int
) -> NDArray[np.int64]:
    """The offsets ``(dx, dy)`` of one image in the reference's loop order: shape (iterations, rows, cols,
    2) over rows ``h - delta`` down to ``delta + 1`` and columns likewise, each in ``[-delta, delta - 1]``."""
    nh, nw = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    return np.asarray(rng.integers(-delta, delta, size=(iterations, nh, nw, 2)), dtype=np.int64)


@functools.lru_cache(maxsize=32)
def _glass_schedule(h: int, w: int, delta: int) -> tuple[tuple[NDArray[np.intp], ...], ...]:
    """Wavefronts of the reference's pixel loop, as tuples (loop index, row, column). The step at loop
    position (i, j) touches pixels within ``2 * delta - 1`` of it, so giving it the wave
    ``2 * delta * i + j`` keeps every pair of steps that could share a pixel in loop order, while the
    steps of one wave never share a pixel: running a wave at once equals running it in any order."""
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    ii, jj = np.meshgrid(np.arange(len(rows)), np.arange(len(cols)), indexing="ij")
    wave = (2 * delta * ii + jj).ravel()
    order = np.argsort(wave, kind="stable")
    cuts = np.flatnonzero(np.diff(wave[order])) + 1
    return tuple((g, rows[g // len(cols)], cols[g % len(cols)]) for g in np.split(order, cuts))


def _glass_shuffle(img: Array, offsets: NDArray[np.int64], delta: int) -> None:
    """The reference's local pixel shuffle of a (N, H, W, C) batch, in place; ``offsets`` has shape
    (N, iterations, rows, cols, 2) as drawn by :func:`_glass_offsets`.

    The reference "swaps" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``; for a colour image both sides
    are numpy views, so the second assignment writes back the value the first one just copied: every
    step copies pixel (h', w') onto (h, w). ImageNet-C and CIFAR-10-C were made that way, and so is this.
    """
    n, h, w = img.shape[0], img.shape[1], img.shape[2]
    if n == 0 or offsets.shape[2] == 0 or offsets.shape[3] == 0:
        return
    batch = np.arange(n)[:, None]
    flat = offsets.reshape(n, offsets.shape[1], -1, 2)
    schedule = _glass_schedule(h, w, delta)
    for it in range(offsets.shape[1]):
        off = flat[:, it]
        for loop_idx, r, c in schedule:
            img[batch, r, c] = img[batch, r + off[:, loop_idx, 1], c + off[:, loop_idx, 0]]


def _glass_blur(x: Array, c: tuple[float, int, int], ctx: _Ctx) -> Array:
    sigma, delta, iterations = float(c[0]), int(c[1]), int(c[2])
    h, w = x.shape[1], x.shape[2]
    blurred = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
    img = np.clip(np.floor(blurred * 255.0), 0.0, 255.0)  # the reference's np.uint8(...) truncation
    offsets = np.stack([_glass_offsets(rng, h, w, delta, iterations) for rng in ctx.rngs])
    _glass_shuffle(img, offsets, delta)
    out = ndimage.gaussian_filter(img / 255.0, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
    return _clip01(out)


def _motion_blur(x: Array, c: tuple[int, float], ctx: _Ctx) -> Array:
    out = np.empty_like(x)
    for i, rng in enumerate(ctx.rngs):
        angle = float(rng.uniform(-45, 45))
        out[i] = _motion_blur_one(x[i], int(c[0]), float(c[1]), angle)
    return _clip01(out)


def _zoom_blur(x: Array, c: tuple[float, float, float], ctx: _Ctx) -> Array:
    zooms = np.arange(c[0], c[1], c[2])
    out = np.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, float(z))
    return _clip01((x + out) / (len(zooms) + 1))


# ---------------------------------------------------------------- weather


def _snow(x: Array, c: tuple[float, ...], ctx: _Ctx) -> Array:
    loc, scale, zoom, threshold, radius, sigma, blend = c
    h, w = x.shape[1], x.shape[2]
    out = np.empty_like(x)
    for i, rng in enumerate(ctx.rngs):
        layer = rng.normal(size=(h, w), loc=loc, scale=scale)
        layer = _clipped_zoom(layer[None, :, :, None], float(zoom), crop=False)[0]
        layer[layer < threshold] = 0
        layer = np.clip(layer, 0.0, 1.0)
        angle = float(rng.uniform(-135, -45))
        layer = _motion_blur_one(layer, int(radius), float(sigma), angle)
        layer = (np.round(layer * 255.0) / 255.0)[:h, :w]
        img = blend * x[i] + (1 - blend) * np.maximum(x[i], _luminance(x[i]) * 1.5 + 0.5)
        out[i] = img + layer + np.rot90(layer, k=2)
    return _clip01(out)


_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_FROST_MISSING = (
    "frost needs the frost photographs of the imagecorruptions package: pip install 'compaudit[corruptions]'"
)


@functools.lru_cache(maxsize=1)
def _frost_dir() -> Path | None:
    """The ``frost`` folder of the installed ``imagecorruptions`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("imagecorruptions")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "frost"
        if all((folder / f).is_file() for f in _FROST_FILES[:5]):
            return folder
    return None


@functools.lru_cache(maxsize=8)
def _frost_photo(index: int) -> NDArray[np.uint8]:
    folder = _frost_dir()
    if folder is None:
        raise DataError(_FROST_MISSING)
    path = folder / _FROST_FILES[index]
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read the frost photograph {str(path)!r}: {exc}") from None
    arr.flags.writeable = False
    return arr


def _resize_taps(n_in: int, n_out: int, scale: float, cubic: bool) -> tuple[NDArray[np.intp], Array]:
    """OpenCV's resize taps along one axis (pixel centres aligned, border replicated): source indices
    and weights, shape (taps, n_out); bicubic with a = -0.75 (INTER_CUBIC) or bilinear (INTER_LINEAR)."""
    coord = (np.arange(n_out) + 0.5) * scale - 0.5
    base = np.floor(coord)
    t = coord - base
    if cubic:
        a = -0.75
        w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
        w1 = ((a + 2) * t - (a + 3)) * t * t + 1
        w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
        weights = np.stack([w0, w1, w2, 1 - w0 - w1 - w2])
        first = -1
    else:
        weights = np.stack([1 - t, t])
        first = 0
    offsets = np.arange(first, first + len(weights))[:, None]
    idx = np.clip(base.astype(np.intp)[None, :] + offsets, 0, n_in - 1)
    return idx, weights


@functools.lru_cache(maxsize=32)
def _frost_resized(index: int, out_h: int, out_w: int, scale_y: float, scale_x: float, cubic: bool) -> Array:
    """A frost photograph resized as ``cv2.resize`` does, rounded to 8 bits, in [0, 1]. The bicubic
    result equals OpenCV 5's but for one level on about 1e-5 of the values; the bilinear one is within
    one level (OpenCV computes 8-bit bilinear in fixed point)."""
    photo = _frost_photo(index).astype(np.float64)
    ix, wx = _resize_taps(photo.shape[1], out_w, scale_x, cubic)
    iy, wy = _resize_taps(photo.shape[0], out_h, scale_y, cubic)
    horiz = np.zeros((photo.shape[0], out_w, photo.shape[2]))
    for k in range(len(wx)):
        horiz += wx[k][None, :, None] * photo[:, ix[k]]
    both = np.zeros((out_h, out_w, photo.shape[2]))
    for k in range(len(wy)):
        both += wy[k][:, None, None] * horiz[iy[k]]
    out = np.clip(np.rint(both), 0, 255) / 255.0
    out.flags.writeable = False
    return np.asarray(out)


def _frost_layer(index: int, h: int, w: int, table: _Table) -> Array:
    """The rescaled photograph ``index`` for an h x w image, per the table's rule."""
    fh, fw = _frost_photo(index).shape[:2]
    cubic = table.frost_cubic
    if table.frost_scale is not None:
        f = table.frost_scale * max(h, w) / table.ref_side
        out_w, out_h = int(round(fw * f)), int(round(fh * f))
        if out_h > h and out_w > w:
            return _frost_resized(index, out_h, out_w, 1.0 / f, 1.0 / f, cubic)
    # imagecorruptions' rule: keep the photograph unless the image is larger, then grow it by 10%
    if fh >= h and fw >= w:
        s = 1.0
    elif fh < h and fw >= w:
        s = h / fh
    elif fh >= h and fw < w:
        s = w / fw
    else:
        s = max(h / fh, w / fw)
    s *= 1.1
    out_w, out_h = int(np.ceil(fw * s)), int(np.ceil(fh * s))
    return _frost_resized(index, out_h, out_w, 1.0 / (out_h / fh), 1.0 / (out_w / fw), cubic)


def _frost(x: Array, c: tuple[float, float], ctx: _Ctx) -> Array:
    h, w = x.shape[1], x.shape[2]
    out = np.empty_like(x)
    for i, rng in enumerate(ctx.rngs):
        index = int(rng.integers(5))
        layer = _frost_layer(index, h, w, ctx.table)
        top = int(rng.integers(0, layer.shape[0] - h))
        left = int(rng.integers(0, layer.shape[1] - w))
        out[i] = c[0] * x[i] + c[1] * layer[top : top + h, left : left + w]
    return _clip01(out)


def _plasma_fractal(mapsize: int, decay: float, rng: np.random.Generator) -> Array:
    """A square height map in [0, 1] by the diamond-square algorithm (the reference's fog texture)."""
    m = np.zeros((mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def wibbled_mean(a: Array) -> Array:
        return np.asarray(a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape))

    while step >= 2:
        half = step // 2
        corners = m[0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, shift=-1, axis=0)
        squares += np.roll(squares, shift=-1, axis=1)
        m[half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        dr = m[half:mapsize:step, half:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        left = (dr + np.roll(dr, 1, axis=0)) + (ul + np.roll(ul, -1, axis=1))
        m[0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = (dr + np.roll(dr, 1, axis=1)) + (ul + np.roll(ul, -1, axis=0))
        m[half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    m -= m.min()
    return np.asarray(m / m.max())


def _fog(x: Array, c: tuple[float, float], ctx: _Ctx) -> Array:
    h, w = x.shape[1], x.shape[2]
    mapsize = 1 << (max(h, w) - 1).bit_length()
    out = np.empty_like(x)
    for i, rng in enumerate(ctx.rngs):
        max_val = x[i].max()
        img = x[i] + c[0] * _plasma_fractal(mapsize, float(c[1]), rng)[:h, :w, None]
        out[i] = img * max_val / (max_val + c[0])
    return _clip01(out)


def _brightness(x: Array, c: float, ctx: _Ctx) -> Array:
    """Add ``c`` to the HSV value. Hue and saturation fixed, RGB is proportional to the value, so this
    is the exact rescaling ``rgb * v_new / v`` (black becomes grey ``v_new``)."""
    v = x.max(axis=-1, keepdims=True)
    v_new = np.clip(v + c, 0.0, 1.0)
    safe = np.where(v > 0, v, 1.0)
    return _clip01(np.where(v > 0, x * (v_new / safe), v_new))


# ---------------------------------------------------------------- digital


def _contrast(x: Array, c: float, ctx: _Ctx) -> Array:
    means = x.mean(axis=(1, 2), keepdims=True)
    return _clip01((x - means) * c + means)


def _displacement(
    rng: np.random.Generator, high: float, shape: tuple[int, int], sigma: Any, alpha: float
) -> NDArray[np.float32]:
    """A smooth random displacement field: uniform noise in [-high, high], Gaussian-smoothed (border
    reflected, truncated at 3 sigma) and scaled by ``alpha``, in single precision as the reference."""
    noise = rng.uniform(-high, high, size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma, mode="reflect", truncate=3)
    return np.asarray(smooth * alpha, dtype=np.float32)


def _elastic_scaled(img: Array, alpha: float, rng: np.random.Generator) -> Array:
    """imagecorruptions' elastic warp of one (H, W, C) image."""
    h, w = img.shape[0], img.shape[1]
    sigma = np.array((h, w)) * 0.01
    max_d = h * 0.005
    dx = _displacement(rng, max_d, (h, w), sigma, alpha)
    dy = _displacement(rng, max_d, (h, w), sigma, alpha)
    return _remap(img, dy, dx, mode="reflect")


def _remap(img: Array, dy: NDArray[Any], dx: NDArray[Any], *, mode: str) -> Array:
    """Sample a (H, W, C) image bilinearly at (row + dy, col + dx)."""
    h, w = img.shape[0], img.shape[1]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([yy + dy, xx + dx])
    out = np.empty_like(img)
    for k in range(img.shape[2]):
        out[:, :, k] = ndimage.map_coordinates(img[:, :, k], coords, order=1, mode=mode)
    return out


def _elastic_affine(img: Array, c: tuple[float, float, float], rng: np.random.Generator) -> Array:
    """The original generators' random affine then elastic warp of one (H, W, C) image; ``c`` holds
    (alpha, sigma, affine) in pixels."""
    alpha, sigma, affine = c
    h, w = img.shape[0], img.shape[1]
    centre = np.array([w // 2, h // 2], dtype=np.float32)  # (x, y)
    square = min(h, w) // 3
    pts1 = np.array(
        [centre + square, [centre[0] + square, centre[1] - square], centre - square], dtype=np.float32
    )
    pts2 = pts1 + rng.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
    # the affine map sending pts1 to pts2 (cv2.getAffineTransform), sampled through its inverse
    # (cv2.warpAffine), bilinear with the border reflected about the edge pixels (reflect-101)
    src = np.hstack([pts1.astype(np.float64), np.ones((3, 1))])
    m = np.linalg.solve(src, pts2.astype(np.float64)).T  # (2, 3): dst = m @ (x, y, 1)
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    warped = _remap(img, sy - yy, sx - xx, mode="mirror")
    dx = _displacement(rng, 1.0, (h, w), sigma, alpha)
    dy = _displacement(rng, 1.0, (h, w), sigma, alpha)
    return _remap(warped, dy, dx, mode="reflect")


def _elastic_transform(x: Array, c: Any, ctx: _Ctx) -> Array:
    out = np.empty_like(x)
    side = max(x.shape[1], x.shape[2])
    for i, rng in enumerate(ctx.rngs):
        if ctx.table.elastic == "scaled":
            out[i] = _elastic_scaled(x[i], float(c), rng)
        else:
            out[i] = _elastic_affine(x[i], (c[0] * side, c[1] * side, c[2] * side), rng)
    return _clip01(out)


def _pixelate(x: Array, c: float, ctx: _Ctx) -> Array:
    """Box-filter down to ``c`` of the size, then back up (Pillow, in 32-bit float: no quantisation)."""
    n, h, w, ch = x.shape
    small = (int(w * c), int(h * c))
    out = np.empty_like(x)
    for i in range(n):
        for k in range(ch):
            im = Image.fromarray(np.ascontiguousarray(x[i, :, :, k], dtype=np.float32))
            im = im.resize(small, Image.Resampling.BOX).resize((w, h), ctx.table.pixelate_up)
            out[i, :, :, k] = np.asarray(im, dtype=np.float64)
    return _clip01(out)


def _jpeg_compression(x: Array, c: int, ctx: _Ctx) -> Array:
    """Save as JPEG at quality ``c`` with Pillow's defaults and read back (the image is rounded to 8 bits)."""
    q = np.round(x * 255.0).astype(np.uint8)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(q[i]).save(buf, "JPEG", quality=int(c))
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    return out


_FUNCS: dict[str, Callable[[Array, Any, _Ctx], Array]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}


# ---------------------------------------------------------------- public API


def available_corruptions() -> tuple[str, ...]:
    """The names of :data:`CORRUPTIONS` usable here: all but frost when the ``imagecorruptions``
    package (its frost photographs) is not installed."""
    return tuple(n for n in CORRUPTIONS if n != "frost" or _frost_dir() is not None)


def _check_name_severity(name: str, severity: int) -> int:
    if name not in _FUNCS:
        raise DataError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}")
    try:
        sev = operator.index(severity)
    except TypeError:
        sev = -1
    if isinstance(severity, bool) or sev not in SEVERITIES:
        raise DataError(
            f"severity {severity!r} of {name!r} is out of range; choose one of: "
            f"{', '.join(str(s) for s in SEVERITIES)}"
        )
    return sev


def corrupt(
    x: torch.Tensor, name: str, severity: int, *, seed: int, bounds: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Corrupt a batch of images with corruption ``name`` at ``severity`` (1 to 5).

    ``x`` is a float tensor (N, C, H, W) with C = 1 or 3, H and W at least 8 and values inside
    ``bounds``; it is never modified. Returns a new float32 tensor of the same shape and device with
    values inside ``bounds``. The parameters come from the CIFAR-10-C table for images whose larger
    side is at most 48, Tiny-ImageNet-C up to 112 and ImageNet-C above (see the module docstring).
    Image ``i`` draws its random numbers from its own generator seeded by ``(seed, name, severity, i)``:
    the result is bit-identical for the same arguments and ``corrupt(x[:k]) == corrupt(x)[:k]``.
    frost needs the ``imagecorruptions`` package (its photographs); :func:`available_corruptions`
    says whether it is installed.

    Raises :class:`~compaudit.errors.DataError` for an unknown name, a severity outside 1..5, a tensor
    of another shape or a non-float dtype, invalid bounds, or values outside them.
    """
    sev = _check_name_severity(name, severity)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"corrupt({name!r}): images must be a tensor of shape (N, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise DataError(f"corrupt({name!r}): images must be a float tensor, got {x.dtype}")
    n, ch, h, w = (int(s) for s in x.shape)
    if ch not in (1, 3):
        raise DataError(f"corrupt({name!r}): images must have 1 or 3 channels, got {ch}")
    if h < 8 or w < 8:
        raise DataError(f"corrupt({name!r}): images must be at least 8 x 8 pixels, got {h} x {w}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise DataError(f"corrupt({name!r}): bounds must be finite with lower < upper, got {bounds!r}")
    if name == "frost" and _frost_dir() is None:
        raise DataError(_FROST_MISSING)
    if n == 0:
        return torch.empty(tuple(x.shape), dtype=torch.float32, device=x.device)

    arr = x.detach().to("cpu", torch.float64).numpy().transpose(0, 2, 3, 1)
    arr = np.ascontiguousarray((arr - lo) / (hi - lo))  # a new array: the input is never written
    tol = 1e-5
    if not np.isfinite(arr).all() or arr.min() < -tol or arr.max() > 1 + tol:
        raise DataError(f"corrupt({name!r}): image values must be finite and inside the bounds [{lo}, {hi}]")
    arr = np.clip(arr, 0.0, 1.0)

    table = _table_for(h, w)
    rngs = [_image_rng(int(seed), name, sev, i) for i in range(n)] if name in _RANDOM else []
    ctx = _Ctx(table=table, rngs=rngs)
    fn = _FUNCS[name]
    params = table.params[name][sev - 1]
    if ch == 1 and name in _COLOUR:
        out = _luminance(np.clip(fn(np.repeat(arr, 3, axis=3), params, ctx), 0.0, 1.0))
    else:
        out = fn(arr, params, ctx)
    out = np.clip(out, 0.0, 1.0) * (hi - lo) + lo
    result = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32))
    return result.clamp_(lo, hi).to(x.device)
