"""Live anomaly detection in ResultAggregator.ingest: batches, level shifts, spikes (issue 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dtf_gui.coordinator.aggregator import ResultAggregator, robust_z
from dtf_gui.coordinator.aggregator.anomalies import window_stats


def _results(values: np.ndarray, start: int = 0, test_id: str = "perf") -> list[dict[str, Any]]:
    return [{"result_id": f"{test_id}-{start + i}", "test_id": test_id, "worker_id": "w1",
             "timestamp": float(start + i), "metrics": {"throughput": float(v)}} for i, v in enumerate(values)]


# The tests that expect exactly the values they planted use uniform noise and a threshold of 4:
# noise within +-1 % is under 2 robust sigmas, so only a young window's unlucky MAD could flag it
# at the default 2.5, and that is the threshold's business, not what these tests are about.
STRICT = 4.0


def _feed(tmp_path: Path, x: np.ndarray, size: int, threshold: float = STRICT) -> list[list[dict[str, Any]]]:
    """Findings of each ingest call, feeding ``x`` in batches of ``size``."""
    agg = ResultAggregator(tmp_path / "none.sqlite", anomaly_threshold=threshold)
    return [agg.ingest(_results(x[s:s + size], s)) for s in range(0, x.size, size)]


def _flat(calls: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [f for call in calls for f in call]


def _anomalies(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f["result_id"] for f in findings if f["kind"] == "anomaly")


def _change_points(findings: list[dict[str, Any]]) -> list[int]:
    return sorted(f["index"] for f in findings if f["kind"] == "change_point")


def _effective_anomalies(findings: list[dict[str, Any]]) -> list[str]:
    """Anomalies that no later change point retracted."""
    gone = {rid for f in findings if f["kind"] == "change_point" for rid in f["supersedes"]}
    return [rid for rid in _anomalies(findings) if rid not in gone]


def _uniform(n: int, level: float, seed: int) -> np.ndarray:
    return level * (1 + 0.01 * np.random.default_rng(seed).uniform(-1.0, 1.0, n))


def _step(seed: int, n_before: int = 16, n_after: int = 15) -> np.ndarray:
    return np.concatenate((_uniform(n_before, 101.0, seed), _uniform(n_after, 111.0, seed + 100)))


@pytest.mark.parametrize("size", [1, 7, 13, 40])
def test_spike_is_flagged_however_the_series_is_batched(tmp_path: Path, size: int) -> None:
    for seed in range(5):
        x = _uniform(40, 100.0, seed)
        x[20] *= 1.25
        found = _flat(_feed(tmp_path, x, size))
        assert _anomalies(found) == ["perf-20"], (seed, size)
        assert _change_points(found) == [], (seed, size)
        spike = next(f for f in found if f["kind"] == "anomaly")
        assert spike["expected_range"][1] < x[20] and spike["score"] > STRICT
        assert spike["reference_size"] == 20  # judged against everything before it, batch or not


def test_same_findings_one_at_a_time_in_batches_of_7_and_at_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    x = 100 * (1 + 0.02 * rng.standard_normal(150))  # Gaussian: includes borderline values
    x[[30, 77, 120]] *= [1.3, 0.75, 1.2]
    runs = {}
    for size in (1, 7, 50, 150):
        found = _flat(_feed(tmp_path, x, size, threshold=2.5))
        runs[size] = sorted((f["kind"], f["index"], f["result_id"], round(f["score"], 9)) for f in found)
    assert {"perf-30", "perf-77", "perf-120"} <= {r[2] for r in runs[1]}
    assert runs[7] == runs[1] and runs[50] == runs[1] and runs[150] == runs[1]


def test_step_gives_one_change_point_and_no_anomalies_after_it(tmp_path: Path) -> None:
    for seed in range(5):
        x = _step(seed)
        for size in (7, x.size):
            found = _flat(_feed(tmp_path, x, size))
            assert [(f["kind"], f["index"]) for f in found] == [("change_point", 16)], (seed, size)
            assert found[0]["supersedes"] == []


def test_step_fed_one_at_a_time_retracts_the_new_levels_first_values(tmp_path: Path) -> None:
    """One value at a time, the new level's first values look like spikes until the change point
    can be seen: they are reported then, the change point names them in ``supersedes``, and no
    value after it is an anomaly."""
    for seed in range(5):
        calls = _feed(tmp_path, _step(seed), 1)
        found = _flat(calls)
        assert _change_points(found) == [16], seed
        cp = next(f for f in found if f["kind"] == "change_point")
        assert cp["direction"] == "improvement" and cp["result_id"] == "perf-16"
        assert _anomalies(found) == sorted(cp["supersedes"]), seed
        assert all(int(rid.split("-")[1]) >= 16 for rid in cp["supersedes"])
        seen_at = next(i for i, call in enumerate(calls) if any(f["kind"] == "change_point" for f in call))
        assert not any(f["kind"] == "anomaly" for call in calls[seen_at:] for f in call), seed
        assert _effective_anomalies(found) == []


@pytest.mark.parametrize("size", [1, 7, 36])
def test_spike_after_a_step_is_still_an_anomaly(tmp_path: Path, size: int) -> None:
    for seed in range(5):
        x = _step(seed, 16, 20)
        x[25] *= 1.25
        calls = _feed(tmp_path, x, size)
        found = _flat(calls)
        assert _change_points(found) == [16], (seed, size)
        assert _effective_anomalies(found) == ["perf-25"], (seed, size)
        spike = next(f for f in found if f.get("result_id") == "perf-25" and f["kind"] == "anomaly")
        assert spike["median"] == pytest.approx(111.0, rel=0.01)  # judged against the new level
        if size == 1:
            # The live case: the spike is the newest value and is reported by its own ingest.
            assert [f["kind"] for f in calls[25]] == ["anomaly"]


def test_new_level_with_few_values_flags_only_values_extreme_against_both_levels(tmp_path: Path) -> None:
    """Two values into a new level its noise is unknown: a value is an anomaly only when it is far
    from both the old level and the new one (in the old level's noise)."""
    cases = {
        140.0: ["perf-18"],  # far above both levels
        106.0: ["perf-18"],  # halfway: 5 % from each level, with 1 % noise
        110.0: [],  # at the new level
        101.5: [],  # back at the old level: too early to tell noise from a misplaced step
    }
    for value, want in cases.items():
        x = _step(3, 16, 20)
        x[18] = value
        found = _flat(_feed(tmp_path, x, x.size))
        assert _change_points(found) == [16], value
        assert _anomalies(found) == want, value
        for f in found:
            if f["kind"] == "anomaly":
                assert f["reference_size"] == 2 and f["median"] == pytest.approx(111.0, rel=0.01)


def test_first_value_of_a_new_level_is_the_change_point_not_an_anomaly(tmp_path: Path) -> None:
    x = _step(7, 40, 30)
    found = _flat(_feed(tmp_path, x, x.size))
    assert _change_points(found) == [40]
    assert "perf-40" not in _anomalies(found)


def test_series_in_one_batch_are_judged_separately(tmp_path: Path) -> None:
    a = _uniform(60, 100.0, 1)
    b = _uniform(60, 5.0, 2)
    a[45] *= 1.3
    b[50] *= 0.7
    batch = [r for pair in zip(_results(a, test_id="a"), _results(b, test_id="b"), strict=True) for r in pair]
    found = ResultAggregator(tmp_path / "none.sqlite", anomaly_threshold=STRICT).ingest(batch)
    assert _anomalies(found) == ["a-45", "b-50"]
    assert {f["series"]["test_id"] for f in found} == {"a", "b"}


def test_incremental_history_is_trimmed_and_still_judged(tmp_path: Path) -> None:
    agg = ResultAggregator(tmp_path / "none.sqlite", max_history=50, anomaly_threshold=STRICT)
    x = _uniform(400, 100.0, 9)
    found = []
    for s in range(0, 390, 30):
        found += agg.ingest(_results(x[s:s + 30], s))
    spike = np.array([130.0])
    live = agg.ingest(_results(spike, 390))
    # (A young series' first windows are small; past them, bounded noise is never an anomaly.)
    assert [f["index"] for f in found if f["index"] >= 30] == []
    assert [(f["kind"], f["index"], f["result_id"]) for f in live] == [("anomaly", 390, "perf-390")]
    assert len(agg.series_history(("perf", "w1", "throughput"))) == 50


def test_window_stats_matches_robust_z_on_every_window() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300)
    x[100:140] = 1.0  # constant stretches: MAD zero, the mean-absolute-deviation fallback
    lo = rng.integers(0, 280, 400)
    hi = np.minimum(lo + rng.integers(0, 80, 400), 300)
    med, sigma, count = window_stats(x, lo, hi)
    np.testing.assert_array_equal(count, hi - lo)
    for i in range(lo.size):
        if count[i] == 0:
            assert np.isnan(med[i]) and np.isnan(sigma[i])
            continue
        _s, m, s = robust_z(np.zeros(count[i], dtype=np.intp), x[lo[i]:hi[i]], 1)
        assert med[i] == pytest.approx(m[0]) and sigma[i] == pytest.approx(s[0]), i
    with pytest.raises(ValueError, match="inside"):
        window_stats(x, [5], [301])
