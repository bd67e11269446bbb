"""The coordinator: one thread, one zmq.Poller loop, every socket owned by that thread.

Sockets
- agents:  ROUTER (default port 8081); each agent's DEALER identity is its worker id.
- clients: ROUTER (default port 8080); the window, in the same process, calls :meth:`Coordinator.request`,
  which hands the same requests to this loop through a queue (no socket in the GUI thread).
- events:  PUB (default port 8082); batches of :class:`protocol.Event`.

The loop decodes every frame through ``protocol.decode``; a bad frame is dropped and counted and
never stops the loop. Each peer role has one dispatch table (message type -> handler, client op
-> handler). Scheduling rules live in the I/O-free scheduler: the loop feeds it events and carries
out the instructions it returns. The store is written only here, in batches.
"""

from __future__ import annotations

import array
import dataclasses
import importlib
import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from dtf_agent import discovery
from dtf_agent import protocol as p
from dtf_agent.transport import bind, hostname, make_socket
from dtf_gui.coordinator import scheduler as sch
from dtf_gui.coordinator.aggregator import ResultAggregator
from dtf_gui.coordinator.api import ApiError, ClientApi, Deferred
from dtf_gui.coordinator.state import TaskTable
from dtf_gui.coordinator.store import Store

log = logging.getLogger(__name__)

EventSink = Callable[[list[p.Event]], None]
LATENCY_SAMPLES = 20_000
# Plain ints: pyzmq's enum wrappers cost more than the check itself on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)  # the most recent round trips kept for the p50/p99 in get_status


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    client_port: int = 8080
    agent_port: int = 8081
    events_port: int = 8082
    db_path: str = "dtf.sqlite"
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0
    event_interval: float = 0.1
    flush_interval: float = 0.25
    batch_size: int = 5000
    scheduler: sch.SchedulerConfig = field(default_factory=sch.SchedulerConfig)
    max_message_size: int = p.DEFAULT_MAX_MESSAGE_SIZE
    anomaly_threshold: float = 2.5
    cache_ttl: float = 10.0
    comparative_lookback_days: float = 7.0
    # Custom result processors (import paths "package.module:function"), the seed's extension point.
    preprocessors: list[str] = field(default_factory=list)
    postprocessors: list[str] = field(default_factory=list)
    # mDNS: announce _dtf._tcp.local. so agents find this coordinator without an address.
    advertise: bool = False
    mdns_interfaces: list[str] = field(default_factory=list)
    service_name: str | None = None
    coordinator_id: str = field(default_factory=lambda: os.urandom(4).hex())


@dataclass
class WorkerRec:
    worker_id: str
    identity: bytes
    row: dict[str, Any]
    last_seen: float  # monotonic
    online: bool = True


@dataclass
class Counters:
    frames_in: int = 0
    bad_frames: int = 0
    unroutable: int = 0
    results_stored: int = 0
    duplicate_results: int = 0
    tasks_dispatched: int = 0
    loop_errors: int = 0


