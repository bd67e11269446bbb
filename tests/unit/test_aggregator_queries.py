"""ResultQueries over small data sets in temporary SQLite files (the store's schema, rows written
with plain SQL as the store would write them)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from dtf_gui.coordinator.aggregator import AnomalyRow, ResultQueries
from dtf_gui.coordinator.aggregator.metricmeta import MetricCatalog
from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.store import Store

NOW = 1_700_000_000.0
DAY = 86400.0


class _Db:
    """A database with the store's schema; rows go in as the store writes them (JSON columns as
    JSON text, every numeric metric also in the long ``metrics`` table)."""

    def __init__(self, path: Path) -> None:
        Store(path).close()
        self.conn = sqlite3.connect(path)

    def put_worker(self, worker_id: str, **columns: Any) -> None:
        self._insert("workers", {"worker_id": worker_id, **columns})

    def put_task(self, task_id: str, *, type: str, parameters: dict[str, Any]) -> None:
        self._insert("tasks", {"task_id": task_id, "type": type, "parameters": json.dumps(parameters)})

    def put_result(self, result_id: str, *, metrics: dict[str, float], task_id: str = "t", worker_id: str = "w",
                   test_id: str = "", metadata: dict[str, Any] | None = None, **columns: Any) -> None:
        self._insert("results", {"result_id": result_id, "task_id": task_id, "worker_id": worker_id,
                                 "test_id": test_id, "metrics": json.dumps(metrics),
                                 "metadata": json.dumps(metadata) if metadata else None, **columns})
        # A NaN metric is bound as NULL, as the store's own insert does.
        self.conn.executemany("INSERT INTO metrics (result_id, name, value) VALUES (?,?,?)",
                              [(result_id, name, value) for name, value in metrics.items()])

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        self.conn.execute(f"INSERT INTO {table} ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
                          list(row.values()))

    def close(self) -> None:
        self.conn.commit()
        self.conn.close()


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "dtf.sqlite"
    st = _Db(path)
    st.put_worker("w1", hardware_id="gpu-a100", hostname="lab-1")
    st.put_worker("w2", hardware_id="gpu-h100", hostname="lab-2")
    st.put_task("t1", type="benchmark", parameters={"batch_size": 8, "model": "bert"})
    st.put_task("t2", type="benchmark", parameters={"batch_size": 16, "model": "bert"})
    st.put_task("t3", type="unit", parameters={"model": "gpt"})
    rows = [
        # (task, worker, test, timestamp, throughput, latency_ms)
        ("t1", "w1", "bench", NOW - 3 * DAY, 10.0, 5.0),
        ("t1", "w1", "bench", NOW - 2 * DAY, 20.0, 6.0),
        ("t2", "w2", "bench", NOW - 2 * DAY, 30.0, 7.0),
        ("t2", "w2", "bench", NOW - 1 * DAY + 10, 40.0, 8.0),
        ("t3", "w1", "unit", NOW - 10, 100.0, 1.0),
    ]
    for i, (task, worker, test, ts, thr, lat) in enumerate(rows):
        st.put_result(f"r{i}", task_id=task, worker_id=worker, test_id=test, timestamp=ts, status="completed",
                      execution_time=float(i + 1), metrics={"throughput": thr, "latency_ms": lat},
                      metadata={"run": "nightly"})
    st.close()
    return path


def test_group_by_test_id_hand_checked(db: Path) -> None:
    q = ResultQueries(db, clock=lambda: NOW)
    out = q.aggregate_results()
    basic = out["basic_statistics"]
    assert set(basic) == {"bench", "unit"}
    b = basic["bench"]["throughput"]
    assert b["count"] == 4 and b["mean"] == 25.0 and b["median"] == 25.0
    assert b["min"] == 10.0 and b["max"] == 40.0
    assert b["std"] == pytest.approx(np.std([10, 20, 30, 40], ddof=1))
    assert b["p25"] == 17.5
    assert basic["unit"]["throughput"]["std"] is None  # one value: no spread
    assert "trends" not in out  # only when asked
    json.dumps(out)  # the answer must travel as JSON


def test_group_by_hardware_param_and_type(db: Path) -> None:
    q = ResultQueries(db)
    hw = q.aggregate_results(aggregation_level="hardware_id")["basic_statistics"]
    assert hw["gpu-a100"]["throughput"]["mean"] == pytest.approx((10 + 20 + 100) / 3)
    assert hw["gpu-h100"]["latency_ms"]["mean"] == 7.5
    bs = q.aggregate_results(aggregation_level="batch_size")["basic_statistics"]
    assert bs["8"]["throughput"]["mean"] == 15.0
    assert bs["16"]["throughput"]["mean"] == 35.0
    assert bs["(none)"]["throughput"]["count"] == 1
    two = q.aggregate_results(aggregation_level=["task_type", "model"])["basic_statistics"]
    assert set(two) == {"benchmark|bert", "unit|gpt"}
    ex = q.aggregate_results(result_type="execution", aggregation_level="worker_id")["basic_statistics"]
    assert ex["w2"]["execution_time"]["mean"] == 3.5
    both = q.aggregate_results(result_type="all")["basic_statistics"]
    assert set(both["bench"]) == {"throughput", "latency_ms", "execution_time"}
    assert both["unit"]["execution_time"]["mean"] == 5.0


def test_filters_and_time_range(db: Path) -> None:
    q = ResultQueries(db)
    f = q.aggregate_results(filter_params={"model": "bert", "metric": "throughput"})["basic_statistics"]
    assert set(f) == {"bench"} and set(f["bench"]) == {"throughput"}
    assert f["bench"]["throughput"]["count"] == 4
    w = q.aggregate_results(filter_params={"worker_id": ["w2"]}, time_range=(NOW - 1.5 * DAY, NOW))
    assert w["basic_statistics"]["bench"]["throughput"]["count"] == 1
    h = q.aggregate_results(filter_params={"hostname": "lab-1", "metrics": ["latency_ms"]})["basic_statistics"]
    assert h["bench"]["latency_ms"]["count"] == 2 and set(h["bench"]) == {"latency_ms"}
    with pytest.raises(ValueError, match="dimension"):
        q.aggregate_results(aggregation_level="bad key;")
    with pytest.raises(ValueError, match="empty list"):
        q.aggregate_results(filter_params={"worker_id": []})
    with pytest.raises(ValueError, match="result_type"):
        q.aggregate_results(result_type="bogus")


@pytest.fixture()
def statements(db: Path) -> Iterator[tuple[ResultQueries, list[str]]]:
    """A query service whose connection reports every statement it runs."""
    q = ResultQueries(db, cache_ttl=0.0, clock=lambda: NOW)
    seen: list[str] = []
    q._db().set_trace_callback(seen.append)
    yield q, seen
    q.close()


def _joins(sql: list[str]) -> list[set[str]]:
    return [{table for table in ("workers", "tasks") if f"JOIN {table} " in s} for s in sql if "SELECT" in s]


def test_a_query_joins_only_the_tables_its_expressions_read(statements: tuple[ResultQueries, list[str]]) -> None:
    q, seen = statements
    # By test and filtered by test: results and metrics only.
    q.aggregate_results(filter_params={"test_id": "bench"}, time_range=(0.0, NOW))
    q.aggregate_results(result_type="all", filter_params={"worker_id": "w1", "metric": "throughput"})
    q.get_result_anomalies(filter_params={"test_id": ["bench", "unit"]})
    q.get_comparison_report(aggregation_level="task_id")
    assert _joins(seen) == [set()] * 6
    seen.clear()
    q.aggregate_results(aggregation_level="hardware_id")
    q.aggregate_results(filter_params={"hostname": "lab-2"})
    assert _joins(seen) == [{"workers"}, {"workers"}]
    seen.clear()
    q.aggregate_results(aggregation_level="task_type", result_type="execution")
    assert _joins(seen) == [{"tasks"}]
    seen.clear()
    # A JSON key may live in the task's parameters or the worker's capabilities: both are joined.
    q.get_result_anomalies(aggregation_level="test_id", filter_params={"batch_size": 8})
    assert _joins(seen) == [{"workers", "tasks"}]


def _visited(q: ResultQueries, sql: str) -> set[str]:
    """The table aliases SQLite's plan for ``sql`` scans or searches."""
    details = [str(row[3]) for row in q._db().execute("EXPLAIN QUERY PLAN " + sql)]
    return {d.split()[1] for d in details if d.startswith(("SCAN", "SEARCH"))}


