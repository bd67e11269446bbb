"""Reports from a real SQLite database written through the Store: the CSV writers, run_report (a
run's counts, its pass/fail table failures first, its metric series with the history before it and
the change points found on them, its findings and workers, everything capped) and export_rows
(pages with a cursor, filters by run and time)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from dtf_gui import exports
from dtf_gui.coordinator import reports
from dtf_gui.coordinator.records import Result, TaskRecord, WorkerRecord
from dtf_gui.coordinator.runs import Runs
from dtf_gui.coordinator.scheduler import TaskSpec
from dtf_gui.coordinator.store import Store, connect_readonly

T0 = 1_700_000_000.0


def result(rid: str, *, task: str, worker: str, test: str, ts: float, run: str = "", outcome: str = "",
           status: str = "success", metrics: dict[str, float] | None = None, error: str | None = None,
           seconds: float = 0.5) -> Result:
    return Result(result_id=rid, task_id=task, worker_id=worker, test_id=test, timestamp=ts, status=status,
                  execution_time=seconds, exit_code=0, error=error, metrics=metrics or {}, run_id=run,
                  outcome=outcome)


def worker(wid: str, caps: dict[str, Any]) -> WorkerRecord:
    return WorkerRecord(wid, wid.encode(), hostname=f"{wid}.lab", slots=4, capabilities=caps, tags=["bench"],
                        metadata={}, running=[], now=T0, first_seen=T0, seen_at=0.0)


class Lab:
    """A database with history: 30 earlier results of bench::copy (level 100, then a step to 80 at
    point 20, found as a change point), an earlier run of the same name, and the run under report:
    14 tests (13 passed, 1 failed after a rerun), the copy metric on two workers, an anomaly."""

    def __init__(self, path: Path) -> None:
        self.path = path
        store = Store(path)
        runs = Runs(store)
        store.put_worker(worker("w-a", {"cpu_count": 16, "memory_gb": 64, "os": "Linux",
                                        "gpus": [{"name": "A100"}, {"name": "A100"}]}))
        store.put_worker(worker("w-b", {"cpu_count": 8, "memory_gb": 32, "os": "Linux"}))
        self.old = runs.create("nightly", "pytest")["run_id"]
        for i in range(30):
            value = 100.0 if i < 20 else 80.0
            store.put_result(result(f"h{i}", task="th", worker="w-a", test="bench::copy", ts=T0 + i, run=self.old,
                                    outcome="passed", metrics={"copy_mb_s": value}))
        store.put_event("change_point", "h20", {
            "kind": "change_point", "series": {"test_id": "bench::copy", "worker_id": "w-a"}, "metric": "copy_mb_s",
            "result_id": "h20", "timestamp": T0 + 20, "index": 20, "mean_before": 100.0, "std_before": 0.0,
            "mean_after": 80.0, "std_after": 0.0, "rel_change": -0.2, "p_value": 1e-6, "direction": "regression",
            "unit": "MB/s"}, when=T0 + 21)
        runs.finish(self.old, "passed", {})
        store.put_row("metric_meta", ("copy_mb_s", "MB/s", "higher", "task", T0))
        self.run = runs.create("nightly", "pytest")["run_id"]
        t = T0 + 100
        for i in range(13):
            store.put_result(result(f"r{i}", task="s1", worker="w-a" if i % 2 else "w-b", test=f"t.py::test_{i:02d}",
                                    ts=t + i, run=self.run, outcome="passed", seconds=0.1 * i))
        store.put_result(result("r-copy", task="s1", worker="w-a", test="bench::copy", ts=t + 20, run=self.run,
                                outcome="failed", status="failure", metrics={"copy_mb_s": 79.0},
                                error="def test():\n>       assert x\nE       AssertionError: copy too slow\n"))
        store.put_result(result("r-copy2", task="s2", worker="w-b", test="bench::copy", ts=t + 30, run=self.run,
                                outcome="failed", status="failure", metrics={"copy_mb_s": 40.0},
                                error="E   AssertionError: copy much too slow"))
        store.put_event("anomaly", "r-copy2", {
            "kind": "anomaly", "series": {"test_id": "bench::copy", "worker_id": "w-b"}, "metric": "copy_mb_s",
            "result_id": "r-copy2", "timestamp": t + 30, "index": 31, "value": 40.0, "score": -9.5,
            "median": 80.0, "expected_low": 70.0, "expected_high": 90.0, "reference_size": 30,
            "direction": "regression", "unit": "MB/s"}, when=t + 31)
        # A finding of another run's result, in the same minutes: not this run's.
        store.put_event("anomaly", "h3", {"kind": "anomaly", "series": {"test_id": "bench::copy"},
                                          "metric": "copy_mb_s", "result_id": "h3", "timestamp": T0 + 3,
                                          "value": 1.0, "score": 9.0}, when=t + 5)
        runs.finish(self.run, "failed", {})
        spec = TaskSpec(task_id="s1")
        store.put_task(TaskRecord(spec, type="pytest", parameters={"command": ["pytest", "-q"]}, timeout=None,
                                  metadata={"run": self.run}, create_time=time.time(), status="completed"))
        store.put_task(TaskRecord(TaskSpec(task_id="other"), type="command", parameters={"command": "true"},
                                  timeout=None, metadata=None, create_time=time.time() + 1, status="pending"))
        store.close()

    def conn(self) -> Any:
        return connect_readonly(self.path)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path / "dtf.sqlite")


def test_run_report_counts_table_series_findings_workers(lab: Lab) -> None:
    rep = reports.run_report(lab.conn(), lab.run, now=T0 + 500)
    json.dumps(rep)  # goes over the wire as is
    assert rep["run"]["run_id"] == lab.run and rep["run"]["name"] == "nightly" and rep["run"]["status"] == "failed"
    assert rep["counts"] == {"passed": 13, "failed": 1} and rep["counts_line"] == "1 failed, 13 passed"
    assert rep["pass_rate"] == pytest.approx(13 / 14) and rep["tests_total"] == 14 and rep["failures"] == 1
    # Failures first; the rerun counted as one test with two runs, its last row's error line shown.
    first = rep["tests"][0]
    assert (first["test_id"], first["outcome"], first["runs"], first["worker_id"]) == ("bench::copy", "failed", 2, "w-b")
    assert first["error"] == "AssertionError: copy much too slow"
    assert len(rep["tests"]) == 14 and rep["tests_more"] == 0
    assert [t["outcome"] for t in rep["tests"][1:]] == ["passed"] * 13
    (s,) = rep["series"]
    assert (s["test_id"], s["metric"], s["unit"], s["direction"]) == ("bench::copy", "copy_mb_s", "MB/s", "higher")
    # The history before the run (30 points) and the run's own two, oldest first.
    assert len(s["points"]) == 32 and s["points"][0] == [T0, 100.0] and s["points"][-1] == [T0 + 130, 40.0]
    assert s["run_span"] == [T0 + 120, T0 + 130] and s["run_points"] == 2
    (cp,) = s["change_points"]
    assert (cp["timestamp"], cp["mean_before"], cp["mean_after"], cp["rel_change"]) == (T0 + 20, 100.0, 80.0, -0.2)
    (f,) = rep["findings"]  # the other run's anomaly is left out
    assert (f["kind"], f["result_id"], f["worker_id"], f["value"]) == ("anomaly", "r-copy2", "w-b", 40.0)
    assert "robust z -9.5" in f["detail"]
    by_id = {w["worker_id"]: w for w in rep["workers"]}
    assert by_id["w-a"]["hardware"] == "16 cores, 64 GB, 2× A100, Linux" and by_id["w-a"]["host"] == "w-a.lab"
    assert (by_id["w-a"]["tests"], by_id["w-a"]["failures"]) == (7, 1)
    assert (by_id["w-b"]["tests"], by_id["w-b"]["failures"]) == (8, 1)
    assert [h["run_id"] for h in rep["history"]] == [lab.old, lab.run]
    assert rep["history"][0]["counts"] == {"passed": 1}  # one test, run 30 times and rep["history"][1]["pass_rate"] == pytest.approx(13 / 14)


def test_run_report_of_an_unknown_run_says_so(lab: Lab) -> None:
    with pytest.raises(ValueError, match="no run 'nope'"):
        reports.run_report(lab.conn(), "nope")


def test_a_huge_run_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_REPORT_TESTS", 50)
    monkeypatch.setattr(reports, "MAX_SERIES", 3)
    monkeypatch.setattr(reports, "HISTORY_POINTS", 10)
    store = Store(tmp_path / "db.sqlite")
    run = Runs(store).create("big", "pytest")["run_id"]
    for i in range(2000):
        store.put_result(result(f"x{i}", task="s", worker="w", test=f"t::{i}", ts=T0 + i, run=run,
                                outcome="failed" if i % 100 == 0 else "passed", metrics={"m": float(i), "n": 1.0}))
    store.close()
    rep = reports.run_report(connect_readonly(tmp_path / "db.sqlite"), run)
    assert rep["counts"] == {"passed": 1980, "failed": 20}
    assert len(rep["tests"]) == 50 and rep["tests_more"] == 1950
    assert all(t["outcome"] == "failed" for t in rep["tests"][:20]) and rep["tests"][20]["outcome"] == "passed"
    assert len(rep["series"]) == 3 and rep["series_more"] == 4000 - 3
    assert len(json.dumps(rep)) < 100_000


def test_run_report_of_a_plain_task_run_counts_results(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    run = Runs(store).create("plan", "plan")["run_id"]
    for i in range(5):
        store.put_result(result(f"p{i}", task=f"task{i}", worker="w", test="step", ts=T0 + i, run=run,
                                status="failure" if i == 4 else "success"))
    store.close()
    rep = reports.run_report(connect_readonly(tmp_path / "db.sqlite"), run)
    assert not rep["per_test"] and rep["counts"] == {"success": 4, "failure": 1}
    assert rep["pass_rate"] == pytest.approx(0.8) and rep["failures"] == 1
    assert [t["task_id"] for t in rep["tests"]][0] == "task4" and len(rep["tests"]) == 5 and rep["tests_more"] == 0


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def page_all(lab: Lab, **args: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every page, as a client pages: the rows still wanted as the limit of each."""
    rows: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    after = ""
    limit = args.pop("limit", reports.MAX_EXPORT)
    while True:
        page = reports.export_rows(lab.conn(), reports.ExportRowsArgs(**args, after=after, limit=limit - len(rows)))
        first = first or page
        rows += page["rows"]
        if not page["next"]:
            return rows, first
        after = page["next"]


