"""The SQLite store: schema version and migrations, batched flushes, task coalescing,
deduplication of results, and readers on their own connections while the writer is open."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from dtf_gui.coordinator import store as store_mod
from dtf_gui.coordinator.records import Result, TaskRecord, WorkerRecord
from dtf_gui.coordinator.scheduler import Requirements, TaskSpec
from dtf_gui.coordinator.store import (
    SCHEMA_VERSION,
    TASK_COLUMNS,
    Store,
    connect_readonly,
    migrate,
)


def task(task_id: str, status: str = "pending", **spec: Any) -> TaskRecord:
    return TaskRecord(TaskSpec(task_id=task_id, **spec), type="command", parameters={"command": "true"},
                      timeout=None, metadata=None, create_time=time.time(), status=status)


def result(result_id: str, task_id: str = "t1", status: str = "success", **kw: Any) -> Result:
    fields: dict[str, Any] = {
        "result_id": result_id, "task_id": task_id, "worker_id": "w1", "test_id": "bench",
        "timestamp": time.time(), "status": status, "execution_time": 0.01, "exit_code": 0,
        "metrics": {"latency": 1.5}, "raw_data": {"stdout_tail": "hi"}, **kw}
    return Result(**fields)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "dtf.sqlite"


@pytest.fixture
def store(db_path: Path) -> Any:
    s = Store(db_path, batch_size=10_000, flush_interval=0.25)
    try:
        yield s
    finally:
        s.close()


def count(path: Path, table: str, where: str = "", params: tuple[Any, ...] = ()) -> int:
    conn = connect_readonly(path)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table} {where}", params).fetchone()[0]
    finally:
        conn.close()


class StatementLog:
    """Every SQL statement the writer's connection runs (sqlite3 trace callback)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.statements: list[str] = []
        conn.set_trace_callback(self.statements.append)

    def matching(self, prefix: str) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(prefix)]


# ------------------------------------------------------------------------------ schema


def test_new_database_is_at_the_current_schema_version_with_every_table(store, db_path):
    conn = connect_readonly(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"tasks", "workers", "results", "metrics", "events"} <= tables
        task_cols = [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
        assert set(TASK_COLUMNS) <= set(task_cols)
        metric_cols = [r[1] for r in conn.execute("PRAGMA table_info(metrics)")]
        assert metric_cols[:3] == ["result_id", "name", "value"]
    finally:
        conn.close()
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_reopening_does_not_migrate_again_and_keeps_data(db_path):
    s = Store(db_path)
    s.put_task(task("keep-me"))
    s.close()
    conn = sqlite3.connect(db_path)
    try:
        assert migrate(conn) == SCHEMA_VERSION  # found the current version: nothing to do
    finally:
        conn.close()
    s2 = Store(db_path)
    try:
        assert [t["task_id"] for t in s2.load_tasks()] == ["keep-me"]
    finally:
        s2.close()


def test_a_new_migration_runs_once_on_an_old_database(db_path, monkeypatch):
    s = Store(db_path)
    s.put_task(task("old-task"))
    s.close()

    calls: list[int] = []

    def migration_2(db: sqlite_utils.Database) -> None:
        calls.append(1)
        db["tasks"].add_column("owner", str)

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, migration_2])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    conn = sqlite3.connect(db_path)
    try:
        assert store_mod.migrate(conn) == SCHEMA_VERSION  # the version it found
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert "owner" in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
        assert conn.execute("SELECT task_id FROM tasks").fetchall() == [("old-task",)]
        assert store_mod.migrate(conn) == SCHEMA_VERSION + 1  # second run: nothing left to do
    finally:
        conn.close()
    assert calls == [1]


def test_a_failing_migration_leaves_the_old_version(db_path, monkeypatch):
    Store(db_path).close()

    def broken(db: sqlite_utils.Database) -> None:
        db["tasks"].add_column("half_done", str)
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        with pytest.raises(RuntimeError, match="migration bug"):
            store_mod.migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "half_done" not in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
    finally:
        conn.close()