def test_sqlite_visits_workers_only_when_the_query_reads_them(statements: tuple[ResultQueries, list[str]]) -> None:
    q, seen = statements
    keys, _names, _arrays = q.load_groups(filter_params={"test_id": "bench"})
    assert keys == ["bench", "bench"]
    q.load_groups(aggregation_level="hardware_id", filter_params={"test_id": "bench"})
    by_test, by_hardware = seen  # as run, parameters expanded
    assert "'bench'" in by_test
    assert _visited(q, by_test) == {"m", "r"}
    assert _visited(q, by_hardware) == {"m", "r", "w"}


def test_cache_until_ttl_or_invalidated(db: Path) -> None:
    t = [NOW]
    q = ResultQueries(db, cache_ttl=60.0, clock=lambda: t[0])
    first = q.aggregate_results()
    assert q.aggregate_results() is first
    q.invalidate(["other"])
    assert q.aggregate_results() is not first  # an unrestricted query covers every test
    scoped = q.aggregate_results(filter_params={"test_id": "unit"})
    q.invalidate(["bench"])
    assert q.aggregate_results(filter_params={"test_id": "unit"}) is scoped
    t[0] += 61.0
    assert q.aggregate_results(filter_params={"test_id": "unit"}) is not scoped
    again = q.aggregate_results(filter_params={"test_id": "unit"})
    q.invalidate()
    assert q.aggregate_results(filter_params={"test_id": "unit"}) is not again


