"""Small statistics the probes share: McNemar's test on paired predictions, expected calibration
error with its reliability bins, percentile bootstrap intervals (paired, one-sample, and of a
silhouette), Wilson intervals of proportions and the MOVER interval of a difference.

Convention for intervals a probe reports: next to the point estimate ``<metric>``, the metrics
``<metric>_ci_low`` and ``<metric>_ci_high`` with the param ``level`` (and the point estimate's
unit), from a bootstrap over the evaluated samples seeded with
:func:`compaudit.runtime.derive_seed` from the run's seed, so reruns give the same interval.

Every function takes numpy arrays (or anything :func:`numpy.asarray` accepts) and returns plain
Python numbers, so results go straight into :meth:`ProbeResult.add` and into JSON tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _sps

#: below this many discordant pairs McNemar's test uses the exact binomial distribution
MCNEMAR_EXACT_BELOW = 25

#: a statistic of paired resamples: two arrays of shape (R, n) in, one value per resample (R,) out
PairedStatistic = Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]

#: elements (resamples x samples) drawn at once by :func:`paired_bootstrap_ci`; bounds its memory
_BOOTSTRAP_CHUNK = 1 << 21


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two classifiers on the same samples.

    ``b01``: samples model A gets right and model B wrong; ``b10``: A wrong, B right. ``method`` is
    ``"exact"`` (``statistic`` is then ``min(b01, b10)``, as in statsmodels) or ``"chi2"``
    (``statistic`` is the continuity-corrected chi-square with one degree of freedom).
    """

    b01: int
    b10: int
    statistic: float
    p_value: float
    method: str


