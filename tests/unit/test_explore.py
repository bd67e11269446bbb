"""The results explorer's reads (coordinator/explore.py) on a real SQLite database written by the Store:
the catalog of test x metric series, one series with its workers' hardware, its findings from the
events table (retracted ones gone), the metric's unit and direction, and the bounds of the arguments."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dtf_gui.coordinator import explore
from dtf_gui.coordinator.aggregator.findings import Anomaly, ChangePointFound
from dtf_gui.coordinator.records import Result, WorkerRecord
from dtf_gui.coordinator.store import Store, connect_readonly

T0 = 1_700_000_000.0


def result(i: int, test_id: str, metrics: dict[str, float], worker: str = "w1", run_id: str = "") -> Result:
    return Result(result_id=f"r{i}", task_id=f"t{i}", worker_id=worker, test_id=test_id, timestamp=T0 + i,
                  metrics=metrics, run_id=run_id)


def worker(worker_id: str, hardware_id: str) -> WorkerRecord:
    return WorkerRecord(worker_id, worker_id.encode(), hostname="h", slots=1,
                        capabilities={"hardware_id": hardware_id}, tags=[], metadata={}, running=[], now=T0,
                        first_seen=T0, seen_at=0.0)


def anomaly(rid: str, metric: str, test_id: str, score: float) -> dict[str, Any]:
    return msgspec.to_builtins(Anomaly(
        series={"test_id": test_id, "worker_id": "w1"}, metric=metric, index=0, result_id=rid, timestamp=T0,
        value=0.0, score=score, median=100.0, expected_low=90.0, expected_high=110.0, reference_size=20,
        direction="regression"))


def change_point(rid: str, metric: str, test_id: str, before: float, after: float) -> dict[str, Any]:
    return msgspec.to_builtins(ChangePointFound(
        series={"test_id": test_id, "worker_id": "w2"}, metric=metric, result_id=rid, timestamp=T0, index=5,
        mean_before=before, std_before=1.0, mean_after=after, std_after=1.0, rel_change=(after - before) / before,
        p_value=1e-6, direction="improvement", n_before=10, n_after=10))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    path = tmp_path / "dtf.sqlite"
    store = Store(path)
    try:
        yield store, path
    finally:
        store.close()


def read(path: Path) -> sqlite3.Connection:
    return connect_readonly(path)


def call(path: Path, op: str, args: dict[str, Any]) -> Any:
    conn = read(path)
    try:
        schema, handler = explore.ops(lambda: conn)[op]
        return handler(msgspec.convert(args, schema))
    finally:
        conn.close()


def fill(store: Store) -> None:
    """bench/throughput: 10 points, w1 (hw-a) and w2 (hw-b) alternating, a level step at r5;
    other/latency_ms: 3 points, newer than bench's."""
    store.put_worker(worker("w1", "hw-a"))
    store.put_worker(worker("w2", "hw-b"))
    for i in range(10):
        store.put_result(result(i, "bench", {"throughput": 100.0 if i < 5 else 110.0, "latency_ms": 2.0},
                                worker="w1" if i % 2 == 0 else "w2", run_id="run-a" if i < 5 else "run-b"))
    for i in range(10, 13):
        store.put_result(result(i, "other", {"latency_ms": 1.0}))
    store.flush(wait=True)


def test_catalog_lists_each_test_and_metric_with_its_count_newest_first(db):
    store, path = db
    fill(store)
    rows = call(path, "series_catalog", {})
    assert [(r["test_id"], r["metric"], r["count"]) for r in rows] == [
        ("other", "latency_ms", 3), ("bench", "latency_ms", 10), ("bench", "throughput", 10)]
    assert rows[0]["last"] == T0 + 12


def test_catalog_filters_by_text_in_the_test_or_the_metric_and_obeys_its_limit(db):
    store, path = db
    fill(store)
    assert {(r["test_id"], r["metric"]) for r in call(path, "series_catalog", {"text": "THROUGH"})} == {
        ("bench", "throughput")}
    assert {r["test_id"] for r in call(path, "series_catalog", {"text": "oth"})} == {"other"}
    assert len(call(path, "series_catalog", {"limit": 1})) == 1


def test_catalog_reads_only_the_newest_window_of_results(db, monkeypatch):
    store, path = db
    fill(store)
    monkeypatch.setattr(explore, "CATALOG_WINDOW", 3)  # the three results of "other"
    assert {r["test_id"] for r in call(path, "series_catalog", {})} == {"other"}


def test_series_is_columnar_oldest_first_with_each_point_s_worker_hardware_task_and_run(db):
    store, path = db
    fill(store)
    s = call(path, "metric_series", {"test_id": "bench", "metric": "throughput"})
    assert s["t"] == [T0 + i for i in range(10)]
    assert s["v"] == [100.0] * 5 + [110.0] * 5
    assert s["worker"][:2] == ["w1", "w2"]
    assert s["hardware"][:2] == ["hw-a", "hw-b"]
    assert s["task_id"] == [f"t{i}" for i in range(10)]
    assert s["result_id"][3] == "r3"
    assert s["run_id"][0] == "run-a" and s["run_id"][9] == "run-b"
    assert s["truncated"] is False
    assert len({len(s[k]) for k in ("t", "v", "worker", "hardware", "result_id", "task_id", "run_id")}) == 1