def test_comparison_report(db: Path) -> None:
    q = ResultQueries(db, clock=lambda: NOW)
    rep = q.get_comparison_report(time_range=(NOW - 1.5 * DAY, NOW))
    thr = rep["comparisons"]["bench"]["throughput"]
    # Baseline 10, 20, 30 (mean 20) against 40: +100 %, but one value cannot be significant.
    assert (thr["baseline_n"], thr["current_n"]) == (3, 1)
    assert thr["pct_change"] == pytest.approx(100.0)
    assert thr["verdict"] == "unchanged"
    # "unit" ran only in the current window: nothing to compare against.
    assert rep["comparisons"]["unit"]["throughput"]["verdict"] == "not enough data"
    assert sum(rep["summary"].values()) == 4
    json.dumps(rep)


def test_anomalies_query_returns_rows(tmp_path: Path) -> None:
    path = tmp_path / "anom.sqlite"
    st = _Db(path)
    vals = [10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 30.0]
    for i, v in enumerate(vals):
        st.put_result(f"a{i}", test_id="t", timestamp=float(i), metrics={"throughput": v, "steady": 1.0})
    st.close()
    found = ResultQueries(path).get_result_anomalies()
    assert [(f.result_id, f.group, f.metric) for f in found] == [("a6", "t", "throughput")]
    row = found[0]
    assert isinstance(row, AnomalyRow)
    assert row.timestamp == 6.0 and row.value == 30.0 and row.median == 10.0
    assert row.expected_low < row.median < row.expected_high < row.value and row.score > 2.5
    plain = msgspec.to_builtins(row)
    assert plain["kind"] == "anomaly" and "expected_range" not in plain
    assert set(plain) == {"kind", "group", "metric", "result_id", "timestamp", "value", "score", "median",
                          "expected_low", "expected_high"}
    assert msgspec.convert(plain, AnomalyRow) == row
    two = ResultQueries(path).get_result_anomalies(aggregation_level="test_id,worker_id", threshold=1000.0)
    assert two == []


def test_anomalies_query_keeps_a_separator_in_the_metric_name(tmp_path: Path) -> None:
    path = tmp_path / "sep.sqlite"
    st = _Db(path)
    for i, v in enumerate([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 9.0]):
        st.put_result(f"s{i}", test_id="a|b", timestamp=float(i), metrics={"p|q": v})
    st.close()
    found = ResultQueries(path).get_result_anomalies(aggregation_level=["test_id", "worker_id"])
    assert [(f.group, f.metric, f.result_id) for f in found] == [("a|b|w", "p|q", "s6")]