def test_export_rows_pages_results_with_a_cursor(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "PAGE_ROWS", 7)
    rows, first = page_all(lab, what="results")
    assert [r["result_id"] for r in rows] == [*(f"h{i}" for i in range(30)), *(f"r{i}" for i in range(13)),
                                              "r-copy", "r-copy2"]
    assert first["metric_names"] == ["copy_mb_s"]
    assert first["total"] == len(rows) == 45  # what a progress bar counts to
    mine, first = page_all(lab, what="results", run_id=lab.run)
    assert len(mine) == 15 and {r["run_id"] for r in mine} == {lab.run} and first["total"] == 15
    assert mine[-1]["metrics"] == {"copy_mb_s": 40.0} and mine[-1]["outcome"] == "failed"
    since, _ = page_all(lab, what="results", since=T0 + 125)
    assert [r["result_id"] for r in since] == ["r-copy2"]
    limited, first = page_all(lab, what="results", limit=10)
    assert len(limited) == 10 and first["total"] == 10


def test_export_rows_tasks_and_findings(lab: Lab) -> None:
    tasks, _ = page_all(lab, what="tasks")
    assert [t["task_id"] for t in tasks] == ["s1", "other"]
    (s1,) = page_all(lab, what="tasks", run_id=lab.run)[0]
    assert (s1["run_id"], s1["command"], s1["status"]) == (lab.run, "pytest -q", "completed")
    found, _ = page_all(lab, what="findings")
    assert [(f["kind"], f["result_id"]) for f in found] == [("change_point", "h20"), ("anomaly", "r-copy2"),
                                                            ("anomaly", "h3")]
    mine, first = page_all(lab, what="findings", run_id=lab.run)
    assert [f["result_id"] for f in mine] == ["r-copy2"] and first["total"] == 1
    assert page_all(lab, what="tasks", run_id=lab.run)[1]["total"] == 1
    with pytest.raises(ValueError, match="no run"):
        reports.export_rows(lab.conn(), reports.ExportRowsArgs(what="tasks", run_id="gone.1"))
    with pytest.raises(ValueError, match="not a cursor"):
        reports.export_rows(lab.conn(), reports.ExportRowsArgs(what="results", after="x"))


