"""ResultAggregator over a small fixed data set in a temporary SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dtf_gui.coordinator.aggregator import ResultAggregator
from dtf_gui.coordinator.store import Store, encode_task

NOW = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "dtf.sqlite"
    st = Store(path)
    st.put_worker({"worker_id": "w1", "hardware_id": "gpu-a100"})
    st.put_worker({"worker_id": "w2", "hardware_id": "gpu-h100"})
    st.put_task(encode_task({"task_id": "t1", "type": "benchmark", "parameters": {"batch_size": 8, "model": "bert"}}))
    st.put_task(encode_task({"task_id": "t2", "type": "benchmark", "parameters": {"batch_size": 16, "model": "bert"}}))
    st.put_task(encode_task({"task_id": "t3", "type": "unit", "parameters": {"model": "gpt"}}))
    rows = [
        # (task, worker, test, timestamp, throughput, latency_ms)
        ("t1", "w1", "bench", NOW - 3 * DAY, 10.0, 5.0),
        ("t1", "w1", "bench", NOW - 2 * DAY, 20.0, 6.0),
        ("t2", "w2", "bench", NOW - 2 * DAY, 30.0, 7.0),
        ("t2", "w2", "bench", NOW - 1 * DAY + 10, 40.0, 8.0),
        ("t3", "w1", "unit", NOW - 10, 100.0, 1.0),
    ]
    for i, (task, worker, test, ts, thr, lat) in enumerate(rows):
        st.put_result({"result_id": f"r{i}", "task_id": task, "worker_id": worker, "test_id": test,
                       "timestamp": ts, "status": "completed", "execution_time": float(i + 1),
                       "metrics": {"throughput": thr, "latency_ms": lat}, "metadata": {"run": "nightly"}})
    st.close()
    return path


def test_group_by_test_id_hand_checked(db: Path) -> None:
    agg = ResultAggregator(db, clock=lambda: NOW)
    out = agg.aggregate_results()
    basic = out["basic_statistics"]
    assert set(basic) == {"bench", "unit"}
    b = basic["bench"]["throughput"]
    assert b["count"] == 4 and b["mean"] == 25.0 and b["median"] == 25.0
    assert b["min"] == 10.0 and b["max"] == 40.0
    assert b["std"] == pytest.approx(np.std([10, 20, 30, 40], ddof=1))
    assert b["p25"] == 17.5
    assert basic["unit"]["throughput"]["std"] is None  # one value: no spread
    json.dumps(out)  # the answer must travel as JSON


def test_group_by_hardware_param_and_type(db: Path) -> None:
    agg = ResultAggregator(db)
    hw = agg.aggregate_results(aggregation_level="hardware_id")["basic_statistics"]
    assert hw["gpu-a100"]["throughput"]["mean"] == pytest.approx((10 + 20 + 100) / 3)
    assert hw["gpu-h100"]["latency_ms"]["mean"] == 7.5
    bs = agg.aggregate_results(aggregation_level="batch_size")["basic_statistics"]
    assert bs["8"]["throughput"]["mean"] == 15.0
    assert bs["16"]["throughput"]["mean"] == 35.0
    assert bs["(none)"]["throughput"]["count"] == 1
    two = agg.aggregate_results(aggregation_level=["task_type", "model"])["basic_statistics"]
    assert set(two) == {"benchmark|bert", "unit|gpt"}
    ex = agg.aggregate_results(result_type="execution", aggregation_level="worker_id")["basic_statistics"]
    assert ex["w2"]["execution_time"]["mean"] == 3.5


def test_filters_and_time_range(db: Path) -> None:
    agg = ResultAggregator(db)
    f = agg.aggregate_results(filter_params={"model": "bert", "metric": "throughput"})["basic_statistics"]
    assert set(f) == {"bench"} and set(f["bench"]) == {"throughput"}
    assert f["bench"]["throughput"]["count"] == 4
    w = agg.aggregate_results(filter_params={"worker_id": ["w2"]}, time_range=(NOW - 1.5 * DAY, NOW))
    assert w["basic_statistics"]["bench"]["throughput"]["count"] == 1
    with pytest.raises(ValueError, match="dimension"):
        agg.aggregate_results(aggregation_level="bad key;")


def test_cache_until_ttl_or_new_results(db: Path) -> None:
    t = [NOW]
    agg = ResultAggregator(db, cache_ttl=60.0, clock=lambda: t[0])
    first = agg.aggregate_results()
    assert agg.aggregate_results() is first
    agg.ingest([{"result_id": "x", "test_id": "other", "worker_id": "w1", "metrics": {"throughput": 1.0}}])
    assert agg.aggregate_results() is not first  # an unrestricted query covers every test
    scoped = agg.aggregate_results(filter_params={"test_id": "unit"})
    agg.ingest([{"result_id": "y", "test_id": "bench", "worker_id": "w1", "metrics": {"throughput": 1.0}}])
    assert agg.aggregate_results(filter_params={"test_id": "unit"}) is scoped
    t[0] += 61.0
    assert agg.aggregate_results(filter_params={"test_id": "unit"}) is not scoped


def test_comparison_report(db: Path) -> None:
    agg = ResultAggregator(db, clock=lambda: NOW)
    rep = agg.get_comparison_report(time_range=(NOW - 1.5 * DAY, NOW))
    thr = rep["comparisons"]["bench"]["throughput"]
    # Baseline 10, 20, 30 (mean 20) against 40: +100 %, but one value cannot be significant.
    assert (thr["baseline_n"], thr["current_n"]) == (3, 1)
    assert thr["pct_change"] == pytest.approx(100.0)
    assert thr["verdict"] == "unchanged"
    # "unit" ran only in the current window: nothing to compare against.
    assert rep["comparisons"]["unit"]["throughput"]["verdict"] == "not enough data"
    assert sum(rep["summary"].values()) == 4


def _results(values: np.ndarray, start: int = 0) -> list[dict]:
    return [{"result_id": f"s{start + i}", "test_id": "perf", "worker_id": "w9", "timestamp": float(start + i),
             "metrics": {"throughput": float(v)}} for i, v in enumerate(values)]


def test_ingest_reports_spike_as_anomaly_and_step_as_change_point(tmp_path: Path) -> None:
    agg = ResultAggregator(tmp_path / "none.sqlite")
    seen: list[str] = []
    agg.add_processor("postprocess", lambda findings: seen.extend(f["kind"] for f in findings) or findings)
    rng = np.random.default_rng(0)
    base = 100 * (1 + 0.01 * rng.standard_normal(80))
    findings = []
    for i in range(80):
        findings += agg.ingest(_results(base[i:i + 1], i))
    assert [f for f in findings if f["kind"] == "change_point"] == []
    spike = agg.ingest(_results(np.array([150.0]), 80))
    assert [f["kind"] for f in spike] == ["anomaly"]
    assert spike[0]["result_id"] == "s80" and spike[0]["expected_range"][1] < 150.0
    step = 90 * (1 + 0.01 * rng.standard_normal(20))
    cps = []
    for i in range(20):
        cps += [f for f in agg.ingest(_results(step[i:i + 1], 81 + i)) if f["kind"] == "change_point"]
    assert len(cps) == 1
    assert cps[0]["index"] == 81 and cps[0]["direction"] == "regression"
    assert cps[0]["series"] == {"test_id": "perf", "worker_id": "w9", "metric": "throughput"}
    assert "change_point" in seen and "anomaly" in seen
    json.dumps(cps)


def test_preprocess_hook_can_drop_results(tmp_path: Path) -> None:
    agg = ResultAggregator(tmp_path / "none.sqlite")
    agg.add_processor("preprocess", lambda r: None if r["test_id"] == "skip" else r)
    agg.ingest([{"result_id": "a", "test_id": "skip", "worker_id": "w", "metrics": {"m": 1.0}}])
    assert agg.series_history(("skip", "w", "m")) == []
    with pytest.raises(ValueError, match="stage"):
        agg.add_processor("during", lambda r: r)


def test_anomalies_query(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "anom.sqlite"
    st = Store(path)
    vals = [10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 30.0]
    for i, v in enumerate(vals):
        st.put_result({"result_id": f"a{i}", "test_id": "t", "worker_id": "w", "timestamp": float(i),
                       "metrics": {"throughput": v}})
    st.close()
    found = ResultAggregator(path).get_result_anomalies()
    assert [(f["result_id"], f["group"], f["metric"]) for f in found] == [("a6", "t", "throughput")]


def test_load_groups_orders_by_time_whatever_the_insert_order(tmp_path: Path) -> None:
    path = tmp_path / "order.sqlite"
    st = Store(path)
    rng = np.random.default_rng(5)
    stamps = rng.permutation(400).astype(float) + NOW
    for i, ts in enumerate(stamps.tolist()):
        st.put_result({"result_id": f"o{i}", "test_id": f"g{i % 3}", "worker_id": "w", "timestamp": ts,
                       "metrics": {"v": ts - NOW, "gone": float("nan")}})
    # No timestamp sorts first (as NULL did); a NaN metric is stored as NULL and is no value at all.
    st.put_result({"result_id": "nots", "test_id": "g0", "worker_id": "w", "metrics": {"v": -1.0}})
    st.close()
    keys, names, arrays = ResultAggregator(path).load_groups()
    assert sorted(zip(keys, names, strict=True)) == [("g0", "v"), ("g1", "v"), ("g2", "v")]
    for k, arr in zip(keys, arrays, strict=True):
        g = int(k[1:])
        want = np.sort(stamps[np.arange(400) % 3 == g] - NOW)
        if g == 0:
            want = np.concatenate(([-1.0], want))
        np.testing.assert_array_equal(arr, want)