def test_load_groups_orders_by_time_whatever_the_insert_order(tmp_path: Path) -> None:
    path = tmp_path / "order.sqlite"
    st = _Db(path)
    rng = np.random.default_rng(5)
    stamps = rng.permutation(400).astype(float) + NOW
    for i, ts in enumerate(stamps.tolist()):
        st.put_result(f"o{i}", test_id=f"g{i % 3}", timestamp=ts, metrics={"v": ts - NOW, "gone": float("nan")})
    # No timestamp sorts first (as NULL did); a NaN metric is stored as NULL and is no value at all.
    st.put_result("nots", test_id="g0", metrics={"v": -1.0})
    st.close()
    keys, names, arrays = ResultQueries(path).load_groups()
    assert sorted(zip(keys, names, strict=True)) == [("g0", "v"), ("g1", "v"), ("g2", "v")]
    for k, arr in zip(keys, arrays, strict=True):
        g = int(k[1:])
        want = np.sort(stamps[np.arange(400) % 3 == g] - NOW)
        if g == 0:
            want = np.concatenate(([-1.0], want))
        np.testing.assert_array_equal(arr, want)


# -- trends ------------------------------------------------------------------------------------


def _plain(obj: object) -> bool:
    """Only the types JSON and msgpack carry as they are (no numpy scalars, no NaN)."""
    if isinstance(obj, dict):
        return all(type(k) is str and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    if type(obj) is float:
        return obj == obj
    return obj is None or type(obj) in (int, str, bool)


@pytest.fixture()
def drifting(tmp_path: Path) -> Path:
    """Three tests on one worker, 60 results each, stored in shuffled order: "slower" drifts down
    3 % over the span, "faster" has latency drifting down, "flat" is noise."""
    path = tmp_path / "trends.sqlite"
    st = _Db(path)
    st.put_worker("w1", hardware_id="gpu-a100")
    rng = np.random.default_rng(3)
    n = 60
    drift = np.linspace(0.0, 1.0, n)
    series = {
        "slower": {"throughput": 100 * (1 - 0.03 * drift) * (1 + 0.002 * rng.standard_normal(n))},
        "faster": {"latency_ms": 20 * (1 - 0.10 * drift) * (1 + 0.002 * rng.standard_normal(n))},
        "flat": {"throughput": 50 * (1 + 0.01 * rng.standard_normal(n))},
    }
    rows = [(test, metric, i, float(v)) for test, metrics in series.items() for metric, vals in metrics.items()
            for i, v in enumerate(vals.tolist())]
    for k in rng.permutation(len(rows)).tolist():
        test, metric, i, v = rows[k]
        st.put_result(f"{test}-{i}", task_id=f"{test}-task", worker_id="w1", test_id=test, timestamp=NOW + 60.0 * i,
                      metrics={metric: v})
    st.close()
    return path


def test_include_trends_reports_each_series_drift(drifting: Path) -> None:
    q = ResultQueries(drifting, clock=lambda: NOW)
    out = q.aggregate_results(include_trends=True)
    trends = out["trends"]
    assert set(trends) == {"slower", "faster", "flat"}
    assert set(trends) == set(out["basic_statistics"])
    slower = trends["slower"]["throughput"]
    assert slower["n"] == 60 and slower["significant"] and slower["direction"] == "regression"
    assert slower["rel_change"] == pytest.approx(-0.03, abs=0.005)  # values in time order, not insert order
    assert slower["slope"] == pytest.approx(-3.0 / 59, rel=0.15)  # per result
    assert slower["slope_low"] <= slower["slope"] <= slower["slope_high"]
    assert slower["p_value"] < 1e-6 and slower["mk_z"] < 0
    faster = trends["faster"]["latency_ms"]  # lower is better: falling latency is an improvement
    assert faster["significant"] and faster["direction"] == "improvement" and faster["slope"] < 0
    flat = trends["flat"]["throughput"]
    assert not flat["significant"] and flat["direction"] is None
    assert set(slower) == {"n", "slope", "intercept", "slope_low", "slope_high", "mk_z", "p_value",
                           "rel_change", "significant", "direction", "unit", "direction_source", "note"}
    # Without declarations the direction is the name guess, and a significant trend says so.
    assert (slower["unit"], slower["direction_source"]) == ("", "guessed from the name")
    assert slower["note"] == "(direction guessed from the name; declare it in result_aggregator.metrics)"
    assert flat["note"] == ""


def test_trends_travel_as_json_and_msgpack(drifting: Path) -> None:
    q = ResultQueries(drifting, clock=lambda: NOW)
    out = q.aggregate_results(aggregation_level="hardware_id", include_trends=True)
    assert set(out["trends"]["gpu-a100"]) == {"throughput", "latency_ms"}
    assert _plain(out["trends"]) and _plain(out["basic_statistics"])
    assert json.loads(json.dumps(out))["trends"] == out["trends"]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(out))["trends"] == out["trends"]


