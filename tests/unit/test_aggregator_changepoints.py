"""Known series through the change-point detector, the gate and the incremental helper."""

from __future__ import annotations

import numpy as np
import pytest

from dtf_gui.coordinator.aggregator import (
    detect_change_points,
    gate_new_value,
    spike_mask,
    trend,
    update_change_points,
)


def noisy(n: int, level: float = 100.0, noise: float = 0.01, seed: int = 1) -> np.ndarray:
    return level * (1 + noise * np.random.default_rng(seed).standard_normal(n))


def test_clean_step_found_at_right_index() -> None:
    x = np.concatenate((noisy(60, 100.0, seed=2), noisy(60, 110.0, seed=3)))
    cps = detect_change_points(x)
    assert [cp.index for cp in cps] == [60]
    cp = cps[0]
    assert cp.mean_before == pytest.approx(100.0, rel=0.01)
    assert cp.mean_after == pytest.approx(110.0, rel=0.01)
    assert cp.rel_change == pytest.approx(0.10, abs=0.01)
    assert cp.p_value < 1e-6
    assert cp.direction == "improvement"
    assert detect_change_points(x, higher_is_better=False)[0].direction == "regression"


def test_step_down_is_regression_when_higher_is_better() -> None:
    x = np.concatenate((noisy(40, 100.0, seed=4), noisy(40, 95.0, seed=5)))
    cps = detect_change_points(x)
    assert [cp.index for cp in cps] == [40]
    assert cps[0].direction == "regression"


def test_single_spike_is_anomaly_not_change_point() -> None:
    x = noisy(100, seed=6)
    x[50] = 150.0
    assert detect_change_points(x) == []
    mask = spike_mask(x)
    assert np.flatnonzero(mask).tolist() == [50]


def test_flat_noisy_series_gives_none() -> None:
    for seed in range(10):
        assert detect_change_points(noisy(300, noise=0.03, seed=seed)) == [], seed


def test_slow_drift_is_trend_not_step() -> None:
    n = 300
    x = np.linspace(100.0, 85.0, n) * (1 + 0.01 * np.random.default_rng(7).standard_normal(n))
    assert detect_change_points(x) == []
    t = trend(x, higher_is_better=True)
    assert t["significant"]
    assert t["direction"] == "regression"
    assert t["rel_change"] == pytest.approx(-0.15, abs=0.02)
    flat = trend(noisy(300, seed=8))
    assert not flat["significant"]


def test_permutation_method_is_reproducible_and_finds_step() -> None:
    x = np.concatenate((noisy(30, 100.0, seed=9), noisy(30, 120.0, seed=10)))
    a = detect_change_points(x, method="permutation", seed=3)
    b = detect_change_points(x, method="permutation", seed=3)
    assert [cp.index for cp in a] == [30]
    assert [cp.to_dict() for cp in a] == [cp.to_dict() for cp in b]
    assert detect_change_points(noisy(60, seed=11), method="permutation") == []


def test_bad_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="NaN"):
        detect_change_points([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="unknown method"):
        detect_change_points(noisy(20), method="bogus")
    assert detect_change_points([1.0, 2.0]) == []


def test_gate_flags_regression_and_passes_normal_value() -> None:
    hist = noisy(30, seed=12)
    bad = gate_new_value(hist, 90.0)
    assert bad.flagged and bad.direction == "regression"
    assert bad.rel_change == pytest.approx(-0.10, abs=0.01)
    ok = gate_new_value(hist, float(np.median(hist)))
    assert not ok.flagged
    assert gate_new_value(hist[:2], 50.0).reason == "not enough history"
    lower = gate_new_value(hist, 90.0, higher_is_better=False)
    assert lower.direction == "improvement"


def test_incremental_update_matches_full_scan_on_the_tail() -> None:
    x = np.concatenate((noisy(100, 100.0, seed=13), noisy(100, 110.0, seed=14)))
    prev = detect_change_points(x)
    assert [cp.index for cp in prev] == [100]
    y = np.concatenate((x, noisy(60, 95.0, seed=15)))
    inc = update_change_points(y, prev)
    full = detect_change_points(y)
    assert [cp.index for cp in inc] == [cp.index for cp in full] == [100, 200]
