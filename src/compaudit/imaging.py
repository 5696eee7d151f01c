"""Images for the report: small PNG thumbnails and matplotlib figures embedded as ``data:`` URIs, so
the page opens offline."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor


def to_png_data_uri(image: Tensor, bounds: tuple[float, float] = (0.0, 1.0), scale: int = 2) -> str:
    """``"data:image/png;base64,..."`` of one image of shape ``(C, H, W)`` (or ``(H, W)``).

    Values are clipped to ``bounds`` and mapped to 0..255 (NaN to the lower bound). One channel
    gives a grey PNG, three an RGB one; any other channel count is shown as the grey mean of its
    channels. The picture is enlarged ``scale`` times with nearest-neighbour, so pixels stay sharp.
    """
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not hi > lo:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    arr = image.detach().to("cpu").double().numpy()
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W) or (H, W), got {tuple(image.shape)}")
    if arr.shape[0] not in (1, 3):
        arr = arr.mean(axis=0, keepdims=True)
    arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    pixels = np.rint((np.clip(arr, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    if pixels.shape[0] == 1:
        img = Image.fromarray(pixels[0])  # uint8 (H, W): mode L
    else:
        img = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))  # (H, W, 3): RGB
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plt() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: the report's figures are rendered off-screen (no
    display on a server or in CI), and matplotlib is imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def png(fig: Any) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI, so the report stays one
    self-contained file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
