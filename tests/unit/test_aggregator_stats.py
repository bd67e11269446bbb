"""Statistics, anomalies and comparisons against values computed by hand or by numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dtf_gui.coordinator.aggregator import (
    compare_samples,
    find_anomalies,
    group_stats,
    higher_is_better,
    mann_kendall,
    robust_z,
)


def test_group_stats_matches_numpy_per_group() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, 1000)
    values = rng.normal(1e6, 3.0, 1000)
    s = group_stats(codes, values, 6)
    for g in range(5):
        v = values[codes == g]
        assert s["count"][g] == v.size
        assert s["mean"][g] == pytest.approx(v.mean(), rel=1e-12)
        assert s["std"][g] == pytest.approx(v.std(ddof=1), rel=1e-6)
        assert s["median"][g] == pytest.approx(np.median(v))
        for q in (5, 25, 75, 95, 99):
            assert s[f"p{q}"][g] == pytest.approx(np.percentile(v, q))
        lo, hi = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
        assert s["ci95_low"][g] == pytest.approx(lo)
        assert s["ci95_high"][g] == pytest.approx(hi)
        assert s["cv"][g] == pytest.approx(v.std(ddof=1) / v.mean(), rel=1e-6)
        assert s["min"][g] == v.min() and s["max"][g] == v.max()
    assert s["count"][5] == 0 and np.isnan(s["mean"][5])


def test_group_stats_hand_checked() -> None:
    s = group_stats([0, 0, 0, 0, 1], [1.0, 2.0, 3.0, 4.0, 7.0])
    assert s["mean"].tolist() == [2.5, 7.0]
    assert s["median"][0] == 2.5
    assert s["p25"][0] == pytest.approx(1.75)
    assert s["std"][0] == pytest.approx(np.sqrt(5 / 3))
    assert np.isnan(s["std"][1])


def test_robust_z_flags_outlier_with_expected_range() -> None:
    values = np.array([10.0, 10.2, 9.8, 10.1, 9.9, 10.0, 14.0, 50.0, 51.0, 49.0, 50.5, 49.5])
    codes = np.array([0] * 7 + [1] * 5)
    ids = [f"r{i}" for i in range(values.size)]
    found = find_anomalies(codes, values, threshold=2.5, result_ids=ids, series_names=["a", "b"])
    assert [(f["result_id"], f["series"]) for f in found] == [("r6", "a")]
    lo, hi = found[0]["expected_low"], found[0]["expected_high"]
    assert lo < 10.0 < hi < 14.0
    score, med, _sigma = robust_z(codes, values)
    assert med.tolist() == [10.0, 50.0]
    assert score[6] == pytest.approx(0.6745 * 4.0 / 0.1)


def test_mann_kendall_against_scipy_kendalltau_sign() -> None:
    x = np.array([1.0, 2.0, 2.5, 2.4, 3.0, 3.5, 4.0, 3.9, 5.0, 5.5])
    s, z, p = mann_kendall(x)
    assert s > 0 and z > 0 and p < 0.01
    tau = stats.kendalltau(np.arange(x.size), x)
    assert tau.statistic > 0 and tau.pvalue < 0.01


def test_compare_verdicts() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(100, 1, 30)
    assert compare_samples(base, rng.normal(90, 1, 10))["verdict"] == "regressed"
    assert compare_samples(base, rng.normal(110, 1, 10))["verdict"] == "improved"
    assert compare_samples(base, rng.normal(110, 1, 10), higher_is_better=False)["verdict"] == "regressed"
    assert compare_samples(base, rng.normal(100, 1, 10))["verdict"] == "unchanged"
    r = compare_samples(base[:2], [1.0])
    assert r["verdict"] == "not enough data" and r["p_value"] is None
    r = compare_samples([100.0] * 5, [90.0] * 5)
    assert r["pct_change"] == pytest.approx(-10.0)


def test_metric_polarity_from_name() -> None:
    assert higher_is_better("throughput")
    assert higher_is_better("tokens_per_second") is True
    assert not higher_is_better("latency_ms")
    assert not higher_is_better("peak_memory")