def test_series_filters_by_worker_hardware_and_time_and_keeps_the_newest_within_its_limit(db):
    store, path = db
    fill(store)
    by_worker = call(path, "metric_series", {"test_id": "bench", "metric": "throughput", "worker_id": "w2"})
    assert by_worker["task_id"] == ["t1", "t3", "t5", "t7", "t9"]
    by_hw = call(path, "metric_series", {"test_id": "bench", "metric": "throughput", "hardware_id": "hw-a"})
    assert by_hw["task_id"] == ["t0", "t2", "t4", "t6", "t8"]
    since = call(path, "metric_series", {"test_id": "bench", "metric": "throughput", "since": T0 + 7})
    assert since["task_id"] == ["t7", "t8", "t9"]
    newest = call(path, "metric_series", {"test_id": "bench", "metric": "throughput", "limit": 4})
    assert newest["task_id"] == ["t6", "t7", "t8", "t9"] and newest["truncated"] is True
    assert call(path, "metric_series", {"test_id": "bench", "metric": "nope"})["t"] == []


def test_series_carries_its_own_findings_only_and_none_that_were_retracted(db):
    store, path = db
    fill(store)
    store.put_event("anomaly", "r2", anomaly("r2", "throughput", "bench", 7.5))
    store.put_event("anomaly", "r3", anomaly("r3", "throughput", "bench", -6.0))
    store.put_event("change_point", "r5", change_point("r5", "throughput", "bench", 100.0, 110.0))
    # Another metric of the same result, and a finding of another test: not this series'.
    store.put_event("anomaly", "r4", anomaly("r4", "latency_ms", "bench", 9.0))
    store.put_event("anomaly", "r11", anomaly("r11", "throughput", "other", 9.0))
    store.put_event("task_completed", "t2", {"reason": ""})
    store.flush(wait=True)
    store.retract_events("anomaly", ["r3"])
    store.flush(wait=True)
    s = call(path, "metric_series", {"test_id": "bench", "metric": "throughput"})
    assert s["anomalies"] == [{"result_id": "r2", "t": T0 + 2, "v": 100.0, "score": 7.5}]
    [cp] = s["change_points"]
    assert (cp["result_id"], cp["t"], cp["before"], cp["after"]) == ("r5", T0 + 5, 100.0, 110.0)
    assert cp["rel_change"] == pytest.approx(0.1)
    assert cp["direction"] == "improvement" and cp["p_value"] == 1e-6 and cp["worker"] == "w2"
    # Findings of points outside the series' window are left out with the points.
    late = call(path, "metric_series", {"test_id": "bench", "metric": "throughput", "since": T0 + 4})
    assert late["anomalies"] == [] and len(late["change_points"]) == 1


def test_unit_and_direction_come_from_metric_meta_else_from_the_name_guess(db):
    store, path = db
    fill(store)
    store.put_row("metric_meta", ("throughput", "MB/s", "lower", "api", time.time()))
    store.flush(wait=True)
    declared = call(path, "metric_series", {"test_id": "bench", "metric": "throughput"})
    assert (declared["unit"], declared["direction"]) == ("MB/s", "lower")
    guessed = call(path, "metric_series", {"test_id": "bench", "metric": "latency_ms"})
    assert (guessed["unit"], guessed["direction"]) == ("", "lower")
    assert call(path, "metric_series", {"test_id": "x", "metric": "ops_per_sec"})["direction"] == "higher"


def test_reply_is_cut_to_the_size_budget_newest_points_kept(db, monkeypatch):
    store, path = db
    fill(store)
    monkeypatch.setattr(explore, "REPLY_BYTES", 3 * (explore._POINT_OVERHEAD + 20))
    s = call(path, "metric_series", {"test_id": "bench", "metric": "throughput"})
    assert 0 < len(s["t"]) < 10 and s["t"][-1] == T0 + 9 and s["truncated"] is True


@pytest.mark.parametrize(("op", "args"), [
    ("series_catalog", {"limit": 5001}),
    ("series_catalog", {"limit": 0}),
    ("series_catalog", {"text": "x" * 201}),
    ("series_catalog", {"what": 1}),
    ("metric_series", {"test_id": "b", "metric": "m", "limit": 200_001}),
    ("metric_series", {"test_id": "b", "metric": "m" * 256}),
    ("metric_series", {"test_id": "b", "metric": "m", "worker_id": "w" * 201}),
    ("metric_series", {"test_id": "b", "metric": "m", "since": -1.0}),
    ("metric_series", {"metric": "m"}),
])
def test_arguments_out_of_bounds_are_refused(op, args):
    schema, _ = explore.ops(lambda: sqlite3.connect(":memory:"))[op]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(args, schema)


def test_a_coordinator_yaml_declaration_names_the_unit_and_direction_of_a_series(tmp_path: Path) -> None:
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.server import Coordinator

    path = tmp_path / "dtf.sqlite"
    store = Store(path)
    try:
        for i in range(3):  # "speed" would be guessed higher-is-better; the lab says otherwise
            store.put_result(result(i, "t", {"speed": 1.0 + i}))
        store.flush(wait=True)
    finally:
        store.close()
    settings = ephemeral_settings(path, result_aggregator={"metrics": {"speed": {"unit": "s", "direction": "lower"}}})
    coordinator = Coordinator(settings).start()
    try:
        series = coordinator.request("metric_series", {"test_id": "t", "metric": "speed"})
    finally:
        coordinator.stop()
    assert (series["unit"], series["direction"]) == ("s", "lower")
    assert series["v"] == [1.0, 2.0, 3.0]