class Coordinator:
    """Start with :meth:`start` (a thread of its own) or run :meth:`serve_forever` in the caller's thread."""

    def __init__(self, settings: ServerSettings, event_sinks: list[EventSink] | None = None) -> None:
        self.s = settings
        self.counters = Counters()
        self.sinks: list[EventSink] = list(event_sinks or [])
        self.ctx: zmq.Context[Any] = zmq.Context.instance()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.ports: dict[str, int] = {}
        self.started_at = time.time()
        # Everything below belongs to the loop thread.
        self.workers: dict[str, WorkerRec] = {}
        self.by_identity: dict[bytes, str] = {}
        self.tasks = TaskTable()
        self.sched = sch.Scheduler(settings.scheduler)
        self.api = ClientApi(self)
        self._assign_out: dict[str, list[p.RunSpec]] = {}
        self._assign_tasks: list[dict[str, Any]] = []
        # Round trips (task sent -> result held) of the most recent tasks, in seconds.
        # A ring buffer of doubles: one item store per result on the hot path, and the percentiles
        # read it without a copy (numpy over the same memory).
        self._latency = array.array("d", bytes(8 * LATENCY_SAMPLES))
        self._latency_n = 0
        self._latency_at = 0.0
        self._latency_cached: dict[str, float] = {}
        self._acks_out: dict[bytes, list[str]] = {}
        self._ev_tasks: dict[str, dict[str, Any]] = {}
        self._ev_workers: dict[str, dict[str, Any]] = {}
        self._ev_other: list[p.Event] = []
        self._ev_seq = 0
        self._completed_since = 0
        self._next_stats = 0.0
        self._last_stats = time.monotonic()
        self._agent_handlers: dict[type, Callable[[bytes, Any], None]] = {
            p.Register: self._on_register,
            p.Heartbeat: self._on_heartbeat,
            p.TaskStarted: self._on_task_started,
            p.Results: self._on_results,
            p.Goodbye: self._on_goodbye,
        }
        self._instruction_handlers: dict[type, Callable[[Any], None]] = {
            sch.Dispatch: self._do_dispatch,
            sch.StatusChanged: self._do_status,
            sch.Rejected: self._do_rejected,
            sch.CancelOnWorker: self._do_cancel_on_worker,
        }
        self._rejections: dict[str, str] = {}
        # Analysis (aggregations, change points) runs on one thread of its own so a query over a
        # million rows never stalls dispatch; its answers come back to this loop through a queue
        # and a wake-up pipe that the poller watches.
        self._analysis = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtf-analysis")
        self._done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # Requests from other threads of this process (the window), answered through futures.
        self._calls: queue.SimpleQueue[tuple[p.Request, Future[p.Reply]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._fresh_results: list[dict[str, Any]] = []
        # Results without metrics only matter to the aggregator's cache (execution-time statistics).
        self._fresh_test_ids: set[str] = set()

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
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("coordinator thread did not stop within %.0f s", timeout)

    def serve_forever(self) -> None:
        self._thread_main()

    def info(self) -> dict[str, Any]:
        """What `coordinator.json` holds: how local clients and agents reach this coordinator."""
        return {
            "pid": os.getpid(),
            "client_endpoint": self.endpoint("clients"),
            "agent_endpoint": self.endpoint("agents"),
            "events_endpoint": self.endpoint("events"),
            "db": str(self.s.db_path),
            "coordinator_id": self.s.coordinator_id,
            "started": self.started_at,
        }

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def endpoint(self, which: str, host: str | None = None) -> str:
        h = host or (self.s.host if self.s.host not in ("0.0.0.0", "*", "") else "127.0.0.1")
        return f"tcp://{h}:{self.ports[which]}"

    # -- the loop thread --------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            self._open()
        except BaseException as exc:
            self.startup_error = exc
            log.error("coordinator failed to start: %s", exc)
            log.debug("coordinator start failure", exc_info=exc)
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
        s = self.s
        self.store = Store(s.db_path, batch_size=s.batch_size, flush_interval=s.flush_interval, background=True)
        self.agents = make_socket(self.ctx, zmq.ROUTER, max_message_size=s.max_message_size)
        self.agents.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted agent takes its id back at once
        self.clients = make_socket(self.ctx, zmq.ROUTER, max_message_size=s.max_message_size)
        # XPUB rather than PUB: it tells us when someone subscribes, so per-task events are only
        # built while somebody (a subscriber or the window) is listening.
        self.pub = make_socket(self.ctx, zmq.XPUB, max_message_size=s.max_message_size)
        self.subscribers = 0
        self.ports = {
            "agents": bind(self.agents, s.host, s.agent_port),
            "clients": bind(self.clients, s.host, s.client_port),
            "events": bind(self.pub, s.host, s.events_port),
        }
        self.aggregator = ResultAggregator(s.db_path, anomaly_threshold=s.anomaly_threshold,
                                           cache_ttl=s.cache_ttl,
                                           comparative_lookback_days=s.comparative_lookback_days)
        for stage, paths in (("preprocess", s.preprocessors), ("postprocess", s.postprocessors)):
            for path in paths:
                self.aggregator.add_processor(stage, load_callable(path, f"result_aggregator.{stage}ors"))
        self._recover()
        self.advertiser: discovery.Advertiser | None = None
        if s.advertise:
            interfaces = discovery.interfaces_for_bind(s.host, s.mdns_interfaces)
            self.advertiser = discovery.Advertiser(
                name=s.service_name or f"DTF coordinator on {hostname()}",
                addresses=interfaces or discovery.local_ipv4_addresses(), interfaces=interfaces,
                agent_port=self.ports["agents"], client_port=self.ports["clients"],
                events_port=self.ports["events"], coordinator_id=s.coordinator_id)
        log.info("coordinator %s listening: agents %s, clients %s, events %s", s.coordinator_id,
                 self.ports["agents"], self.ports["clients"], self.ports["events"])

    def _close(self) -> None:
        if getattr(self, "advertiser", None) is not None:
            self.advertiser.close()
        self._analysis.shutdown(wait=True, cancel_futures=True)
        self.aggregator.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for wid, w in self.workers.items():
            if w.online:
                w.row["status"] = "offline"
                self.store.put_worker(w.row)
                log.debug("worker %s marked offline at shutdown", wid)
        try:
            self.store.close()
        finally:
            for sock in (self.agents, self.clients, self.pub):
                sock.close(linger=0)

    def _recover(self) -> None:
        """State comes back from SQLite: unfinished tasks are queued again."""
        rows = self.store.load_tasks("WHERE status NOT IN ('completed','failed','cancelled')")
        events = []
        for row in rows:
            row["_stored"] = True
            task = self.tasks.add_from_row(row)
            if task["status"] != "pending":
                self.tasks.set_status(task, "pending")
                task["worker_id"] = None
                task["status_reason"] = "requeued after a coordinator restart"
                self.store.put_task(task)
            events.append(sch.Submit(time.time(), self._task_spec(task)))
        for row in self.store.load_workers():
            if row["status"] != "offline":
                row["status"] = "offline"
                self.store.put_worker(row)
        if events:
            log.info("recovered %d unfinished task(s) from %s", len(events), self.s.db_path)
            self._sched(events)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.agents, zmq.POLLIN)
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        now = time.monotonic()
        self._next_events = now + self.s.event_interval
        self._next_health = now + 1.0
        self._next_tick = now + 0.5
        while not self._stop.is_set():
            timeout = max(0.0, min(self._next_events, self._next_health, self._next_tick) - time.monotonic())
            if self.store.pending_rows():
                timeout = min(timeout, self.s.flush_interval)
            for sock, _ in poller.poll(timeout * 1000 + 1):
                try:
                    if sock is self.agents:
                        self._drain_agents()
                    elif sock is self.clients:
                        self._drain_clients()
                    elif sock is self.pub:
                        self._drain_subscriptions()
                    else:
                        self._run_done()
                except Exception:
                    self.counters.loop_errors += 1
                    log.exception("coordinator: error while handling messages (loop continues)")
            try:
                self._send_out()
                self._timers(time.monotonic())
            except Exception:
                self.counters.loop_errors += 1
                log.exception("coordinator: error in periodic work (loop continues)")
        self._emit_events()

    def _timers(self, now: float) -> None:
        if self.store.flush_due(now):
            self._flush_store()
        # Each deadline moves before its work runs, so a failing step cannot spin the loop.
        if now >= self._next_tick:
            self._next_tick = now + 0.5
            self._sched([sch.Tick(time.time())])
            self._send_out()
        if now >= self._next_health:
            self._next_health = now + 1.0
            self._check_health(now)
        if now >= self._next_events:
            self._next_events = now + self.s.event_interval
            self._emit_events()

    def _flush_store(self) -> None:
        try:
            self.store.flush()
            if self._fresh_results:
                batch, self._fresh_results = self._fresh_results, []
                self._offload(lambda: self.aggregator.ingest(batch), self._on_findings)
            if self._fresh_test_ids:
                ids, self._fresh_test_ids = self._fresh_test_ids, set()
                self._offload(lambda: self.aggregator.invalidate(ids), _ignore)
        except Exception:
            self.counters.loop_errors += 1
            log.exception("coordinator: writing to %s failed; will retry", self.s.db_path)

    # -- agents -----------------------------------------------------------------------------------

    def _drain_agents(self) -> None:
        sock = self.agents
        handlers = self._agent_handlers
        # Checking EVENTS instead of receiving until zmq.Again saves an exception per wake-up.
        for _ in range(1000):
            if not sock.getsockopt(_EVENTS) & _POLLIN:
                return
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
                log.warning("dropped a bad frame from agent %r: %s", identity[:64], exc)
                continue
            handler(identity, msg)

    def _send_agent(self, identity: bytes, msg: p.Message) -> None:
        try:
            self.agents.send_multipart([identity, p.encode(msg)], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            self.counters.unroutable += 1

    def _worker_for(self, identity: bytes) -> WorkerRec | None:
        wid = self.by_identity.get(identity)
        w = self.workers.get(wid) if wid else None
        if w is None:
            # We do not know this peer (we restarted, or it never registered): ask it to.
            self._send_agent(identity, p.Refused(reason="unknown agent; register first", fatal=False,
                                                 reregister=True))
            return None
        w.last_seen = time.monotonic()
        if not w.online:
            self._worker_back(w)
        return w

    def _on_register(self, identity: bytes, msg: p.Register) -> None:
        problem = p.version_problem(msg.protocol_version)
        if problem:
            log.warning("refused agent %s (%s): %s", msg.worker_id, msg.hostname, problem)
            self._send_agent(identity, p.Refused(reason=problem, fatal=True))
            self.store.put_event("refused", msg.worker_id, {"reason": problem})
            return
        now = time.time()
        caps = msg.capabilities
        old = self.workers.get(msg.worker_id)
        row = {
            "worker_id": msg.worker_id, "hostname": msg.hostname, "status": "online",
            "hardware_id": caps.get("hardware_id"), "capabilities": caps, "tags": msg.tags,
            "slots": msg.slots, "last_seen": now, "first_seen": old.row["first_seen"] if old else now,
            "current_task": msg.running, "performance_metrics": {}, "health_status": {"state": "healthy"},
            "metadata": {"agent_version": msg.agent_version, "groups": msg.groups},
        }
        events: list[Any] = []
        if old is not None and old.online:
            # The agent restarted (or reconnected) without us noticing it leave: what it no longer
            # runs was lost with its previous life. Same scheduler call as the adoptions below, so
            # nothing it still runs is dispatched elsewhere in between.
            events.append(sch.WorkerLost(now, msg.worker_id))
        w = WorkerRec(msg.worker_id, identity, row, time.monotonic())
        self.workers[msg.worker_id] = w
        self.by_identity[identity] = msg.worker_id
        self.store.put_worker(row)
        self.store.put_event("worker_online", msg.worker_id, {"hostname": msg.hostname, "slots": msg.slots})
        self._ev_workers[msg.worker_id] = self._worker_event(w)
        log.info("agent %s (%s) registered with %d slot(s)", msg.worker_id, msg.hostname, msg.slots)
        self._send_agent(identity, p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id=msg.worker_id,
                                             heartbeat_interval=self.s.heartbeat_interval,
                                             coordinator_id=self.s.coordinator_id))
        events.append(sch.WorkerUp(now, self._worker_spec(row)))
        # After a coordinator restart (or a reconnect) the agent tells us what it is still running:
        # keep that work rather than run it a second time elsewhere.
        for tid in msg.running:
            task = self.tasks.get(tid)
            if task is not None and (task["status"] == "pending" or task["worker_id"] == msg.worker_id) \
                    and task["status"] not in p.TERMINAL_STATUSES:
                task["worker_id"] = msg.worker_id
                events.append(sch.Adopt(now, tid, msg.worker_id))
        self._sched(events)

    def _on_heartbeat(self, identity: bytes, msg: p.Heartbeat) -> None:
        w = self._worker_for(identity)
        if w is None:
            return
        row = w.row
        row["last_seen"] = time.time()
        row["performance_metrics"] = {"cpu_percent": msg.cpu_percent, "memory_percent": msg.memory_percent,
                                      "disk_percent": msg.disk_percent}
        row["current_task"] = msg.running
        row["status"] = "busy" if msg.running else "online"
        self.store.put_worker(row)
        self._ev_workers[w.worker_id] = self._worker_event(w)

    def _on_task_started(self, identity: bytes, msg: p.TaskStarted) -> None:
        w = self._worker_for(identity)
        if w is None:
            return
        when = msg.time or time.time()
        events = []
        for tid in msg.task_ids:
            task = self.tasks.get(tid)
            if task is not None and task["worker_id"] == w.worker_id:
                task["start_time"] = when
                events.append(sch.StartReported(when, tid, w.worker_id))
        self._sched(events)

    def _on_results(self, identity: bytes, msg: p.Results) -> None:
        w = self._worker_for(identity)
        if w is None:
            return
        now = time.time()
        held = time.perf_counter()
        acks = self._acks_out.setdefault(identity, [])
        events = []
        store = self.store
        # The scheduler hears of this frame's results only after the loop, so a task's status
        # still reads "running" for a second copy of its result within the same frame.
        finished_here: set[str] = set()
        for rec in msg.results:
            acks.append(rec.result_id)
            task = self.tasks.get(rec.task_id)
            # One result per attempt: a resend, a late result of an attempt that was requeued, or a
            # result for a task already finished is acknowledged (so the agent stops resending)
            # but not stored again.
            if (task is None or task["status"] not in ("assigned", "running")
                    or task["attempt"] != rec.attempt or task["worker_id"] != w.worker_id
                    or rec.task_id in finished_here):
                self.counters.duplicate_results += 1
                continue
            stored = {
                "result_id": rec.result_id, "task_id": rec.task_id, "worker_id": w.worker_id,
                "test_id": rec.test_id or task["test_id"], "timestamp": rec.end_time or now,
                "status": rec.status, "execution_time": rec.execution_time, "exit_code": rec.exit_code,
                "error": rec.error, "metrics": rec.metrics, "hardware_metrics": rec.hardware_metrics,
                "environment": None,
                "raw_data": {"stdout_tail": rec.stdout_tail, "stderr_tail": rec.stderr_tail}
                if (rec.stdout_tail or rec.stderr_tail) else None,
                "metadata": None, "attempt": rec.attempt,
            }
            store.put_result(stored)
            finished_here.add(rec.task_id)
            if rec.metrics:
                self._fresh_results.append(stored)
            else:
                self._fresh_test_ids.add(stored["test_id"])
            self.counters.results_stored += 1
            sent = task.get("_sent")
            if sent is not None:
                self._latency[self._latency_n % LATENCY_SAMPLES] = held - sent
                self._latency_n += 1
            task["results"] = rec.result_id
            task["start_time"] = task["start_time"] or rec.start_time
            task["end_time"] = rec.end_time or now
            task["error"] = rec.error or None
            events.append(sch.FinishReported(now, rec.task_id, w.worker_id, rec.status == "success", rec.error,
                                           rec.execution_time))
        self._sched(events)

    def _on_goodbye(self, identity: bytes, msg: p.Goodbye) -> None:
        w = self._worker_for(identity)
        if w is not None:
            log.info("agent %s said goodbye: %s", w.worker_id, msg.reason)
            self._worker_gone(w, f"agent left: {msg.reason}")

    # -- health -----------------------------------------------------------------------------------

    def _check_health(self, now: float) -> None:
        limit = self.s.heartbeat_timeout
        for w in list(self.workers.values()):
            if w.online and now - w.last_seen > limit:
                log.warning("agent %s silent for %.0f s: offline, its tasks go back to the queue",
                            w.worker_id, now - w.last_seen)
                self._worker_gone(w, f"no heartbeat for {now - w.last_seen:.0f} s")

    def _worker_gone(self, w: WorkerRec, reason: str) -> None:
        w.online = False
        w.row["status"] = "offline"
        w.row["health_status"] = {"state": "offline", "reason": reason}
        self.store.put_worker(w.row)
        self.store.put_event("worker_offline", w.worker_id, {"reason": reason})
        self._ev_workers[w.worker_id] = self._worker_event(w)
        self._sched([sch.WorkerLost(time.time(), w.worker_id)])

    def _worker_back(self, w: WorkerRec) -> None:
        w.online = True
        w.row["status"] = "online"
        w.row["health_status"] = {"state": "healthy"}
        self.store.put_worker(w.row)
        self._ev_workers[w.worker_id] = self._worker_event(w)
        self._sched([sch.WorkerUp(time.time(), self._worker_spec(w.row))])

    # -- scheduler glue ---------------------------------------------------------------------------

    def _sched(self, events: list[Any]) -> None:
        if not events:
            return
        handlers = self._instruction_handlers
        for ins in self.sched.handle(events):
            handlers[type(ins)](ins)

    def _task_spec(self, task: dict[str, Any]) -> sch.TaskSpec:
        req = task.get("_requirements")
        return sch.TaskSpec(
            task_id=task["task_id"], priority=task["priority"], dependencies=tuple(task["_dependencies"]),
            requirements=sch.Requirements(
                tags=frozenset(req.get("tags") or ()), hardware=req.get("hardware"),
                min_memory_gb=req.get("min_memory_gb") or 0.0, gpu_count=req.get("gpu_count") or 0,
                gpu_memory_gb=req.get("gpu_memory_gb") or 0.0, os=req.get("os"), worker=req.get("worker"),
                group=req.get("group"),
            ) if req else sch.NO_REQUIREMENTS,
            test_id=task["test_id"] or "", cpu_slots=task.get("_cpu_slots") or 1,
            retry_limit=task.get("_retry_limit"), submit_time=task["create_time"],
            expected_duration=task.get("_expected_duration"), submission=task.get("_submission") or "",
        )

    def _worker_spec(self, row: dict[str, Any]) -> sch.WorkerSpec:
        caps = row.get("capabilities") or {}
        return sch.WorkerSpec(
            worker_id=row["worker_id"], slots=row["slots"], tags=frozenset(row["tags"] or ()),
            hardware=frozenset(caps.get("hardware") or ("cpu",)),
            memory_gb=float(caps.get("memory_gb") or float("inf")), gpus=int(caps.get("gpu_count") or 0),
            gpu_memory_gb=float(caps.get("gpu_memory_gb") or 0.0), os=str(caps.get("os") or ""),
            groups=frozenset((row.get("metadata") or {}).get("groups") or ()),
        )

    def _do_dispatch(self, ins: sch.Dispatch) -> None:
        task = self.tasks.get(ins.task_id)
        w = self.workers.get(ins.worker_id)
        if task is None or w is None:
            return
        task["attempt"] = ins.attempt
        task["worker_id"] = ins.worker_id
        self._assign_out.setdefault(ins.worker_id, []).append(
            p.RunSpec(task_id=task["task_id"], type=task["type"], parameters=task["_parameters"],
                       timeout=task["timeout"], attempt=ins.attempt))
        self._assign_tasks.append(task)
        self.counters.tasks_dispatched += 1

    def _do_status(self, ins: sch.StatusChanged) -> None:
        task = self.tasks.get(ins.task_id)
        if task is None:
            return
        status = ins.status
        if status not in p.TERMINAL_STATUSES and task["task_id"] not in self.tasks.active:
            self.tasks.revive(task["task_id"])
            task["end_time"] = None
            task["error"] = None
        self.tasks.set_status(task, status)
        task["status_reason"] = ins.reason or None
        if ins.worker_id is not None:
            task["worker_id"] = ins.worker_id
        if status == "pending":
            task["worker_id"] = None
            task["start_time"] = None
        elif status in p.TERMINAL_STATUSES:
            task["end_time"] = task["end_time"] or time.time()
            if status == "completed":
                self._completed_since += 1
            elif ins.reason:
                task["error"] = ins.reason
            if status != "completed":
                self.store.put_event(f"task_{status}", ins.task_id, {"reason": ins.reason})
        self.store.put_task(task)
        if self.listening:
            self._ev_tasks[ins.task_id] = task
        if status in p.TERMINAL_STATUSES:
            self.tasks.finished(ins.task_id)

    def _do_rejected(self, ins: sch.Rejected) -> None:
        self._rejections[ins.task_id] = ins.reason

    def _do_cancel_on_worker(self, ins: sch.CancelOnWorker) -> None:
        w = self.workers.get(ins.worker_id)
        if w is not None and w.online:
            self._send_agent(w.identity, p.Cancel(task_ids=[ins.task_id]))

    def _send_out(self) -> None:
        if self._assign_out:
            for wid, specs in self._assign_out.items():
                w = self.workers.get(wid)
                # A worker found lost after this batch was queued has had its tasks requeued by
                # the scheduler already; assigning them now would run them twice.
                if w is not None and w.online:
                    acks = self._acks_out.pop(w.identity, [])
                    self._send_agent(w.identity, p.Assign(tasks=specs, acks=acks))
            self._assign_out = {}
            sent = time.perf_counter()
            for task in self._assign_tasks:
                task["_sent"] = sent
            self._assign_tasks = []
        if self._acks_out:
            for identity, rids in self._acks_out.items():
                if rids:
                    self._send_agent(identity, p.ResultAck(result_ids=rids))
            self._acks_out = {}

    # -- the analysis thread ----------------------------------------------------------------------

    def _offload(self, fn: Callable[[], Any], then: Callable[[Future[Any]], None]) -> None:
        """Run ``fn`` on the analysis thread; ``then(future)`` runs back in this loop."""

        def done(fut: Future[Any]) -> None:  # runs on the analysis thread: hand over, wake, nothing else
            self._done.put(lambda: then(fut))
            self._wake()

        self._analysis.submit(fn).add_done_callback(done)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a full pipe means the loop is being woken anyway

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Any thread of this process: one client-API operation, run by the loop. Returns its data;
        raises ApiError with the coordinator's reason (or when it does not answer in time)."""
        if not self.is_running:
            raise ApiError("the coordinator is not running")
        fut: Future[p.Reply] = Future()
        self._calls.put((p.Request(req_id=0, op=op, args=args or {}), fut))
        self._wake()
        try:
            reply = fut.result(timeout)
        except TimeoutError:
            raise ApiError(f"the coordinator did not answer {op} within {timeout:g} s") from None
        if not reply.ok:
            raise ApiError(reply.error)
        return reply.data

    def _run_done(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while not self._done.empty():  # this loop is the only consumer
            callback = self._done.get()
            try:
                callback()
            except Exception:
                self.counters.loop_errors += 1
                log.exception("coordinator: handling an analysis answer failed")
        while not self._calls.empty():
            req, fut = self._calls.get()
            reply = self.api.handle(req)
            if isinstance(reply, Deferred):
                self._defer(reply, fut.set_result)
            else:
                fut.set_result(reply)

    def _on_findings(self, fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            self.counters.loop_errors += 1
            log.error("result analysis failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            return
        now = time.time()
        for finding in fut.result():
            kind = finding.get("kind", "finding")
            subject = finding.get("result_id") or ""
            # A change point explains the first values of the new level that were flagged as
            # anomalies before it could be seen: withdraw those, here and in the window.
            superseded = finding.get("supersedes") or []
            if superseded:
                self.store.retract_events("anomaly", superseded)
                self._ev_other.append(p.Event(kind="retracted", time=now, data={
                    "kind": "anomaly", "result_ids": list(superseded), "metric": finding.get("metric"),
                    "reason": f"explained by the change point at {subject}"}))
            self.store.put_event(kind, str(subject), finding)
            self._ev_other.append(p.Event(kind=kind, data=finding, time=now))

    # -- task submission (called by the client API in this thread) --------------------------------

    def submit(self, tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Add tasks. Returns (accepted records, {task_id: reason} for the ones refused)."""
        now = time.time()
        added = []
        refused: dict[str, str] = {}
        for t in tasks:
            if self.tasks.get(t["task_id"]) is not None:
                refused[t["task_id"]] = "a task with this id already exists"
                continue
            t.setdefault("create_time", now)
            added.append(self.tasks.add_new(t))
        self._rejections.clear()
        if added:
            # One batch: tasks may depend on each other in any order, and the whole submission is
            # accepted or refused together (a plan is never half queued).
            self._sched([sch.SubmitBatch(now, tuple([self._task_spec(t) for t in added]))])
        refused.update(self._rejections)
        self._rejections.clear()
        if refused:
            for t in added:
                self.tasks.discard(t["task_id"])
                self._ev_tasks.pop(t["task_id"], None)
            return [], refused
        for t in added:
            self.store.put_task(t)
        return added, refused

    def command(self, event: Any, what: str) -> None:
        """One engineer's command about one task (cancel, assign, retry ...); raises ApiError with the
        scheduler's reason when it is refused."""
        self._rejections.clear()
        self._sched([event])
        reason = self._rejections.pop(event.task_id, None)
        self._rejections.clear()
        if reason is not None:
            raise ApiError(reason if reason.startswith("cannot") else f"cannot {what} {event.task_id}: {reason}")

    def cancel(self, task_id: str) -> None:
        self.command(sch.CancelRequested(time.time(), task_id), "cancel")

    # -- clients ----------------------------------------------------------------------------------

    def _drain_clients(self) -> None:
        sock = self.clients
        for _ in range(200):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2:
                self.counters.bad_frames += 1
                continue
            identity, frame = parts
            self.counters.frames_in += 1
            try:
                msg = p.decode(frame)
            except p.ProtocolError as exc:
                self.counters.bad_frames += 1
                log.warning("dropped a bad client frame: %s", exc)
                continue
            if not isinstance(msg, p.Request):
                self.counters.bad_frames += 1
                continue
            reply = self.api.handle(msg)
            if isinstance(reply, Deferred):
                self._defer(reply, lambda rep, ident=identity: self._send_client(ident, rep))
                continue
            try:
                sock.send_multipart([identity, p.encode(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                self.counters.unroutable += 1

    def _send_client(self, identity: bytes, rep: p.Reply) -> None:
        try:
            self.clients.send_multipart([identity, p.encode(rep)], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters.unroutable += 1

    def _defer(self, d: Deferred, deliver: Callable[[p.Reply], None]) -> None:
        """A read-only query that may take long: run on the analysis thread, its reply delivered
        back in this loop."""
        self.store.flush(wait=True)  # the query must see every result already acknowledged

        def reply(fut: Future[Any]) -> None:
            exc = fut.exception()
            if exc is None:
                rep = p.Reply(req_id=d.req_id, data=fut.result())
            elif isinstance(exc, (ApiError, ValueError, KeyError)):
                rep = p.Reply(req_id=d.req_id, ok=False, error=f"{d.op}: {exc}")
            else:
                log.error("%s failed: %s", d.op, exc, exc_info=exc)
                rep = p.Reply(req_id=d.req_id, ok=False, error=f"{d.op} failed: {type(exc).__name__}: {exc}")
            deliver(rep)

        self._offload(d.fn, reply)

    # -- events -----------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return bool(self.sinks) or self.subscribers > 0

    def _drain_subscriptions(self) -> None:
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    def _worker_event(self, w: WorkerRec) -> dict[str, Any]:
        r = w.row
        return {
            "worker_id": w.worker_id, "hostname": r["hostname"], "status": r["status"], "slots": r["slots"],
            "running": len(r["current_task"] or ()), "last_seen": r["last_seen"],
            "cpu_percent": (r["performance_metrics"] or {}).get("cpu_percent"),
            "memory_percent": (r["performance_metrics"] or {}).get("memory_percent"),
            "hardware_id": r["hardware_id"], "tags": r["tags"],
        }

    def stats(self) -> dict[str, Any]:
        counts = self.tasks.status_counts()
        return {
            "coordinator_id": self.s.coordinator_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "workers_online": sum(1 for w in self.workers.values() if w.online),
            "workers_known": len(self.workers),
            "tasks": counts,
            "counters": dataclasses.asdict(self.counters),
            "dispatch_latency_us": self._latency_summary(),
            "db": {"write_errors": self.store.write_errors, "inline_flushes": self.store.inline_flushes,
                   "background_flushes": self.store.background_flushes, "rows_written": self.store.rows_written},
            "ports": dict(self.ports),
        }

    def _latency_summary(self) -> dict[str, float]:
        # At most twice a second, however often status is asked.
        now = time.monotonic()
        if now - self._latency_at < 0.5:
            return self._latency_cached
        self._latency_at = now
        n = min(self._latency_n, LATENCY_SAMPLES)
        if not n:
            self._latency_cached = {"p50": 0.0, "p99": 0.0, "n": 0}
        else:
            p50, p99 = np.percentile(np.frombuffer(self._latency, dtype=np.float64)[:n], [50, 99]) * 1e6
            self._latency_cached = {"p50": float(p50), "p99": float(p99), "n": n}
        return self._latency_cached

    def _emit_events(self) -> None:
        now = time.time()
        events: list[p.Event] = []
        if self._ev_workers:
            events.extend(p.Event(kind="worker", data=d, time=now) for d in self._ev_workers.values())
            self._ev_workers = {}
        if self._ev_tasks:
            events.extend(p.Event(kind="task", data=self.tasks.summary(t), time=now)
                          for t in self._ev_tasks.values())
            self._ev_tasks = {}
        if self._ev_other:
            events.extend(self._ev_other)
            self._ev_other = []
        mono = time.monotonic()
        if mono >= self._next_stats:
            # Counting tasks by status walks the active table: once a second is plenty.
            self._next_stats = mono + 1.0
            stats = self.stats()
            stats["completed_in_interval"] = self._completed_since
            stats["interval_s"] = mono - self._last_stats
            self._last_stats = mono
            self._completed_since = 0
            events.append(p.Event(kind="stats", data=stats, time=now))
        if not events:
            return
        self._ev_seq += 1
        batch = p.EventBatch(events=events, seq=self._ev_seq)
        try:
            self.pub.send(p.encode(batch), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        for sink in self.sinks:
            try:
                sink(events)
            except Exception:
                log.exception("coordinator: an event sink failed")


def _ignore(fut: Future[Any]) -> None:
    if fut.exception() is not None:
        log.error("background analysis step failed: %s", fut.exception())


def load_callable(path: str, key: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function; a clear error naming the config key otherwise."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{key}: cannot load {path!r}: {exc}") from None
    if not callable(obj):
        raise ValueError(f"{key}: {path!r} is not callable")
    return obj