def test_database_from_a_newer_dtf_is_refused_with_a_clear_error(db_path):
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(RuntimeError, match=f"schema version {SCHEMA_VERSION + 5} is newer"):
        Store(db_path)


# ------------------------------------------------------------------------------ batching


def test_writes_wait_for_a_flush_and_a_flush_is_one_transaction(store, db_path):
    trace = StatementLog(store.conn)
    for i in range(500):
        store.put_result(result(f"r{i}", task_id=f"t{i}"))
        store.put_task(task(f"t{i}", status="completed"))
    store.put_event("worker_online", "w1", {"slots": 2})
    assert trace.statements == [], "a put must not touch the database before a flush"
    assert count(db_path, "results") == 0

    assert store.pending_rows() > 0
    written = store.flush()
    assert written == 500 + 500 + 500 + 1  # results, tasks, one metric each, one event
    assert store.pending_rows() == 0
    assert len(trace.matching("COMMIT")) == 1, "one commit per flush, not one per row"
    assert len(trace.matching("BEGIN")) == 1
    assert count(db_path, "results") == 500
    assert count(db_path, "tasks", "WHERE status='completed'") == 500
    assert count(db_path, "metrics", "WHERE name='latency' AND value=1.5") == 500
    assert count(db_path, "events", "WHERE kind='worker_online'") == 1
    assert store.flush() == 0  # nothing queued: no empty transaction either
    assert len(trace.matching("COMMIT")) == 1


def test_flush_is_due_after_the_interval_only_when_rows_wait(store):
    now = time.monotonic()
    assert not store.flush_due(now + 10), "nothing queued, nothing due"
    store.put_result(result("r1"))
    store.flush()
    store.put_result(result("r2"))
    flushed_at = time.monotonic()
    assert not store.flush_due(flushed_at - 1)
    assert store.flush_due(flushed_at + store.flush_interval + 0.01)


def test_a_full_batch_says_so_and_is_never_written_from_inside_a_put(db_path):
    # The loop flushes between messages: a put never writes, so a result and the status it gives
    # its task cannot be split over two transactions.
    s = Store(db_path, batch_size=100, flush_interval=3600)
    try:
        for i in range(99):
            s.put_result(result(f"r{i}"))
        assert not s.full()
        s.put_result(result("r99"))
        assert s.full()
        assert count(db_path, "results") == 0
        s.flush()
        assert count(db_path, "results") == 100
        assert s.pending_rows() == 0 and s.committed == s.taken == 1
    finally:
        s.close()


def test_close_flushes_what_is_queued(db_path):
    s = Store(db_path)
    s.put_result(result("last-words"))
    s.close()
    assert count(db_path, "results", "WHERE result_id='last-words'") == 1


# ------------------------------------------------------------------------------ coalescing


def test_task_updates_within_one_flush_are_written_once_with_the_last_state(store, db_path):
    trace = StatementLog(store.conn)
    rec = task("t1")
    store.put_task(rec)
    rec.status = "assigned"
    rec.worker_id = "w1"
    store.put_task(rec)
    rec.status = "running"
    store.put_task(rec)
    rec.status = "completed"
    rec.end_time = 123.0
    store.put_task(rec)
    assert store.pending_rows() == 1
    store.flush()
    assert len(trace.matching("INSERT INTO TASKS")) == 1
    rows = store.load_tasks("WHERE task_id='t1'")
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["worker_id"], rows[0]["end_time"]) == ("completed", "w1", 123.0)
    assert rows[0]["parameters"] == {"command": "true"}  # JSON columns come back decoded


def test_task_upsert_across_flushes_updates_the_row(store):
    rec = task("t1")
    store.put_task(rec)
    store.flush()
    rec.status = "failed"
    rec.error = "exit code 3"
    store.put_task(rec)
    store.flush()
    rows = store.load_tasks()
    assert [(r["task_id"], r["status"], r["error"]) for r in rows] == [("t1", "failed", "exit code 3")]


