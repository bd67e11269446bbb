"""SQLite: the schema, its migrations, and the coordinator's single writer.

Only the coordinator thread writes (WAL, synchronous=NORMAL). Writes on the hot path are
buffered and flushed as one transaction with ``executemany`` at a size or an interval, never a
commit per row: a flood of results costs a few transactions a second, not thousands.
Task rows are coalesced by id before a flush, so a task that is submitted, assigned and finished
within one flush window is written once.

Readers (CLI exports, reports, the aggregator's loads) open their own read-only connections with
:func:`connect_readonly`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import sqlite_utils

from dtf_gui.coordinator.records import Result, TaskRecord, WorkerRecord, requirements_to_dict

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6

# Column order used by the coalesced task upsert. Kept in one place because the loader and the
# writer must agree on it.
TASK_COLUMNS: tuple[str, ...] = (
    "task_id",
    "type",
    "status",
    "priority",
    "create_time",
    "start_time",
    "end_time",
    "worker_id",
    "parameters",
    "dependencies",
    "requirements",
    "results",
    "error",
    "metadata",
    "timeout",
    "attempt",
    "test_id",
    "status_reason",
    "failures",
    "lost",
    "retry_at",
    "pinned_to",
    "cpu_slots",
    "retry_limit",
    "expected_duration",
)
# Fixed at submit and held by the task's scheduler spec, not by the record itself.
_SPEC_TASK_COLUMNS = ("cpu_slots", "retry_limit", "expected_duration")
# Stored as JSON text; fixed at submit, so they are encoded once, when the row is first inserted.
_JSON_TASK_COLUMNS = ("parameters", "dependencies", "requirements", "metadata")
# The other columns are TaskRecord attributes of the same name: one attrgetter call reads a whole
# row (in C, under the GIL: a consistent snapshot however the loop changes the record after).
_PLAIN_TASK_COLUMNS = tuple(c for c in TASK_COLUMNS if c not in _JSON_TASK_COLUMNS and c not in _SPEC_TASK_COLUMNS)
_task_plain_row = operator.attrgetter(*_PLAIN_TASK_COLUMNS)
TASK_MUTABLE_COLUMNS: tuple[str, ...] = (
    "status", "priority", "start_time", "end_time", "worker_id", "results", "error", "attempt", "status_reason",
    "failures", "lost", "retry_at", "pinned_to",
)
_task_update_row = operator.attrgetter(*TASK_MUTABLE_COLUMNS, "task_id")

RESULT_COLUMNS: tuple[str, ...] = (
    "result_id",
    "task_id",
    "worker_id",
    "test_id",
    "timestamp",
    "status",
    "execution_time",
    "exit_code",
    "error",
    "metrics",
    "hardware_metrics",
    "environment",
    "raw_data",
    "metadata",
    "attempt",
    "run_id",
    "outcome",
)

WORKER_COLUMNS: tuple[str, ...] = (
    "worker_id",
    "hostname",
    "status",
    "hardware_id",
    "capabilities",
    "tags",
    "slots",
    "last_seen",
    "first_seen",
    "current_task",
    "performance_metrics",
    "health_status",
    "metadata",
)
_JSON_WORKER_COLUMNS = frozenset({"capabilities", "tags", "current_task", "performance_metrics",
                                  "health_status", "metadata"})


def _migration_1(db: sqlite_utils.Database) -> None:
    # WITHOUT ROWID: tasks are found by their text id on every update, so the table is its own index.
    db.execute(
        "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, type TEXT, status TEXT, priority INTEGER, "
        "create_time FLOAT, start_time FLOAT, end_time FLOAT, worker_id TEXT, parameters TEXT, "
        "dependencies TEXT, requirements TEXT, results TEXT, error TEXT, metadata TEXT, timeout FLOAT, "
        "attempt INTEGER, test_id TEXT, status_reason TEXT) WITHOUT ROWID"
    )
    # No index on status: it changes on every transition, and the active tasks are in memory.
    db.table("workers").create(
        {
            "worker_id": str, "hostname": str, "status": str, "hardware_id": str, "capabilities": str,
            "tags": str, "slots": int, "last_seen": float, "first_seen": float, "current_task": str,
            "performance_metrics": str, "health_status": str, "metadata": str,
        },
        pk="worker_id",
    )
    db.table("results").create(
        {
            "result_id": str, "task_id": str, "worker_id": str, "test_id": str, "timestamp": float,
            "status": str, "execution_time": float, "exit_code": int, "error": str, "metrics": str,
            "hardware_metrics": str, "environment": str, "raw_data": str, "metadata": str, "attempt": int,
        },
        pk="result_id",
    )
    db.table("results").create_index(["task_id"])
    db.table("results").create_index(["test_id", "timestamp"])
    # The long form of every metric, so aggregation over millions of rows runs in SQL and numpy.
    db.table("metrics").create({"result_id": str, "name": str, "value": float})
    db.table("metrics").create_index(["result_id"])
    db.table("metrics").create_index(["name"])
    db.table("events").create({"id": int, "time": float, "kind": str, "subject": str, "data": str}, pk="id")
    db.table("events").create_index(["time"])


def _migration_2(db: sqlite_utils.Database) -> None:
    # What the scheduler knows of a task beyond its row, so that a restart resumes it exactly:
    # the spec fields fixed at submit, and the counts and deadlines that change as it runs.
    for column in ("cpu_slots INTEGER NOT NULL DEFAULT 1", "retry_limit INTEGER", "expected_duration FLOAT",
                   "failures INTEGER NOT NULL DEFAULT 0", "lost INTEGER NOT NULL DEFAULT 0", "retry_at FLOAT",
                   "pinned_to TEXT"):
        db.execute(f"ALTER TABLE tasks ADD COLUMN {column}")


def _migration_3(db: sqlite_utils.Database) -> None:
    # Trust: the agents' keys and their enrollment, the clients' keys and roles, join tokens (only
    # a hash of each secret). A key is an identity, so it is the primary key, not the name.
    db.execute("CREATE TABLE agent_keys (key TEXT PRIMARY KEY, name TEXT, state TEXT, fingerprint TEXT, "
               "hostname TEXT, address TEXT, first_seen FLOAT, last_seen FLOAT, how TEXT, tags TEXT)")
    db.execute("CREATE TABLE client_keys (key TEXT PRIMARY KEY, name TEXT, role TEXT, fingerprint TEXT, "
               "created FLOAT, removed INTEGER NOT NULL DEFAULT 0)")
    db.execute("CREATE TABLE tokens (id TEXT PRIMARY KEY, secret_hash TEXT, uses_left INTEGER, expires FLOAT, "
               "tags TEXT, created FLOAT)")


def _migration_4(db: sqlite_utils.Database) -> None:
    # Runs (a plan, a pytest run, a batch submission) and what their results are: a result row
    # carries its run, and a pytest test's row its outcome (passed, failed, flaky...). Metric
    # declarations (unit, direction) outlive any one result, so they have a table of their own.
    db.execute("ALTER TABLE results ADD COLUMN run_id TEXT")
    db.execute("ALTER TABLE results ADD COLUMN outcome TEXT")
    db.execute("CREATE INDEX idx_results_run_id ON results (run_id, test_id)")
    db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT, kind TEXT, created FLOAT, finished FLOAT, "
               "status TEXT, meta TEXT, summary TEXT)")
    db.execute("CREATE INDEX idx_runs_name ON runs (name, created)")
    db.execute("CREATE TABLE metric_meta (name TEXT PRIMARY KEY, unit TEXT, direction TEXT, source TEXT, "
               "updated FLOAT)")


def _migration_5(db: sqlite_utils.Database) -> None:
    # The window pages through the task table newest first (a million rows, a window of them at a
    # time): an index on the submit time, which never changes after the insert, so the narrow
    # status updates never touch it.
    db.execute("CREATE INDEX idx_tasks_create_time ON tasks (create_time, task_id)")
    # Alerts, acknowledgements and findings are read back by kind (at start, and by the window's
    # series and alert views): without it each read is a scan of every event ever stored.
    db.execute("CREATE INDEX idx_events_kind ON events (kind, id)")


def _migration_6(db: sqlite_utils.Database) -> None:
    # A change withdraws the anomalies it explains, and a settled suspicion its own row, by kind
    # and subject: without it each withdrawal is a scan of every finding of that kind.
    db.execute("CREATE INDEX idx_events_subject ON events (kind, subject)")


# Each entry upgrades the schema from version i to i+1. Append, never edit a released one.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2, _migration_3, _migration_4,
                                                             _migration_5, _migration_6]

# Tables written whole row by row, keyed by their first column (INSERT OR REPLACE): the trust
# tables, runs and metric declarations. The columns in the order put_row takes them (the first is the key).
KEYED_COLUMNS: dict[str, tuple[str, ...]] = {
    "agent_keys": ("key", "name", "state", "fingerprint", "hostname", "address", "first_seen", "last_seen", "how",
                   "tags"),
    "client_keys": ("key", "name", "role", "fingerprint", "created", "removed"),
    "tokens": ("id", "secret_hash", "uses_left", "expires", "tags", "created"),
    "runs": ("run_id", "name", "kind", "created", "finished", "status", "meta", "summary"),
    "metric_meta": ("name", "unit", "direction", "source", "updated"),
}
_KEYED_SQL = {t: f"INSERT OR REPLACE INTO {t} ({','.join(c)}) VALUES ({','.join('?' * len(c))})"
              for t, c in KEYED_COLUMNS.items()}

# The metrics of a result whose result_id is already stored are skipped like the result row
# itself (INSERT OR IGNORE): a resent result must not double its metrics in the long table,
# which aggregation sums over.
_METRIC_SQL = ("INSERT INTO metrics (result_id, name, value) SELECT ?1, ?2, ?3 "
               "WHERE NOT EXISTS (SELECT 1 FROM metrics WHERE result_id=?1 AND name=?2)")


_json_encode = msgspec.json.Encoder(enc_hook=str).encode


def json_or_none(value: Any) -> str | None:
    """JSON text for a column; None and empty containers are stored as NULL. Strings are taken
    as already encoded."""
    if not value:
        return None
    if isinstance(value, str):
        return value
    return _json_encode(value).decode()


def _loads(value: str | None) -> Any:
    if value is None or value == "":
        return None
    return json.loads(value)


def _tune(conn: sqlite3.Connection, synchronous: str = "NORMAL") -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL: a commit survives the process dying at any moment (the OS has the pages);
    # FULL adds an fsync per commit so that it survives the machine losing power too.
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    # Fewer, larger checkpoints: the writer thread pays for each one.
    conn.execute("PRAGMA wal_autocheckpoint=8000")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to SCHEMA_VERSION; returns the version found before."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this DTF understands ({SCHEMA_VERSION}); "
            "upgrade DTF or point --db at another file"
        )
    db = sqlite_utils.Database(conn)
    for version in range(found, SCHEMA_VERSION):
        # An explicit transaction: ``with conn:`` wraps nothing on an autocommit connection (the
        # Store's) and never wraps DDL, so a migration failing halfway used to leave a schema the
        # next start could not migrate again. SQLite's DDL is transactional; use it.
        conn.execute("BEGIN")
        try:
            MIGRATIONS[version](db)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A reader's own connection. It never blocks the writer (WAL)."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.row_factory = sqlite3.Row
    return conn


def _task_insert_row(t: TaskRecord) -> tuple[Any, ...]:
    """The whole row of a task never written before, in ``_TASK_INSERT_COLUMNS`` order."""
    spec = t.spec
    return (*_task_plain_row(t), json_or_none(t.parameters), json_or_none(list(spec.dependencies)),
            json_or_none(requirements_to_dict(spec.requirements)), json_or_none(t.metadata),
            spec.cpu_slots, spec.retry_limit, spec.expected_duration)


_TASK_INSERT_COLUMNS = (*_PLAIN_TASK_COLUMNS, *_JSON_TASK_COLUMNS, *_SPEC_TASK_COLUMNS)


def task_row_to_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(TASK_COLUMNS, row, strict=True))
    for key in _JSON_TASK_COLUMNS:
        out[key] = _loads(out[key])
    return out


def worker_row_to_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(WORKER_COLUMNS, row, strict=True))
    for key in _JSON_WORKER_COLUMNS:
        out[key] = _loads(out[key])
    return out


def result_row_to_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(RESULT_COLUMNS, row, strict=True))
    for key in ("metrics", "hardware_metrics", "environment", "raw_data", "metadata"):
        out[key] = _loads(out[key])
    return out


@dataclasses.dataclass
class _Batch:
    """What one flush writes: one transaction. Tasks are the live records; their rows are read in
    ``_commit``: on the writer thread in background mode, so building thousands of rows does not
    stall the loop. ``seq`` numbers the batches in the order they were taken (and committed)."""

    tasks: list[TaskRecord]
    workers: list[tuple[Any, ...]]
    results: list[tuple[Any, ...]]
    metrics: list[tuple[str, str, float]]
    events: list[tuple[float, str, str, str]]
    retracted: list[tuple[str, str, str | None, str | None]] = dataclasses.field(default_factory=list)
    flaky: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    trust: dict[str, list[tuple[Any, ...]]] = dataclasses.field(default_factory=dict)
    seq: int = 0
    # The results themselves, handed to on_results_committed once their rows are committed.
    fresh: list[Result] = dataclasses.field(default_factory=list)
    # The task rows, built once: a retried write must not turn a rolled-back INSERT into an UPDATE.
    task_rows: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] | None = None
    # Rows that could not even be built (a value no column can hold): reported with the batch.
    unbuilt: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.tasks) + len(self.workers) + len(self.results) + len(self.metrics) + len(self.events)
                + len(self.retracted) + len(self.flaky) + sum(map(len, self.trust.values())))


# Errors that are about one row, not about the database: the same batch would fail again, so its
# rows are written one by one and only the refused ones are left out (and reported).
# sqlite3 raises OverflowError for an integer beyond 64 bits before SQLite sees it.
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError,
               OverflowError, ValueError, TypeError)
_EVENT_SQL = "INSERT INTO events (time, kind, subject, data) VALUES (?,?,?,?)"
# With a metric, only that metric's finding: one result carries several metrics, and a change in
# one explains nothing about another.
_RETRACT_SQL = ("UPDATE events SET kind = kind || '_retracted' WHERE kind=? AND subject=? "
                "AND (? IS NULL OR json_extract(data, '$.metric') = ?)")
# A test that failed and then passed on a rerun: its passing row of that run says so.
_FLAKY_SQL = "UPDATE results SET outcome = 'flaky' WHERE run_id=? AND test_id=? AND outcome = 'passed'"


class _Writer:
    """The thread that runs the transactions when the store is in background mode.

    sqlite3 releases the GIL while SQLite works, so writing here lets the coordinator loop go on
    decoding and dispatching on the other core instead of waiting for each commit. Batches are
    committed in order. One the database cannot take now (disk full, I/O error, a lock held
    elsewhere) is retried with backoff until it can: nothing is dropped, and nothing that waits
    on it is acknowledged meanwhile.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.q: queue.Queue[_Batch | None] = queue.Queue()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="dtf-sqlite-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        store = self.store
        while True:
            batch = self.q.get()
            try:
                if batch is None:
                    return
                delay = 0.05
                given_up = 0.0
                while True:
                    try:
                        store._commit(batch)
                        if store.on_commit is not None:
                            store.on_commit()  # the loop, waiting to send what this batch promised
                        break
                    except sqlite3.Error as exc:
                        store._failed(exc)
                        if self.stopping:
                            # Closing: a while longer, then say plainly what is lost and go.
                            given_up = given_up or time.monotonic() + 10.0
                            if time.monotonic() > given_up:
                                log.error("closing with %d rows that %s would not take (%s): they are lost",
                                          len(batch), store.path, exc)
                                break
                        time.sleep(delay)  # a full disk or a lock held elsewhere: wait, then try again
                        delay = min(delay * 2, 5.0)
            except Exception:
                # Not an SQLite error: a bug. Say so loudly; the loop goes on with the next batch.
                store.write_errors += 1
                log.exception("SQLite writer: unexpected error writing batch %s", batch.seq if batch else "-")
            finally:
                self.q.task_done()

    def stop(self) -> None:
        self.stopping = True
        self.q.put(None)
        self.thread.join()