@pytest.mark.parametrize(("what", "after"), [
    ("results", "5.5"), ("results", "[1]"), ("results", '"7"'), ("results", "true"), ("results", "-1"),
    ("results", str(2**70)), ("results", "{}"), ("findings", "[1]"), ("findings", "null"),
    ("tasks", "5"), ("tasks", "[1]"), ("tasks", '[1, 2]'), ("tasks", '["a", "b"]'), ("tasks", '[1, "a", 3]'),
    ("tasks", '[NaN, "a"]'), ("tasks", '{"a": 1}'),
])
def test_a_cursor_of_the_wrong_shape_is_refused_with_a_reason(lab: Lab, what: str, after: str) -> None:
    # JSON, but not what this coordinator writes: a ValueError the client reads, not a TypeError
    # (which the server logs as a bug and answers "failed: TypeError").
    with pytest.raises(ValueError, match=r"is not a cursor this coordinator gave; pass the \"next\""):
        reports.export_rows(lab.conn(), reports.ExportRowsArgs(what=what, after=after))


def test_the_cursors_it_gives_are_taken_back(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "PAGE_ROWS", 1)
    for what in ("tasks", "results", "findings"):
        page = reports.export_rows(lab.conn(), reports.ExportRowsArgs(what=what))
        rest = reports.export_rows(lab.conn(), reports.ExportRowsArgs(what=what, after=page["next"]))
        assert rest["rows"] and rest["rows"][0] != page["rows"][0]