def mcnemar(a_correct: ArrayLike, b_correct: ArrayLike) -> McNemarResult:
    """McNemar's test on paired correctness (booleans, one per sample, same order in both).

    Only the discordant pairs count, ``n = b01 + b10``. The rule:

    - ``n == 0``: nothing disagrees, ``p = 1`` (statistic 0, method ``exact``);
    - ``n < 25`` (:data:`MCNEMAR_EXACT_BELOW`): the exact two-sided binomial test of ``b01`` out of
      ``n`` at ``p = 0.5`` (:func:`scipy.stats.binomtest`), i.e. ``min(1, 2 P(X <= min(b01, b10)))``;
    - otherwise the chi-square with Edwards' continuity correction,
      ``(|b01 - b10| - 1)^2 / n`` on one degree of freedom, as statsmodels'
      ``mcnemar(exact=False, correction=True)``, except that ``|b01 - b10| - 1`` is floored at 0
      (statsmodels gives ``1/n`` when ``b01 == b10``; the floor gives the exact ``p = 1``).
    """
    a = _as_bool(a_correct, "a_correct")
    b = _as_bool(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(f"a_correct and b_correct differ in shape: {a.shape} vs {b.shape}")
    b01 = int(np.count_nonzero(a & ~b))
    b10 = int(np.count_nonzero(~a & b))
    n = b01 + b10
    if n == 0:
        return McNemarResult(0, 0, 0.0, 1.0, "exact")
    if n < MCNEMAR_EXACT_BELOW:
        p = float(_sps.binomtest(b01, n, 0.5, alternative="two-sided").pvalue)
        return McNemarResult(b01, b10, float(min(b01, b10)), min(1.0, p), "exact")
    stat = max(abs(b01 - b10) - 1.0, 0.0) ** 2 / n
    return McNemarResult(b01, b10, stat, float(_sps.chi2.sf(stat, 1)), "chi2")


def reliability_bins(confidence: ArrayLike, correct: ArrayLike, bins: int = 15) -> list[dict[str, Any]]:
    """Reliability diagram data: ``bins`` equal-width bins on [0, 1], right-closed as in Guo et al.
    2017 (bin ``i`` holds confidences in ``(i/B, (i+1)/B]``; a confidence of exactly 0 goes to the
    first bin).

    One dict per bin, empty bins included: ``bin_low``, ``bin_high``, ``count``, ``accuracy`` and
    ``confidence`` (the means over the bin; ``None`` when the bin is empty).
    """
    conf, ok = _conf_correct(confidence, correct, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = _bin_index(conf, edges)
    count = np.bincount(idx, minlength=bins)
    acc_sum = np.bincount(idx, weights=ok.astype(np.float64), minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    rows: list[dict[str, Any]] = []
    for i in range(bins):
        n = int(count[i])
        rows.append(
            {
                "bin_low": float(edges[i]),
                "bin_high": float(edges[i + 1]),
                "count": n,
                "accuracy": float(acc_sum[i] / n) if n else None,
                "confidence": float(conf_sum[i] / n) if n else None,
            }
        )
    return rows


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = 15) -> float:
    """ECE = sum over bins of ``|B_b| / N * |accuracy_b - confidence_b|`` with the bins of
    :func:`reliability_bins`. NaN for no samples (or when a confidence is NaN)."""
    conf, ok = _conf_correct(confidence, correct, bins)
    if conf.size == 0 or not np.isfinite(conf).all():
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = _bin_index(conf, edges)
    # sum_b |B_b|/N |acc_b - conf_b| = sum_b |sum_{i in b} (correct_i - conf_i)| / N
    gap = np.bincount(idx, weights=ok.astype(np.float64) - conf, minlength=bins)
    return float(np.abs(gap).sum() / conf.size)


def paired_bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    *,
    statistic: PairedStatistic | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired percentile bootstrap confidence interval of ``statistic(b, a)``.

    Each resample draws ``n`` indices with replacement (``numpy.random.default_rng(seed)``) and
    applies them to ``a`` and ``b`` alike, so the pairing is kept. The default statistic is the mean
    difference ``mean(b) - mean(a)`` (e.g. per-sample correctness of a baseline ``a`` and a variant
    ``b``: the accuracy delta). A custom ``statistic`` receives the resampled ``a`` and ``b`` as
    arrays of shape ``(R, n)`` and returns ``R`` values. For a subset (one class) pass the subset's
    arrays: that resamples within it.

    Resamples are drawn in chunks (at most ~2M indices at once), so memory stays bounded; the
    result depends only on the data, ``statistic``, ``resamples``, ``level`` and ``seed``.
    Returns ``(low, high)``, the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles; ``(nan, nan)``
    for empty inputs.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a and b differ in length: {x.size} vs {y.size}")
    _check_bootstrap(resamples, level)
    if statistic is None:
        diff = y - x
        return _bootstrap(x.size, lambda idx: diff[idx].mean(axis=1), resamples, level, seed)
    stat = statistic
    return _bootstrap(x.size, lambda idx: stat(x[idx], y[idx]), resamples, level, seed)


def _bootstrap(
    n: int,
    statistic: Callable[[NDArray[np.intp]], Any],
    resamples: int,
    level: float,
    seed: int,
) -> tuple[float, float]:
    """The percentile interval of ``statistic(idx)`` over ``resamples`` index draws ``idx`` of shape
    ``(R, n)`` (with replacement, ``numpy.random.default_rng(seed)``), drawn in chunks of at most
    ~2M indices so memory stays bounded; ``(nan, nan)`` for ``n == 0``."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _BOOTSTRAP_CHUNK // n)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        vals = np.asarray(statistic(rng.integers(0, n, size=(r, n))), dtype=np.float64)
        if vals.shape != (r,):
            raise ValueError(f"statistic must return shape ({r},), got {vals.shape}")
        out[start : start + r] = vals
    return _quantiles(out, level)


def bootstrap_ci(
    values: ArrayLike,
    *,
    statistic: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (one value per sample).

    NaN values are dropped first, so the default statistic is the mean a probe reports with
    ``nanmean``. Each resample draws as many indices as there are values, with replacement
    (``numpy.random.default_rng(seed)``), in chunks as :func:`paired_bootstrap_ci`. A custom
    ``statistic`` receives the resampled values as an array of shape ``(R, n)`` and returns ``R``
    values. Returns ``(low, high)``, the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles;
    ``(nan, nan)`` when no value is finite.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    _check_bootstrap(resamples, level)
    if statistic is None:
        return _bootstrap(x.size, lambda idx: x[idx].mean(axis=1), resamples, level, seed)
    stat = statistic
    return _bootstrap(x.size, lambda idx: stat(x[idx]), resamples, level, seed)


def silhouette_bootstrap_ci(
    points: ArrayLike,
    labels: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of the mean silhouette (Rousseeuw 1987; Euclidean, the labels as
    clusters) of ``points`` ``(N, D)``: resample the points (or, with ``groups``, whole groups: the
    clean and adversarial versions of one image) with replacement, recompute the silhouette on the
    fixed points (a t-SNE map is not recomputed), and return the normal interval
    ``silhouette ± z * se`` with ``se`` the standard deviation of the resampled silhouettes and
    ``z`` the normal quantile of ``level``. Not the percentile interval: the silhouette takes a
    minimum over the other classes, which resampling biases downwards (by about its own spread on
    overlapping classes), so percentiles can miss the point estimate; the spread is what a
    comparison needs.

    A resample is a weight per point (how often it was drawn). A point drawn twice counts twice,
    but never as its own neighbour: ``a(i)`` averages over the *other* points of its class, each
    with its weight, so duplicates do not shrink it to 0 (which would bias the silhouette upwards);
    with all weights 1 this is exactly scikit-learn's ``silhouette_score``. A point alone in its
    class scores 0, as in scikit-learn. Cost: one ``N x N`` distance matrix, then an ``N x N`` by
    ``N x K`` product per resample. ``(nan, nan)`` with fewer than two classes or as many classes
    as points.
    """
    x = np.asarray(points, dtype=np.float64)
    x = x.reshape(len(x), -1)
    _check_bootstrap(resamples, level)
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    n, k = len(x), len(classes)
    if len(y) != n:
        raise ValueError(f"points and labels differ in length: {n} vs {len(y)}")
    if not 2 <= k <= n - 1:
        return float("nan"), float("nan")
    if groups is None:
        g = np.arange(n)
    else:
        _, g = np.unique(np.asarray(groups), return_inverse=True)
        if len(g) != n:
            raise ValueError(f"points and groups differ in length: {n} vs {len(g)}")
    n_groups = int(g.max()) + 1
    sq = np.einsum("ij,ij->i", x, x)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    np.fill_diagonal(dist, 0.0)
    onehot = (y[:, None] == np.arange(k)[None, :]).astype(np.float64)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _BOOTSTRAP_CHUNK // (n * k))
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        drawn = rng.integers(0, n_groups, size=(r, n_groups))
        counts = np.zeros((r, n_groups))
        np.add.at(counts, (np.arange(r)[:, None], drawn), 1.0)
        out[start : start + r] = _weighted_silhouette(dist, y, onehot, counts[:, g])
    point = float(_weighted_silhouette(dist, y, onehot, np.ones((1, n)))[0])
    half = float(_sps.norm.ppf((1.0 + level) / 2.0)) * float(out.std(ddof=1)) if resamples > 1 else 0.0
    return point - half, point + half


def _weighted_silhouette(
    dist: NDArray[np.float64], y: NDArray[np.intp], onehot: NDArray[np.float64], w: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The mean silhouette of the points under each row of weights ``w`` ``(R, N)``, shape ``(R,)``
    (see :func:`silhouette_bootstrap_ci`)."""
    r, n = w.shape
    k = onehot.shape[1]
    rows = np.arange(n)
    mass = (w[:, :, None] * onehot[None]).transpose(1, 0, 2).reshape(n, r * k)
    sums = (dist @ mass).reshape(n, r, k).transpose(1, 0, 2)  # (R, N, K): weighted distances to each class
    counts = w @ onehot  # (R, K)
    own = counts[:, y] - w  # the other points of its class (its own copies excluded)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = sums[:, rows, y] / own
        mean_other = np.where(counts[:, None, :] > 0, sums / counts[:, None, :], np.inf)
    mean_other[:, rows, y] = np.inf
    b = mean_other.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.where((own > 0) & np.isfinite(s), s, 0.0)
    out: NDArray[np.float64] = (w * s).sum(axis=1) / w.sum(axis=1)
    return out


def wilson_interval(share: float, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``share`` observed on ``n`` samples (an
    accuracy, a flip rate). ``(nan, nan)`` for ``n < 1`` or a NaN share.

    It also bounds the interval of a mean of per-sample values in ``[0, 1]`` (an accuracy averaged
    over several attacks or domains on the same ``n`` samples): their variance is at most
    ``share (1 - share)``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n < 1 or np.isnan(share):
        return float("nan"), float("nan")
    p = min(max(float(share), 0.0), 1.0)
    z = float(_sps.norm.ppf((1.0 + level) / 2.0))
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def difference_ci(
    a: float, a_ci: tuple[float, float], b: float, b_ci: tuple[float, float]
) -> tuple[float, float]:
    """Interval of ``a - b`` from the two estimates' own intervals, by the MOVER method (Zou &
    Donner 2008; with Wilson intervals this is Newcombe's interval for a difference of two
    proportions). It treats ``a`` and ``b`` as independent: for two models measured on the same
    samples, which move together, it is wider than a paired interval."""
    (al, ah), (bl, bh) = a_ci, b_ci
    d = a - b
    low = d - float(np.hypot(a - al, bh - b))
    high = d + float(np.hypot(ah - a, b - bl))
    return low, high


# ---------------------------------------------------------------- helpers


def _check_bootstrap(resamples: int, level: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _quantiles(out: NDArray[np.float64], level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(out, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _as_bool(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    arr = np.asarray(values)
    if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans (or 0/1)")
    return arr.astype(bool).ravel()


def _conf_correct(
    confidence: ArrayLike, correct: ArrayLike, bins: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = _as_bool(correct, "correct")
    if conf.shape != ok.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.size} vs {ok.size}")
    return conf, ok


def _bin_index(conf: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.intp]:
    """Index of the right-closed bin ``(edges[i], edges[i+1]]`` holding each confidence (0 and
    below to the first bin, above 1 and NaN to the last)."""
    idx = np.searchsorted(edges, conf, side="left") - 1
    return np.clip(idx, 0, len(edges) - 2)
