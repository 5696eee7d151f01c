"""Seeds, devices and content keys: what makes a run repeatable and resumable."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compaudit._version import __version__
from compaudit.errors import CompauditError

#: bump when a change makes earlier cached variants or results wrong
CACHE_VERSION = 1


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA device that is absent is an error, never a
    silent fall-back to the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CompauditError(
            f"device {name!r} was asked for but no CUDA device is available (device: cpu runs here)"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise CompauditError("device 'mps' was asked for but is not available")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise CompauditError(
            f"device {name!r} was asked for but this machine has {count} CUDA device(s) "
            f"(cuda:0..cuda:{count - 1})"
        )
    return device


def derive_seed(seed: int, *parts: str) -> int:
    """A seed for one stage, derived from the run's seed and the stage's identity, so a stage gives
    the same numbers whatever ran before it (which is what makes a resumed run identical)."""
    h = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    raise TypeError(f"cannot hash a {type(o).__name__}")


def spec_key(obj: Any) -> str:
    """Content key of a spec: the first 16 hex digits of the SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json({"v": CACHE_VERSION, "spec": obj}).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    """What a reader needs to repeat a run: versions, machine, device, seed, threads."""
    import os
    import platform
    import sys

    env: dict[str, Any] = {
        "compaudit": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "seed": seed,
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: readers see the old file or
    the whole new one, never half of it (a killed run leaves only a ``.tmpPID`` file behind)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