def test_task_spec_columns_round_trip(store):
    rec = task("t2", dependencies=("t1",), requirements=Requirements(tags=frozenset({"gpu", "a"}), gpu_count=2),
               priority=7, test_id="bench")
    store.put_task(rec)
    store.flush()
    (row,) = store.load_tasks("WHERE task_id='t2'")
    assert row["dependencies"] == ["t1"]
    assert row["requirements"] == {"tags": ["a", "gpu"], "gpu_count": 2}  # only what was asked for
    assert (row["priority"], row["test_id"]) == (7, "bench")
    back = TaskRecord.from_row(row)
    assert back.spec.requirements == rec.spec.requirements and back.spec.dependencies == ("t1",)


def test_worker_upsert_keeps_first_seen(store):
    w = WorkerRecord("w1", b"w1", hostname="h", slots=2, capabilities={"c": 1, "hardware_id": "hw"}, tags=["gpu"],
                     metadata={}, running=[], now=10.0, first_seen=10.0, seen_at=0.0)
    store.put_worker(w)
    store.flush()
    w.status, w.last_seen, w.first_seen = "offline", 20.0, 20.0
    store.put_worker(w)
    store.flush()
    (w,) = store.load_workers()
    assert (w["status"], w["last_seen"], w["first_seen"], w["tags"]) == ("offline", 20.0, 10.0, ["gpu"])


# ------------------------------------------------------------------------------ duplicates


def test_duplicate_result_id_in_one_batch_is_stored_once(store, db_path):
    store.put_result(result("dup", status="success", metrics={"x": 1.0}))
    store.put_result(result("dup", status="failure", metrics={"x": 2.0}))
    store.flush()
    rows = store.load_results("WHERE result_id='dup'")
    assert len(rows) == 1 and rows[0]["status"] == "success"  # the first one wins
    assert count(db_path, "metrics", "WHERE result_id='dup'") == 1


def test_duplicate_result_id_across_flushes_is_stored_once(store, db_path):
    store.put_result(result("dup", metrics={"x": 1.0, "y": 2.0}))
    store.flush()
    store.put_result(result("dup", status="failure", metrics={"x": 9.0, "y": 9.0}))
    store.put_result(result("fresh"))
    store.flush()
    assert count(db_path, "results", "WHERE result_id='dup'") == 1
    assert count(db_path, "results") == 2
    conn = connect_readonly(db_path)
    try:
        metrics = dict(conn.execute("SELECT name, value FROM metrics WHERE result_id='dup'").fetchall())
    finally:
        conn.close()
    assert metrics == {"x": 1.0, "y": 2.0}


# ------------------------------------------------------------------------------ readers


def test_readonly_connection_reads_while_the_writer_is_open(store, db_path):
    store.put_result(result("r1"))
    store.flush()
    reader = connect_readonly(db_path)
    try:
        assert reader.execute("SELECT result_id FROM results").fetchall()[0]["result_id"] == "r1"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO events (time, kind, subject, data) VALUES (1, 'x', 'y', '{}')")
        reader.rollback()  # the sqlite3 module opened a transaction for that INSERT; do not keep it

        # A writer in the middle of a transaction blocks no reader (WAL): the reader sees the
        # last committed state at once, then the new one after the commit.
        # With no busy timeout a reader that had to wait would fail with "database is locked".
        reader.execute("PRAGMA busy_timeout=0")
        store.conn.execute("BEGIN")
        store.conn.execute("INSERT INTO results (result_id, task_id, status) VALUES ('r2', 't', 'success')")
        assert reader.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
        store.conn.execute("COMMIT")
        assert reader.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2

        # And the writer is not blocked by an open read transaction either.
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM results").fetchone()
        store.put_result(result("r3"))
        store.flush()
        reader.execute("COMMIT")
        assert reader.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3
    finally:
        reader.close()


