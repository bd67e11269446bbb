"""A run or time window against its lookback baseline: % change, Mann-Whitney U, verdict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

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


def compare_samples(baseline: Sequence[float] | NDArray[np.float64], current: Sequence[float] | NDArray[np.float64],
                    *, higher_is_better: bool = True, alpha: float = 0.05, min_change: float = 0.02,
                    min_baseline: int = 3, min_current: int = 1) -> dict[str, Any]:
    """Verdict for one group and metric: "regressed", "improved", "unchanged" or "not enough data".

    Regressed/improved needs both a Mann-Whitney U p-value <= ``alpha`` and a change of the mean of
    at least ``min_change`` (relative) in the corresponding direction."""
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
    else:
        p = float(stats.mannwhitneyu(c, b, alternative="two-sided").pvalue)
    out["pct_change"] = pct
    out["p_value"] = p
    if p <= alpha and abs(pct) >= min_change * 100.0:
        out["verdict"] = "improved" if (cm > bm) == higher_is_better else "regressed"
    else:
        out["verdict"] = "unchanged"
    return out
