"""The demo database (tests/gui/demo.py) is one a real coordinator opens and serves: its workers, tasks,
runs with per-test rows, metric declarations and the live detector's findings on the planted changes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dtf_gui.coordinator.aggregator import Anomaly, ChangePointFound, Finding
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.server import Coordinator
from dtf_gui.coordinator.store import connect_readonly
from tests.gui.demo import BENCH_TEST, DAY, build_big_tasks, build_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_demo(tmp_path_factory.mktemp("demo"), tasks=3000)


@pytest.fixture(scope="module")
def coordinator(demo: dict[str, Any]) -> Iterator[Coordinator]:
    coord = Coordinator(ephemeral_settings(demo["db"])).start()
    try:
        yield coord
    finally:
        coord.stop()


def test_the_coordinator_serves_the_demo_tasks_and_workers(demo, coordinator) -> None:
    assert demo["tasks"] == 3000
    status = coordinator.request("get_status")
    by_status = status["tasks"]
    assert by_status["completed"] == demo["by_status"]["completed"] > 2500
    assert by_status["failed"] == demo["by_status"]["failed"] > 50
    assert by_status["pending"] == 8
    assert by_status["running"] == by_status["assigned"] == 0

    workers = coordinator.request("list_workers")
    assert sorted(w["worker_id"] for w in workers) == sorted(demo["workers"])
    assert len({w["hardware_id"] for w in workers}) == len(workers) - 1  # the two Xeons are one hardware
    gpu = next(w for w in workers if "gpu" in w["tags"])
    assert len(gpu["capabilities"]["gpus"]) == 2
    assert {w["capabilities"]["os"] for w in workers} == {"linux", "darwin", "windows"}

    newest = coordinator.request("list_tasks", {"limit": 50})
    assert len(newest) == 50
    assert [t["create_time"] for t in newest] == sorted((t["create_time"] for t in newest), reverse=True)
    failed = coordinator.request("list_tasks", {"status": "failed", "limit": 1000})
    assert failed and all(t["error"] for t in failed)
    retried = [t for t in failed if t["attempt"] > 1]
    assert retried, "some failed tasks failed again after retries"
    detail = coordinator.request("get_task", {"task_id": retried[0]["task_id"]})
    assert [r["attempt"] for r in detail["result_list"]] == list(range(1, retried[0]["attempt"] + 1))

    pending = coordinator.request("list_tasks", {"status": "pending", "limit": 100})
    assert {t["task_id"] for t in pending} == set(demo["pending"])
    # They wait for a board no demo worker has; with nobody connected, the scheduler says that first.
    assert all(t["why"] and t["requirements"] == {"tags": ["fpga"]} for t in pending), pending[0]


def test_runs_have_their_tests_and_outcomes(demo, coordinator) -> None:
    runs = {r["run_id"]: r for r in coordinator.request("list_runs", {"limit": 1000})}
    assert set(demo["runs"]["nightly"]) | set(demo["runs"]["bench"]) == set(runs)
    last = runs[demo["runs"]["nightly"][-1]]
    assert last["kind"] == "pytest" and last["status"] == "failed"
    assert last["tests"]["failed"] == 2 and last["tests"]["passed"] > 100
    before = runs[demo["runs"]["nightly"][-2]]
    assert before["tests"].get("flaky") == 1 and before["status"] == "passed"
    tests = coordinator.request("run_tests", {"run_id": last["run_id"]})
    failing = [t for t in tests if t["outcome"] == "failed"]
    assert len(failing) == 2 and all("AssertionError" in t["longrepr"] for t in failing)
    bench = runs[demo["runs"]["bench"][0]]
    assert bench["results"] == {"success": len(demo["workers"])}


def test_metrics_are_declared_and_carry_the_planted_changes(demo, coordinator) -> None:
    info = coordinator.request("metric_info", {"names": ["throughput_mb_s", "latency_ms"]})
    text = repr(info)
    assert "MB/s" in text and "ms" in text and "higher" in text and "lower" in text

    conn = connect_readonly(demo["db"])
    try:
        levels = conn.execute(
            "SELECT r.timestamp >= ?, avg(m.value) FROM metrics m JOIN results r USING (result_id) "
            "WHERE r.test_id = ? AND r.worker_id = ? AND m.name = 'throughput_mb_s' GROUP BY 1",
            (demo["step_at"], BENCH_TEST, demo["workers"][0])).fetchall()
    finally:
        conn.close()
    before, after = dict(levels)[0], dict(levels)[1]
    assert 1.05 < after / before < 1.11  # the +8 % step two days ago


def _stored_findings(db: Path) -> tuple[list[Any], int]:
    conn = connect_readonly(db)
    try:
        rows = conn.execute("SELECT kind, subject, data FROM events WHERE kind IN ('anomaly', 'change_point', 'trend')"
                            ).fetchall()
        retracted = conn.execute("SELECT count(*) FROM events WHERE kind = 'anomaly_retracted'").fetchone()[0]
    finally:
        conn.close()
    findings = []
    for kind, subject, data in rows:
        f = msgspec.convert(msgspec.json.decode(data), Finding)  # the live detector's exact shape
        assert f.result_id == subject and kind == msgspec.to_builtins(f)["kind"]
        findings.append(f)
    return findings, retracted


def test_findings_are_the_live_detectors_on_the_planted_changes(demo, coordinator) -> None:
    findings, retracted = _stored_findings(demo["db"])
    assert len(findings) == len(demo["live_findings"])
    assert retracted == demo["retracted"]
    steps = [f for f in findings if isinstance(f, ChangePointFound) and f.metric == "throughput_mb_s"
             and abs(f.timestamp - demo["step_at"]) < 0.2 * DAY]
    assert {f.series["worker_id"] for f in steps} == set(demo["workers"])
    assert all(f.direction == "improvement" and 0.04 < f.rel_change < 0.13 for f in steps)
    regression = [f for f in findings if isinstance(f, ChangePointFound) and f.metric == "latency_ms"
                  and f.series["worker_id"] == demo["regress_worker"]]
    assert regression and regression[0].direction == "regression"
    spike = [f for f in findings if isinstance(f, Anomaly) and f.series["worker_id"] == demo["spike_worker"]
             and f.metric == "throughput_mb_s" and f.value > 1.25 * f.median]
    assert len(spike) == 1 and spike[0].direction == "improvement"
    assert all(f.unit in ("MB/s", "ms") and f.direction_source == "declared" for f in findings)


def test_a_million_tasks_are_appended_in_one_fast_transaction(tmp_path) -> None:
    made = build_demo(tmp_path, tasks=400, workers=3, seed=3)
    oldest = sqlite3.connect(made["db"]).execute("SELECT min(create_time) FROM tasks").fetchone()[0]
    n = 200_000
    t0 = time.perf_counter()
    build_big_tasks(made["db"], n)
    took = time.perf_counter() - t0
    conn = connect_readonly(made["db"])
    try:
        total, newest_big = conn.execute("SELECT count(*), max(create_time) FROM tasks WHERE task_id LIKE '%b1'"
                                         ).fetchone()
        assert total == n
        assert newest_big < oldest  # appended before the demo's history: its newest rows stay on top
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == n + made["tasks"]
        workers = {w for (w,) in conn.execute("SELECT DISTINCT worker_id FROM tasks WHERE task_id LIKE '%b1'")}
        assert workers == set(made["workers"])
    finally:
        conn.close()
    # 1,000,000 rows in well under a minute: a fifth of them in well under a fifth of that.
    assert took < 10.0, f"{n} tasks took {took:.1f} s"
