"""The worker table: registration, heartbeats, liveness, draining (the health monitor).

Owned by the coordinator's loop thread. It keeps one :class:`WorkerRecord` per agent, writes its
row through the store, marks it for the window through the event hub, and answers with the
scheduler events that follow from what happened (a worker came up, came back, or was lost); the
loop feeds those to the scheduler. It sends nothing: sockets are the loop's.
"""

from __future__ import annotations

import logging
import time

from dtf_agent import protocol as p
from dtf_gui.coordinator import scheduler as sch
from dtf_gui.coordinator.events import EventHub
from dtf_gui.coordinator.records import WorkerRecord
from dtf_gui.coordinator.store import WORKER_COLUMNS, Store, worker_row_to_dict

log = logging.getLogger(__name__)

__all__ = ["LOST", "WorkerTable", "worker_spec"]

# A worker's health state once it went silent (health_status["state"]); one that left is plain offline.
LOST = "lost"


def worker_spec(w: WorkerRecord) -> sch.WorkerSpec:
    """The scheduler's view of a worker: what it offers, from what the agent detected."""
    caps = w.capabilities
    return sch.WorkerSpec(
        worker_id=w.worker_id, slots=w.slots, tags=frozenset(w.tags),
        hardware=frozenset(caps.get("hardware") or ("cpu",)),
        memory_gb=float(caps.get("memory_gb") or float("inf")), gpus=int(caps.get("gpu_count") or 0),
        gpu_memory_gb=float(caps.get("gpu_memory_gb") or 0.0), os=str(caps.get("os") or ""),
        groups=frozenset(w.metadata.get("groups") or ()),
    )


