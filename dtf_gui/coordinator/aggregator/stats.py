"""Summary statistics per group, vectorised over all groups at once.

Values are sorted once by (group, value); every statistic is then a reduction over contiguous
slices (``np.add.reduceat``) or an index into the sorted array (percentiles), so the cost is one
sort plus O(n) numpy work, whatever the number of groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import special

PERCENTILES: tuple[int, ...] = (5, 25, 75, 95, 99)

STAT_NAMES: tuple[str, ...] = (
    "count", "mean", "median", "std", "min", "max", "p5", "p25", "p75", "p95", "p99",
    "ci95_low", "ci95_high", "cv",
)


def group_stats(codes: NDArray[np.integer] | Sequence[int], values: NDArray[np.float64] | Sequence[float],
                n_groups: int | None = None) -> dict[str, NDArray[np.float64]]:
    """Statistics of ``values`` per group code; arrays of length ``n_groups`` (NaN where empty).

    Percentiles interpolate linearly (numpy's default); std is the sample std (ddof=1); the 95 %
    CI of the mean uses Student's t; cv = std / |mean|."""
    c = np.asarray(codes, dtype=np.intp)
    v = np.asarray(values, dtype=np.float64)
    if c.shape != v.shape:
        raise ValueError(f"group_stats: codes {c.shape} and values {v.shape} differ in shape")
    finite = np.isfinite(v)
    if not finite.all():
        c, v = c[finite], v[finite]
    g = int(n_groups if n_groups is not None else (c.max() + 1 if c.size else 0))
    out = {name: np.full(g, np.nan) for name in STAT_NAMES}
    if v.size == 0:
        out["count"] = np.zeros(g)
        return out
    order = np.lexsort((v, c))
    sv = v[order]
    sc = c[order]
    count = np.bincount(sc, minlength=g).astype(np.float64)
    out["count"] = count
    present = np.flatnonzero(count > 0)
    starts = np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.intp)
    s = starts[present]
    n = count[present]
    # Shift by each group's first value before summing squares: keeps the variance exact for
    # large values with small spread (timestamps, throughput in the millions).
    shift = sv[s]
    d = sv - np.repeat(shift, n.astype(np.intp))
    s1 = np.add.reduceat(d, s)
    s2 = np.add.reduceat(d * d, s)
    mean_d = s1 / n
    mean = shift + mean_d
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.maximum(s2 - n * mean_d**2, 0.0) / (n - 1)
    std = np.where(n > 1, np.sqrt(var), np.nan)
    out["mean"][present] = mean
    out["std"][present] = std
    out["min"][present] = sv[s]
    out["max"][present] = sv[s + n.astype(np.intp) - 1]

    def pct(q: float) -> NDArray[np.float64]:
        pos = (n - 1) * (q / 100.0)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n.astype(np.intp) - 1)
        frac = pos - lo
        return sv[s + lo] * (1 - frac) + sv[s + hi] * frac

    out["median"][present] = pct(50)
    for q in PERCENTILES:
        out[f"p{q}"][present] = pct(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = special.stdtrit(np.maximum(n - 1, 1), 0.975) * std / np.sqrt(n)
        out["ci95_low"][present] = np.where(n > 1, mean - half, np.nan)
        out["ci95_high"][present] = np.where(n > 1, mean + half, np.nan)
        out["cv"][present] = np.where(np.abs(mean) > 0, std / np.abs(mean), np.nan)
    return out


def stats_to_dicts(stats: dict[str, NDArray[np.float64]]) -> list[dict[str, float | int | None]]:
    """Per-group dicts of plain floats (NaN becomes None, so the result is JSON-able)."""
    cols = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in stats.items()}
    g = len(cols["count"])
    rows: list[dict[str, float | int | None]] = []
    for i in range(g):
        row: dict[str, float | int | None] = {}
        for k, col in cols.items():
            x = col[i]
            row[k] = None if x != x else (int(x) if k == "count" else x)
        rows.append(row)
    return rows
