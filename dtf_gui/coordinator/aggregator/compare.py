"""A run or time window against its baseline: % change, Mann-Whitney U or Welch's t-test, verdict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

_LOWER_IS_BETTER = ("latency", "time", "duration", "seconds", "memory", "mem_", "error", "loss", "fail",
                    "wait", "rss", "power", "energy")
_LOWER_SUFFIXES = ("_ms", "_us", "_ns", "_s", "_sec", "_bytes", "_mb", "_gb")


def higher_is_better(metric: str) -> bool:
    """Default polarity from the metric's name: latencies, times, memory, errors and losses go down
    when they get better; everything else (throughput, accuracy, ...) goes up."""
    name = metric.lower()
    if "per_" in name or "/s" in name or name.endswith("ps"):
        return True  # a rate: tokens_per_second, samples/s, fps, iops
    return not (any(tok in name for tok in _LOWER_IS_BETTER) or name.endswith(_LOWER_SUFFIXES))


def welch_p_from_stats(mean1: float, var1: float, n1: float, mean2: float, var2: float, n2: float) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) from each side's mean, sample
    variance and size (at least 2 each).

    Two constant samples are infinitely significant when their levels differ (p = 0) and not at
    all when they are equal (p = 1), where the t statistic itself would be undefined."""
    if n1 < 2 or n2 < 2:
        raise ValueError(f"welch_p: each side needs at least 2 values, got {n1:g} and {n2:g}")
    a = var1 / n1
    b = var2 / n2
    diff = mean2 - mean1
    se2 = a + b
    if se2 <= 0.0:
        return 0.0 if diff != 0.0 else 1.0
    t = abs(diff) / np.sqrt(se2)
    df = se2 * se2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    return float(min(1.0, 2.0 * special.stdtr(df, -t)))


def welch_p(baseline: NDArray[np.float64], current: NDArray[np.float64]) -> float:
    """:func:`welch_p_from_stats` of two samples."""
    return welch_p_from_stats(float(baseline.mean()), float(baseline.var(ddof=1)) if baseline.size > 1 else 0.0,
                              baseline.size, float(current.mean()),
                              float(current.var(ddof=1)) if current.size > 1 else 0.0, current.size)


def compare_samples(baseline: Sequence[float] | NDArray[np.float64], current: Sequence[float] | NDArray[np.float64],
                    *, higher_is_better: bool = True, alpha: float = 0.05, min_change: float = 0.02,
                    min_baseline: int = 3, min_current: int = 1,
                    method: Literal["mann-whitney", "welch"] = "mann-whitney") -> dict[str, Any]:
    """Verdict for one group and metric: "regressed", "improved", "unchanged" or "not enough data".

    Regressed/improved needs both a p-value <= ``alpha`` and a change of the mean of at least
    ``min_change`` (relative) in the corresponding direction. The p-value is Mann-Whitney U's
    (rank-based: robust to outliers, but it cannot reach 0.05 with fewer than 4 values a side) or,
    with ``method="welch"``, Welch's t-test's (which needs 2 values a side at least: ``min_baseline``
    and ``min_current`` below 2 are taken as 2)."""
    if method not in ("mann-whitney", "welch"):
        raise ValueError(f"compare_samples: method must be 'mann-whitney' or 'welch', not {method!r}")
    if method == "welch":
        min_baseline, min_current = max(min_baseline, 2), max(min_current, 2)
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    b, c = b[np.isfinite(b)], c[np.isfinite(c)]
    out: dict[str, Any] = {
        "baseline_n": int(b.size), "current_n": int(c.size),
        "baseline_mean": float(b.mean()) if b.size else None, "current_mean": float(c.mean()) if c.size else None,
        "baseline_median": float(np.median(b)) if b.size else None,
        "current_median": float(np.median(c)) if c.size else None,
        "pct_change": None, "p_value": None, "verdict": "not enough data",
    }
    if b.size < min_baseline or c.size < min_current:
        return out
    bm, cm = float(b.mean()), float(c.mean())
    pct = (cm - bm) / abs(bm) * 100.0 if bm != 0 else (0.0 if cm == bm else float("inf"))
    if np.ptp(np.concatenate((b, c))) == 0:
        p = 1.0
    elif method == "welch":
        p = welch_p(b, c)
    else:
        p = float(stats.mannwhitneyu(c, b, alternative="two-sided").pvalue)
    out["pct_change"] = pct
    out["p_value"] = p
    if p <= alpha and abs(pct) >= min_change * 100.0:
        out["verdict"] = "improved" if (cm > bm) == higher_is_better else "regressed"
    else:
        out["verdict"] = "unchanged"
    return out
