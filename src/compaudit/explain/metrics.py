"""Quality and drift of saliency maps: Poppi et al. 2021 (as seed 004 uses them) and seed 003's drift.

Every function takes per-sample inputs and returns **per-sample** values (a float64 tensor of shape
``(N,)``); callers average them (ignoring NaN, see below). Every value is a **fraction** (0..1, the
report formats it as a percentage). Maps are ``(N, H, W)`` at the input resolution, already
normalised to ``[0, 1]`` per map (:func:`compaudit.explain.saliency.normalize`), so that maps of
layers of different resolutions, and of different models, are compared on the same grid and scale
(comparing CAMs of different resolutions was one of seed 004's mistakes).

Poppi et al. 2021 ("Revisiting the evaluation of class activation mapping for explainability", CVPR
workshops), per image ``x``, class ``c``, map ``L = L_c(x)``:

- :func:`average_drop` ``= max(0, Y_c - O_c) / Y_c`` and :func:`increase_in_confidence` ``= [O_c > Y_c]``
  (Chattopadhay et al. 2018), where ``Y_c`` is the **softmax probability** of ``c`` on ``x`` and
  ``O_c`` that on the explanation map ``x ⊙ L`` (on raw logits the ratio is meaningless: a logit
  can be negative or change sign — seed 004's code used logits);
- :func:`coherency` ``= (Pearson(L_c(x ⊙ L), L) + 1) / 2``: a good map explains the masked image the
  same way; :func:`ssim` is the variant seed 004 reported ("Coherency (SSIM index)");
- :func:`complexity` ``= ||L||_1 / (H W)``: the share of the image the map lights up;
- :func:`adcc` ``= 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - average_drop))``, the harmonic
  mean of the three (0 when one of its terms is 0), per image.

Drift against the baseline's maps of the same images and classes (seed 003: saliency maps changed
by a mean absolute deviation of about 7.5% after compression): :func:`mean_absolute_deviation`,
:func:`spearman` (rank correlation, ties averaged) and :func:`topk_iou` (overlap of the top-k share
of pixels).

Constant maps: a correlation with a constant map is undefined; :func:`pearson` and
:func:`spearman` are NaN for such samples and averages leave them out (:func:`nanmean`), while
:func:`coherency` scores them 0 (so their ADCC is 0 too), as the ADCC reference code does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "adcc",
    "average_drop",
    "coherency",
    "complexity",
    "increase_in_confidence",
    "mean_absolute_deviation",
    "nanmean",
    "pearson",
    "spearman",
    "ssim",
    "topk_iou",
]


def _flat(maps: Tensor) -> Tensor:
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {tuple(maps.shape)}")
    return maps.detach().to("cpu", torch.float64).flatten(1)


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    return _flat(a), _flat(b)


def nanmean(values: Tensor) -> float:
    """Mean of the finite values (NaN when there is none)."""
    v = values.detach().double()
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else math.nan


# ---------------------------------------------------------------- confidence (Poppi et al.)


def average_drop(y: Tensor, o: Tensor) -> Tensor:
    """``max(0, y - o) / y`` per sample: ``y`` the softmax probability of the class on the image,
    ``o`` on the image ⊙ map (both in ``[0, 1]``)."""
    y, o = y.detach().double().cpu(), o.detach().double().cpu()
    if y.shape != o.shape:
        raise ValueError(f"y and o differ in shape: {tuple(y.shape)} and {tuple(o.shape)}")
    if (y < 0).any() or (y > 1).any() or (o < 0).any() or (o > 1).any():
        raise ValueError("average_drop takes softmax probabilities (values in [0, 1]), not logits")
    return torch.clamp(y - o, min=0.0) / y.clamp(min=torch.finfo(torch.float64).tiny)


def increase_in_confidence(y: Tensor, o: Tensor) -> Tensor:
    """1 where the class probability on the image ⊙ map exceeds that on the image, else 0."""
    return (o.detach().double().cpu() > y.detach().double().cpu()).double()


# ---------------------------------------------------------------- maps alone


def complexity(maps: Tensor) -> Tensor:
    """L1 norm of each normalised map divided by its number of pixels ``H W``."""
    return _flat(maps).abs().mean(dim=1)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of maps over their pixels (NaN when one is constant)."""
    x, y = _pair(a, b)
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    den = torch.sqrt((x * x).sum(dim=1) * (y * y).sum(dim=1))
    r = (x * y).sum(dim=1) / den
    return torch.where(den > 0, r.clamp(-1.0, 1.0), torch.full_like(r, math.nan))


