"""Prometheus metrics of the coordinator: an HTTP endpoint (``server.metrics_port``) that answers
GET /metrics from a thread of its own.

Threads. The coordinator's loop owns its state, and the HTTP thread never reads it. Three kinds
of figure reach a scrape:
- what the loop counts where things happen (:class:`LoopFigures`: histograms of dispatch
  latency, queue wait and task latency): plain Python, touched by the loop thread only, a few
  hundred nanoseconds a task;
- what the loop knows as state (tasks and workers by state, queue depth, heartbeat age, its
  counters): copied into an immutable :class:`Snapshot` by the loop itself. A scrape asks the
  loop for one through its inbox and waits for it a moment; a loop that does not answer in time
  (busy with a long request, or stopping) gets the last snapshot served, and
  ``dtf_metrics_snapshot_age_seconds`` says how old it is;
- what other threads may see happen (commit timing, on the SQLite writer thread or the loop's;
  security refusals): the same plain histograms and counts, behind a lock of their own.
The database's size and its standing findings are read at scrape time from the files, through
a read-only connection of the scrape's own (readers open their own connections).

The endpoint is not authenticated and listens on server.host (every interface in a container),
so whoever reaches it is a stranger: a request thread each, at most MAX_REQUESTS at once (a
connection over that is answered 503 and closed, without a thread); a connection silent for
REQUEST_TIMEOUT is dropped; and :meth:`Metrics.close` shuts every open connection down before it
joins their threads, so a client that trickles its request a byte at a time cannot keep the
coordinator's stop waiting.

Nothing here runs while metrics are off: the coordinator imports this module only when
``server.metrics_port`` is set, and its hot paths test one attribute for None.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import socket
import socketserver
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from dtf_agent import __version__
from dtf_agent.protocol import PROTOCOL_VERSION, TASK_STATUSES, TERMINAL_STATUSES
from dtf_gui.coordinator.store import connect_readonly

log = logging.getLogger(__name__)

__all__ = ["FINDING_KINDS", "LATENCY_BUCKETS", "METRIC_NAMES", "LoopFigures", "Metrics", "MetricsError",
           "Snapshot", "WorkerFigures"]

# Seconds, from a no-op task's round trip on loopback (a few hundred microseconds) to a test suite
# of an hour or two.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
# A commit of a few rows in WAL takes tens of microseconds; one stuck on a full disk, seconds.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0)
COMMIT_ROW_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
# The events kinds of standing findings (analysis.record_finding writes them; a withdrawn one
# becomes KIND_retracted in place).
FINDING_KINDS = ("anomaly", "change_suspected", "change_point", "trend")
WORKER_STATES = ("online", "busy", "offline", "lost")
# How long a scrape waits for the loop's snapshot before it serves the last one.
SNAPSHOT_WAIT = 2.0
# A scrape's HTTP connection is dropped after this many seconds of silence (a client that sends
# now and then is not silent: close() shuts such connections down itself).
REQUEST_TIMEOUT = 10.0
# Requests answered at once (a thread each). Prometheus scrapes one at a time; the rest is for a
# person with curl, a second Prometheus, and strangers who must not make threads without limit.
MAX_REQUESTS = 8
# What a connection over MAX_REQUESTS gets before it is closed.
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n"
         b"Connection: close\r\n\r\ntoo many metrics requests at once\n")

# Every name a scrape may show (the Grafana dashboard's test checks its queries against these).
# Counters are listed with their _total, histograms by their base name.
METRIC_NAMES = frozenset({
    "dtf_coordinator_info", "dtf_coordinator_start_time_seconds", "dtf_metrics_snapshot_age_seconds",
    "dtf_tasks", "dtf_queue_depth", "dtf_submissions_total", "dtf_tasks_submitted_total",
    "dtf_submissions_refused_total", "dtf_tasks_dispatched_total", "dtf_results_stored_total",
    "dtf_duplicate_results_total", "dtf_frames_total", "dtf_bad_frames_total", "dtf_failed_handshakes_total",
    "dtf_unroutable_total", "dtf_loop_errors_total", "dtf_oversize_frames_total", "dtf_reregister_asked_total",
    "dtf_dispatch_latency_seconds", "dtf_queue_wait_seconds", "dtf_task_latency_seconds",
    "dtf_workers", "dtf_workers_draining", "dtf_worker_slots", "dtf_worker_slots_used",
    "dtf_worker_heartbeat_age_seconds",
    "dtf_db_commit_seconds", "dtf_db_commit_rows", "dtf_db_commits_total", "dtf_db_rows_written_total",
    "dtf_db_write_errors_total", "dtf_db_refused_rows_total", "dtf_db_pending_rows", "dtf_db_size_bytes",
    "dtf_findings", "dtf_findings_retracted", "dtf_security_refusals_total",
})
# Counters of telemetry.Counters -> the metric each becomes (those not named are not exported).
_COUNTER_METRICS = {
    "frames_in": ("dtf_frames", "frames received from agents and clients"),
    "bad_frames": ("dtf_bad_frames", "frames dropped: undecodable, or of the wrong shape"),
    "failed_handshakes": ("dtf_failed_handshakes", "CURVE handshakes that failed"),
    "unroutable": ("dtf_unroutable", "messages that could not be sent (the peer was gone)"),
    "results_stored": ("dtf_results_stored", "task results stored (one per finished attempt)"),
    "duplicate_results": ("dtf_duplicate_results", "results acknowledged but not stored (resends, late ones)"),
    "tasks_dispatched": ("dtf_tasks_dispatched", "task attempts assigned to workers"),
    "loop_errors": ("dtf_loop_errors", "errors the coordinator loop caught and survived"),
    "oversize": ("dtf_oversize_frames", "requests or replies over server.max_message_size"),
    "reregister_asked": ("dtf_reregister_asked", "unknown agents asked to register again"),
    "submissions": ("dtf_submissions", "submissions (batches of tasks) accepted"),
    "tasks_submitted": ("dtf_tasks_submitted", "tasks accepted by submissions"),
    "submissions_refused": ("dtf_submissions_refused", "submissions refused whole (a cycle, a full queue, ...)"),
}


class MetricsError(RuntimeError):
    """The metrics endpoint cannot start (its port is taken, prometheus-client is missing)."""


class _Buckets:
    """A histogram the loop thread fills: one bisect and two adds per value."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le, "less or equal").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def frozen(self) -> tuple[tuple[float, ...], tuple[int, ...], float]:
        """(bounds, counts per bucket, sum), copied."""
        return tuple(self.bounds), tuple(self.counts), self.total


