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
    expected range, expected_low..expected_high (median +/- threshold robust sigmas)."""
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
            "expected_low": float(med[k] - threshold * sigma[k]),
            "expected_high": float(med[k] + threshold * sigma[k]),
        })
    return out


def window_stats(values: NDArray[np.float64] | Sequence[float], lo: NDArray[np.integer] | Sequence[int],
                 hi: NDArray[np.integer] | Sequence[int],
                 ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
    """(median, robust sigma, count) of ``values[lo[i]:hi[i]]`` for every i, in one batched pass.

    Robust sigma as in :func:`robust_z` (MAD / 0.6745, or 1.2533 * the mean absolute deviation where
    the MAD is zero). Every window is cut from one strided view of the values padded with NaN, the
    positions before ``lo`` masked to NaN, and each row sorted once for the median and once for the
    MAD, so thousands of windows cost one numpy sort of a (windows x widest) matrix, not a Python
    loop. Empty windows give NaN median and sigma."""
    x = np.asarray(values, dtype=np.float64)
    lo_a = np.asarray(lo, dtype=np.intp)
    hi_a = np.asarray(hi, dtype=np.intp)
    if lo_a.shape != hi_a.shape or lo_a.ndim != 1:
        raise ValueError(f"window_stats: lo and hi must be 1-D and alike, got shapes {lo_a.shape} and {hi_a.shape}")
    if lo_a.size and (int(lo_a.min()) < 0 or int(hi_a.max()) > x.size or bool(np.any(hi_a < lo_a))):
        raise ValueError(f"window_stats: windows must lie inside 0..{x.size} with lo <= hi")
    return window_stats_unchecked(x, lo_a, hi_a)


def window_stats_unchecked(x: NDArray[np.float64], lo: NDArray[np.intp], hi: NDArray[np.intp],
                           ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
    """:func:`window_stats` for callers whose windows are valid by construction (the live path,
    where each check is a measurable share of a sub-millisecond update)."""
    count = hi - lo
    m = count.size
    width = int(count.max()) if m else 0
    if width == 0:
        return np.full(m, np.nan), np.full(m, np.nan), count
    # Row i holds x[hi - width : hi], the positions before lo (or before 0) masked to NaN, which
    # sorts last: after one sort the first count[i] entries of row i are its window, in order.
    # (NaN arithmetic below never warns; only the empty windows' rows carry it to the end.)
    cols = np.arange(width)
    idx = (hi - width)[:, None] + cols
    win = np.where(idx >= lo[:, None], x[np.maximum(idx, 0)], np.nan)
    win.sort(axis=1)
    rows = np.arange(m)
    lo_mid = np.maximum((count - 1) // 2, 0)
    hi_mid = np.minimum(count // 2, width - 1)
    empty = count == 0
    med = 0.5 * (win[rows, lo_mid] + win[rows, hi_mid])
    med[empty] = np.nan
    dev = np.abs(win - med[:, None])
    dev.sort(axis=1)
    mad = 0.5 * (dev[rows, lo_mid] + dev[rows, hi_mid])
    meanad = np.sum(dev, axis=1, where=cols < count[:, None]) / np.maximum(count, 1)
    sigma = np.where(mad > 0, mad / _K, meanad * 1.2533)
    sigma[empty] = np.nan
    return med, sigma, count
