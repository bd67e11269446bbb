"""Robust z-score anomalies per series (median and MAD), vectorised over all series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

# 0.6745 = Phi^-1(0.75): makes the MAD a consistent estimator of the standard deviation under
# normality (Iglewicz & Hoaglin's modified z-score).
_K = 0.6745


def _group_median(codes: NDArray[np.intp], values: NDArray[np.float64], g: int) -> NDArray[np.float64]:
    order = np.lexsort((values, codes))
    sv = values[order]
    count = np.bincount(codes, minlength=g)
    starts = np.concatenate(([0], np.cumsum(count)[:-1]))
    lo = starts + (count - 1) // 2
    hi = starts + count // 2
    med = np.full(g, np.nan)
    ok = count > 0
    med[ok] = 0.5 * (sv[lo[ok]] + sv[hi[ok]])
    return med


def robust_z(codes: NDArray[np.integer] | Sequence[int], values: NDArray[np.float64] | Sequence[float],
             n_groups: int | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(score per value, median per group, robust sigma per group).

    score = 0.6745 * (x - median) / MAD. Where the MAD is zero (more than half the values equal),
    the mean absolute deviation * 1.2533 stands in, so a lone departure from a constant series
    still scores; if that is zero too every score is 0."""
    c = np.asarray(codes, dtype=np.intp)
    v = np.asarray(values, dtype=np.float64)
    g = int(n_groups if n_groups is not None else (c.max() + 1 if c.size else 0))
    if v.size == 0:
        return np.empty(0), np.full(g, np.nan), np.full(g, np.nan)
    med = _group_median(c, v, g)
    dev = np.abs(v - med[c])
    mad = _group_median(c, dev, g)
    count = np.bincount(c, minlength=g)
    meanad = np.bincount(c, weights=dev, minlength=g) / np.maximum(count, 1)
    sigma = np.where(mad > 0, mad / _K, meanad * 1.2533)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(sigma[c] > 0, (v - med[c]) / sigma[c], 0.0)
    return score, med, sigma


def find_anomalies(codes: NDArray[np.integer] | Sequence[int], values: NDArray[np.float64] | Sequence[float],
                   *, threshold: float = 2.5, min_count: int = 5, result_ids: Sequence[Any] | None = None,
                   series_names: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Values whose |robust z| exceeds ``threshold``, in series with at least ``min_count`` values.

    Each anomaly names its result id (when given), its series, the value, the score and the
    expected range (median +/- threshold robust sigmas)."""
    c = np.asarray(codes, dtype=np.intp)
    v = np.asarray(values, dtype=np.float64)
    g = int(c.max() + 1) if c.size else 0
    score, med, sigma = robust_z(c, v, g)
    count = np.bincount(c, minlength=g)
    hit = np.flatnonzero((np.abs(score) > threshold) & (count[c] >= min_count))
    out = []
    for i in hit[np.argsort(-np.abs(score[hit]), kind="stable")].tolist():
        k = int(c[i])
        out.append({
            "result_id": None if result_ids is None else result_ids[i],
            "series": k if series_names is None else series_names[k],
            "value": float(v[i]),
            "score": float(score[i]),
            "median": float(med[k]),
            "expected_range": [float(med[k] - threshold * sigma[k]), float(med[k] + threshold * sigma[k])],
        })
    return out