class LoopFigures:
    """What the loop counts as it happens (loop thread only; see the module docstring)."""

    def __init__(self) -> None:
        self.dispatch_latency = _Buckets(LATENCY_BUCKETS)
        self.queue_wait = _Buckets(LATENCY_BUCKETS)
        self.task_latency = {s: _Buckets(LATENCY_BUCKETS) for s in TERMINAL_STATUSES}
        # Tasks sent back to the queue (a retry, a lost worker): when. A first attempt waits from
        # its submission. Emptied as tasks are dispatched or end, so it holds at most the queue.
        self.requeued: dict[str, float] = {}

    def dispatched(self, task_id: str, create_time: float, now: float) -> None:
        since = self.requeued.pop(task_id, None)
        self.queue_wait.observe(max(0.0, now - (create_time if since is None else since)))

    def queued(self, task_id: str, now: float) -> None:
        self.requeued[task_id] = now

    def ended(self, task_id: str, status: str, create_time: float, now: float) -> None:
        self.requeued.pop(task_id, None)
        hist = self.task_latency.get(status)
        if hist is not None:
            hist.observe(max(0.0, now - create_time))

    def histograms(self) -> tuple[HistogramFigures, ...]:
        """Each histogram as it is now."""
        out: list[HistogramFigures] = [
            ("dtf_dispatch_latency_seconds", (), *self.dispatch_latency.frozen()),
            ("dtf_queue_wait_seconds", (), *self.queue_wait.frozen())]
        out.extend(("dtf_task_latency_seconds", (s,), *h.frozen()) for s, h in self.task_latency.items())
        return tuple(out)


# (metric, label values, bucket bounds, counts per bucket with +Inf last, sum)
HistogramFigures = tuple[str, tuple[str, ...], tuple[float, ...], tuple[int, ...], float]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerFigures:
    worker_id: str
    state: str  # one of WORKER_STATES
    draining: bool
    slots: int
    used_slots: int
    heartbeat_age: float | None  # seconds since its last frame; None when it is not online


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The loop's state as a scrape shows it: built by the loop, never changed after."""

    made: float  # time.monotonic()
    tasks: tuple[tuple[str, int], ...]
    queue_depth: int
    workers: tuple[WorkerFigures, ...]
    counters: tuple[tuple[str, int], ...]
    histograms: tuple[HistogramFigures, ...]
    db_commits: int
    db_rows_written: int
    db_write_errors: int
    db_refused_rows: int
    db_pending_rows: int