def test_readonly_connection_on_a_missing_file_fails_clearly(tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        connect_readonly(tmp_path / "nope.sqlite").execute("SELECT 1 FROM results")
    assert not (tmp_path / "nope.sqlite").exists(), "a reader must never create the database"


def test_retracted_events_are_kept_but_renamed(tmp_path):
    from dtf_gui.coordinator.store import Store, connect_readonly

    store = Store(tmp_path / "r.sqlite")
    store.put_event("anomaly", "r1", {"v": 1})
    store.put_event("anomaly", "r2", {"v": 2})
    store.put_event("change_point", "r2", {"v": 3})
    store.flush()
    store.retract_events("anomaly", ["r2", "missing"])
    store.flush()
    conn = connect_readonly(tmp_path / "r.sqlite")
    try:
        rows = sorted(tuple(r) for r in conn.execute("SELECT kind, subject FROM events"))
    finally:
        conn.close()
        store.close()
    assert rows == [("anomaly", "r1"), ("anomaly_retracted", "r2"), ("change_point", "r2")]


def test_retracting_with_a_metric_leaves_the_results_other_metrics_alone(tmp_path):
    """One result carries several metrics: a change in one explains nothing about another."""
    from dtf_gui.coordinator.store import Store, connect_readonly

    store = Store(tmp_path / "m.sqlite")
    store.put_event("anomaly", "r1", {"metric": "latency_ms"})
    store.put_event("anomaly", "r1", {"metric": "throughput"})
    store.retract_events("anomaly", ["r1"], "throughput")  # in the same flush as the rows it names
    store.flush()
    conn = connect_readonly(tmp_path / "m.sqlite")
    try:
        rows = sorted(tuple(r) for r in conn.execute("SELECT kind, json_extract(data, '$.metric') FROM events"))
    finally:
        conn.close()
        store.close()
    assert rows == [("anomaly", "latency_ms"), ("anomaly_retracted", "throughput")]


@pytest.mark.parametrize("background", [False, True])
def test_a_row_the_database_refuses_is_left_out_alone_and_reported(db_path: Path, background: bool) -> None:
    # A value beyond SQLite's 64-bit integers once made a whole batch of neighbours vanish.
    s = Store(db_path, background=background)
    try:
        for i in range(60):
            s.put_task(task(f"before-{i}"))
            s.put_result(result(f"r-before-{i}", task_id=f"before-{i}"))
        bad = task("poison")
        bad.priority = 2**63
        s.put_task(bad)
        for i in range(60):
            s.put_task(task(f"after-{i}"))
        s.flush(wait=True)
        assert s.committed == s.taken and s.refused_rows == 1 and not s.failing
    finally:
        s.close()
    assert count(db_path, "tasks") == 120 and count(db_path, "results") == 60
    assert count(db_path, "tasks", "WHERE task_id='poison'") == 0
    conn = connect_readonly(db_path)
    try:
        (kind, subject, data) = conn.execute("SELECT kind, subject, data FROM events").fetchone()
    finally:
        conn.close()
    assert (kind, subject) == ("write_refused", "poison") and "OverflowError" in data


def test_a_version_1_database_is_migrated_and_keeps_its_tasks(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    db = sqlite_utils.Database(conn)
    store_mod.MIGRATIONS[0](db)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO tasks (task_id, type, status, priority, attempt) VALUES ('old', 'command', "
                 "'pending', 5, 2)")
    conn.commit()
    conn.close()
    s = Store(db_path)
    try:
        (row,) = s.load_tasks()
        # Version 3: the trust tables, empty, and written like any other row.
        assert s.load_rows("agent_keys") == [] and s.load_rows("tokens") == []
        s.put_row("client_keys", ("k" * 40, "viewer1", "viewer", "SHA256:x", 1.0, 0))
        s.flush(wait=True)
        assert s.load_rows("client_keys") == [{"key": "k" * 40, "name": "viewer1", "role": "viewer",
                                                "fingerprint": "SHA256:x", "created": 1.0, "removed": 0}]
        with pytest.raises(ValueError, match="takes 6 columns"):
            s.put_row("client_keys", ("too", "short"))
        # Version 4: runs, metric declarations, and results that carry their run and outcome.
        s.put_row("runs", ("r1", "nightly", "plan", 1.0, None, "running", None, None))
        s.put_result(Result(result_id="x", task_id="old", worker_id="w", test_id="t.py::a", run_id="r1",
                            outcome="passed"))
        s.flush(wait=True)
        assert s.load_rows("runs")[0]["name"] == "nightly"
        assert s.query("SELECT run_id, outcome FROM results") == [("r1", "passed")]
    finally:
        s.close()
    assert row["task_id"] == "old" and row["attempt"] == 2
    assert (row["cpu_slots"], row["failures"], row["lost"], row["retry_at"], row["pinned_to"]) == (1, 0, 0, None, None)
    assert SCHEMA_VERSION == 6


def test_version_6_withdraws_findings_through_an_index(db_path: Path) -> None:
    s = Store(db_path)
    try:
        plan = s.query("EXPLAIN QUERY PLAN UPDATE events SET kind = kind || '_retracted' WHERE kind=? AND subject=?",
                       ("anomaly", "r1"))
    finally:
        s.close()
    assert any("idx_events_subject" in str(row) for row in plan), plan


def test_version_5_pages_tasks_by_submit_time_through_an_index(db_path: Path) -> None:
    s = Store(db_path)
    try:
        plan = s.query("EXPLAIN QUERY PLAN SELECT task_id FROM tasks ORDER BY create_time DESC, task_id DESC "
                       "LIMIT 50 OFFSET 100")
    finally:
        s.close()
    assert any("idx_tasks_create_time" in str(row) for row in plan), plan


def test_the_scheduler_memory_of_a_task_round_trips(store: Any, db_path: Path) -> None:
    t = task("t", cpu_slots=3, retry_limit=0, expected_duration=12.5)
    t.failures, t.lost, t.retry_at, t.pinned_to = 2, 1, 1234.5, "w9"
    store.put_task(t)
    store.flush()
    (row,) = store.load_tasks()
    back = TaskRecord.from_row(row)
    assert (back.spec.cpu_slots, back.spec.retry_limit, back.spec.expected_duration) == (3, 0, 12.5)
    assert (back.failures, back.lost, back.retry_at, back.pinned_to) == (2, 1, 1234.5, "w9")


@pytest.mark.parametrize("background", [False, True])
def test_each_committed_result_is_handed_over_once_in_commit_order(tmp_path: Path, background: bool) -> None:
    """The live detector's feed: right after each commit, whichever flush made it, in order."""
    s = Store(tmp_path / "c.sqlite", background=background)
    got: list[list[str]] = []
    s.on_results_committed = lambda results: got.append([r.result_id for r in results])
    try:
        for batch in range(5):
            for i in range(3):
                s.put_result(result(f"r{batch}-{i}"))
            s.flush(wait=batch % 2 == 0)  # routine flushes and ones a reader forces alike
        s.flush(wait=True)
        assert [rid for ids in got for rid in ids] == [f"r{b}-{i}" for b in range(5) for i in range(3)]
        assert s.query("SELECT count(*) FROM results") == [(15,)]
        assert all(ids for ids in got)  # no empty hand-overs
    finally:
        s.close()


def test_a_failing_commit_listener_loses_no_row(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.sqlite")

    def broken(results: list[Any]) -> None:
        raise RuntimeError("listener bug")

    s.on_results_committed = broken
    try:
        s.put_result(result("r1"))
        s.flush(wait=True)
        assert s.query("SELECT result_id FROM results") == [("r1",)]
    finally:
        s.close()