def test_trends_of_short_and_constant_series_are_plain_and_not_significant(tmp_path: Path) -> None:
    path = tmp_path / "short.sqlite"
    st = _Db(path)
    for i in range(3):
        st.put_result(f"s{i}", test_id="short", timestamp=NOW + i, metrics={"throughput": float(i)})
    for i in range(10):
        st.put_result(f"c{i}", test_id="const", timestamp=NOW + i, metrics={"throughput": 5.0})
    st.close()
    trends = ResultQueries(path).aggregate_results(include_trends=True)["trends"]
    for test, n in (("short", 3), ("const", 10)):
        t = trends[test]["throughput"]
        assert t["n"] == n and not t["significant"] and t["direction"] is None and t["slope"] == 0.0
    assert _plain(trends)


def test_trends_are_cached_apart_from_plain_statistics(drifting: Path) -> None:
    q = ResultQueries(drifting, clock=lambda: NOW)
    plain = q.aggregate_results()
    with_trends = q.aggregate_results(include_trends=True)
    assert "trends" not in plain and "trends" in with_trends
    assert q.aggregate_results(include_trends=True) is with_trends
    assert with_trends["basic_statistics"] == plain["basic_statistics"]


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist yet"):
        ResultQueries(tmp_path / "nope.sqlite").aggregate_results()


def test_close_then_query_reopens(db: Path) -> None:
    q = ResultQueries(db, cache_ttl=0.0)
    first = q.aggregate_results()["basic_statistics"]
    q.close()
    assert q.aggregate_results()["basic_statistics"] == first
    q.close()
    q.close()  # twice is harmless


def test_cached_anomaly_rows_cannot_be_changed_by_a_caller(tmp_path: Path) -> None:
    path = tmp_path / "frozen.sqlite"
    st = _Db(path)
    for i, v in enumerate([10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 30.0]):
        st.put_result(f"a{i}", test_id="t", timestamp=float(i), metrics={"throughput": v})
    st.close()
    q = ResultQueries(path)
    (row,) = q.get_result_anomalies()
    with pytest.raises(AttributeError):
        row.value = 0.0  # type: ignore[misc]  # the point: a frozen row refuses it
    assert q.get_result_anomalies() == [row]


# -- comparing named runs ----------------------------------------------------------------------

BEFORE = [100.0, 101.0, 99.0, 100.5, 99.5]
AFTER = [v * 0.79 for v in BEFORE]  # a 21 % drop


