"""The 224x224 data path: how fast an image-folder tree is read with seed 001's transforms.

Prints ``name = value`` lines, each measured in this one run (medians of interleaved runs: every
round times every contender once, in a rotating order, so drifts of the machine hit all alike).
The tree is synthetic JPEGs written to a temporary folder: 31 classes (fewer below 310 images),
``--images`` in all, sizes
mixed like Office-31's domains (amazon's ~300 x 300 product shots; webcam's and dslr's photographs
of 1000 x 1000 and above), read with ``{size: 224, resize: 256}`` (torchvision's Resize(256) +
CenterCrop(224)):

- ``imagefolder_decode_images_per_s``: ``load_dataset`` end to end (scan, parallel decode, cache
  file written, float conversion, splits and their validation) with a cold cache and an empty memo:
  what the first run of an experiment pays, once per machine
- ``imagefolder_decode_nodraft_images_per_s``: the same with ``draft: false`` (every JPEG decoded
  at full size, bit-exact to torchvision's PIL pipeline)
- ``imagefolder_cached_images_per_s``: ``load_dataset`` end to end from the cache file, in a fresh
  memo: what every later run and every Ray worker pays
- ``imagefolder_memo_images_per_s``: ``load_dataset`` again in the same process (the memo answers):
  what each further cell, probe or domain load pays
- ``pil_plain_decode_images_per_s``: a hand-written loader on one thread: PIL open, convert RGB,
  resize the shorter side to 256 (bilinear), centre crop 224, to a uint8 numpy array (no float
  conversion, no splits: less work than ``load_dataset`` does)
- ``pixels_nodraft_threads_images_per_s``: the plain loop's very work (full decode, uint8 out, no
  cache, no floats) on our thread pool: the pool's own scaling, ``threads_vs_pil_plain`` (at best
  about ``threads``)
- ``decode_vs_pil_plain``, ``decode_nodraft_vs_pil_plain``, ``cached_vs_pil_plain``: our images
  per second over the plain loop's (target > 1 each)
- ``draft_mean_abs_diff_levels`` / ``draft_max_abs_diff_levels``: what JPEG draft decoding changes
  in the pixels against a full decode, in 8-bit levels (0-255), over the whole tree;
  ``nodraft_equals_pil_plain``: whether ``draft: false`` gives the plain loop's bytes exactly
- ``images``, ``threads``: the tree's size; the decoding threads (the usable CPUs, or
  ``$COMPAUDIT_DATA_WORKERS``)

The floats, splits and their validation (``compaudit.data.base.finalize``) are part of every
``load_dataset`` figure: they bound ``imagefolder_cached_images_per_s`` and
``imagefolder_memo_images_per_s`` from above.

Usage: ``python bench/data224.py [--rounds N] [--images N] [--keep DIR]``. Other processes on
the machine share its cores and page cache: run it on a quiet machine for the numbers you report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from compaudit import load_dataset
from compaudit.data import _imagecache
from compaudit.data import imagefolder as imf

#: (width, height, share): amazon-like product shots, then webcam/dslr-like photographs
SIZES = [
    (300, 300, 0.35),
    (293, 300, 0.1),
    (300, 273, 0.1),
    (1000, 1000, 0.15),
    (1280, 960, 0.1),
    (1600, 1200, 0.1),
    (1920, 1080, 0.1),
]
PARAMS = {"size": 224, "resize": 256}


def write_tree(root: Path, n_images: int, classes: int = 31, seed: int = 0) -> list[Path]:
    """JPEGs (quality 90) of smooth random content with some edges, spread over ``classes`` folders."""
    rng = np.random.default_rng(seed)
    shares = np.array([s for _, _, s in SIZES])
    picks = rng.choice(len(SIZES), size=n_images, p=shares / shares.sum())
    paths = []
    for i, k in enumerate(picks):
        w, h, _ = SIZES[k]
        coarse = rng.integers(0, 256, size=(max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)).copy()
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0 : y0 + h // 4, x0 : x0 + w // 4] = rng.integers(0, 256, size=3, dtype=np.uint8)  # an object
        img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, size=img.shape), 0, 255).astype(np.uint8)
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def pil_plain(paths: list[Path]) -> np.ndarray:
    """What a hand-written loader does: one thread, full decode, Resize(256) + CenterCrop(224)."""
    out = np.empty((len(paths), 224, 224, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        if w <= h:
            nw, nh = 256, int(256 * h / w)
        else:
            nw, nh = int(256 * w / h), 256
        rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
        out[i] = np.asarray(rgb.crop((left, top, left + 224, top + 224)))
    return out


def interleaved_s(
    fns: dict[str, Callable[[], object]], rounds: int, setup: Callable[[], object] = lambda: None
) -> dict[str, float]:
    """Median seconds per call of each function, timed in rotating order over ``rounds`` rounds;
    ``setup`` runs, untimed, before every call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(rounds):
        for name, fn in items[r % len(items) :] + items[: r % len(items)]:
            setup()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=310)
    ap.add_argument("--keep", type=Path, default=None, help="write the tree here and keep it")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compaudit-data224-"))
    root = args.keep if args.keep is not None else work / "tree"
    caches = work / "caches"
    try:
        classes = max(2, min(31, args.images // 10))  # >= 10 images a class: every split non-empty
        paths = sorted(write_tree(root, args.images, classes)) if not (root / "class00").is_dir() else []
        paths = paths or sorted(root.rglob("*.jpg"))
        n = len(paths)
        threads = _imagecache.decode_workers(None)
        full_decode = imf.Transform("RGB", 224, 256, draft=False)

        def fresh() -> None:
            """Untimed, before every call: the memo emptied and the cold cache folder removed."""
            _imagecache.MEMO.clear()
            shutil.rmtree(caches / "cold", ignore_errors=True)

        def cold(extra: dict[str, object]) -> Callable[[], object]:
            def run() -> object:  # nothing to read, one cache file to write
                os.environ["COMPAUDIT_CACHE_DIR"] = str(caches / "cold")
                return load_dataset("imagefolder", root, {**PARAMS, **extra})

            return run

        def cached() -> object:  # fresh() has emptied the memo: the cache file answers
            os.environ["COMPAUDIT_CACHE_DIR"] = str(caches / "warm")
            return load_dataset("imagefolder", root, PARAMS)

        cached()  # writes the warm cache file (and warms the page cache for every contender)
        pil_plain(paths[: min(8, n)])
        t = interleaved_s(
            {
                "decode": cold({}),
                "decode_nodraft": cold({"draft": False}),
                "cached": cached,
                "pil_plain": lambda: pil_plain(paths),
                "pixels_nodraft_threads": lambda: imf._read_images(paths, full_decode, threads),
            },
            args.rounds,
            setup=fresh,
        )
        cached()  # the memo holds the tree now: each further load is answered by it
        memo_s = statistics.median(_timed(cached) for _ in range(max(3, args.rounds)))
        rate = {k: n / v for k, v in t.items()}
        rate["memo"] = n / memo_s
        print(f"images = {n}")
        print(f"threads = {threads}")
        print(f"imagefolder_decode_images_per_s = {rate['decode']:.1f}")
        print(f"imagefolder_decode_nodraft_images_per_s = {rate['decode_nodraft']:.1f}")
        print(f"imagefolder_cached_images_per_s = {rate['cached']:.1f}")
        print(f"imagefolder_memo_images_per_s = {rate['memo']:.1f}")
        print(f"pil_plain_decode_images_per_s = {rate['pil_plain']:.1f}")
        print(f"pixels_nodraft_threads_images_per_s = {rate['pixels_nodraft_threads']:.1f}")
        print(f"threads_vs_pil_plain = {rate['pixels_nodraft_threads'] / rate['pil_plain']:.3f}")
        print(f"decode_vs_pil_plain = {rate['decode'] / rate['pil_plain']:.3f}")
        print(f"decode_nodraft_vs_pil_plain = {rate['decode_nodraft'] / rate['pil_plain']:.3f}")
        print(f"cached_vs_pil_plain = {rate['cached'] / rate['pil_plain']:.3f}")

        drafted = imf._read_images(paths, imf.Transform("RGB", 224, 256), threads).astype(np.int16)
        full = imf._read_images(paths, full_decode, threads).astype(np.int16)
        diff = np.abs(drafted - full)
        print(f"draft_mean_abs_diff_levels = {diff.mean():.3f}")
        print(f"draft_max_abs_diff_levels = {int(diff.max())}")
        plain = pil_plain(paths).transpose(0, 3, 1, 2).astype(np.int16)
        print(f"nodraft_equals_pil_plain = {bool(np.array_equal(full, plain))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
