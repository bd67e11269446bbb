"""The window's reads: pages of the task table, result series, report data, exports.

Every operation here only reads, over possibly millions of rows, so all are deferred. They run on
reader threads of their own (``dtf-views``), each with its own read-only connection: a window paging
through tasks must not wait behind live anomaly detection on the analysis thread, nor hold it up.
They need not see what the loop has not committed yet (the window lays live events over what it
reads), so the loop does not flush the store for them either. Each concern keeps its queries in its own pure module (taskview, explore,
reports), which hands its operations over as ``ops(conn) -> {name: (args type, handler)}``; this
room only merges them, so the API table stays one table.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import msgspec

from dtf_gui.coordinator import explore, reports, taskview
from dtf_gui.coordinator.explore import STANDING_FINDING_KINDS
from dtf_gui.coordinator.store import connect_readonly

OpTable = dict[str, tuple[type[Any], Callable[[Any], Any]]]


class ListFindings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 1000


class ThroughputArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    bucket: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 5.0


# Reads one client may have waiting or running at once: a window asks for a few pages at a time; more
# than this is a client asking faster than it reads, and would starve the other windows.
MAX_IN_FLIGHT = 16

# A metric's unit and direction as the coordinator resolves them (MetricCatalog.describe: config,
# then stored declarations, then the name's guess).
Describe = Callable[[str], dict[str, Any]]


class ViewsApi:
    def __init__(self, db_path: str | Path, describe: Describe | None = None) -> None:
        self.db_path = db_path
        self.describe = describe
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dtf-views")
        self._in_flight: dict[str, int] = {}  # by client key; loop thread only
        self.deferred_ops: OpTable = {
            "throughput_history": (ThroughputArgs, self.throughput_history),
            "list_findings": (ListFindings, self.list_findings),
            **taskview.ops(self.conn), **explore.ops(self.conn), **reports.ops(self.conn),
        }
        # The pure modules read declarations from the database; the coordinator.yaml ones live in the
        # catalog only, so its word is laid over theirs.
        for op, pick in (("metric_series", lambda d: [d]), ("run_report", lambda d: d.get("series") or [])):
            schema, fn = self.deferred_ops[op]
            self.deferred_ops[op] = (schema, self._declared(fn, pick))

    def _declared(self, fn: Callable[[Any], Any], pick: Callable[[Any], list[dict[str, Any]]]) -> Callable[[Any], Any]:
        def wrapped(args: Any) -> Any:
            data = fn(args)
            if self.describe is not None and isinstance(data, dict):
                for series in pick(data):
                    d = self.describe(str(series.get("metric")))
                    series["unit"] = d.get("unit") or series.get("unit") or ""
                    series["direction"] = d.get("direction") or series.get("direction")
            return data

        return wrapped

    def knows(self, op: str) -> bool:
        return op in self.deferred_ops

    def run(self, client: str, fn: Callable[[], Any], then: Callable[[Future[Any]], None],
            hand_over: Callable[[Callable[[], None]], None]) -> str | None:
        """Loop thread: run ``fn`` on a reader thread; ``then(future)`` runs back on the loop through
        ``hand_over``. Returns why it was refused instead (too many reads of this client in flight)."""
        n = self._in_flight.get(client, 0)
        if n >= MAX_IN_FLIGHT:
            return f"{n} reads of this client are still being answered; wait for them before asking more"
        self._in_flight[client] = n + 1

        def back(fut: Future[Any]) -> None:  # loop thread
            left = self._in_flight.get(client, 1) - 1
            if left > 0:
                self._in_flight[client] = left
            else:
                self._in_flight.pop(client, None)
            then(fut)

        self._pool.submit(fn).add_done_callback(lambda fut: hand_over(lambda: back(fut)))
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def conn(self) -> sqlite3.Connection:
        """This thread's read-only connection (made on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_readonly(self.db_path)
            self._local.conn = conn
        return conn

    def throughput_history(self, a: ThroughputArgs) -> list[tuple[float, float]]:
        """Tasks completed per second in buckets over the last ``seconds``, so a window opened on a
        busy coordinator shows the last minutes at once (the live stats only start when it opens).
        Buckets without a completion read 0."""
        now = time.time()
        start = now - a.seconds
        rows = self.conn().execute(
            "SELECT CAST((end_time - ?) / ? AS INTEGER) AS b, count(*) FROM tasks "
            "WHERE status='completed' AND end_time >= ? GROUP BY b", (start, a.bucket, start)).fetchall()
        counts = {int(b): n for b, n in rows}
        n_buckets = int(a.seconds // a.bucket)
        return [(start + (i + 1) * a.bucket, counts.get(i, 0) / a.bucket) for i in range(n_buckets)]

    def list_findings(self, a: ListFindings) -> list[dict[str, Any]]:
        """The newest findings still standing (anomalies, suspected and confirmed changes, trends;
        withdrawn ones have another kind), newest first, as the live events carry them: a window
        opened later shows them too. A suspected change's data says ``state`` "suspected"."""
        rows = self.conn().execute(
            f"SELECT data FROM events WHERE kind IN ({','.join('?' * len(STANDING_FINDING_KINDS))}) "
            "ORDER BY id DESC LIMIT ?", (*STANDING_FINDING_KINDS, a.limit)).fetchall()
        out = []
        for (data,) in rows:
            try:
                finding = msgspec.json.decode(data)
            except msgspec.DecodeError:
                continue  # a row no finding could have written: skipped, the others still shown
            if isinstance(finding, dict):
                out.append(finding)
        return out
