"""The analysis side of the coordinator: one thread of its own, and how its answers come back.

Aggregations over a million rows and change-point scans must never stall dispatch, so they run
on the analysis thread: the live detector on each flushed batch of results, the read-only query
service for the client API's analysis operations. Whatever the thread produces is handed back to
the loop through the loop's inbox and applied there (findings become events and SQLite rows on
the loop thread, which owns the store and the events socket).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from dtf_agent.inbox import Inbox
from dtf_gui.coordinator.aggregator import ChangePointFound, Finding, LiveDetector, ResultQueries
from dtf_gui.coordinator.aggregator.metricmeta import MetricCatalog
from dtf_gui.coordinator.config import ResultAggregatorSection
from dtf_gui.coordinator.events import EventHub
from dtf_gui.coordinator.plugins import load_callable
from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.store import Store, connect_readonly
from dtf_gui.coordinator.telemetry import Counters

log = logging.getLogger(__name__)

__all__ = ["SUSPECTED_KIND", "Analysis", "record_finding"]

# The events kind of a change the online stage suspects and the windowed test has not settled.
SUSPECTED_KIND = "change_suspected"
# What the live detector replays at start, before any new result (bounded: a few seconds on the
# analysis thread): the newest results of each test on each worker, enough for its level and the
# values the CUSUM holds out of it; at most WARM_RESULTS in all, from the newest WARM_SCAN rows.
WARM_PER_SERIES = 160
WARM_RESULTS = 50_000
WARM_SCAN = 500_000


def _decode(data: str | None) -> dict[str, Any] | None:
    try:
        d = msgspec.json.decode(data or "null")
    except msgspec.DecodeError:
        return None
    return d if isinstance(d, dict) else None

V = TypeVar("V")


class Analysis:
    """Owned by the loop thread; only the work it submits runs on the analysis thread."""

    def __init__(self, db_path: str | Path, cfg: ResultAggregatorSection, *, inbox: Inbox[Callable[[], None]],
                 store: Store, hub: EventHub, counters: Counters) -> None:
        self.inbox = inbox
        self.store = store
        self.hub = hub
        self.counters = counters
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtf-analysis")
        # Units and directions of the metrics: the config's, then what tasks and clients declared.
        self.catalog = MetricCatalog(cfg.metric_declarations())
        self.catalog.load(store.load_rows("metric_meta"))
        self.detector = LiveDetector(db_path, anomaly_threshold=cfg.anomaly_threshold, catalog=self.catalog,
                                     trend_min_slope=cfg.trend_min_slope)
        self.queries = ResultQueries(db_path, anomaly_threshold=cfg.anomaly_threshold, cache_ttl=cfg.cache_ttl,
                                     comparative_lookback_days=cfg.comparative_lookback_days, catalog=self.catalog)
        for stage, paths in (("preprocess", cfg.preprocessors), ("postprocess", cfg.postprocessors)):
            for path in paths:
                self.detector.add_processor(stage, load_callable(path, f"result_aggregator.{stage}ors"))
        self._fresh_tests: set[str] = set()
        # First the results stored before this start (the analysis thread's one worker runs them
        # before any new batch), so that a restart does not make every series young again.
        self.db_path = Path(db_path)
        # Only what is stored now: what is committed from here on reaches the detector by
        # committed(), and must not come twice.
        last = store.query("SELECT max(rowid) FROM results")
        self._warm_upto = int(last[0][0] or 0) if last else 0
        self.run(self._warm, self._on_findings)
        # Every committed result reaches the detector once, in commit order, right after its commit.
        store.on_results_committed = self.committed

    def _warm(self) -> list[Finding]:
        """Analysis thread: replay the newest stored results into the detector (at most
        WARM_PER_SERIES per test and worker, WARM_RESULTS in all), oldest first, reporting
        nothing; then withdraw the suspicions stored before the restart that the replay did not
        find pending again (their verdict was lost with the old process, or their values are no
        longer among the replayed), so that none stands for ever."""
        if not self._warm_upto:
            return []
        conn = connect_readonly(self.db_path)
        try:
            rows = conn.execute(
                "SELECT result_id, task_id, worker_id, test_id, timestamp, metrics, run_id FROM ("
                " SELECT rowid AS r, result_id, task_id, worker_id, test_id, timestamp, metrics, run_id,"
                " ROW_NUMBER() OVER (PARTITION BY test_id, worker_id ORDER BY rowid DESC) AS k FROM results"
                " WHERE rowid <= ? AND rowid > ? AND metrics IS NOT NULL AND metrics != '{}')"
                " WHERE k <= ? ORDER BY r DESC LIMIT ?",
                (self._warm_upto, self._warm_upto - WARM_SCAN, WARM_PER_SERIES, WARM_RESULTS)).fetchall()
            suspected = conn.execute(f"SELECT data FROM events WHERE kind = '{SUSPECTED_KIND}'").fetchall()
            trends = conn.execute("SELECT data FROM events WHERE kind = 'trend' ORDER BY id DESC LIMIT ?",
                                  (WARM_RESULTS,)).fetchall()
        except sqlite3.Error as exc:
            log.warning("the live detector starts cold: stored results could not be read (%s)", exc)
            return []
        finally:
            conn.close()
        results = []
        for rid, tid, wid, test, ts, metrics, run in reversed(rows):
            try:
                values = msgspec.json.decode(metrics or "{}", type=dict[str, Any])
            except msgspec.DecodeError:
                continue  # a row no coordinator wrote: the others still warm their series
            nums = {k: float(v) for k, v in values.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if nums:
                results.append(Result(result_id=str(rid), task_id=str(tid or ""), worker_id=str(wid or ""),
                                      test_id=str(test or ""), timestamp=float(ts or 0.0), metrics=nums,
                                      run_id=str(run or "")))
        self.detector.restore_trends([d for d in (_decode(r[0]) for r in trends) if d is not None])
        replayed = {f.change_id: f for f in self.detector.warm(results)}
        pending = self.detector.pending_changes()
        settled: list[Finding] = []
        for (data,) in suspected:
            d = _decode(data)
            try:
                f = msgspec.convert(d, ChangePointFound) if d is not None else None
            except msgspec.ValidationError:
                f = None
            if f is None or f.change_id in pending:
                continue
            last = replayed.get(f.change_id)
            if last is not None and last.state in ("confirmed", "retracted"):
                settled.append(msgspec.structs.replace(last, supersedes=[]))  # its verdict, lost with the old process
            else:
                settled.append(msgspec.structs.replace(f, state="retracted", supersedes=[]))
        if results or settled:
            log.info("live detector warmed with %d stored results; %d stored suspicion(s) settled", len(results),
                     len(settled))
        return settled

    def close(self) -> None:
        """Stop the analysis thread once it has done what was handed to it (the results committed
        before the stop are judged; the loop stores their findings by running its inbox once more,
        see Coordinator._close). Loop thread."""
        if self.store.on_results_committed == self.committed:
            self.store.on_results_committed = None  # the store's last flush comes after this
        self._pool.shutdown(wait=True)
        self.detector.close()
        self.queries.close()

    def run(self, fn: Callable[[], V], then: Callable[[Future[V]], None]) -> None:
        """Run ``fn`` on the analysis thread; ``then(future)`` runs back on the loop thread."""

        def done(fut: Future[V]) -> None:  # on the analysis thread: hand over, nothing else
            self.inbox.put(lambda: then(fut))

        self._pool.submit(fn).add_done_callback(done)

    def run_now(self, fn: Callable[[], V], timeout: float = 60.0) -> V:
        """Run ``fn`` on the analysis thread, after everything submitted before it, and wait for
        its answer (for tests and tools off the loop; never from the loop itself)."""
        return self._pool.submit(fn).result(timeout)

    def declare(self, units: Mapping[str, str], directions: Mapping[str, str | None], source: str) -> bool:
        """Metric declarations (a task's result file, a client, a plan): kept, and the cached
        comparisons dropped, since their verdicts depend on the direction. Loop thread."""
        if not self.catalog.declare_all(units, directions, source=source):
            return False
        for row in self.catalog.changed_rows():
            self.store.put_row("metric_meta", row)
        self.run(self.queries.invalidate, lambda fut: None)
        return True

    def result_stored(self, result: Result) -> None:
        """A result was queued for SQLite: cached answers about its test go stale (after_flush). The
        detector gets it from :meth:`committed`."""
        self._fresh_tests.add(result.test_id)

    def committed(self, results: list[Result]) -> None:
        """The store's commit listener, on the committing thread (the loop's or the writer's): the
        batch's results go to the analysis thread, whose single worker keeps the commit order."""
        batch = [r for r in results if r.metrics]
        if batch:
            self.run(lambda: self.detector.ingest(batch), self._on_findings)

    def after_flush(self) -> None:
        """The store handed the latest results to its writer: cached answers about their tests go."""
        if self._fresh_tests:
            # Cached answers that covered these tests are stale now.
            ids, self._fresh_tests = self._fresh_tests, set()
            self.run(lambda: self.queries.invalidate(ids), self._check)

    def _check(self, fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            self.counters.loop_errors += 1
            log.error("background analysis step failed: %s: %s", type(exc).__name__, exc, exc_info=exc)

    def _on_findings(self, fut: Future[list[Finding]]) -> None:
        self._check(fut)
        if fut.exception() is not None:
            return
        now = time.time()
        for finding in fut.result():
            data = record_finding(self.store, finding)
            superseded = getattr(finding, "supersedes", None)
            if superseded:
                self.hub.add("retracted", {
                    "kind": "anomaly", "result_ids": list(superseded), "metric": finding.metric,
                    "reason": f"explained by the change at {finding.result_id}"}, now)
            # One live kind per finding; a change's state travels in its data, so that the window
            # updates one row (by change_id) from suspected to confirmed or retracted.
            self.hub.add(data["kind"], data, now)


def record_finding(store: Store, finding: Finding, when: float | None = None) -> dict[str, Any]:
    """Store one finding as events (loop thread); returns its plain form (what is published).

    A change explains the first values of its new level that were flagged as anomalies before it
    could be seen: those anomalies of its metric are withdrawn. A suspected change is stored as
    kind SUSPECTED_KIND under its change_id; confirming or retracting it withdraws that row
    (SUSPECTED_KIND + "_retracted"), and a confirmed change is stored as "change_point" under the
    result where the windowed test located it. Anomalies and trends are stored under their result."""
    data: dict[str, Any] = msgspec.to_builtins(finding)
    superseded = getattr(finding, "supersedes", None)
    if superseded:
        store.retract_events("anomaly", superseded, finding.metric)
    if not isinstance(finding, ChangePointFound):
        store.put_event(data["kind"], finding.result_id, data, when)
    elif finding.state == "suspected":
        store.put_event(SUSPECTED_KIND, finding.change_id or finding.result_id, data, when)
    else:
        if finding.change_id:
            store.retract_events(SUSPECTED_KIND, [finding.change_id], finding.metric)
        if finding.state == "confirmed":
            store.put_event("change_point", finding.result_id, data, when)
    return data
