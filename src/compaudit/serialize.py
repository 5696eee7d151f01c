"""Saving weights sparse, so an unstructured-pruned model's file actually shrinks.

A dense ``torch.save`` of a pruned model is as large as the unpruned one: zeros cost 4 bytes each.
:func:`save_sparse` stores each floating tensor whose share of zeros is at least ``min_sparsity`` as
its non-zero values plus a bitmask of their positions (1 bit per weight): at 50% sparsity a float32
tensor takes ``0.5 * 4 + 1/8`` bytes per weight instead of 4, at 90% ``0.4 + 1/8``. Other tensors are
stored as they are. :func:`load_sparse` restores the exact dense state dict. Both files are plain
``torch.save`` archives of tensors, loadable with ``weights_only=True``.

This shrinks the file, not the compute: dense kernels multiply the zeros all the same, so masks
alone give no speed-up (the efficiency probe measures latency on the dense model it runs).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

_VALUES, _MASK, _SHAPE = "::values", "::mask", "::shape"


def to_sparse_state(state: Mapping[str, Tensor], *, min_sparsity: float = 0.3) -> dict[str, Tensor]:
    """The sparse form of ``state``: tensors at least ``min_sparsity`` zeros become values + bitmask."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if not isinstance(t, Tensor):  # e.g. packed-parameter metadata of quantized modules
            out[name] = t
            continue
        t = t.detach().cpu()
        if t.is_floating_point() and t.numel() >= 64:
            nz = t != 0
            if 1.0 - float(nz.double().mean()) >= min_sparsity:
                bits = np.packbits(nz.flatten().numpy().astype(np.uint8))
                out[name + _VALUES] = t[nz].clone()
                out[name + _MASK] = torch.from_numpy(bits)
                out[name + _SHAPE] = torch.tensor(list(t.shape), dtype=torch.int64)
                continue
        out[name] = t
    return out


def from_sparse_state(sparse: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The dense state dict that :func:`to_sparse_state` encoded (bit-exact)."""
    out: dict[str, Tensor] = {}
    for name, t in sparse.items():
        if name.endswith(_VALUES):
            base = name[: -len(_VALUES)]
            shape = [int(s) for s in sparse[base + _SHAPE].tolist()]
            n = int(np.prod(shape)) if shape else 1
            mask = np.unpackbits(sparse[base + _MASK].numpy())[:n].astype(bool)
            dense = torch.zeros(n, dtype=t.dtype)
            dense[torch.from_numpy(mask)] = t
            out[base] = dense.reshape(shape)
        elif not (name.endswith(_MASK) or name.endswith(_SHAPE)):
            out[name] = t
    return out


def save_sparse(state: Mapping[str, Tensor], f: str | Path | BinaryIO, *, min_sparsity: float = 0.3) -> None:
    torch.save(to_sparse_state(state, min_sparsity=min_sparsity), f)


def load_sparse(f: str | Path | BinaryIO) -> dict[str, Tensor]:
    obj = torch.load(f, map_location="cpu", weights_only=True)
    return from_sparse_state(obj)


def saved_size(state: Mapping[str, Tensor], *, sparse: bool = False) -> int:
    """Bytes of the file ``torch.save`` (or :func:`save_sparse`) writes for ``state``."""
    buf = io.BytesIO()
    if sparse:
        save_sparse(state, buf)
    else:
        torch.save(dict(state), buf)
    return buf.getbuffer().nbytes
