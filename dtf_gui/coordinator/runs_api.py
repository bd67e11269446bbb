"""The client operations of runs and of what tasks leave behind: runs, per-test rows, duration
history, output logs, bundles, progress and metric declarations.

Merged into the client API's table like the trust operations; handlers get narrow parts of the
coordinator (the runs registry, the log and bundle stores, a reader of the database), never the
coordinator itself.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

import msgspec

from dtf_agent import protocol as p
from dtf_gui.coordinator.outputs import BundleStore, LogWriter, log_key
from dtf_gui.coordinator.runs import Runs
from dtf_gui.coordinator.state import TaskTable
from dtf_gui.coordinator.store import Store, connect_readonly
from dtf_gui.coordinator.trust_api import ApiRefusal

# One task's progress as its agent last told it: (attempt, done, failed, total, current test).
ProgressTable = Mapping[str, tuple[int, int, int, int, str]]

MAX_TESTS = 100_000
PAGE_BYTES = 6 * 1024 * 1024  # of a run_tests reply: well inside server.max_message_size
# Durations of a test's latest runs that its expected duration is the median of.
DURATION_HISTORY = 5
# Outcomes whose duration says how long the test takes (a skip or a crash says nothing of it).
_TIMED_OUTCOMES = ("passed", "failed", "flaky", "xfailed", "xpassed", "error", "skipped")


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class CreateRun(_Args):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=p.MAX_NAME)]
    kind: Literal["plan", "pytest", "submit"] = "submit"
    meta: Annotated[dict[str, Any], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=dict)


class FinishRun(_Args):
    run_id: p.Id
    status: Literal["passed", "failed", "interrupted", "error"] = "passed"
    summary: Annotated[dict[str, Any], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=dict)


class RunRef(_Args):
    run_id: p.Id


class RunTests(_Args):
    run_id: p.Id
    # Rows after this one (the "seq" of the last row of the previous page).
    after: Annotated[int, msgspec.Meta(ge=0, le=2**62)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10_000


class ListRuns(_Args):
    name: p.Name | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50


class MarkFlaky(_Args):
    run_id: p.Id
    test_ids: Annotated[list[Annotated[str, msgspec.Meta(max_length=p.MAX_NODEID)]],
                        msgspec.Meta(max_length=MAX_TESTS)]


class TestIds(_Args):
    test_ids: Annotated[list[Annotated[str, msgspec.Meta(max_length=p.MAX_NODEID)]],
                        msgspec.Meta(max_length=MAX_TESTS)]


class TaskIds(_Args):
    task_ids: Annotated[list[p.Id], msgspec.Meta(max_length=MAX_TESTS)]


class LogArgs(_Args):
    task_id: p.Id
    stream: Literal["stdout", "stderr"] = "stdout"
    attempt: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)] | None = None
    offset: Annotated[int, msgspec.Meta(ge=0, le=p.MAX_OFFSET)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=p.MAX_LOG_CHUNK)] = p.MAX_LOG_CHUNK
    # From the end: the last ``tail`` bytes instead of reading from ``offset``.
    tail: Annotated[int, msgspec.Meta(ge=0, le=p.MAX_LOG_CHUNK)] = 0


class BundleRef(_Args):
    digest: p.Name


class BundlePiece(_Args):
    digest: p.Name
    offset: Annotated[int, msgspec.Meta(ge=0, le=p.MAX_OFFSET)]
    total: Annotated[int, msgspec.Meta(ge=1, le=p.MAX_OFFSET)]
    data: Annotated[bytes, msgspec.Meta(max_length=p.MAX_BUNDLE_CHUNK)]


class MetricDecl(_Args):
    unit: Annotated[str, msgspec.Meta(max_length=64)] = ""
    direction: Literal["higher", "lower"] | None = None


class DeclareMetrics(_Args):
    metrics: Annotated[dict[p.Name, MetricDecl], msgspec.Meta(max_length=p.MAX_METRICS)]


class MetricNames(_Args):
    names: Annotated[list[p.Name], msgspec.Meta(max_length=p.MAX_METRICS)]


class CompareRuns(_Args):
    run_id: p.Id
    baseline: p.Id | None = None
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05
    min_change: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.02


class RunsApi:
    def __init__(self, *, runs: Runs, tasks: TaskTable, store: Store, logs: LogWriter, bundles: BundleStore,
                 progress: ProgressTable, flaky: Callable[[str, list[str]], None],
                 declare: Callable[[str, str, str | None], bool], compare: Callable[..., dict[str, Any]],
                 metric_info: Callable[[list[str]], dict[str, Any]]) -> None:
        self.runs = runs
        self.tasks = tasks
        self.store = store
        self.logs = logs
        self.bundles = bundles
        self.progress = progress
        self._flaky = flaky
        self._declare = declare
        self._compare = compare
        self._metric_info = metric_info
        # The deferred operations run on the analysis thread: they read through a connection of
        # their own (the store's belongs to the loop thread, and its query() may flush).
        self._local = threading.local()
        self.ops: dict[str, tuple[type[Any], Callable[[Any], Any]]] = {
            "create_run": (CreateRun, self.create_run),
            "finish_run": (FinishRun, self.finish_run),
            "mark_flaky": (MarkFlaky, self.mark_flaky),
            "task_progress": (TaskIds, self.task_progress),
            "get_log": (LogArgs, self.get_log),
            "bundle_missing": (BundleRef, self.bundle_missing),
            "declare_metrics": (DeclareMetrics, self.declare_metrics),
            "metric_info": (MetricNames, self.metric_info),
        }
        # Reads over many rows, and the upload (hashing a bundle): off the loop.
        self.deferred_ops: dict[str, tuple[type[Any], Callable[[Any], Any]]] = {
            "run_tests": (RunTests, self.run_tests),
            # Counting a run's rows reads the database: not on the loop.
            "get_run": (RunRef, self.get_run),
            "list_runs": (ListRuns, self.list_runs),
            "test_durations": (TestIds, self.test_durations),
            "put_bundle": (BundlePiece, self.put_bundle),
            "compare_runs": (CompareRuns, self.compare_runs),
        }

    def _read(self, sql: str, params: Iterable[Any]) -> list[Any]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_readonly(self.store.path)
            self._local.conn = conn
        return conn.execute(sql, tuple(params)).fetchall()

    # -- runs ---------------------------------------------------------------------------------------

    def create_run(self, a: CreateRun) -> dict[str, Any]:
        try:
            return self.runs.create(a.name, a.kind, a.meta)
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None

    def _run(self, run_id: str) -> dict[str, Any]:
        try:
            return self.runs.get(run_id)
        except KeyError as exc:
            raise ApiRefusal(str(exc.args[0])) from None

    def finish_run(self, a: FinishRun) -> dict[str, Any]:
        self._run(a.run_id)
        return self.runs.finish(a.run_id, a.status, a.summary)

    def get_run(self, a: RunRef) -> dict[str, Any]:
        return self._counted(self._run(a.run_id))

    def list_runs(self, a: ListRuns) -> list[dict[str, Any]]:
        return [self._counted(r) for r in self.runs.listing(a.name, a.limit)]

    def _counted(self, run: dict[str, Any]) -> dict[str, Any]:
        """The run with its rows counted: tasks by status, tests by outcome (an index probe by run)."""
        rid = run["run_id"]
        results = {k: n for k, n in self._read("SELECT status, count(*) FROM results WHERE run_id=? AND outcome "
                                               "IS NULL GROUP BY 1", [rid])}
        # Each test once, with its last row's outcome (a rerun's comes after the first run's):
        # SQLite takes the bare column from the row that has the max().
        # Stored order, not the agents' clocks: a rerun's row is stored after the first run's.
        tests = {k: n for k, n in self._read(
            "SELECT outcome, count(*) FROM (SELECT outcome, max(rowid) FROM results WHERE run_id=? "
            "AND outcome IS NOT NULL GROUP BY test_id) GROUP BY 1", [rid])}
        return {**run, "tests": tests, "results": results}

    def mark_flaky(self, a: MarkFlaky) -> dict[str, Any]:
        self._run(a.run_id)
        self._flaky(a.run_id, a.test_ids)
        return {"marked": len(a.test_ids)}

    def run_tests(self, a: RunTests) -> list[dict[str, Any]]:
        """A page of a run's test rows in the order they were stored (a rerun's after the first run's).
        A page ends early past a few megabytes of text (failures' reports and output), so it fits a
        reply; the next starts after the last row's ``seq``; an empty page is the end."""
        rows = self._read(
            "SELECT rowid, test_id, outcome, execution_time, worker_id, task_id, error, attempt, timestamp, raw_data "
            "FROM results WHERE run_id=? AND outcome IS NOT NULL AND rowid > ? ORDER BY rowid LIMIT ?",
            [a.run_id, a.after, a.limit])
        out = []
        size = 0
        for seq, test_id, outcome, duration, worker, task, error, attempt, ts, raw in rows:
            output = msgspec.json.decode(raw).get("output", "") if raw else ""
            out.append({"seq": seq, "test_id": test_id, "outcome": outcome, "duration": duration, "worker_id": worker,
                        "task_id": task, "longrepr": error or "", "output": output, "attempt": attempt,
                        "timestamp": ts})
            size += len(test_id) + len(error or "") + len(output) + 200
            if size > PAGE_BYTES:
                break
        return out

    def test_durations(self, a: TestIds) -> dict[str, float]:
        """The median of each test's latest timed runs (tests never run are left out)."""
        out: dict[str, float] = {}
        marks = ",".join("?" * len(_TIMED_OUTCOMES))
        for test_id in dict.fromkeys(a.test_ids):
            rows = self._read(
                f"SELECT execution_time FROM results WHERE test_id=? AND outcome IN ({marks}) "
                "AND execution_time IS NOT NULL ORDER BY timestamp DESC LIMIT ?",
                [test_id, *_TIMED_OUTCOMES, DURATION_HISTORY])
            if rows:
                out[test_id] = float(statistics.median(r[0] for r in rows))
        return out

    def task_progress(self, a: TaskIds) -> dict[str, Any]:
        """Status and progress of each task (those the coordinator still holds; others from the database)."""
        out: dict[str, Any] = {}
        missing = []
        for tid in a.task_ids:
            task = self.tasks.get(tid)
            if task is None:
                missing.append(tid)
                continue
            entry: dict[str, Any] = {"status": task.status, "worker_id": task.worker_id, "attempt": task.attempt}
            prog = self.progress.get(tid)
            if prog is not None and prog[0] == task.attempt:
                entry.update(done=prog[1], failed=prog[2], total=prog[3], current=prog[4])
            out[tid] = entry
        for i in range(0, len(missing), 500):
            part = missing[i:i + 500]
            rows = self.store.query(f"SELECT task_id, status, worker_id, attempt FROM tasks WHERE task_id IN "
                                    f"({','.join('?' * len(part))})", part)
            for tid, status, worker, attempt in rows:
                out[tid] = {"status": status, "worker_id": worker, "attempt": attempt}
        return out

    # -- logs ---------------------------------------------------------------------------------------

    def get_log(self, a: LogArgs) -> dict[str, Any]:
        task = self.tasks.get(a.task_id)
        if task is not None:
            status = task.status
        else:
            rows = self.store.query("SELECT status FROM tasks WHERE task_id=?", [a.task_id])
            if not rows:
                raise ApiRefusal(f"no task {a.task_id!r}")
            status = rows[0][0]
        store = self.logs.store
        key = log_key(a.task_id)
        if a.tail:
            data = store.tail(key, a.stream, a.tail, attempt=a.attempt)
            sl = store.read(key, a.stream, attempt=a.attempt, offset=0, limit=1)
            return {"data": data, "next_offset": sl.size, "size": sl.size, "dropped": sl.dropped,
                    "complete": sl.complete, "attempt": sl.attempt, "status": status}
        sl = store.read(key, a.stream, attempt=a.attempt, offset=a.offset, limit=a.limit)
        return {"data": sl.data, "next_offset": sl.next_offset, "size": sl.size, "dropped": sl.dropped,
                "complete": sl.complete, "attempt": sl.attempt, "status": status}

    # -- bundles ------------------------------------------------------------------------------------

    def bundle_missing(self, a: BundleRef) -> dict[str, Any]:
        try:
            if self.bundles.has(a.digest):
                return {"missing": False, "received": 0}
            return {"missing": True, "received": self.bundles.received(a.digest)}
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None

    def put_bundle(self, a: BundlePiece) -> dict[str, Any]:
        try:
            return self.bundles.write(a.digest, a.offset, a.data, a.total)
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None

    # -- metrics ------------------------------------------------------------------------------------

    def declare_metrics(self, a: DeclareMetrics) -> dict[str, Any]:
        changed = [name for name, d in a.metrics.items() if self._declare(name, d.unit, d.direction)]
        return {"changed": changed}

    def metric_info(self, a: MetricNames) -> dict[str, Any]:
        return self._metric_info(a.names)

    def compare_runs(self, a: CompareRuns) -> dict[str, Any]:
        try:
            return self._compare(a.run_id, a.baseline, alpha=a.alpha, min_change=a.min_change)
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None