def coherency(a: Tensor, b: Tensor) -> Tensor:
    """``(Pearson(a, b) + 1) / 2`` per sample (Poppi et al.): ``a`` the maps of the images, ``b`` the
    maps of the images ⊙ ``a``, same classes. **0** where either map is constant (the correlation
    is undefined), as the ADCC reference code (aimagelab/ADCC) scores it: an explanation that
    vanishes on its own explanation map is not coherent."""
    c = (pearson(a, b) + 1.0) / 2.0
    return torch.nan_to_num(c, nan=0.0)


def _gaussian_window(sigma: float, truncate: float) -> Tensor:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    sample_covariance: bool = True,
) -> Tensor:
    """Mean structural similarity of each pair of maps; the same numbers as
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, data_range=1)``
    (its defaults: an 11-tap Gaussian window, ``K1 = 0.01``, ``K2 = 0.03``, sample covariances,
    the mean over the pixels at least 5 pixels from the border). Maps need at least 11x11 pixels.

    The border rows are left out of the mean, so only "valid" window positions count and the
    padding mode of the filter never matters: the filter is a valid separable convolution."""
    x, y = _pair(a, b)
    h, w = int(a.shape[1]), int(a.shape[2])
    g = _gaussian_window(sigma, 3.5)
    size = g.numel()
    if h < size or w < size:
        raise ValueError(f"ssim needs maps of at least {size}x{size} pixels, got {h}x{w}")
    x = x.view(-1, 1, h, w)
    y = y.view(-1, 1, h, w)
    col, row = g.view(1, 1, size, 1), g.view(1, 1, 1, size)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, col), row)

    ux, uy = filt(x), filt(y)
    uxx, uyy, uxy = filt(x * x), filt(y * y), filt(x * y)
    n = size * size
    cov_norm = n / (n - 1) if sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def adcc(average_drop: Tensor, coherency: Tensor, complexity: Tensor) -> Tensor:
    """Poppi et al.'s ADCC per sample: the harmonic mean of ``coherency``, ``1 - complexity`` and
    ``1 - average_drop`` (fractions); 0 where one of the three is 0, NaN where one is NaN."""
    terms = torch.stack(
        [coherency.double().cpu(), 1.0 - complexity.double().cpu(), 1.0 - average_drop.double().cpu()]
    )
    zero = (terms <= 0).any(dim=0)
    value = 3.0 / (1.0 / terms.clamp(min=torch.finfo(torch.float64).tiny)).sum(dim=0)
    return torch.where(zero & ~torch.isnan(terms).any(dim=0), torch.zeros_like(value), value)


# ---------------------------------------------------------------- drift (seed 003)


def mean_absolute_deviation(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the pixels of ``|a - b|`` for each pair of normalised maps."""
    x, y = _pair(a, b)
    return (x - y).abs().mean(dim=1)


def _ranks(x: Tensor) -> Tensor:
    """Ranks 1..P of each row, ties sharing their average rank (as ``scipy.stats.rankdata``)."""
    from scipy.stats import rankdata

    return torch.from_numpy(np.asarray(rankdata(x.numpy(), axis=1), dtype=np.float64))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps over their pixels (ties: average ranks; NaN
    when one map is constant), as ``scipy.stats.spearmanr``."""
    x, y = _pair(a, b)
    return pearson(_ranks(x).view_as(a), _ranks(y).view_as(b))


def topk_iou(a: Tensor, b: Tensor, k: float = 0.1) -> Tensor:
    """Intersection over union of the ``ceil(k H W)`` highest pixels of each pair of maps (ties at
    the threshold broken by pixel order: the first in row-major order wins)."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    x, y = _pair(a, b)
    p = x.shape[1]
    n = max(1, math.ceil(k * p - 1e-9))

    def top(t: Tensor) -> Tensor:
        order = torch.sort(t, dim=1, descending=True, stable=True).indices[:, :n]
        mask = torch.zeros_like(t, dtype=torch.bool)
        return mask.scatter_(1, order, True)

    ta, tb = top(x), top(y)
    inter = (ta & tb).sum(dim=1).double()
    union = (ta | tb).sum(dim=1).double()
    return inter / union