class Store:
    """The single writer of the database.

    ``put_*`` and ``flush`` are called from one thread (the coordinator's). With
    ``background=True`` the transactions run on a writer thread of the store's own; reads then go
    through a separate connection after the queued writes have landed.

    Every flush takes one numbered batch (``taken``); ``committed`` is the number of the last
    batch known to be in the database. The coordinator holds every acknowledgement back until the
    batch that holds what it acknowledges is committed (see server.py), and ``on_commit`` (called
    on the writer thread) wakes it when that happens off its own thread.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 5000, flush_interval: float = 0.25,
                 background: bool = False, durability: str = "process-crash",
                 on_commit: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.inline_max = 256
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        _tune(self.conn, "FULL" if durability == "power-loss" else "NORMAL")
        migrate(self.conn)
        self._writer: _Writer | None = None
        self.on_commit = on_commit
        self.taken = 0
        self.committed = 0
        self.inline_flushes = 0
        self.background_flushes = 0
        self.write_errors = 0
        self.refused_rows = 0
        # Why the database cannot be written right now ("" when it can): set by a failed commit,
        # cleared by the next one that succeeds.
        self.failing = ""
        self._reader = self.conn
        if background:
            self._reader = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._reader.execute("PRAGMA busy_timeout=5000")
            self._writer = _Writer(self)
        self._tasks: dict[str, TaskRecord] = {}
        self._workers: dict[str, tuple[Any, ...]] = {}
        self._results: list[tuple[Any, ...]] = []
        self._fresh: list[Result] = []
        # Called with each batch's results right after its commit, in commit order, whichever path
        # wrote it (a routine flush, a client's read forcing one, the writer thread): the live
        # detector must see every committed result once, in order, and nothing not yet committed.
        # It runs on the committing thread (the loop's or the writer's): hand over, do no work.
        self.on_results_committed: Callable[[list[Result]], None] | None = None
        # Called with (seconds, rows) of each committed batch, on the committing thread (metrics).
        self.on_commit_timed: Callable[[float, int], None] | None = None
        self._metrics: list[tuple[str, str, float]] = []
        self._events: list[tuple[float, str, str, str]] = []
        self._retracted: list[tuple[str, str, str | None, str | None]] = []
        self._flaky: list[tuple[str, str]] = []
        self._trust: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._last_flush = time.monotonic()
        self.rows_written = 0
        cols = ",".join(_TASK_INSERT_COLUMNS)
        marks = ",".join("?" * len(_TASK_INSERT_COLUMNS))
        updates = ",".join(f"{c}=excluded.{c}" for c in _TASK_INSERT_COLUMNS[1:])
        self._task_sql = f"INSERT INTO tasks ({cols}) VALUES ({marks}) ON CONFLICT(task_id) DO UPDATE SET {updates}"
        # A task already written once only changes these columns afterwards: a narrow UPDATE.
        self._task_update_sql = (
            f"UPDATE tasks SET {', '.join(f'{c}=?' for c in TASK_MUTABLE_COLUMNS)} WHERE task_id=?"
        )
        wcols = ",".join(WORKER_COLUMNS)
        wmarks = ",".join("?" * len(WORKER_COLUMNS))
        wupdates = ",".join(f"{c}=excluded.{c}" for c in WORKER_COLUMNS[1:] if c != "first_seen")
        self._worker_sql = (
            f"INSERT INTO workers ({wcols}) VALUES ({wmarks}) ON CONFLICT(worker_id) DO UPDATE SET {wupdates}"
        )
        rcols = ",".join(RESULT_COLUMNS)
        rmarks = ",".join("?" * len(RESULT_COLUMNS))
        self._result_sql = f"INSERT OR IGNORE INTO results ({rcols}) VALUES ({rmarks})"

    # -- buffered writes ----------------------------------------------------------------------

    def put_task(self, task: TaskRecord) -> None:
        """Queue a task for writing. The live record is read at flush time, so its last state
        before a flush is what lands (one row write however often it changed)."""
        self._tasks[task.task_id] = task

    def put_worker(self, w: WorkerRecord) -> None:
        """Queue a worker's row; read now (heartbeats change the record in place)."""
        self._workers[w.worker_id] = tuple(
            json_or_none(getattr(w, c)) if c in _JSON_WORKER_COLUMNS else getattr(w, c) for c in WORKER_COLUMNS
        )

    def put_result(self, r: Result) -> None:
        """Queue a result row and its metrics in the long table. The caller has already
        decided that this result is new (the coordinator deduplicates by task attempt);
        INSERT OR IGNORE on the primary key is the last guard."""
        metrics = r.metrics
        rid = r.result_id
        self._results.append((
            rid, r.task_id, r.worker_id, r.test_id, r.timestamp, r.status, r.execution_time, r.exit_code, r.error,
            json_or_none(metrics), json_or_none(r.hardware_metrics), json_or_none(r.environment),
            json_or_none(r.raw_data), json_or_none(r.metadata), r.attempt, r.run_id or None, r.outcome or None,
        ))
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._metrics.append((rid, name, float(value)))
        if self.on_results_committed is not None:
            self._fresh.append(r)

    def put_event(self, kind: str, subject: str, data: dict[str, Any], when: float | None = None) -> None:
        self._events.append((time.time() if when is None else when, kind, subject, json_or_none(data) or "{}"))

    def retract_events(self, kind: str, subjects: Iterable[str], metric: str | None = None) -> None:
        """Mark earlier events as withdrawn (kind becomes KIND_retracted): kept for the record,
        out of the way of anyone reading the live findings. With ``metric``, only the events whose
        data names that metric. Events put in the same flush are retracted too."""
        self._retracted.extend((kind, str(s), metric, metric) for s in subjects)

    def mark_flaky(self, run_id: str, test_ids: Iterable[str]) -> None:
        """Tests of a run that failed, then passed when run again: their passing rows become "flaky"."""
        self._flaky.extend((run_id, str(t)) for t in test_ids)

    def put_row(self, table: str, row: tuple[Any, ...]) -> None:
        """Queue a row of a keyed table (KEYED_COLUMNS order); the last one per key wins."""
        if len(row) != len(KEYED_COLUMNS[table]):
            raise ValueError(f"{table} takes {len(KEYED_COLUMNS[table])} columns, not {len(row)}")
        self._trust.setdefault(table, {})[str(row[0])] = row

    def load_rows(self, table: str) -> list[dict[str, Any]]:
        cols = KEYED_COLUMNS[table]
        return [dict(zip(cols, r, strict=True)) for r in self.query(f"SELECT {','.join(cols)} FROM {table}")]

    def existing_task_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already in the table (flushed rows only; the caller knows the rest)."""
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            sql = f"SELECT task_id FROM tasks WHERE task_id IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self._reader.execute(sql, chunk))
        return found

    def task_statuses(self, ids: Iterable[str]) -> dict[str, str]:
        """{task_id: status} of those of ``ids`` in the table (committed rows; the caller knows the rest)."""
        ids = list(ids)
        found: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            sql = f"SELECT task_id, status FROM tasks WHERE task_id IN ({','.join('?' * len(chunk))})"
            found.update((str(a), str(b)) for a, b in self._reader.execute(sql, chunk))
        return found

    def status_counts(self) -> dict[str, int]:
        """Tasks per status over the whole table (one scan: at start, not per request)."""
        return {str(a): int(b) for a, b in self.query("SELECT status, count(*) FROM tasks GROUP BY status")}

    def pending_rows(self) -> int:
        return (len(self._tasks) + len(self._workers) + len(self._results) + len(self._metrics) + len(self._events)
                + len(self._retracted) + len(self._flaky) + sum(map(len, self._trust.values())))

    def busy(self) -> bool:
        """A batch is with the writer thread (queued or committing)."""
        return self._writer is not None and self._writer.q.unfinished_tasks > 0

    def full(self) -> bool:
        """The batch is big enough to write now. The caller checks between messages, never inside
        one: a result and the status it gives its task must land in the same transaction."""
        return len(self._results) + len(self._tasks) >= self.batch_size

    def flush_due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return bool(self.pending_rows()) and now - self._last_flush >= self.flush_interval

    def flush(self, wait: bool = False) -> int:
        """Take everything queued as one batch (one transaction); returns the number of rows.

        In background mode the batch is written inline when it is small and the writer is idle,
        else handed to the writer thread; ``wait=True`` returns once everything handed over so far
        is committed, or at once while the database cannot be written (reads go on meanwhile)."""
        self._last_flush = time.monotonic()
        n = self.pending_rows()
        if n:
            batch = self._take()
            writer = self._writer
            if writer is None:
                self._commit(batch)
            elif n <= self.inline_max and writer.q.unfinished_tasks == 0 and not self.failing:
                # A small flush (light load: a task or two per turn) is written inline: the loop
                # pauses for a commit of a few rows (tens of microseconds in WAL) instead of handing
                # over to a thread and waiting for its wake-up. The writer is idle, so its
                # connection is free and batches stay in order.
                self.inline_flushes += 1
                try:
                    self._commit(batch)
                except sqlite3.Error as exc:
                    self._failed(exc)
                    writer.q.put(batch)  # the writer retries it, with backoff, until it lands
            else:
                # Load: the writer thread takes the batch, and the loop goes on receiving (on the
                # other core) while it commits; what arrives meanwhile makes the next batch.
                self.background_flushes += 1
                writer.q.put(batch)
        if wait:
            self.wait_committed()
        return n

    def wait_committed(self) -> None:
        writer = self._writer
        if writer is None:
            return
        q = writer.q
        with q.all_tasks_done:
            while q.unfinished_tasks and not self.failing:
                q.all_tasks_done.wait(0.1)

    def _take(self) -> _Batch:
        self.taken += 1
        batch = _Batch(list(self._tasks.values()), list(self._workers.values()), self._results, self._metrics,
                       self._events, self._retracted, self._flaky,
                       {t: list(r.values()) for t, r in self._trust.items()}, seq=self.taken)
        self._trust = {}
        self._tasks = {}
        self._workers = {}
        self._results = []
        self._metrics = []
        self._events = []
        self._retracted = []
        self._flaky = []
        batch.fresh, self._fresh = self._fresh, []
        return batch

    @staticmethod
    def _task_rows(b: _Batch) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """INSERT rows for tasks never written, UPDATE rows for the others. attrgetter reads a
        live task's changing columns in one C call under the GIL, so each row is a consistent
        snapshot even while the loop thread goes on changing tasks; a task changed after its
        snapshot is queued again by put_task and written by a later batch, after this one (the
        writer keeps order)."""
        new, known = [], []
        for t in b.tasks:
            try:
                if t.stored:
                    known.append(_task_update_row(t))
                else:
                    new.append(_task_insert_row(t))
                    t.stored = True
            except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:  # this task alone is left out
                b.unbuilt.append(("tasks", t.task_id, f"{type(exc).__name__}: {exc}"))
        return new, known

    def _statements(self, b: _Batch) -> list[tuple[str, Sequence[tuple[Any, ...]], str, int]]:
        """(sql, rows, table, index of the row's key) for each part of a batch, in write order."""
        assert b.task_rows is not None
        new_tasks, task_updates = b.task_rows
        return [(self._task_sql, new_tasks, "tasks", 0), (self._task_update_sql, task_updates, "tasks", -1),
                (self._worker_sql, b.workers, "workers", 0), (self._result_sql, b.results, "results", 0),
                (_METRIC_SQL, b.metrics, "metrics", 0), (_EVENT_SQL, b.events, "events", 2),
                (_RETRACT_SQL, b.retracted, "events", 1), (_FLAKY_SQL, b.flaky, "results", 1),
                *((_KEYED_SQL[t], rows, t, 0) for t, rows in b.trust.items())]

    def _commit(self, b: _Batch) -> None:
        """Write one batch as one transaction. A row the database refuses is left out alone (the
        rest is written, the refusal recorded as an event); an error of the database itself
        (disk full, I/O) raises sqlite3.Error with nothing written, for the caller to retry."""
        timed = self.on_commit_timed
        t0 = time.perf_counter() if timed is not None else 0.0
        if b.task_rows is None:
            b.task_rows = self._task_rows(b)
        try:
            self._write(b, self._statements(b), None)
        except _ROW_ERRORS as exc:
            log.warning("a write batch of %d rows was refused (%s); writing its rows one by one", len(b), exc)
            refused: list[tuple[str, str, str]] = []
            self._write(b, self._statements(b), refused)
        self.committed = b.seq
        if timed is not None:
            try:
                timed(time.perf_counter() - t0, len(b))
            except Exception:  # committed: a failing listener must not make the batch look failed
                log.exception("the commit-timing listener failed")
        if b.fresh and self.on_results_committed is not None:
            try:
                self.on_results_committed(b.fresh)
            except Exception:  # the rows are committed; a failing listener must not undo that
                log.exception("the results-committed listener failed for %d result(s)", len(b.fresh))
        if self.failing:
            log.warning("writing to %s works again", self.path)
            self.failing = ""

    def _write(self, b: _Batch, statements: list[tuple[str, Sequence[tuple[Any, ...]], str, int]],
               refused: list[tuple[str, str, str]] | None) -> None:
        """One transaction. ``refused`` None: each statement for all its rows at once (the fast
        path); a list: row by row, collecting the rows the database refuses there."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            for sql, rows, table, key in statements:
                if not rows:
                    continue
                if refused is None:
                    conn.executemany(sql, rows)
                    continue
                for row in rows:
                    try:
                        conn.execute(sql, row)
                    except _ROW_ERRORS as exc:  # SQLite undid this statement only; the transaction goes on
                        refused.append((table, str(row[key])[:200], f"{type(exc).__name__}: {exc}"))
            bad = [*b.unbuilt, *(refused or ())]
            if bad:
                self.refused_rows += len(bad)
                now = time.time()
                for table, subject, error in bad[:1000]:
                    log.error("the database refused a row of %s (%s): %s", table, subject, error)
                    conn.execute(_EVENT_SQL, (now, "write_refused", subject,
                                              json_or_none({"table": table, "error": error})))
            conn.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (SQLITE_FULL, I/O): a second ROLLBACK
            # would raise "no transaction is active" and hide the error that matters.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.rows_written += len(b)

    def _failed(self, exc: sqlite3.Error) -> None:
        """A commit failed for a reason of the database's own; it is retried. Logged once per
        different reason, not once per retry."""
        self.write_errors += 1
        why = f"{type(exc).__name__}: {exc}"
        if why != self.failing:
            log.error("writing to %s failed (%s); retrying until it works. Nothing that waits on it "
                      "is acknowledged meanwhile", self.path, why)
        self.failing = why

    @property
    def last_write_error(self) -> str:
        """Why writing fails right now ("" when it works): status shows what keeps it failing."""
        return self.failing

    # -- reads on the writer's connection (flush first so they see everything) ----------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        if self.pending_rows() or self.taken != self.committed:
            self.flush(wait=True)
        return self._reader.execute(sql, tuple(params)).fetchall()

    def load_tasks(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        sql = f"SELECT {','.join(TASK_COLUMNS)} FROM tasks {where}"
        return [task_row_to_dict(r) for r in self.query(sql, params)]

    def load_workers(self) -> list[dict[str, Any]]:
        return [worker_row_to_dict(r) for r in self.query(f"SELECT {','.join(WORKER_COLUMNS)} FROM workers")]

    def mark_workers_offline(self) -> int:
        """Every stored worker offline (at start: none is connected yet); returns how many changed."""
        self.flush(wait=True)  # the writer thread is idle after this, so its connection is free
        return self.conn.execute("UPDATE workers SET status = 'offline' WHERE status != 'offline'").rowcount

    def duration_history(self, per_test: int) -> list[tuple[str, str, float]]:
        """(test_id, hardware, seconds) of the latest successful runs, at most ``per_test`` per
        test, oldest first: what the scheduler's duration predictor is seeded with at start.

        Hardware is what the task asked for (the predictor's key), "cpu" when it asked for none.
        One index probe per test id (results are indexed by test and time), not a scan of them all."""
        sql = (
            "SELECT r.test_id, lower(COALESCE(json_extract(t.requirements, '$.hardware'), 'cpu')), "
            "r.execution_time FROM (SELECT DISTINCT test_id FROM results WHERE test_id != '') d "
            "JOIN results r ON r.rowid IN (SELECT rowid FROM results WHERE test_id = d.test_id "
            "AND status = 'success' AND execution_time IS NOT NULL ORDER BY timestamp DESC LIMIT ?) "
            "JOIN tasks t ON t.task_id = r.task_id ORDER BY r.timestamp")
        return [(str(a), str(b), float(c)) for a, b, c in self.query(sql, (per_test,))]

    def load_results(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        sql = f"SELECT {','.join(RESULT_COLUMNS)} FROM results {where}"
        return [result_row_to_dict(r) for r in self.query(sql, params)]

    def close(self) -> None:
        try:
            self.flush(wait=True)
        finally:
            if self._writer is not None:
                self._writer.stop()
                self._reader.close()
            self.conn.close()