class WorkerTable:
    def __init__(self, store: Store, hub: EventHub, heartbeat_timeout: float) -> None:
        self.store = store
        self.hub = hub
        self.heartbeat_timeout = heartbeat_timeout
        self.workers: dict[str, WorkerRecord] = {}
        self.by_identity: dict[bytes, str] = {}
        # Workers an engineer drained in an earlier life of the coordinator (their stored rows say
        # so): they stay drained when they register again.
        self._drained: set[str] = set()

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self.workers.get(worker_id)

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.workers

    def ids(self) -> list[str]:
        return sorted(self.workers)

    def online_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.online)

    def __len__(self) -> int:
        return len(self.workers)

    # -- what agents tell us ---------------------------------------------------------------------

    def register(self, identity: bytes, msg: p.Register, *, key: str = "", extra_tags: tuple[str, ...] = ()
                 ) -> tuple[WorkerRecord, WorkerRecord | None, list[sch.Event]]:
        """A (re)registration: the new record, the one it replaces (None for a newcomer), and the
        scheduler events it implies. What the worker's tasks become is the loop's to decide: it
        compares the incarnations and the tasks the agent says it holds (server.py)."""
        now = time.time()
        old = self.workers.get(msg.worker_id)
        w = WorkerRecord(
            msg.worker_id, identity, hostname=msg.hostname, slots=msg.slots, capabilities=msg.capabilities,
            tags=[*msg.tags, *(t for t in extra_tags if t not in msg.tags)],
            metadata={"agent_version": msg.agent_version, "groups": msg.groups},
            running=msg.running, now=now, first_seen=old.first_seen if old else now, seen_at=time.monotonic(),
            incarnation=msg.incarnation, key=key)
        draining = _draining(old) if old is not None else msg.worker_id in self._drained
        _set_draining(w, draining)
        if old is not None and old.identity != identity:
            self.by_identity.pop(old.identity, None)
        self.workers[msg.worker_id] = w
        self.by_identity[identity] = msg.worker_id
        self.store.put_worker(w)
        if old is None or not old.online or old.incarnation != msg.incarnation:
            self.store.put_event("worker_online", msg.worker_id, {"hostname": msg.hostname, "slots": msg.slots})
            log.info("agent %s (%s) registered with %d slot(s)", msg.worker_id, msg.hostname, msg.slots)
        self.hub.worker_changed(w)
        events: list[sch.Event] = [sch.WorkerUp(now, worker_spec(w))]
        if draining:
            events.append(sch.DrainWorker(now, w.worker_id))
        return w, old, events

    def seen(self, identity: bytes, key: str = "") -> tuple[WorkerRecord | None, list[sch.Event]]:
        """Any frame from a registered agent proves it alive; None when we do not know it (it
        must register again), or when the frame did not come with the key the worker registered
        with. A worker that had been given up comes back."""
        wid = self.by_identity.get(identity)
        w = self.workers.get(wid) if wid else None
        if w is None or w.key != key:
            return None, []
        w.seen_at = time.monotonic()
        if w.online:
            return w, []
        w.online = True
        w.status = p.ONLINE
        w.health_status = {"state": "healthy", **_drain_flag(w)}
        self.store.put_worker(w)
        self.hub.worker_changed(w)
        return w, [sch.WorkerUp(time.time(), worker_spec(w))]

    def heartbeat(self, w: WorkerRecord, msg: p.Heartbeat) -> None:
        w.last_seen = time.time()
        w.performance_metrics = {"cpu_percent": msg.cpu_percent, "memory_percent": msg.memory_percent,
                                 "disk_percent": msg.disk_percent}
        if msg.gpu_percent is not None:
            w.performance_metrics["gpu_percent"] = msg.gpu_percent
        if msg.gpu_memory_percent is not None:
            w.performance_metrics["gpu_memory_percent"] = msg.gpu_memory_percent
        w.current_task = msg.running
        w.status = p.BUSY if msg.running else p.ONLINE
        self.store.put_worker(w)
        self.hub.worker_changed(w)

    def forget_identity(self, w: WorkerRecord) -> None:
        """Frames on the worker's connection are no longer its (it was revoked): they must register."""
        self.by_identity.pop(w.identity, None)

    def gone(self, w: WorkerRecord, reason: str, *, lost: bool = False) -> list[sch.Event]:
        """The worker is offline (it said goodbye, or went silent: ``lost``, which the window shows
        as a problem, unlike a machine that left on purpose): its tasks go back to the queue."""
        w.online = False
        w.status = p.OFFLINE
        w.health_status = {"state": LOST if lost else p.OFFLINE, "reason": reason, **_drain_flag(w)}
        self.store.put_worker(w)
        self.store.put_event("worker_offline", w.worker_id, {"reason": reason})
        self.hub.worker_changed(w)
        return [sch.WorkerLost(time.time(), w.worker_id)]

    def set_draining(self, w: WorkerRecord, draining: bool) -> list[sch.Event]:
        """An engineer drains a worker (it is offered no new task; what runs there finishes) or
        resumes it. Kept in its row (health_status["draining"]), so a restart keeps it drained."""
        if _draining(w) != draining:
            _set_draining(w, draining)
            self.store.put_worker(w)
            self.store.put_event("worker_drained" if draining else "worker_resumed", w.worker_id, {})
            self.hub.worker_changed(w)
            log.info("worker %s %s", w.worker_id, "drained: no new tasks until resumed" if draining else "resumed",
                     extra={"worker_id": w.worker_id})
        if draining:
            self._drained.add(w.worker_id)
        else:
            self._drained.discard(w.worker_id)
        now = time.time()
        return [sch.DrainWorker(now, w.worker_id) if draining else sch.ResumeWorker(now, w.worker_id)]

    def stored(self, worker_id: str) -> WorkerRecord | None:
        """A worker known only by its stored row (it has not registered since the coordinator
        started), as an offline record to drain or resume: :meth:`set_draining` keeps the flag in
        its row and applies it when the worker registers. None if the database never saw it."""
        rows = self.store.query(f"SELECT {','.join(WORKER_COLUMNS)} FROM workers WHERE worker_id = ?", (worker_id,))
        if not rows:
            return None
        row = worker_row_to_dict(rows[0])
        last_seen = float(row.get("last_seen") or 0.0)
        w = WorkerRecord(
            worker_id, b"", hostname=str(row.get("hostname") or ""), slots=int(row.get("slots") or 0),
            capabilities=dict(row.get("capabilities") or {}), tags=list(row.get("tags") or []),
            metadata=dict(row.get("metadata") or {}), running=[], now=last_seen,
            first_seen=float(row.get("first_seen") or last_seen), seen_at=0.0)
        w.online = False
        w.status = p.OFFLINE
        w.hardware_id = row.get("hardware_id")
        w.performance_metrics = dict(row.get("performance_metrics") or {})
        w.health_status = dict(row.get("health_status") or {}) or {"state": p.OFFLINE}
        return w

    # -- the loop's timers -----------------------------------------------------------------------

    def sweep(self, now: float) -> list[sch.Event]:
        """Workers silent for longer than the heartbeat timeout (``now`` is monotonic) are lost."""
        events: list[sch.Event] = []
        limit = self.heartbeat_timeout
        for w in list(self.workers.values()):
            if w.online and now - w.seen_at > limit:
                log.warning("agent %s silent for %.0f s: offline, its tasks go back to the queue",
                            w.worker_id, now - w.seen_at, extra={"worker_id": w.worker_id})
                events.extend(self.gone(w, f"no heartbeat for {now - w.seen_at:.0f} s", lost=True))
        return events

    def mark_stored_offline(self) -> None:
        """At start: workers a previous run left online are offline until they register again;
        those drained then stay drained."""
        self.store.mark_workers_offline()
        self._drained = {str(row["worker_id"]) for row in self.store.load_workers()
                         if isinstance(row.get("health_status"), dict) and row["health_status"].get("draining")}

    def shutdown(self) -> None:
        """At stop: every worker is offline as far as the next run knows."""
        for wid, w in self.workers.items():
            if w.online:
                w.status = p.OFFLINE
                self.store.put_worker(w)
                log.debug("worker %s marked offline at shutdown", wid)


def _draining(w: WorkerRecord) -> bool:
    return bool(w.health_status.get("draining"))


def _drain_flag(w: WorkerRecord) -> dict[str, bool]:
    return {"draining": True} if _draining(w) else {}


def _set_draining(w: WorkerRecord, draining: bool) -> None:
    if draining:
        w.health_status["draining"] = True
    else:
        w.health_status.pop("draining", None)
