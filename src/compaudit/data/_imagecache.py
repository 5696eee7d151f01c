"""Decoded images kept so that a tree of image files is decoded once, not once per load.

Two levels, both keyed by :func:`cache_key` (the files' paths, sizes and modification times, the
transform's parameters and :data:`FORMAT_VERSION`), so a changed, added or removed file, or another
transform, is a different key and is never served stale pixels:

* an in-process memo (:class:`Memo`, least recently used, bounded by bytes) of read-only uint8
  arrays, so the same tree is not even re-read from disk within a process (one load per probe, per
  cell, per domain);
* a persistent file per key under :func:`cache_dir` (``$COMPAUDIT_CACHE_DIR/imagefolder/``, else
  ``~/.cache/compaudit/imagefolder/``), so every later run and every Ray worker on the machine skips
  the decoding. A file is written to a temporary name in the same folder and moved into place with
  :func:`os.replace`, so a crash never leaves a half-written file under a real name; a file whose
  header, size or CRC-32 does not match is ignored, logged and rewritten, never trusted. Deleting
  the folder clears the cache.

File layout: ``MAGIC``, a little-endian uint32 header length, a JSON header (format version, key,
shape, dtype, CRC-32 of the payload), then the C-ordered payload bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from compaudit.errors import DataError

log = logging.getLogger(__name__)

#: bump when the decoding or the file layout changes: every older cache file becomes a miss
FORMAT_VERSION = 1
MAGIC = b"CAIMGC\x00\x01"
CACHE_ENV = "COMPAUDIT_CACHE_DIR"
WORKERS_ENV = "COMPAUDIT_DATA_WORKERS"
#: the memo keeps at most this many bytes of decoded images (least recently used dropped first)
MEMO_BYTES = 4 * 2**30
_CHUNK = 64 * 2**20


def cache_dir() -> Path:
    """Where the decoded images are stored: ``$COMPAUDIT_CACHE_DIR/imagefolder`` if the variable is
    set, else ``~/.cache/compaudit/imagefolder``."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "compaudit"
    return root / "imagefolder"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def decode_workers(requested: int | None) -> int:
    """Threads that decode images: ``requested``, else ``$COMPAUDIT_DATA_WORKERS``, else the usable CPUs."""
    if requested is not None:
        return requested
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise DataError(f"{WORKERS_ENV}={env!r} is not a whole number of threads") from None
        if value < 1:
            raise DataError(f"{WORKERS_ENV}={env!r} must be at least 1")
        return value
    return usable_cpus()


def file_stats(files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """``(absolute path, size in bytes, modification time in ns)`` of every file, in order."""
    out = []
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            raise DataError(f"cannot read image {str(path)!r}: {type(exc).__name__}") from None
        out.append((str(path.absolute()), st.st_size, st.st_mtime_ns))
    return out


def cache_key(stats: Sequence[tuple[str, int, int]], transform: Mapping[str, object]) -> str:
    """Hex digest naming the decoded images of ``stats`` under ``transform`` (and this format version)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "transform": dict(transform)}, sort_keys=True).encode())
    for name, size, mtime in stats:
        h.update(f"\n{size}\t{mtime}\t".encode())
        h.update(name.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:40]


def _crc(array: NDArray[np.uint8]) -> int:
    flat = np.ascontiguousarray(array).reshape(-1).data
    crc = 0
    for i in range(0, len(flat), _CHUNK):
        crc = zlib.crc32(flat[i : i + _CHUNK], crc)
    return crc


def read(path: Path, key: str, shape: tuple[int, ...]) -> NDArray[np.uint8] | None:
    """The array stored at ``path`` if it is a whole, valid cache file for ``key`` of ``shape``;
    ``None`` if there is no file, or (logged) if it is unreadable, truncated or corrupt."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a compaudit image cache file")
            (n,) = struct.unpack("<I", f.read(4))
            if n > 1 << 16:
                raise ValueError("header too long")
            header = json.loads(f.read(n).decode())
            if header.get("v") != FORMAT_VERSION or header.get("key") != key:
                raise ValueError("header names another key or format version")
            if tuple(header.get("shape", ())) != tuple(shape) or header.get("dtype") != "uint8":
                raise ValueError(f"shape {header.get('shape')} does not match {list(shape)}")
            out = np.empty(shape, dtype=np.uint8)
            view = out.reshape(-1).data
            got = 0
            while got < out.nbytes:
                step = f.readinto(view[got : got + _CHUNK])
                if not step:
                    raise ValueError(f"truncated: {got} of {out.nbytes} bytes")
                got += step
            if f.read(1):
                raise ValueError("trailing bytes after the images")
            if _crc(out) != header.get("crc32"):
                raise ValueError("CRC-32 of the images does not match the header")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable image cache %s (%s); decoding the images again", path, exc)
        return None
    return out


def write(path: Path, key: str, array: NDArray[np.uint8]) -> None:
    """Store ``array`` at ``path`` atomically (temporary file in the same folder, then os.replace).
    A failure (read-only or full disk) is logged and leaves no file behind: the cache is an
    optimisation, never a reason for a run to fail."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.ascontiguousarray(array, dtype=np.uint8)
        header = json.dumps(
            {
                "v": FORMAT_VERSION,
                "key": key,
                "shape": list(data.shape),
                "dtype": "uint8",
                "crc32": _crc(data),
            }
        ).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<I", len(header)))
            f.write(header)
            flat = data.reshape(-1).data
            for i in range(0, data.nbytes, _CHUNK):
                f.write(flat[i : i + _CHUNK])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("cannot write the image cache %s (%s); continuing without it", path, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class Memo:
    """Read-only arrays by key, least recently used first out once over ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, NDArray[np.uint8]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> NDArray[np.uint8] | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: str, array: NDArray[np.uint8]) -> None:
        if array.nbytes > self.max_bytes:
            return
        array.flags.writeable = False
        with self._lock:
            self._items[key] = array
            self._items.move_to_end(key)
            total = sum(a.nbytes for a in self._items.values())
            while total > self.max_bytes:
                _, old = self._items.popitem(last=False)
                total -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: the process-wide memo of decoded image trees
MEMO = Memo(MEMO_BYTES)
