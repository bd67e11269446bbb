"""Trends: Theil-Sen slope with Mann-Kendall significance, so a slow drift is reported even when
no single step is.

:func:`trend` answers the "trends" section of ``ResultQueries.aggregate_results(include_trends=True)``
(``dtf analyze trends``): one :class:`Trend` per group and metric, plain Python values only, so it
travels as JSON or msgpack as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats


def mann_kendall(values: Sequence[float] | NDArray[np.float64]) -> tuple[float, float, float]:
    """(S, z, two-sided p) of the Mann-Kendall trend test, with the tie correction."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 3:
        return 0.0, 0.0, 1.0
    iu = np.triu_indices(n, k=1)
    s = float(np.sign(x[iu[1]] - x[iu[0]]).sum())
    _, ties = np.unique(x, return_counts=True)
    var = (n * (n - 1) * (2 * n + 5) - np.sum(ties * (ties - 1) * (2 * ties + 5))) / 18.0
    if var <= 0:
        return s, 0.0, 1.0
    z = (s - np.sign(s)) / np.sqrt(var)
    p = float(special.erfc(abs(z) / np.sqrt(2.0)))
    return s, float(z), p


class Trend(TypedDict):
    """A series' trend. ``slope`` is per unit of the times given (per sample by default), with the
    Theil-Sen 95 % interval ``slope_low``..``slope_high``; ``mk_z`` and ``p_value`` are the
    Mann-Kendall test's; ``rel_change`` is the fitted change over the whole span relative to the fitted
    start level; ``direction`` ("improvement" / "regression") is set only when ``significant``."""

    n: int
    slope: float
    intercept: float | None
    slope_low: float
    slope_high: float
    mk_z: float
    p_value: float
    rel_change: float
    significant: bool
    direction: str | None


class JudgedTrend(Trend):
    """A :class:`Trend` as the query service reports it: with the metric's ``unit``, whether its
    direction was declared or guessed (``direction_source``), and a ``note`` when a significant
    trend's improvement/regression rests on a guessed direction."""

    unit: str
    direction_source: str
    note: str


def trend(values: Sequence[float] | NDArray[np.float64], times: Sequence[float] | NDArray[np.float64] | None = None,
          *, alpha: float = 0.05, min_rel_slope: float = 0.0, higher_is_better: bool = True,
          max_points: int = 2000) -> Trend:
    """Theil-Sen slope (per unit of ``times``, default per sample) and Mann-Kendall test.

    ``rel_change`` is the fitted change over the whole span relative to the fitted start level.
    Series longer than ``max_points`` are thinned evenly (both tests are O(n^2))."""
    y = np.asarray(values, dtype=np.float64)
    t = np.arange(y.size, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if t.shape != y.shape:
        raise ValueError(f"trend: times {t.shape} and values {y.shape} differ in shape")
    ok = np.isfinite(y) & np.isfinite(t)
    y, t = y[ok], t[ok]
    if y.size > max_points:
        pick = np.linspace(0, y.size - 1, max_points).astype(np.intp)
        y, t = y[pick], t[pick]
    result: Trend = {"n": int(y.size), "slope": 0.0, "intercept": float(np.median(y)) if y.size else None,
                     "slope_low": 0.0, "slope_high": 0.0, "mk_z": 0.0, "p_value": 1.0,
                     "rel_change": 0.0, "significant": False, "direction": None}
    if y.size < 4 or np.ptp(t) == 0:
        return result
    slope, intercept, lo, hi = stats.theilslopes(y, t)
    _s, z, p = mann_kendall(y[np.argsort(t, kind="stable")])
    start = intercept + slope * t.min()
    span = slope * (t.max() - t.min())
    rel = float(span / abs(start)) if abs(start) > 0 else 0.0
    significant = bool(p <= alpha and slope != 0 and abs(rel) >= min_rel_slope)
    direction = None
    if significant:
        direction = "improvement" if (slope > 0) == higher_is_better else "regression"
    return {"n": int(y.size), "slope": float(slope), "intercept": float(intercept), "slope_low": float(lo),
            "slope_high": float(hi), "mk_z": z, "p_value": p, "rel_change": rel, "significant": significant,
            "direction": direction}