def _runs_db(path: Path) -> Path:
    """Runs stored by the real Store: "nightly" twice (the second with a 21 % throughput drop and
    changed pytest outcomes), a run of another name in between, and a later "nightly" run."""
    st = Store(path)
    rows = {"n1": ("nightly", 1000.0), "other": ("weekly", 1500.0), "n2": ("nightly", 2000.0),
            "n3": ("nightly", 3000.0), "lonely": ("", 2500.0)}
    for run_id, (name, created) in rows.items():
        st.put_row("runs", (run_id, name or None, "pytest", created, created + 60, "completed",
                            json.dumps({"commit": run_id}), None))
    seq = iter(range(10_000))

    def result(run: str, test: str, *, outcome: str = "", status: str = "success", seconds: float | None = 1.0,
               metrics: dict[str, float] | None = None, attempt: int = 1, error: str = "") -> None:
        i = next(seq)
        st.put_result(Result(result_id=f"{run}-{i}", task_id=f"{run}-task", worker_id="w1", test_id=test,
                             timestamp=float(i), status=status, execution_time=seconds, metrics=metrics or {},
                             run_id=run, outcome=outcome, attempt=attempt, error=error))

    for run, values in (("n1", BEFORE), ("n2", AFTER)):
        for v in values:
            result(run, "copy", metrics={"throughput_mb_s": v})
    # One value a run: no test is possible.
    result("n1", "lat", metrics={"latency_ms": 10.0})
    result("n2", "lat", metrics={"latency_ms": 12.0})
    result("n1", "lat", metrics={"gone_metric": 1.0}, status="failure", seconds=99.0)
    result("n2", "lat", metrics={"new_metric": 1.0})
    # pytest rows: passed -> failed, failed -> passed, flaky now (failed, then passed on a rerun).
    for test, before, after in (("t.py::test_ok", "passed", "passed"), ("t.py::test_breaks", "passed", "failed"),
                                ("t.py::test_fixed", "failed", "passed")):
        result("n1", test, outcome=before, seconds=2.0)
        result("n2", test, outcome=after, seconds=2.0 if after == "passed" else 0.1,
               error="AssertionError: 3 != 4" if after == "failed" else "")
    result("n1", "t.py::test_wobbly", outcome="passed")
    result("n2", "t.py::test_wobbly", outcome="failed", attempt=1)
    result("n2", "t.py::test_wobbly", outcome="passed", attempt=2)
    result("other", "copy", metrics={"throughput_mb_s": 1.0})
    result("n3", "copy", metrics={"throughput_mb_s": 100.0})
    st.flush(wait=True)
    st.close()
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    return _runs_db(tmp_path / "runs.sqlite")


def _row(report: dict[str, Any], test: str, metric: str) -> dict[str, Any]:
    (row,) = [r for r in report["metrics"] if (r["test_id"], r["metric"]) == (test, metric)]
    return row


def test_a_declared_higher_is_better_metric_that_drops_21_percent_regressed(runs: Path) -> None:
    q = ResultQueries(runs, catalog=MetricCatalog({"throughput_mb_s": ("MB/s", "higher")}))
    rep = q.compare_runs("n2")
    assert rep["baseline"]["run_id"] == "n1" and rep["run"]["run_id"] == "n2"
    assert rep["run"]["meta"] == {"commit": "n2"} and rep["run"]["name"] == "nightly"
    row = _row(rep, "copy", "throughput_mb_s")
    assert row["verdict"] == "regressed"
    assert (row["unit"], row["direction"], row["direction_source"]) == ("MB/s", "higher", "declared")
    assert row["confidence"] == "welch" and row["p_value"] < 1e-6
    assert (row["baseline_n"], row["current_n"]) == (5, 5)
    assert row["baseline_mean"] == pytest.approx(100.0) and row["current_mean"] == pytest.approx(79.0)
    assert row["baseline_stddev"] == pytest.approx(np.std(BEFORE, ddof=1))
    assert row["rel_change"] == pytest.approx(-0.21) and row["pct_change"] == pytest.approx(-21.0)
    assert row["change"] == pytest.approx(-21.0)
    assert row["note"] == ""  # a declared direction and a real test: nothing to qualify
    # Regressions first.
    assert rep["metrics"][0]["verdict"] == "regressed"
    assert [r["verdict"] for r in rep["metrics"]] == sorted(
        (r["verdict"] for r in rep["metrics"]), key=["regressed", "improved", "missing", "new", "unchanged"].index)
    json.dumps(rep)


def test_the_same_drop_declared_lower_is_better_improved(runs: Path) -> None:
    q = ResultQueries(runs, catalog=MetricCatalog({"throughput_*": ("", "lower")}))
    row = _row(q.compare_runs("n2"), "copy", "throughput_mb_s")
    assert (row["verdict"], row["direction"], row["direction_source"]) == ("improved", "lower", "declared")