class _Handler(WSGIRequestHandler):
    """Quiet (a scrape every 15 s must not fill the log) and bounded in time."""

    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class _Server(ThreadingMixIn, WSGIServer):
    """One thread a request (a slow scraper does not hold up the others), MAX_REQUESTS at most,
    each joined by server_close() once :meth:`drop_connections` has cut its client off: the
    coordinator's stop leaves no thread of this server behind, and waits for no client."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, server_address: tuple[str, int], handler: type[WSGIRequestHandler],
                 bind_and_activate: bool = True) -> None:
        # Before the base class's, which binds and listens.
        self._open: set[socket.socket] = set()  # connections with a request thread, under _open_lock
        self._open_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_REQUESTS)
        super().__init__(server_address, handler, bind_and_activate)

    def server_bind(self) -> None:
        # HTTPServer's asks DNS for the host's full name (socket.getfqdn: a reverse lookup that
        # stalls for seconds where DNS is broken, as in some containers) for the WSGI
        # environment's SERVER_NAME; the address does as well.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics: %d requests already; %s answered 503", MAX_REQUESTS, client_address)
            try:
                request.setblocking(False)  # a client that does not read must not hold the serving thread
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)  # not one of ours: no slot to give back
            return
        with self._open_lock:
            self._open.add(request)
        # A thread that cannot start: the base class calls shutdown_request, which frees the slot.
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        # Out of the set before the socket closes: drop_connections never touches a closed one.
        with self._open_lock:
            ours = request in self._open
            self._open.discard(request)
        try:
            super().shutdown_request(request)
        finally:
            if ours:
                self._slots.release()

    def drop_connections(self) -> None:
        """Cut every client off (their request threads then see the end of their input, or fail
        to write, and end)."""
        with self._open_lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the client is gone already

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is no error of ours; the rest is for the debug log.
        log.debug("metrics: request from %s failed", client_address, exc_info=True)


class Metrics:
    """Owned by the coordinator: started in its start, stopped in its stop (:meth:`close`).

    ``ask_loop`` hands a callable to the loop thread (its inbox); ``build`` runs there and returns
    a :class:`Snapshot`. ``refusal_kinds``: the security refusals counted (trust.REFUSALS)."""

    def __init__(self, *, ask_loop: Callable[[Callable[[], None]], None], build: Callable[[], Snapshot],
                 db_path: str | os.PathLike[str], coordinator_id: str, started: float,
                 refusal_kinds: Sequence[str] = ()) -> None:
        self.loop = LoopFigures()
        self._ask_loop = ask_loop
        self._build = build
        self.db_path = Path(db_path)
        self.coordinator_id = coordinator_id
        self.started = started
        self._last: Snapshot | None = None
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.port = 0
        self.registry = CollectorRegistry(auto_describe=False)
        # Filled by whichever thread commits or refuses, read by scrapes: under this lock.
        self._lock = threading.Lock()
        self._commit_seconds = _Buckets(COMMIT_BUCKETS)
        self._commit_rows = _Buckets(COMMIT_ROW_BUCKETS)
        # Each kind shows from the start, at 0: rate() and increase() need a first sample.
        self._refusals = dict.fromkeys(sorted(refusal_kinds), 0)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- hooks, called from the threads where things happen -------------------------------------

    def committed(self, seconds: float, rows: int) -> None:
        """Store.on_commit_timed: the writer thread or the loop's."""
        with self._lock:
            self._commit_seconds.observe(seconds)
            self._commit_rows.observe(rows)

    def refused(self, kind: str) -> None:
        """Trust.on_refusal (the loop thread)."""
        with self._lock:
            self._refusals[kind] = self._refusals.get(kind, 0) + 1

    def shared_figures(self) -> tuple[tuple[HistogramFigures, ...], tuple[tuple[str, int], ...]]:
        """(commit histograms, refusals by kind), copied under the lock (a scrape's thread)."""
        with self._lock:
            return ((("dtf_db_commit_seconds", (), *self._commit_seconds.frozen()),
                     ("dtf_db_commit_rows", (), *self._commit_rows.frozen())),
                    tuple(self._refusals.items()))

    # -- the endpoint ------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Bind and start answering; returns the port (the one picked when ``port`` is 0)."""
        try:
            address = listen_host(host)
            # The address family of the host (an IPv6 host needs AF_INET6; the base class is IPv4).
            family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            server_class = type("_MetricsServer", (_Server,), {"address_family": family})
            httpd: _Server = make_server(address, port, make_wsgi_app(self.registry), server_class=server_class,
                                         handler_class=_Handler)
        except OSError as exc:
            raise MetricsError(f"server.metrics_port: cannot listen on {host}:{port} (server.host) for Prometheus "
                               f"metrics ({exc.strerror or exc}); choose a free port, 0 for any, or null to switch "
                               "metrics off") from exc
        self._httpd = httpd
        self.port = int(httpd.server_address[1])
        self._thread = threading.Thread(target=self._serve, args=(httpd,), name="dtf-metrics-http", daemon=True)
        self._thread.start()
        return self.port

    @staticmethod
    def _serve(httpd: _Server) -> None:
        try:
            httpd.serve_forever(poll_interval=0.2)
        except Exception:
            log.exception("the metrics endpoint stopped with an error; metrics are no longer served")

    def close(self, timeout: float = REQUEST_TIMEOUT + 5.0) -> None:
        """Stop answering and join every thread of the endpoint (the server's and its requests')."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._closing = True  # a scrape still being answered does not wait for the loop now
        httpd.shutdown()  # returns once serve_forever has: no connection is accepted after this
        httpd.drop_connections()
        httpd.server_close()  # joins the request threads, which the clients no longer hold up
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the metrics endpoint's thread did not stop within %.0f s", timeout)

    # -- a scrape (its request thread) -------------------------------------------------------------

    def snapshot(self) -> Snapshot | None:
        """The loop's state now, or the last one when the loop does not answer within SNAPSHOT_WAIT
        (or is closing the endpoint: it answers nothing more)."""
        if self._closing:
            return self._last
        fut: Future[Snapshot] = Future()

        def build() -> None:  # on the loop thread
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(self._build())
                except BaseException as exc:
                    fut.set_exception(exc)
                    raise

        self._ask_loop(build)
        try:
            failed = fut.exception(SNAPSHOT_WAIT)
        except FutureTimeout:
            fut.cancel()  # a loop that gets to it later skips it
            log.warning("metrics: the coordinator loop did not answer within %.0f s; serving its last snapshot",
                        SNAPSHOT_WAIT)
        else:
            if failed is None:  # else the loop logged it (a failed hand-over); the last one is served
                self._last = fut.result()
        return self._last

    def stored_figures(self) -> tuple[int, dict[str, int]]:
        """(database bytes with its WAL, {findings kind: count} including KIND_retracted), read now."""
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.stat(f"{self.db_path}{suffix}").st_size
            except OSError:
                pass
        kinds = [*FINDING_KINDS, *(f"{k}_retracted" for k in FINDING_KINDS)]
        found: dict[str, int] = {}
        try:
            conn = connect_readonly(self.db_path)
            try:
                # The events (kind, subject) index answers this without reading the rows.
                rows = conn.execute(f"SELECT kind, count(*) FROM events WHERE kind IN "
                                    f"({','.join('?' * len(kinds))}) GROUP BY kind", kinds).fetchall()
            finally:
                conn.close()
            found = {str(k): int(n) for k, n in rows}
        except sqlite3.Error as exc:
            log.debug("metrics: cannot count findings in %s: %s", self.db_path, exc)
        return size, found


def listen_host(host: str) -> str:
    """server.host as bind() takes it: ZeroMQ's "*" (and an empty host) mean every IPv4 interface."""
    return "0.0.0.0" if host in ("*", "") else host