def test_a_run_s_recent_change_point_is_found_behind_100001_older_findings(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # Other runs' findings of the same series, stored while this run ran and before its change
    # point: a scan of the oldest findings in the window would stop before reaching it.
    other = {"kind": "change_point", "series": {"test_id": "bench::copy"}, "metric": "copy_mb_s",
             "timestamp": T0 + 110, "mean_before": 1.0, "mean_after": 2.0, "rel_change": 1.0, "p_value": 0.01}
    db = sqlite3.connect(lab.path)
    with db:
        db.executemany("INSERT INTO events (time, kind, subject, data) VALUES (?, 'change_point', ?, ?)",
                       ((T0 + 100 + i * 1e-4, f"elsewhere-{i}", json.dumps({**other, "result_id": f"elsewhere-{i}"}))
                        for i in range(100_001)))
        db.execute("INSERT INTO events (time, kind, subject, data) VALUES (?, 'change_point', 'r-copy2', ?)",
                   (T0 + 131, json.dumps({
                       "kind": "change_point", "series": {"test_id": "bench::copy", "worker_id": "w-b"},
                       "metric": "copy_mb_s", "result_id": "r-copy2", "timestamp": T0 + 130, "mean_before": 80.0,
                       "mean_after": 40.0, "rel_change": -0.5, "p_value": 1e-4, "direction": "regression"})))
    db.close()
    rep = reports.run_report(lab.conn(), lab.run, now=T0 + 500)
    assert [(f["kind"], f["result_id"]) for f in rep["findings"]] == [("anomaly", "r-copy2"),
                                                                      ("change_point", "r-copy2")]
    assert rep["findings_more"] == 0
    (s,) = rep["series"]
    # The plot's change points are those on its own points: the history's and the run's, not the others'.
    assert [(c["result_id"], c["timestamp"]) for c in s["change_points"]] == [("h20", T0 + 20), ("r-copy2", T0 + 130)]
    # Past the cap, the newest are kept and the rest counted.
    monkeypatch.setattr(reports, "MAX_FINDINGS", 1)
    monkeypatch.setattr(reports, "MAX_SERIES_CHANGES", 1)
    rep = reports.run_report(lab.conn(), lab.run, now=T0 + 500)
    assert [f["kind"] for f in rep["findings"]] == ["change_point"] and rep["findings_more"] == 1
    assert [c["result_id"] for c in rep["series"][0]["change_points"]] == ["r-copy2"]


def test_a_page_ends_past_its_byte_budget(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "PAGE_BYTES", 300)
    page = reports.export_rows(lab.conn(), reports.ExportRowsArgs(what="results"))
    assert 0 < len(page["rows"]) < 10 and page["next"]
    rest = reports.export_rows(lab.conn(), reports.ExportRowsArgs(what="results", after=page["next"]))
    assert rest["rows"][0]["result_id"] != page["rows"][-1]["result_id"]


def test_csv_writers_columns_times_and_metrics(lab: Lab) -> None:
    rows, first = page_all(lab, what="results", run_id=lab.run)
    out = io.StringIO()
    assert exports.write_results_csv(rows, out, metric_names=first["metric_names"]) == 15
    got = read_csv(out.getvalue())
    assert list(got[0]) == [*exports.RESULT_CSV_COLUMNS, "metric.copy_mb_s"]
    assert got[0]["timestamp"] == "2023-11-14T22:15:00.000Z"  # T0 + 100, in UTC
    assert got[-1]["metric.copy_mb_s"] == "40.0" and got[0]["metric.copy_mb_s"] == ""
    # Pages append without a second header; rows without metric names find them themselves.
    out2 = io.StringIO()
    exports.write_results_csv(rows[:5], out2, metric_names=["copy_mb_s"])
    exports.write_results_csv(rows[5:], out2, metric_names=["copy_mb_s"], header=False)
    assert out2.getvalue() == out.getvalue()
    legacy = io.StringIO()
    exports.write_results_csv(rows, legacy, iso_times=False, columns=exports.LEGACY_RESULT_COLUMNS)
    assert read_csv(legacy.getvalue())[0]["timestamp"] == repr(T0 + 100)
    tasks = io.StringIO()
    exports.write_tasks_csv(page_all(lab, what="tasks")[0], tasks)
    trows = read_csv(tasks.getvalue())
    assert list(trows[0]) == list(exports.TASK_CSV_COLUMNS) and trows[0]["run_id"] == lab.run
    assert trows[0]["create_time"].endswith("Z")
    findings = io.StringIO()
    exports.write_findings_csv(page_all(lab, what="findings")[0], findings)
    frows = read_csv(findings.getvalue())
    assert list(frows[0]) == list(exports.FINDING_CSV_COLUMNS)
    assert frows[0]["kind"] == "change_point" and frows[0]["rel_change"] == "-0.2" and frows[0]["unit"] == "MB/s"
    assert frows[0]["time"] == "2023-11-14T22:13:40.000Z"


def test_ops_answer_through_their_connection(lab: Lab) -> None:
    table = reports.ops(lab.conn)
    schema, fn = table["run_report"]
    assert fn(schema(run_id=lab.run))["counts_line"] == "1 failed, 13 passed"
    schema, fn = table["export_rows"]
    assert len(fn(schema(what="results", run_id=lab.run))["rows"]) == 15


def test_iso_utc() -> None:
    assert exports.iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert exports.iso_utc(None) == "" and exports.iso_utc(1e300) == "1e+300"
