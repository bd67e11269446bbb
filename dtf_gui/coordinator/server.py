"""The coordinator's loop: one thread, one zmq.Poller, every socket owned by that thread.

Sockets (CURVE servers unless --insecure; trust.py judges every key, this loop answers libzmq's
ZAP requests with its verdicts and checks each frame's key, see _drain_agents)
- agents:  ROUTER (default port 8081); routing ids are the socket's own, one per connection, and
  a worker is bound to the key its connection proved.
- clients: ROUTER (default port 8080); the window, in the same process, calls :meth:`Coordinator.request`,
  which hands the same requests to this loop through its inbox (no socket in the GUI thread).
- events:  XPUB (default port 8082); batches of :class:`protocol.Event` (see events.py).

The loop decodes every frame through ``protocol.decode``; a bad frame is dropped and counted and
never stops the loop. Each peer role has one dispatch table (message type -> handler; client op ->
handler in api.py). The rules live elsewhere: the scheduler (no I/O) decides, the worker table
(health.py) keeps liveness, the task table (state.py) holds tasks, the store writes SQLite in
batches. This module receives, hands events to the scheduler and carries out its instructions.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

import msgspec
import zmq
from zmq.utils import z85

from dtf_agent import discovery, keys, tracing
from dtf_agent import protocol as p
from dtf_agent.inbox import Inbox
from dtf_agent.paths import dtf_home
from dtf_agent.transport import CurveServer, bind, hostname, make_socket
from dtf_gui.coordinator import scheduler as sch
from dtf_gui.coordinator.alerts_api import AlertHandlers, AlertsApi
from dtf_gui.coordinator.analysis import Analysis
from dtf_gui.coordinator.api import READ_ONLY_OPS, ApiError, ClientApi, Waiting
from dtf_gui.coordinator.config import ServerSettings
from dtf_gui.coordinator.events import EventHub, EventSink
from dtf_gui.coordinator.health import LOST, WorkerTable, worker_spec
from dtf_gui.coordinator.loop_traces import LoopTraces
from dtf_gui.coordinator.outputs import TaskOutputs
from dtf_gui.coordinator.records import Result, TaskRecord, WorkerRecord
from dtf_gui.coordinator.runs import Runs
from dtf_gui.coordinator.runs_api import RunsApi
from dtf_gui.coordinator.state import TaskTable, recover
from dtf_gui.coordinator.store import Store
from dtf_gui.coordinator.telemetry import Counters, DispatchLatency, Throttled
from dtf_gui.coordinator.trust import REFUSALS, ClientKey, Trust, role_allows, role_needed
from dtf_gui.coordinator.trust_api import ApiRefusal
from dtf_gui.coordinator.views_api import ViewsApi
from dtf_gui.coordinator.waiters import Waiters

if TYPE_CHECKING:  # imported when server.metrics_port is set (prometheus-client is the [server] extra's)
    from dtf_gui.coordinator.metrics import LoopFigures, Metrics, Snapshot

log = logging.getLogger(__name__)

# Plain ints: pyzmq's enum wrappers cost more than the check itself on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# Peers we do not know are asked to register at most this often each, and at most this many are
# remembered for that (a flood of unknown identities must not grow memory).
_REREGISTER_EVERY = 1.0
_ANALYSIS_EVERY = 0.05
# How long an ack to an agent may wait for company in its commit (a client's reply does not
# wait): a commit costs the loop a few hundred microseconds however few rows it holds, and at a
# commit per result that was most of the loop's time at window 1. Measured in-process, 4 agents
# at window 1: 5x fewer commits, p50 round trip 0.87 -> 0.70 ms, +8% tasks/s.
_COMMIT_WINDOW = 0.002
_REREGISTER_PEERS = 10_000
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks, in this context, whether a key may connect
_LOCAL = ClientKey("", "the window (in process)", "admin", "", 0.0)
# Handshakes that fail before the ZAP handler hears of them: a peer expecting another coordinator
# key, or speaking plain text to a CURVE port. libzmq says so only on a monitor socket.
_HANDSHAKE_FAILED = (int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) | int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
                     | int(zmq.EVENT_HANDSHAKE_FAILED_AUTH))


@dataclasses.dataclass
class _Outgoing:
    """What one turn of the loop promises: result acks and client replies (and the assignments
    that must follow an ack). It leaves only once the batch holding what it acknowledges is
    committed (``seq``, see Store)."""

    seq: int = 0
    assigns: dict[str, list[p.RunSpec]] = dataclasses.field(default_factory=dict)
    assigned: list[TaskRecord] = dataclasses.field(default_factory=list)
    acks: dict[bytes, list[str]] = dataclasses.field(default_factory=dict)
    replies: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.assigns or self.acks or self.replies)


class Coordinator:
    """Start with :meth:`start` (a thread of its own); stop with :meth:`stop`."""

    def __init__(self, settings: ServerSettings, event_sinks: list[EventSink] | None = None) -> None:
        self.s = settings
        self.cfg = settings.config
        self.counters = Counters()
        self.latency = DispatchLatency()
        self.hub = EventHub(event_sinks)
        # A context of its own: libzmq asks the ZAP handler of the socket's context, and two
        # coordinators in one process (tests) must not answer for each other.
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.insecure = settings.config.security.is_insecure
        self.home = settings.home or dtf_home()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.ports: dict[str, int] = {}
        self.started_at = time.time()
        # The Prometheus endpoint (server.metrics_port), and the figures the loop keeps for it: None
        # while metrics are off, which is all the hot paths test.
        self.metrics: Metrics | None = None
        self._figures: LoopFigures | None = None
        # The loop's open spans (loop_traces.py): None while tracing is off.
        self.traces: LoopTraces | None = None
        # Everything below belongs to the loop thread.
        self.tasks = TaskTable()
        self.sched = sch.Scheduler(settings.scheduler)
        self._out = _Outgoing()
        self._held: collections.deque[_Outgoing] = collections.deque()
        # Assignments that promise nothing go out at the end of the turn, without waiting for a
        # commit (the agents never idle on SQLite). The exception: a task whose last result from
        # the same worker is not acknowledged yet (task_id -> the batch holding that result); its
        # new assignment follows the ack, or the agent would take it for a resend of that result.
        self._now = _Outgoing()
        self._owed: dict[str, int] = {}
        self._held_for: dict[str, str] = {}
        self._analysis_due = False
        self._held_since: float | None = None
        self._held_urgent = False
        self._reregister_asked: dict[bytes, float] = {}
        self.waiters = Waiters()
        self._bad_agent_frame = Throttled(log)
        self._bad_client_frame = Throttled(log)
        self._frame: zmq.Frame | None = None  # the agent frame being handled (its peer address)
        self._pending_peers: dict[str, bytes] = {}  # key of a pending agent -> its routing id
        self._buckets: dict[str, tuple[float, float, float]] = {}  # client key -> (time, requests, tasks)
        self._agent_handlers: dict[type, Callable[[bytes, str, Any], None]] = {
            p.Register: self._on_register,
            p.Heartbeat: self._on_heartbeat,
            p.TaskStarted: self._on_task_started,
            p.Results: self._on_results,
            p.Goodbye: self._on_goodbye,
            p.LogChunk: self._on_log,
            p.Progress: self._on_progress,
            p.FetchBundle: self._on_fetch_bundle,
        }
        self._instruction_handlers: dict[type, Callable[[Any], None]] = {
            sch.Dispatch: self._do_dispatch,
            sch.StatusChanged: self._do_status,
            # Whoever fed the refused event reads the refusal from the instructions (submit, command).
            sch.Rejected: lambda ins: None,
            sch.CancelOnWorker: self._do_cancel_on_worker,
            sch.PriorityChanged: self._do_priority,
        }
        # Callables run by the loop: requests from other threads of this process (the window),
        # answers of the analysis thread.
        self.inbox: Inbox[Callable[[], None]] = Inbox()

    # -- lifecycle (any thread) -------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Coordinator:
        self._thread = threading.Thread(target=self._thread_main, name="dtf-coordinator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("coordinator did not start in time")
        if self.startup_error is not None:
            raise RuntimeError(f"coordinator failed to start: {self.startup_error}") from self.startup_error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self.inbox.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("coordinator thread did not stop within %.0f s", timeout)

    def info(self) -> dict[str, Any]:
        """What `coordinator.json` holds: how local clients and agents reach this coordinator."""
        return {
            "insecure": self.insecure,
            "fingerprint": "" if self.insecure else self.trust.fingerprint,
            "public_key": "" if self.insecure else self.trust.server.public,
            "pid": os.getpid(),
            "client_endpoint": self.endpoint("clients"),
            "agent_endpoint": self.endpoint("agents"),
            "events_endpoint": self.endpoint("events"),
            "db": str(self.s.db_path),
            "coordinator_id": self.s.coordinator_id,
            "started": self.started_at,
            # Where Prometheus scrapes (the port picked when server.metrics_port is 0); null: off.
            "metrics_endpoint": self.metrics_endpoint(),
        }

    def metrics_endpoint(self) -> str | None:
        if "metrics" not in self.ports:
            return None
        bound = self.cfg.server.host
        h = bound if bound not in ("0.0.0.0", "*", "") else "127.0.0.1"
        return f"http://{f'[{h}]' if ':' in h else h}:{self.ports['metrics']}/metrics"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def endpoint(self, which: str, host: str | None = None) -> str:
        bound = self.cfg.server.host
        h = host or (bound if bound not in ("0.0.0.0", "*", "") else "127.0.0.1")
        return f"tcp://{h}:{self.ports[which]}"

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Any thread of this process: one client-API operation, run by the loop. Returns its data;
        raises ApiError with the coordinator's reason (or when it does not answer in time)."""
        if not self.is_running:
            raise ApiError("the coordinator is not running")
        fut: Future[p.Reply] = Future()
        req = p.Request(req_id=0, op=op, args=args or {})
        self.inbox.put(lambda: self._answer(req, fut.set_result, _LOCAL))
        deadline = time.monotonic() + timeout
        while True:
            # In slices: a loop that stops never answers what is still in its inbox, and the caller
            # (a closing window's reader) must learn that now, not at its timeout.
            try:
                reply = fut.result(max(0.0, min(0.5, deadline - time.monotonic())))
                break
            except TimeoutError:
                if not self.is_running:
                    raise ApiError(f"the coordinator stopped before answering {op}") from None
                if time.monotonic() >= deadline:
                    raise ApiError(f"the coordinator did not answer {op} within {timeout:g} s") from None
        if not reply.ok:
            raise ApiError(reply.error)
        return reply.data

    # -- the loop thread --------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            self._open()
        except BaseException as exc:
            self.startup_error = exc
            log.error("coordinator failed to start: %s", exc)
            log.debug("coordinator start failure", exc_info=exc)
            try:
                self._close()  # whatever _open made before it failed: sockets, the writer thread
            finally:
                self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException:
            log.critical("coordinator loop died:\n%s", traceback.format_exc())
            raise
        finally:
            self._close()

    def _open(self) -> None:
        cfg = self.cfg
        srv, db = cfg.server, cfg.database
        # First: a handler path that does not load is a start error naming the key, with nothing to undo.
        handlers = AlertHandlers(cfg.health_monitor.alert_handlers)
        tracer = tracing.setup("dtf-coordinator")
        self.traces = LoopTraces(tracer) if tracer is not None else None
        self.store = Store(self.s.db_path, batch_size=db.batch_size, flush_interval=db.flush_interval,
                           background=True, durability=db.durability, on_commit=self.inbox.wake)
        self.workers = WorkerTable(self.store, self.hub, cfg.health_monitor.heartbeat_timeout)
        self.trust = Trust(self.store, self.hub, self.home, insecure=self.insecure,
                           coordinator_name=srv.service_name or f"DTF coordinator on {hostname()}",
                           config_token=cfg.security.enrollment_token)
        self.alerts = AlertsApi(config=cfg.health_monitor, store=self.store, hub=self.hub, workers=self.workers,
                                feed=self._sched, handlers=handlers)
        self.alerts.start()
        self.zap: zmq.Socket[Any] | None = None
        curve: dict[str, CurveServer | None] = {"agents": None, "clients": None, "events": None}
        if not self.insecure:
            # Bound before any CURVE socket exists: a handshake with no handler would be let through.
            self.zap = self.ctx.socket(zmq.REP)
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(_ZAP_ENDPOINT)
            curve = {d: CurveServer(self.trust.server.secret, d) for d in curve}
        # No ROUTER_HANDOVER: a peer that names itself after a connected agent's routing id must not
        # take that agent's route (and the tasks sent on it).
        self.agents = make_socket(self.ctx, zmq.ROUTER, max_message_size=srv.max_message_size, curve=curve["agents"])
        # libzmq drops an oversize frame without a word; allowing it a margin lets the loop see the
        # request and answer it with the limit it broke.
        self.clients = make_socket(self.ctx, zmq.ROUTER, max_message_size=4 * srv.max_message_size,
                                   curve=curve["clients"])
        # XPUB rather than PUB: it tells us when someone subscribes, so per-task events are only
        # built while somebody (a subscriber or the window) is listening.
        pub = make_socket(self.ctx, zmq.XPUB, max_message_size=srv.max_message_size, curve=curve["events"])
        self.monitors: dict[zmq.Socket[Any], str] = {}
        if not self.insecure:
            for sock, door in ((self.agents, "agent"), (self.clients, "client"), (pub, "events")):
                self.monitors[sock.get_monitor_socket(_HANDSHAKE_FAILED)] = door
        self.hub.attach(pub)
        self.ports = {
            "agents": bind(self.agents, srv.host, srv.agent_port),
            "clients": bind(self.clients, srv.host, srv.port),
            "events": bind(pub, srv.host, srv.events_port),
        }
        if srv.metrics_port is not None:
            self._start_metrics(srv.host, srv.metrics_port)
        self.analysis = Analysis(self.s.db_path, cfg.result_aggregator, inbox=self.inbox, store=self.store,
                                 hub=self.hub, counters=self.counters)
        self.outputs = TaskOutputs(self.home, self.tasks, max_log_bytes=srv.max_log_bytes,
                                   max_bundle_bytes=srv.max_bundle_bytes, max_bundles_bytes=srv.max_bundles_bytes,
                                   log_retention_days=srv.log_retention_days)
        self.runs = Runs(self.store)
        runs_api = RunsApi(runs=self.runs, tasks=self.tasks, store=self.store, logs=self.outputs.logs,
                           bundles=self.outputs.bundles, progress=self.outputs.progress, flaky=self.store.mark_flaky,
                           declare=self._declare_metric, compare=lambda *a, **k: self.analysis.queries.compare_runs(*a, **k),
                           metric_info=self._metric_info)
        self.views = ViewsApi(self.s.db_path, self.analysis.catalog.describe)
        self.api = ClientApi(tasks=self.tasks, workers=self.workers, sched=self.sched, store=self.store,
                             queries=self.analysis.queries, commands=self, coordinator_id=self.s.coordinator_id,
                             trust=self.trust, runs_api=runs_api, views_api=self.views,
                             alerts_api=self.alerts)
        self.api.tracer = tracer
        self.workers.mark_stored_offline()
        self.alerts.restore()
        self._recover()
        # Runs with tasks still to finish: they finish here when those do.
        self.runs.tasks_added(str(t.metadata["run"]) for t in self.tasks.active.values()
                              if t.metadata and t.metadata.get("run"))
        self.advertiser: discovery.Advertiser | None = None
        self.agent_browser: discovery.AgentBrowser | None = None
        if srv.advertise:
            interfaces = discovery.interfaces_for_bind(srv.host, srv.interfaces)
            # The public key goes in the ad (it is no secret): agents check the handshake against it.
            self.advertiser = discovery.Advertiser(
                name=srv.service_name or f"DTF coordinator on {hostname()}",
                addresses=interfaces or discovery.local_ipv4_addresses(), interfaces=interfaces,
                agent_port=self.ports["agents"], client_port=self.ports["clients"],
                events_port=self.ports["events"], coordinator_id=self.s.coordinator_id,
                public_key="" if self.insecure else self.trust.server.public)
            # Agents on the LAN that advertise themselves, to list those not enrolled yet. A
            # convenience: a network without multicast must not stop the coordinator.
            try:
                self.agent_browser = discovery.AgentBrowser(interfaces)
            except OSError as exc:
                log.warning("mDNS: cannot browse for agents on %s (%s); `dtf agents` still lists those that "
                            "connect", ", ".join(interfaces) or "all interfaces", exc)
        log.info("coordinator %s listening: agents %s, clients %s, events %s", self.s.coordinator_id,
                 self.ports["agents"], self.ports["clients"], self.ports["events"])
        if self.metrics is not None:
            log.info("Prometheus metrics on %s", self.metrics_endpoint())
        if self.insecure:
            log.warning("INSECURE: plain-text sockets, every agent accepted, every client an admin. Anyone who "
                        "reaches ports %s can run commands on the agents. For a quick local try only.",
                        ", ".join(str(v) for v in self.ports.values()))
        else:
            log.info("coordinator key %s (agents pin it; `dtf token create` makes join tokens)",
                     self.trust.fingerprint)

    def _start_metrics(self, host: str, port: int) -> None:
        try:
            from dtf_gui.coordinator.metrics import Metrics
        except ImportError as exc:
            raise RuntimeError(f"server.metrics_port is {port}, but the metrics need prometheus-client ({exc}): "
                               "pip install 'dtf[server]', or set server.metrics_port: null") from exc
        m = Metrics(ask_loop=self.inbox.put, build=self._metrics_snapshot, db_path=self.s.db_path,
                    coordinator_id=self.s.coordinator_id, started=self.started_at, refusal_kinds=sorted(REFUSALS))
        self.ports["metrics"] = m.serve(host, port)
        self.metrics = m
        self._figures = m.loop
        self.store.on_commit_timed = m.committed
        self.trust.on_refusal = m.refused

    def _metrics_snapshot(self) -> Snapshot:
        """The loop's state for a scrape (loop thread; see metrics.py): copies, never references."""
        from dtf_gui.coordinator.metrics import Snapshot, WorkerFigures

        assert self._figures is not None
        mono = time.monotonic()
        workers = []
        for w in self.workers.workers.values():
            ws = self.sched.worker(w.worker_id)
            used = ws.used_slots if ws is not None and w.online else 0
            if w.online:
                state = p.BUSY if used else p.ONLINE
            else:
                state = LOST if w.health_status.get("state") == LOST else p.OFFLINE
            workers.append(WorkerFigures(w.worker_id, state, bool(w.health_status.get("draining")), w.slots, used,
                                         mono - w.seen_at if w.online else None))
        store = self.store
        return Snapshot(made=mono, tasks=tuple(self.tasks.status_counts().items()),
                        queue_depth=self.sched.pending_count(), workers=tuple(workers),
                        counters=tuple(dataclasses.asdict(self.counters).items()),
                        histograms=self._figures.histograms(), db_commits=store.committed,
                        db_rows_written=store.rows_written, db_write_errors=store.write_errors,
                        db_refused_rows=store.refused_rows, db_pending_rows=store.pending_rows())

    def _close(self) -> None:
        """Close what :meth:`_open` made, in reverse; after a failed start only part of it exists."""
        made = self.__dict__
        if self.metrics is not None:
            self.metrics.close()  # first: no scrape asks the loop for anything while it closes
        for mdns in (made.get("advertiser"), made.get("agent_browser")):
            if mdns is not None:
                mdns.close()
        if "views" in made:
            self.views.close()
        if "analysis" in made:
            self.analysis.close()
            self._run_inbox()  # the findings of the last results judged: stored before the store closes
        if "outputs" in made:
            self.outputs.stop()
        if "alerts" in made:
            self.alerts.close()
        if self.traces is not None:
            self.traces.close(self.store.committed if "store" in made else 0)
        self.inbox.close()
        try:
            if "workers" in made:
                self.workers.shutdown()
            if "store" in made:
                self.store.close()
        finally:
            for mon in made.get("monitors", {}):
                mon.close(linger=0)
            for sock in (made.get("agents"), made.get("clients"), self.hub.pub, made.get("zap")):
                if sock is not None:
                    sock.close(linger=0)
            self.ctx.term()

    def _recover(self) -> None:
        ins, self._held_for = recover(self.store, self.sched, self.tasks,
                                      hold=self.cfg.health_monitor.heartbeat_timeout)
        self._carry_out(ins)
        if self.tasks.active:
            log.info("recovered %d unfinished task(s) from %s", len(self.tasks.active), self.s.db_path)

    def _loop(self) -> None:
        poller = zmq.Poller()
        assert self.hub.pub is not None
        poller.register(self.agents, zmq.POLLIN)
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.hub.pub, zmq.POLLIN)
        if self.zap is not None:
            poller.register(self.zap, zmq.POLLIN)
        for mon in self.monitors:
            poller.register(mon, zmq.POLLIN)
        inbox = self.inbox.fileno()
        poller.register(inbox, zmq.POLLIN)  # the poller hands back the descriptor, not the object
        interval = self.cfg.server.event_interval
        flush_interval = self.cfg.database.flush_interval
        now = time.monotonic()
        self._next_events = now + interval
        self._next_health = now + 1.0
        self._next_tick = now + 0.5
        self._next_analysis = now
        while not self._stop.is_set():
            timeout = max(0.0, min(self._next_events, self._next_health, self._next_tick,
                                   self.waiters.next_deadline() or self._next_tick) - time.monotonic())
            if self.store.pending_rows():
                timeout = min(timeout, flush_interval)
                if self._held_since is not None:  # a promise waits: commit when its window ends
                    timeout = min(timeout, max(0.0, self._held_since + _COMMIT_WINDOW - time.monotonic()))
            if self._analysis_due:
                timeout = min(timeout, max(0.0, self._next_analysis - time.monotonic()))
            for sock, _ in poller.poll(int(timeout * 1000) + 1):
                try:
                    if sock is self.agents:
                        self._drain_agents()
                    elif sock is self.clients:
                        self._drain_clients()
                    elif sock == inbox:
                        self.inbox.clear_wake()
                        self._run_inbox()
                    elif sock is self.zap:
                        self._drain_zap()
                    elif sock in self.monitors:
                        self._drain_monitor(sock)
                    else:
                        self.hub.drain_subscriptions()
                except Exception:
                    self.counters.loop_errors += 1
                    log.exception("coordinator: error while handling messages (loop continues)")
            try:
                self._timers(time.monotonic())
                self._send_out()
                self._release()
            except Exception:
                self.counters.loop_errors += 1
                log.exception("coordinator: error in periodic work (loop continues)")
        # Stopping: what the last turns promised goes out once it is committed (unless the disk
        # refuses it, when it is not promised at all).
        self._send_out()
        self.store.wait_committed()
        self._release()
        self.hub.emit(self.stats)

    def _timers(self, now: float) -> None:
        if self.store.flush_due(now):
            self._flush_store()
        # Each deadline moves before its work runs, so a failing step cannot spin the loop.
        self.waiters.expire(now)
        if self._analysis_due and now >= self._next_analysis:
            self._analysis_due = False
            self._next_analysis = now + _ANALYSIS_EVERY
            self.analysis.after_flush()
        if now >= self._next_tick:
            self._next_tick = now + 0.5
            self._sched([sch.Tick(time.time())])
        if now >= self._next_health:
            self._next_health = now + 1.0
            lost = self.workers.sweep(now)
            self._sched(lost)
            self.alerts.workers_lost(lost)
        if now >= self._next_events:
            self._next_events = now + self.cfg.server.event_interval
            self.hub.emit(self.stats)

    def _flush_store(self) -> None:
        try:
            self.store.flush()
        except Exception:
            self.counters.loop_errors += 1
            log.exception("coordinator: writing to %s failed; will retry", self.s.db_path)
            return
        # The analysis thread hears of what was written at most every _ANALYSIS_EVERY: with a
        # commit per turn, a hand-over per flush cost a thread round trip (and GIL switches) per
        # turn, a quarter of the loop's time under load.
        self._analysis_due = True

    def _run_inbox(self) -> None:
        for call in self.inbox.take():
            try:
                call()
            except Exception:
                self.counters.loop_errors += 1
                log.exception("coordinator: a handed-over call failed")

    # -- ZAP: may this key connect? -------------------------------------------------------------

    def _drain_zap(self) -> None:
        """libzmq's questions about connecting keys (RFC 27), answered with trust.py's verdict. The
        User-Id of an allowed connection is its key: every frame on it carries it (_drain_agents)."""
        assert self.zap is not None
        for _ in range(100):
            try:
                req = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = [b"1.0", req[1] if len(req) > 1 else b"", b"400", b"bad ZAP request", b"", b""]
            try:
                if len(req) >= 7 and req[0] == b"1.0" and req[5] == b"CURVE" and len(req[6]) == 32:
                    key = z85.encode(req[6]).decode("ascii")
                    ok, why = self.trust.authenticate(req[2].decode("ascii", "replace"),
                                                      req[3].decode("ascii", "replace"), key)
                    reply = [b"1.0", req[1], b"200" if ok else b"400", (why or "OK").encode(),
                             key.encode("ascii") if ok else b"", b""]
            finally:
                self.zap.send_multipart(reply)  # a REP socket must answer before it can hear the next

    def _drain_monitor(self, mon: zmq.Socket[Any]) -> None:
        from zmq.utils.monitor import parse_monitor_message

        door = self.monitors[mon]
        for _ in range(100):
            try:
                event = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            self.counters.failed_handshakes += 1
            self.trust.security("handshake_failed", f"{door} port",
                                f"a connection to the {door} port failed its CURVE handshake ({event['event']!s}, "
                                f"code {event['value']}): a peer that expects another coordinator key, or plain "
                                "text (an agent or client started with --insecure)", throttle=True)

    # -- agents -----------------------------------------------------------------------------------

    def _drain_agents(self) -> None:
        sock = self.agents
        handlers = self._agent_handlers
        secure = not self.insecure
        # Checking EVENTS instead of receiving until zmq.Again saves an exception per wake-up.
        events = cast(Callable[[int], int], sock.getsockopt)  # EVENTS is an int option
        for _ in range(1000):
            if not events(_EVENTS) & _POLLIN:
                return
            key = ""
            if secure:
                # Each frame carries the key its connection proved in the handshake: a frame is
                # only ever taken for the worker that registered with that key (seen()).
                fparts = sock.recv_multipart(copy=False)
                if len(fparts) != 2:
                    self.counters.bad_frames += 1
                    continue
                self._frame = fparts[1]
                key = str(fparts[1].get("User-Id"))
                identity, frame = fparts[0].bytes, fparts[1].bytes
            else:
                parts = sock.recv_multipart()
                if len(parts) != 2:
                    self.counters.bad_frames += 1  # wrong number of parts
                    continue
                identity, frame = parts
            self.counters.frames_in += 1
            try:
                msg = p.decode(frame)
                handler = handlers[type(msg)]
            except (p.ProtocolError, KeyError) as exc:
                self.counters.bad_frames += 1
                self._bad_agent_frame.warning("dropped a bad frame from agent %r: %s", identity[:64], exc)
                continue
            if type(msg) is p.Register and len(frame) > p.MAX_REGISTER_BYTES:
                self._refuse(identity, msg, f"Register of {len(frame)} bytes is over the limit of "
                                            f"{p.MAX_REGISTER_BYTES} (capabilities, tags or task lists too big)")
                continue
            handler(identity, key, msg)
            if self.store.full():
                self._flush_store()  # between messages: a result and its task's status share a batch

    def _send_agent(self, identity: bytes, msg: p.Message) -> None:
        try:
            self.agents.send_multipart([identity, p.encode(msg)], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            self.counters.unroutable += 1

    def _known_agent(self, identity: bytes, key: str) -> WorkerRecord | None:
        w, events = self.workers.seen(identity, key)
        if w is None:
            # We do not know this peer (we restarted, or it never registered): ask it to, once a
            # second at most; the frames it queued while we were away would each draw one.
            now = time.monotonic()
            asked = self._reregister_asked
            if now - asked.get(identity, -_REREGISTER_EVERY) >= _REREGISTER_EVERY:
                if len(asked) >= _REREGISTER_PEERS:
                    asked.clear()
                asked[identity] = now
                self.counters.reregister_asked += 1
                self._send_agent(identity, p.Refused(reason="unknown agent; register first", fatal=False,
                                                     reregister=True))
            return None
        if events:  # a worker given up for lost is back
            self.alerts.worker_back(w.worker_id)
        self._sched(events)
        return w

    def _refuse(self, identity: bytes, msg: p.Register, problem: str, fatal: bool = True) -> None:
        # Throttled: a peer that registers in a loop must not write a row per try.
        self.trust.security("agent_refused", msg.worker_id, f"{msg.hostname}: {problem}", throttle=True)
        self._send_agent(identity, p.Refused(reason=problem, fatal=fatal, protocol_version=p.PROTOCOL_VERSION))

    def _peer_address(self) -> str:
        frame = self._frame
        if frame is None:
            return ""
        try:
            return str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            return ""

    def _on_register(self, identity: bytes, key: str, msg: p.Register) -> None:
        problem = p.version_problem(msg.protocol_version)
        if problem:
            self._refuse(identity, msg, problem)
            return
        verdict = self.trust.register(key, msg, self._peer_address())
        if verdict.kind == "refuse":
            self._refuse(identity, msg, verdict.reason, verdict.fatal)
            return
        if verdict.kind == "pending":
            if len(self._pending_peers) >= 2 * _REREGISTER_PEERS:
                self._pending_peers.clear()
            self._pending_peers[key] = identity
            self._send_agent(identity, p.Pending(reason=verdict.reason, fingerprint=keys.fingerprint(key)))
            return
        self._pending_peers.pop(key, None)
        self._reregister_asked.pop(identity, None)
        w, old, events = self.workers.register(identity, msg, key=key, extra_tags=verdict.tags)
        wid = w.worker_id
        self.alerts.worker_back(wid)
        self._send_agent(identity, p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id=wid,
                                             heartbeat_interval=self.cfg.health_monitor.heartbeat_interval,
                                             coordinator_id=self.s.coordinator_id))
        now = time.time()
        holds = frozenset((*msg.running, *msg.finished))
        # What the agent still runs, or holds results of, stays its own: after a coordinator
        # restart a recovered task waits for the worker that had it (``_held_for``).
        # An attempt the agent names above the stored one was assigned just before a restart,
        # with the assignment not yet stored: it is this agent's, under that attempt.
        stray: list[str] = []
        for tid in holds:
            task = self.tasks.get(tid)
            claimed = msg.attempts.get(tid, 0)
            if task is None or task.status in p.TERMINAL_STATUSES:
                stray.append(tid)
            elif task.worker_id == wid and task.status in (p.ASSIGNED, p.RUNNING):
                events.append(sch.Adopt(now, tid, wid, task.attempt))
            elif task.status == p.PENDING and (self._held_for.get(tid) == wid
                                               or (claimed > task.attempt and self._may_claim(tid, w))):
                self._held_for.pop(tid, None)
                task.worker_id = wid
                task.attempt = max(task.attempt, claimed)
                events.append(sch.Adopt(now, tid, wid, task.attempt))
            else:
                stray.append(tid)
        # Then the rest. The same incarnation is the same agent process reconnecting: what it
        # still holds stays on it. A new one restarted: what it no longer holds was lost with its
        # previous life. All in one scheduler call, so nothing is dispatched elsewhere in between.
        restarted = old is not None and old.online and (not msg.incarnation or msg.incarnation != old.incarnation)
        events.append(sch.Reconcile(now, wid, holds, restarted))
        self._sched(events)
        # Running here but given to someone else (or finished) meanwhile: stop this copy. Its
        # result, if one comes, is acknowledged and not stored.
        running = set(msg.running)
        stop = [t for t in stray if t in running]
        if stop:
            self._send_agent(identity, p.Cancel(task_ids=stop))

    def _may_claim(self, task_id: str, w: WorkerRecord) -> bool:
        """May this worker claim a queued task it says it runs under a newer attempt (given just before
        a restart, the assignment not stored)? Only one the rules could have given it: not pinned
        elsewhere, requirements met. Otherwise an accepted agent could take any task it liked."""
        ts = self.sched.task(task_id)
        if ts is None or (ts.pin is not None and ts.pin.worker_id != w.worker_id):
            return False
        return sch.mismatch(ts.spec.requirements, ts.spec.cpu_slots, worker_spec(w)) is None

    def _on_heartbeat(self, identity: bytes, key: str, msg: p.Heartbeat) -> None:
        w = self._known_agent(identity, key)
        if w is None:
            return
        self.workers.heartbeat(w, msg)
        self.alerts.heartbeat(w)
        # A task we think is on this worker that it has not listed for a while (an assignment
        # dropped on the way, a result lost with its ack) would wait forever: it goes back to
        # the queue. Recent assignments may simply not have reached the agent yet.
        ours = self.sched.running_on(w.worker_id)
        if not ours:
            return
        listed = set(msg.running)
        grace = 2 * self.cfg.health_monitor.heartbeat_interval + 5.0
        now = time.perf_counter()
        missing = []
        for tid in ours:
            task = self.tasks.get(tid)
            if tid not in listed and task is not None and task.sent is not None and now - task.sent > grace:
                missing.append(tid)
        if missing:
            log.warning("agent %s no longer lists %d task(s) it was given (%s): back to the queue", w.worker_id,
                        len(missing), ", ".join(missing[:5]), extra={"worker_id": w.worker_id})
            self._sched([sch.Reconcile(time.time(), w.worker_id, frozenset(ours) - set(missing), False)])

    def _on_task_started(self, identity: bytes, key: str, msg: p.TaskStarted) -> None:
        w = self._known_agent(identity, key)
        if w is None:
            return
        # The agent's clock is shown (start_time); the scheduler hears of it on ours.
        now = time.time()
        shown = msg.time or now
        events: list[sch.Event] = []
        for tid in msg.task_ids:
            task = self.tasks.get(tid)
            if task is not None and task.worker_id == w.worker_id:
                task.start_time = shown
                events.append(sch.StartReported(now, tid, w.worker_id))
        self._sched(events)

    def _on_results(self, identity: bytes, key: str, msg: p.Results) -> None:
        w = self._known_agent(identity, key)
        if w is None:
            return
        now = time.time()
        held = time.perf_counter()
        acks = self._out.acks.setdefault(identity, [])
        events: list[sch.Event] = []
        store = self.store
        figures = self._figures
        traces = self.traces
        # The scheduler hears of this frame's results only after the loop, so a task's status
        # still reads "running" for a second copy of its result within the same frame.
        finished_here: set[str] = set()
        for rec in msg.results:
            acks.append(rec.result_id)
            task = self.tasks.get(rec.task_id)
            # One result per attempt: a resend, a late result of an attempt that was requeued, or a
            # result for a task already finished is acknowledged (so the agent stops resending)
            # but not stored again.
            if (task is None or task.status not in (p.ASSIGNED, p.RUNNING) or task.attempt != rec.attempt
                    or task.worker_id != w.worker_id or rec.task_id in finished_here):
                self.counters.duplicate_results += 1
                if task is not None and task.worker_id != w.worker_id and task.status in (p.ASSIGNED, p.RUNNING):
                    self.trust.security("result_refused", w.worker_id, f"a result for task {rec.task_id}, which "
                                        f"runs on {task.worker_id}, came from {w.worker_id}", throttle=True)
                continue
            run_id = str(task.metadata.get("run", "")) if task.metadata else ""
            result = Result.reported(rec, w.worker_id, task.test_id, now, run_id)
            store.put_result(result)
            self.outputs.attempt_ended(rec.task_id, rec.attempt)
            self._declare_from(rec)
            for test in Result.per_test(rec, w.worker_id, result.timestamp, run_id):
                store.put_result(test)
                if test.metrics:
                    self.analysis.result_stored(test)
            self._owed[rec.task_id] = store.taken + 1
            if traces is not None:
                traces.stored(rec, task, w.worker_id, store.taken + 1)
            finished_here.add(rec.task_id)
            self.analysis.result_stored(result)
            self.counters.results_stored += 1
            if task.sent is not None:
                self.latency.add(held - task.sent)
                if figures is not None:
                    figures.dispatch_latency.observe(held - task.sent)
            task.results = rec.result_id
            task.start_time = task.start_time or rec.start_time
            task.end_time = rec.end_time or now
            task.error = rec.error or None
            events.append(sch.FinishReported(now, rec.task_id, w.worker_id, rec.status == "success", rec.error,
                                             rec.execution_time))
            self.alerts.task_ended(w.worker_id, rec.status != "success")
        self._sched(events)

    def _on_log(self, identity: bytes, key: str, msg: p.LogChunk) -> None:
        w = self._known_agent(identity, key)
        if w is not None:
            self.outputs.log_chunk(w.worker_id, msg)

    def _on_progress(self, identity: bytes, key: str, msg: p.Progress) -> None:
        w = self._known_agent(identity, key)
        if w is not None:
            self.outputs.progress_report(w.worker_id, msg)

    def _on_fetch_bundle(self, identity: bytes, key: str, msg: p.FetchBundle) -> None:
        w = self._known_agent(identity, key)
        if w is not None:
            self._send_agent(identity, self.outputs.bundle_piece(w.worker_id, msg))

    def _declare_from(self, rec: p.ResultRecord) -> None:
        """Units and directions a task declared in its result file."""
        if rec.units or rec.directions:
            self.analysis.declare(rec.units, dict(rec.directions), source="task")

    def _declare_metric(self, name: str, unit: str, direction: str | None) -> bool:
        return self.analysis.declare({name: unit} if unit else {}, {name: direction} if direction else {},
                                     source="api")

    def _metric_info(self, names: list[str]) -> dict[str, Any]:
        return {n: self.analysis.catalog.describe(n) for n in names}

    def _on_goodbye(self, identity: bytes, key: str, msg: p.Goodbye) -> None:
        w = self._known_agent(identity, key)
        if w is not None:
            log.info("agent %s said goodbye: %s", w.worker_id, msg.reason, extra={"worker_id": w.worker_id})
            self.alerts.worker_left(w.worker_id, "left (its agent stopped)")
            self._sched(self.workers.gone(w, f"agent left: {msg.reason}"))

    # -- the scheduler: events in, instructions carried out ---------------------------------------

    def _sched(self, events: Sequence[sch.Event]) -> list[sch.Instruction]:
        if not events:
            return []
        ins = self.sched.handle(events)
        self._carry_out(ins)
        return ins

    def _carry_out(self, instructions: list[sch.Instruction]) -> None:
        handlers = self._instruction_handlers
        for ins in instructions:
            handlers[type(ins)](ins)

    def submit(self, tasks: Sequence[TaskRecord]) -> dict[str, str]:
        """Commands for the API: new tasks, one batch. They may depend on each other in any order,
        and the scheduler accepts or refuses them together (a plan is never half queued); they
        join the task table only once accepted. Returns {task_id: reason} when refused."""
        now = time.time()
        # A dependency on a task that ended before the scheduler's memory (an earlier run of the
        # coordinator, or long ago) is looked up in the database and counts as what it ended as.
        ids = {t.task_id for t in tasks}
        unknown = {d for t in tasks for d in t.spec.dependencies
                   if d not in ids and self.sched.task_state(d) is None}
        if unknown:
            found = self.store.task_statuses(unknown)
            if found:
                self.sched.handle([sch.Remember(now, tuple(found.items()))])
        ins = self.sched.handle([sch.SubmitBatch(now, tuple(t.spec for t in tasks))])
        refused = {i.task_id: i.reason for i in ins if type(i) is sch.Rejected}
        if refused:
            self.counters.submissions_refused += 1
        else:
            self.counters.submissions += 1
            self.counters.tasks_submitted += len(tasks)
            for t in tasks:
                self.tasks.add(t)
                self.store.put_task(t)
            self.runs.tasks_added(str(t.metadata["run"]) for t in tasks if t.metadata and t.metadata.get("run"))
        self._carry_out(ins)
        return refused

    def agents_accepted(self, keys_: list[str]) -> None:
        """Commands for the API: a pending agent that is connected hears at once that it may register."""
        for key in keys_:
            identity = self._pending_peers.pop(key, None)
            if identity is not None:
                self._send_agent(identity, p.Refused(reason="accepted: register now", fatal=False, reregister=True))

    def agents_revoked(self, keys_: list[str], what: str = "revoked") -> None:
        """Commands for the API: a revoked (or rejected) agent is cut off at once: told so (it stops),
        its frames no longer count as its own, its tasks go back to the queue. Its key cannot
        connect again (the ZAP handler refuses it)."""
        gone = set(keys_)
        why = f"this agent's key was {what} by the coordinator's admin"
        for w in list(self.workers.workers.values()):
            if w.key in gone and w.key:
                self._send_agent(w.identity, p.Refused(reason=why, fatal=True))
                self.workers.forget_identity(w)
                self.alerts.worker_left(w.worker_id, f"was cut off (key {what})")
                if w.online:
                    self._sched(self.workers.gone(w, f"key {what}"))
        for key in gone:
            identity = self._pending_peers.pop(key, None)
            if identity is not None:
                self._send_agent(identity, p.Refused(reason=why, fatal=True))

    def agent_endpoints(self) -> list[str]:
        """Commands for the API: the addresses a join token names."""
        port = self.ports["agents"]
        bound = self.cfg.server.host
        if bound in ("0.0.0.0", "*", ""):
            hosts = discovery.interfaces_for_bind(bound, self.cfg.server.interfaces) or discovery.local_ipv4_addresses()
        else:
            hosts = [bound]
        return [f"tcp://{h}:{port}" for h in hosts[:16]] or [self.endpoint("agents")]

    def client_endpoints(self) -> tuple[str, str]:
        return self.endpoint("clients", self._public_host()), self.endpoint("events", self._public_host())

    def _public_host(self) -> str | None:
        bound = self.cfg.server.host
        if bound in ("0.0.0.0", "*", ""):
            found = discovery.local_ipv4_addresses()
            return found[0] if found else None
        return None

    def online_workers(self) -> set[str]:
        return {w.worker_id for w in self.workers.workers.values() if w.online}

    def seen_agents(self) -> list[dict[str, Any]]:
        if self.agent_browser is None:
            return []
        return [{"name": a.name, "fingerprint": a.fingerprint, "address": ", ".join(a.addresses), "slots": a.slots,
                 "tags": list(a.tags), "seen_at": a.seen_at} for a in self.agent_browser.snapshot_threadsafe()]

    def command(self, event: sch.Event) -> str | None:
        """Commands for the API: one engineer's command about one task (cancel, pin, retry ...);
        the scheduler's reason when it refused it."""
        return _rejection(self._sched([event]), getattr(event, "task_id", ""))

    def _do_dispatch(self, ins: sch.Dispatch) -> None:
        task = self.tasks.get(ins.task_id)
        if task is None or self.workers.get(ins.worker_id) is None:
            return
        task.attempt = ins.attempt
        task.worker_id = ins.worker_id
        out = self._now
        owed = self._owed.get(task.task_id)
        if owed is not None:
            if owed > self.store.committed:
                out = self._out
            else:
                del self._owed[task.task_id]
        self.outputs.dispatched(ins.worker_id, task.parameters)
        trace = self.traces.dispatched(task, ins.worker_id, ins.attempt) if self.traces is not None else {}
        out.assigns.setdefault(ins.worker_id, []).append(
            p.RunSpec(task_id=task.task_id, type=task.type, parameters=task.parameters, timeout=task.timeout,
                      attempt=ins.attempt, trace=trace))
        out.assigned.append(task)
        self.counters.tasks_dispatched += 1
        if log.isEnabledFor(logging.DEBUG):  # the hot path: no record, nor its dict, unless wanted
            log.debug("task %s (attempt %d) assigned to %s", task.task_id, ins.attempt, ins.worker_id,
                      extra={"task_id": task.task_id, "worker_id": ins.worker_id, "attempt": ins.attempt})
        figures = self._figures
        if figures is not None:
            figures.dispatched(task.task_id, task.create_time, time.time())

    def _do_status(self, ins: sch.StatusChanged) -> None:
        now = time.time()
        task = self.tasks.apply_status(ins, now)
        if task is None:
            return
        # The scheduler's counts and deadlines go into the row too: a restart resumes from them.
        ts = self.sched.task(ins.task_id)
        if ts is not None:
            task.failures = ts.failures
            task.lost = ts.lost
            # A backoff deadline, not a hold for a reconnecting worker (that one ends with this life).
            task.retry_at = ts.until if ts.until and not ts.held_for else None
            task.pinned_to = ts.pin.worker_id if ts.pin is not None else None
        status = ins.status
        # Each task's changes at DEBUG, with its ids (`jq 'select(.task_id == "T")'` follows one). Not at
        # INFO: a cancelled run, a lost worker's requeue or a suite that fails throughout is thousands
        # of them on the loop thread (~80 µs a record with stderr and the rotated file).
        if log.isEnabledFor(logging.DEBUG):
            log.debug("task %s (attempt %d) %s%s%s", ins.task_id, task.attempt,
                      "back to the queue" if status == p.PENDING and task.attempt else status,
                      f" on {task.worker_id}" if task.worker_id else "", f": {ins.reason}" if ins.reason else "",
                      extra={"task_id": ins.task_id, "worker_id": task.worker_id, "attempt": task.attempt})
        figures = self._figures
        if figures is not None:
            if status == p.PENDING:
                figures.queued(task.task_id, now)
            elif status in p.TERMINAL_STATUSES:
                figures.ended(task.task_id, status, task.create_time, now)
        if (status in p.TERMINAL_STATUSES or status == p.PENDING) and task.attempt:
            # The attempt is over (finished, or requeued after its worker was lost): its logs are
            # complete, whatever of its output arrived.
            self.outputs.attempt_ended(task.task_id, task.attempt)
        if status == p.COMPLETED:
            self.hub.completed += 1
        elif status in p.TERMINAL_STATUSES:
            self.store.put_event(f"task_{status}", ins.task_id, {"reason": ins.reason})
        self.store.put_task(task)
        self.hub.task_changed(task)
        if status in p.TERMINAL_STATUSES:
            if task.metadata and task.metadata.get("run"):
                self.runs.task_final(str(task.metadata["run"]), status == p.COMPLETED)
            self.tasks.finished(ins.task_id)
            self.outputs.task_final(ins.task_id)
            self.waiters.finished(ins.task_id, status)
            self._owed.pop(ins.task_id, None)

    def _do_cancel_on_worker(self, ins: sch.CancelOnWorker) -> None:
        w = self.workers.get(ins.worker_id)
        if w is not None and w.online:
            self._send_agent(w.identity, p.Cancel(task_ids=[ins.task_id]))

    def _do_priority(self, ins: sch.PriorityChanged) -> None:
        task = self.tasks.get(ins.task_id)
        if task is not None:
            task.priority = ins.priority
            self.store.put_task(task)
            self.hub.task_changed(task)

    def _send_out(self) -> None:
        """End of a turn: what it promised waits for the commit of what it promised about (the
        batch taken next, when rows are pending). Group commit: one batch with the writer at a
        time; while it commits, the next one grows with every turn, so under load a commit holds
        many turns' work and the loop never waits for SQLite."""
        now = self._now
        if now:
            self._now = _Outgoing()
            self._send(now)
        out = self._out
        store = self.store
        if out:
            self._out = _Outgoing()
            out.seq = store.taken + 1 if store.pending_rows() else store.taken
            self._held.append(out)
            if out.seq > store.taken:
                if self._held_since is None:
                    self._held_since = time.monotonic()
                # A client waits on its reply; an agent has more work in flight meanwhile.
                self._held_urgent = self._held_urgent or bool(out.replies)
        since = self._held_since
        if since is not None and not store.busy() and (
                self._held_urgent or time.monotonic() - since >= _COMMIT_WINDOW
                or store.pending_rows() >= store.inline_max):
            self._held_since = None
            self._held_urgent = False
            if store.pending_rows():
                self._flush_store()

    def _release(self) -> None:
        """Send what was held, in order, once the batches it waits for are committed."""
        held = self._held
        committed = self.store.committed
        while held and held[0].seq <= committed:
            self._send(held.popleft())
        if self.traces is not None and self.traces.storing:
            self.traces.committed(committed)

    def _reached(self, worker_id: str) -> bool:
        """Whether an assignment for ``worker_id`` goes out (_send's own test)."""
        w = self.workers.get(worker_id)
        return w is not None and w.online

    def _send(self, out: _Outgoing) -> None:
        for wid, specs in out.assigns.items():
            w = self.workers.get(wid)
            # A worker found lost after this batch was queued has had its tasks requeued by the
            # scheduler already; assigning them now would run them twice.
            if w is not None and w.online:
                acks = out.acks.pop(w.identity, [])
                self._send_agent(w.identity, p.Assign(tasks=specs, acks=acks))
        if self.traces is not None and self.traces.dispatching:
            self.traces.sent(out.assigns, out.assigned, self._reached)
        if out.assigned:
            sent = time.perf_counter()
            for task in out.assigned:
                task.sent = sent
        for identity, rids in out.acks.items():
            if rids:
                self._send_agent(identity, p.ResultAck(result_ids=rids))
        for reply in out.replies:
            reply()

    # -- clients ----------------------------------------------------------------------------------

    def _drain_clients(self) -> None:
        sock = self.clients
        secure = not self.insecure
        for _ in range(200):
            key = ""
            try:
                if secure:
                    fparts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    key = str(fparts[-1].get("User-Id"))
                    parts = [f.bytes for f in fparts]
                else:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2:
                self.counters.bad_frames += 1
                continue
            identity, frame = parts
            self.counters.frames_in += 1
            client = self.trust.client(key)
            if client is None:  # the handshake let it in, and it has been removed since: not a word more
                self._send_client(identity, p.Reply(req_id=_req_id(frame), ok=False, error=(
                    "this client key is not (or no longer) known to the coordinator")))
                continue
            limit = self.cfg.server.max_message_size
            if len(frame) > limit:
                self.counters.oversize += 1
                self._send_client(identity, p.Reply(req_id=_req_id(frame), ok=False, error=(
                    f"request of {len(frame)} bytes is over the coordinator's limit of {limit} bytes "
                    "(server.max_message_size): send fewer tasks per request")))
                continue
            try:
                msg = p.decode(frame)
            except p.ProtocolError as exc:
                self.counters.bad_frames += 1
                self._bad_client_frame.warning("dropped a bad client frame: %s", exc)
                self._send_client(identity, p.Reply(req_id=_req_id(frame), ok=False, error=f"bad request: {exc}"))
                continue
            if not isinstance(msg, p.Request):
                self.counters.bad_frames += 1
                continue
            deliver = functools.partial(self._send_client, identity)
            problem = self._over_limit(client, msg)
            if problem:
                deliver(p.Reply(req_id=msg.req_id, ok=False, error=problem))
                continue
            self._answer(msg, deliver, client)

    def _over_limit(self, client: ClientKey, req: p.Request) -> str | None:
        """Per-client rate limits (token buckets of requests and of submitted tasks, 2 s deep)."""
        sec = self.cfg.security
        now = time.monotonic()
        tasks_in = req.args.get("tasks") if req.op == "create_tasks" else None
        n = len(tasks_in) if isinstance(tasks_in, list) else (1 if req.op == "create_task" else 0)
        last, reqs, tasks = self._buckets.get(client.key, (now, 2 * sec.requests_per_s, 2 * sec.tasks_per_s))
        reqs = min(2 * sec.requests_per_s, reqs + (now - last) * sec.requests_per_s)
        tasks = min(2 * sec.tasks_per_s, tasks + (now - last) * sec.tasks_per_s)
        problem = None
        if reqs < 1:
            problem = (f"rate limit: client {client.name!r} is over {sec.requests_per_s:g} requests/s "
                       "(security.requests_per_s); slow down and retry")
        elif n and tasks < n:
            problem = (f"rate limit: client {client.name!r} is over {sec.tasks_per_s:g} submitted tasks/s "
                       f"(security.tasks_per_s); {n} task(s) refused, nothing submitted; retry in a moment")
        else:
            reqs -= 1
            tasks -= n
        if len(self._buckets) > 10_000:
            self._buckets.clear()
        self._buckets[client.key] = (now, reqs, tasks)
        if problem:
            self.trust.security("rate_limited", client.name, problem, throttle=True)
        return problem

    def _answer(self, req: p.Request, deliver: Callable[[p.Reply], None], client: ClientKey) -> None:
        """One request, from a socket or from the inbox: answered now, or later by the analysis
        thread (a read-only query that may take long), always delivered from this loop."""
        if self.api.knows(req.op) and not role_allows(client.role, req.op):
            need = role_needed(req.op)
            why = (f"{req.op} needs the {need} role{' (or admin)' if need == 'operator' else ''}; the client "
                   f"key {client.name!r} has the {client.role} role")
            self.trust.security("refused", client.name, why, throttle=True)
            deliver(p.Reply(req_id=req.req_id, ok=False, error=why))
            return
        reply = self.api.handle(req, client)
        if isinstance(reply, p.Reply):
            if reply.ok and req.op not in READ_ONLY_OPS:
                # Sent after the commit of whatever the request changed: a reply is a promise.
                self._out.replies.append(functools.partial(deliver, reply))
            else:
                deliver(reply)  # a refusal or a read promises nothing to wait for
            return
        if isinstance(reply, Waiting):
            self._wait(reply, deliver)
            return
        d = reply

        def answered(fut: Future[Any]) -> None:
            exc = fut.exception()
            if exc is None:
                rep = p.Reply(req_id=d.req_id, data=fut.result())
            elif isinstance(exc, (ApiError, ApiRefusal, ValueError, KeyError)):
                rep = p.Reply(req_id=d.req_id, ok=False, error=f"{d.op}: {exc}")
            else:
                log.error("%s failed: %s", d.op, exc, exc_info=exc)
                rep = p.Reply(req_id=d.req_id, ok=False, error=f"{d.op} failed: {type(exc).__name__}: {exc}")
            deliver(rep)

        if self.views.knows(d.op):
            refused = self.views.run(client.key, d.fn, answered, self.inbox.put)
            if refused:
                deliver(p.Reply(req_id=d.req_id, ok=False, error=f"{d.op}: {refused}"))
            return
        self.store.flush(wait=True)  # the query must see every result already acknowledged
        self.analysis.run(d.fn, answered)

    def _wait(self, w: Waiting, deliver: Callable[[p.Reply], None]) -> None:
        """The client API's wait: answered when every task named is final, or at the timeout."""
        statuses: dict[str, str | None] = {}
        unknown: list[str] = []
        for tid in w.task_ids:
            task = self.tasks.get(tid)
            if task is None:
                unknown.append(tid)
            else:
                statuses[tid] = task.status if task.status in p.TERMINAL_STATUSES else None
        if unknown:
            stored = self.store.task_statuses(unknown)
            missing = [t for t in unknown if t not in stored]
            if missing:
                deliver(p.Reply(req_id=w.req_id, ok=False, error=f"wait: no task {', '.join(missing[:10])}"))
                return
            statuses.update((t, s if s in p.TERMINAL_STATUSES else None) for t, s in stored.items())

        def answer(data: dict[str, Any]) -> None:
            self._out.replies.append(functools.partial(deliver, p.Reply(req_id=w.req_id, data=data)))

        try:
            self.waiters.add(statuses, time.monotonic() + w.timeout, answer)
        except OverflowError as exc:
            deliver(p.Reply(req_id=w.req_id, ok=False, error=f"wait: {exc}"))

    def _send_client(self, identity: bytes, rep: p.Reply) -> None:
        frame = p.encode(rep)
        limit = self.cfg.server.max_message_size
        if len(frame) > limit:
            # A client's socket would drop it without a word; say what to ask for instead.
            self.counters.oversize += 1
            frame = p.encode(p.Reply(req_id=rep.req_id, ok=False, error=(
                f"the reply ({len(frame)} bytes) is over the limit of {limit} bytes (server.max_message_size); "
                "ask for fewer rows (limit/offset)")))
        try:
            self.clients.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters.unroutable += 1

    # -- figures ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Commands for the API (get_status) and the window's stats events."""
        store = self.store
        return {
            "coordinator_id": self.s.coordinator_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "workers_online": self.workers.online_count(),
            "workers_known": len(self.workers),
            "tasks": self.tasks.status_counts(),
            "counters": dataclasses.asdict(self.counters),
            "dispatch_latency_us": self.latency.summary(),
            "db": {"write_errors": store.write_errors, "last_write_error": store.last_write_error,
                   "refused_rows": store.refused_rows, "batches_committed": store.committed,
                   "inline_flushes": store.inline_flushes,
                   "background_flushes": store.background_flushes, "rows_written": store.rows_written},
            "ports": dict(self.ports),
            "outputs": self.outputs.stats(),
            "security": {"insecure": self.insecure, "fingerprint": "" if self.insecure else self.trust.fingerprint,
                         "pending_agents": sum(1 for a in self.trust.agents.values() if a.state == "pending")},
        }


def _req_id(frame: bytes) -> int:
    """The request id of a frame we could not accept, when it can be read, so that the client
    matches the error to its request; 0 otherwise."""
    try:
        return int(msgspec.msgpack.decode(frame, type=_ReqId).req_id)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return 0


class _ReqId(msgspec.Struct):
    req_id: int = 0


def _rejection(instructions: list[sch.Instruction], task_id: str) -> str | None:
    for ins in instructions:
        if type(ins) is sch.Rejected and ins.task_id == task_id:
            return ins.reason
    return None