def test_an_undeclared_direction_is_the_name_guess_and_says_so(runs: Path) -> None:
    rep = ResultQueries(runs).compare_runs("n2")
    row = _row(rep, "copy", "throughput_mb_s")
    # The guess reads "_s" as seconds, so the drop passes for an improvement: labelled as a guess.
    assert (row["verdict"], row["direction"], row["direction_source"]) == ("improved", "lower",
                                                                           "guessed from the name")
    assert row["note"] == "(direction guessed from the name; declare it in result_aggregator.metrics)"


def test_single_samples_are_judged_by_the_size_of_the_change_alone(runs: Path) -> None:
    rep = ResultQueries(runs).compare_runs("n2", min_change=0.05)
    lat = _row(rep, "lat", "latency_ms")
    assert (lat["baseline_n"], lat["current_n"], lat["confidence"], lat["p_value"]) == (1, 1, "single sample", None)
    assert lat["verdict"] == "regressed" and lat["rel_change"] == pytest.approx(0.2)
    assert lat["baseline_stddev"] is None
    assert lat["note"].startswith("single sample: no significance test, judged by the size of the change alone "
                                  "(at least 5 %)")
    assert lat["note"].endswith("(direction guessed from the name; declare it in result_aggregator.metrics)")
    small = ResultQueries(runs).compare_runs("n2", min_change=0.5)
    assert _row(small, "lat", "latency_ms")["verdict"] == "unchanged"
    assert _row(rep, "lat", "new_metric")["verdict"] == "new"
    gone = _row(rep, "lat", "gone_metric")
    assert gone["verdict"] == "missing" and gone["current_mean"] is None and gone["change"] is None
    # Each once, and the durations of the test that broke (missing) and of the one fixed (new).
    assert rep["summary"]["new"] == 2 and rep["summary"]["missing"] == 2
    assert sum(rep["summary"].values()) == len(rep["metrics"])


def test_duration_is_compared_for_passed_tests_and_successful_tasks(runs: Path) -> None:
    rep = ResultQueries(runs).compare_runs("n2")
    ok = _row(rep, "t.py::test_ok", "duration_s")
    assert (ok["unit"], ok["direction"], ok["direction_source"], ok["verdict"]) == ("s", "lower", "declared",
                                                                                     "unchanged")
    # A test that failed this time has no duration this time: how soon it failed is not its speed.
    assert _row(rep, "t.py::test_breaks", "duration_s")["verdict"] == "missing"
    assert _row(rep, "t.py::test_fixed", "duration_s")["verdict"] == "new"
    copy = _row(rep, "copy", "duration_s")  # task results: the successful ones
    assert (copy["baseline_n"], copy["current_n"]) == (5, 5)
    assert _row(rep, "lat", "duration_s")["baseline_n"] == 1  # the failed task result is left out


def test_pytest_outcome_changes_between_runs(runs: Path) -> None:
    tests = ResultQueries(runs).compare_runs("n2")["tests"]
    (breaks,) = tests["newly_failing"]
    assert (breaks["test_id"], breaks["baseline_outcome"], breaks["current_outcome"]) == (
        "t.py::test_breaks", "passed", "failed")
    assert breaks["error"] == "AssertionError: 3 != 4"
    assert [(t["test_id"], t["baseline_outcome"], t["current_outcome"]) for t in tests["fixed"]] == [
        ("t.py::test_fixed", "failed", "passed")]
    (wobbly,) = tests["flaky"]
    assert (wobbly["test_id"], wobbly["current_outcome"], wobbly["attempts"]) == ("t.py::test_wobbly", "passed", 2)