class _Collector(Collector):
    """Every dtf_ metric: the loop's snapshot, the shared figures and the stored ones, per scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        info = InfoMetricFamily("dtf_coordinator", "this coordinator")
        info.add_metric([], {"coordinator_id": m.coordinator_id, "version": __version__,
                             "protocol": str(PROTOCOL_VERSION)})
        yield info
        yield GaugeMetricFamily("dtf_coordinator_start_time_seconds", "when this coordinator started (Unix time)",
                                value=m.started)
        size, findings = m.stored_figures()
        yield GaugeMetricFamily("dtf_db_size_bytes", "bytes of the SQLite database and its write-ahead log",
                                value=size)
        standing = GaugeMetricFamily("dtf_findings", "findings standing in the database, by kind", labels=["kind"])
        retracted = GaugeMetricFamily("dtf_findings_retracted", "findings withdrawn since, by kind",
                                      labels=["kind"])
        for kind in FINDING_KINDS:
            standing.add_metric([kind], findings.get(kind, 0))
            retracted.add_metric([kind], findings.get(f"{kind}_retracted", 0))
        yield standing
        yield retracted
        commits, refusals = m.shared_figures()
        yield from _histogram_families(commits)
        refused = CounterMetricFamily("dtf_security_refusals", "security refusals by kind (keys, names, roles, "
                                      "rate limits, handshakes), counted before the log's throttling", labels=["kind"])
        for kind, n in refusals:
            refused.add_metric([kind], n)
        yield refused
        snap = m.snapshot()
        if snap is None:
            return
        yield GaugeMetricFamily("dtf_metrics_snapshot_age_seconds", "how old the loop's figures below are (grows "
                                "while the coordinator loop does not answer)", value=time.monotonic() - snap.made)
        yield from _loop_families(snap)


def _loop_families(snap: Snapshot) -> Iterator[Metric]:
    tasks = GaugeMetricFamily("dtf_tasks", "tasks by state (the tasks table, all time)", labels=["state"])
    counts = dict(snap.tasks)
    for state in TASK_STATUSES:
        tasks.add_metric([state], counts.get(state, 0))
    yield tasks
    yield GaugeMetricFamily("dtf_queue_depth", "tasks waiting to be dispatched (pending, including those "
                            "waiting on dependencies or a retry's backoff)", value=snap.queue_depth)
    for name, value in snap.counters:
        if name in _COUNTER_METRICS:
            metric, doc = _COUNTER_METRICS[name]
            yield CounterMetricFamily(metric, doc, value=value)
    db = (("dtf_db_commits", "SQLite transactions committed", snap.db_commits),
          ("dtf_db_rows_written", "rows written to SQLite", snap.db_rows_written),
          ("dtf_db_write_errors", "failed SQLite commits (retried until they land)", snap.db_write_errors),
          ("dtf_db_refused_rows", "rows the database refused (left out, recorded as events)", snap.db_refused_rows))
    for metric, doc, value in db:
        yield CounterMetricFamily(metric, doc, value=value)
    yield GaugeMetricFamily("dtf_db_pending_rows", "rows queued for the next commit", value=snap.db_pending_rows)
    workers = GaugeMetricFamily("dtf_workers", "workers by state (lost: went silent; offline: left)",
                                labels=["state"])
    by_state: dict[str, int] = dict.fromkeys(WORKER_STATES, 0)
    for w in snap.workers:
        by_state[w.state] = by_state.get(w.state, 0) + 1
    for wstate, n in by_state.items():
        workers.add_metric([wstate], n)
    yield workers
    yield GaugeMetricFamily("dtf_workers_draining", "workers drained by an engineer (no new tasks)",
                            value=sum(1 for w in snap.workers if w.draining))
    online = [w for w in snap.workers if w.heartbeat_age is not None]
    yield GaugeMetricFamily("dtf_worker_slots", "task slots of the online workers", value=sum(w.slots for w in online))
    yield GaugeMetricFamily("dtf_worker_slots_used", "task slots in use on the online workers",
                            value=sum(w.used_slots for w in online))
    age = GaugeMetricFamily("dtf_worker_heartbeat_age_seconds", "seconds since each online worker was last heard "
                            "from (health_monitor.heartbeat_timeout makes it lost)", labels=["worker_id"])
    for w in online:
        age.add_metric([w.worker_id], w.heartbeat_age or 0.0)
    yield age
    yield from _histogram_families(snap.histograms)


_HISTOGRAM_DOCS = {
    "dtf_dispatch_latency_seconds": "a task attempt sent to a worker until its result is back (the coordinator's "
                                    "clock)",
    "dtf_queue_wait_seconds": "submitted (or sent back to the queue) until dispatched",
    "dtf_task_latency_seconds": "submitted until final (completed, failed or cancelled), end to end",
    "dtf_db_commit_seconds": "seconds each SQLite transaction (a batch) took",
    "dtf_db_commit_rows": "rows each SQLite transaction (a batch) wrote",
}
# The label of the histograms that have one.
_HISTOGRAM_LABELS = {"dtf_task_latency_seconds": ["status"]}


def _histogram_families(figures: Sequence[HistogramFigures]) -> Iterator[Metric]:
    families: dict[str, HistogramMetricFamily] = {}
    for metric, labels, bounds, counts, total in figures:
        fam = families.get(metric)
        if fam is None:
            fam = families[metric] = HistogramMetricFamily(metric, _HISTOGRAM_DOCS[metric],
                                                           labels=_HISTOGRAM_LABELS.get(metric))
        cumulative, buckets = 0, []
        for bound, n in zip((*bounds, float("inf")), counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        fam.add_metric(list(labels), buckets, sum_value=total)
    yield from families.values()