def test_the_default_baseline_is_the_previous_run_of_the_same_name(runs: Path) -> None:
    q = ResultQueries(runs)
    assert q.previous_run("n2") == "n1"
    assert q.previous_run("n3") == "n2"  # not "other", though that has the same kind and is earlier
    assert q.previous_run("n1") is None
    assert q.compare_runs("n3")["baseline"]["run_id"] == "n2"
    # An explicit baseline may be any run, of any name.
    assert q.compare_runs("n3", "n1")["baseline"]["run_id"] == "n1"
    with pytest.raises(ValueError, match=r"no earlier run named 'nightly' to compare with; pass --baseline RUN"):
        q.compare_runs("n1")
    with pytest.raises(ValueError, match=r"no earlier run to compare with; pass --baseline RUN"):
        q.compare_runs("lonely")
    with pytest.raises(ValueError, match=r"^no run 'nope'; see `dtf runs`$"):
        q.compare_runs("nope")
    with pytest.raises(ValueError, match=r"^no run 'nope'; see `dtf runs`$"):
        q.compare_runs("n2", "nope")
    with pytest.raises(ValueError, match=r"^no run 'nope'; see `dtf runs`$"):
        q.previous_run("nope")
    with pytest.raises(ValueError, match="its own baseline"):
        q.compare_runs("n2", "n2")


def test_run_comparisons_are_cached_until_invalidated(runs: Path) -> None:
    q = ResultQueries(runs)
    first = q.compare_runs("n2")
    assert q.compare_runs("n2") is first
    q.invalidate(["anything"])  # a run's rows may belong to any test: every new result counts
    assert q.compare_runs("n2") is not first


def test_a_benchmark_mean_is_tested_with_its_own_rounds(tmp_path: Path) -> None:
    st = Store(tmp_path / "bench.sqlite")
    for run_id, created, mean, sd in (("b1", 1.0, 0.0100, 0.0002), ("b2", 2.0, 0.0104, 0.0002),
                                      ("b3", 3.0, 0.0101, 0.0030)):
        st.put_row("runs", (run_id, "bench", "pytest", created, created, "completed", None, None))
        st.put_result(Result(result_id=run_id, task_id=run_id, worker_id="w", test_id="t.py::test_copy",
                             timestamp=created, outcome="passed", run_id=run_id, execution_time=1.0,
                             metrics={"bench_mean_s": mean, "bench_stddev_s": sd, "bench_rounds": 200.0}))
    st.flush(wait=True)
    st.close()
    cat = MetricCatalog()
    cat.declare_all({"bench_mean_s": "s"}, {"bench_mean_s": "lower"})
    q = ResultQueries(tmp_path / "bench.sqlite", catalog=cat)
    # 4 % slower over 200 rounds with a 2 % spread each: far beyond noise.
    row = _row(q.compare_runs("b2"), "t.py::test_copy", "bench_mean_s")
    assert (row["confidence"], row["verdict"], row["unit"]) == ("welch (benchmark rounds)", "regressed", "s")
    assert row["p_value"] < 1e-6 and row["note"] == ""
    # 3 % off the first run, but with a 30 % spread per round: not significant.
    row = _row(q.compare_runs("b3", "b1"), "t.py::test_copy", "bench_mean_s")
    assert (row["verdict"], row["confidence"]) == ("unchanged", "welch (benchmark rounds)")
    assert row["p_value"] > 0.05
    # The other statistics of a benchmark have one value a run: judged by size alone.
    assert _row(q.compare_runs("b2"), "t.py::test_copy", "bench_stddev_s")["confidence"] == "single sample"


def test_existing_comparison_reports_carry_units_and_direction_sources(db: Path) -> None:
    cat = MetricCatalog({"throughput": ("items/s", "higher")})
    rep = ResultQueries(db, clock=lambda: NOW, catalog=cat).get_comparison_report(time_range=(NOW - 1.5 * DAY, NOW))
    thr = rep["comparisons"]["bench"]["throughput"]
    assert (thr["unit"], thr["direction"], thr["direction_source"], thr["note"]) == (
        "items/s", "higher", "declared", "")
    lat = rep["comparisons"]["bench"]["latency_ms"]
    assert (lat["unit"], lat["direction"], lat["direction_source"]) == ("", "lower", "guessed from the name")
    trends = ResultQueries(db, catalog=cat).aggregate_results(include_trends=True)["trends"]
    assert trends["bench"]["throughput"]["unit"] == "items/s"
    assert trends["bench"]["throughput"]["direction_source"] == "declared"
