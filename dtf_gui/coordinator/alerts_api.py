"""Worker health alerts and worker drain, as the coordinator runs them: the client operations,
publishing, persistence, and the thread that calls the engineer's alert handlers.

The rules are in :mod:`dtf_gui.coordinator.alerts` (no I/O); this room feeds them what the loop
learns (:meth:`AlertsApi.heartbeat`, :meth:`AlertsApi.task_ended` ...) and publishes each
transition they answer: an ``alert`` event for the window and subscribers, a row of the events
table (kinds ``alert``, ``alert_ack``, ``alert_mute``: a restarted coordinator replays them,
:meth:`AlertsApi.restore`), and, unless muted, a call of every ``health_monitor.alert_handlers``
function on the ``dtf-alert-handlers`` thread (never on the loop: a handler may post to a slow
web hook).

Operations (merged into the client API like runs_api's): ``list_alerts`` (alerts, acknowledged
finding ids, and the mutes in effect: ``{worker_id, kind, until}``, None for "any"), ``ack_alerts``,
``mute_alert``, ``drain_worker``, ``resume_worker``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal

import msgspec

from dtf_agent import protocol as p
from dtf_gui.coordinator import alerts as rules
from dtf_gui.coordinator import scheduler as sch
from dtf_gui.coordinator.alerts import ALERT_KINDS, Alert, AlertBook, Thresholds
from dtf_gui.coordinator.config import HealthMonitorSection
from dtf_gui.coordinator.events import EventHub
from dtf_gui.coordinator.health import WorkerTable
from dtf_gui.coordinator.plugins import load_callable
from dtf_gui.coordinator.records import WorkerRecord
from dtf_gui.coordinator.store import Store
from dtf_gui.coordinator.telemetry import Throttled
from dtf_gui.coordinator.trust_api import ApiRefusal

log = logging.getLogger(__name__)

__all__ = ["AlertHandlers", "AlertsApi"]

HANDLER_KEY = "health_monitor.alert_handlers"
MAX_MUTE_S = 30 * 86400.0
# Alerts waiting for the handlers at most; beyond that the oldest is dropped (a hook that hangs
# must not grow memory without end).
QUEUE_MAX = 1000
# Acknowledged finding ids returned by list_alerts at most (the newest).
LIST_ACKED_FINDINGS = 10_000

AlertKind = Literal["cpu", "memory", "disk", "gpu_memory", "failures", "offline"]
AlertRef = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ListAlerts(_Args):
    include_cleared: bool = False
    limit: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 500


class AckAlerts(_Args):
    """Alert ids, or ids of regression findings (``change_point:<result_id>:<metric>`` ...)."""

    alert_ids: Annotated[list[AlertRef], msgspec.Meta(min_length=1, max_length=1000)]


class MuteAlert(_Args):
    """Mute one worker's alerts, one kind everywhere, one kind of one worker, or (neither) all."""

    seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_MUTE_S)]
    worker_id: p.Name | None = None
    kind: AlertKind | None = None


class WorkerRef(_Args):
    worker_id: p.Name


class AlertHandlers:
    """The engineer's alert handlers (``package.module:function``, each called as ``fn(alert)``)
    and the one thread that calls them, in order, off the coordinator's loop.

    Loading happens here, at start: a path that does not load is a ValueError naming the
    setting. The owner (the coordinator) calls :meth:`start` and :meth:`stop`. A handler that
    raises is logged with its name; the thread goes on with the next alert."""

    def __init__(self, paths: Sequence[str], *, maxsize: int = QUEUE_MAX) -> None:
        self.handlers: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
            (path, load_callable(path, HANDLER_KEY)) for path in paths]
        self.maxsize = maxsize
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._drop_warning = Throttled(log, 10.0)

    def start(self) -> None:
        if self.handlers and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dtf-alert-handlers", daemon=True)
            self._thread.start()

    def submit(self, alert: dict[str, Any]) -> None:
        """Any thread (the loop): queue one alert for every handler; never blocks."""
        if not self.handlers:
            return
        with self._cond:
            if len(self._items) >= self.maxsize:
                old = self._items.popleft()
                self.dropped += 1
                self._drop_warning.warning("alert handlers are %d alerts behind: dropped the oldest (%s)",
                                           self.maxsize, old.get("message", "?"))
            self._items.append(alert)
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            left = len(self._items)
            self._items.clear()
            self._cond.notify()
        if left:
            log.warning("coordinator stopping: %d alert(s) not handed to the alert handlers", left)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("an alert handler is still busy after %.0f s; leaving it behind", timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._items and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    alert = self._items.popleft()
                for name, fn in self.handlers:
                    try:
                        fn(dict(alert))
                        self.delivered += 1
                    except Exception:
                        self.failed += 1
                        log.exception("alert handler %s failed on %s", name, alert.get("alert_id"))
        except BaseException:
            log.critical("the alert handler thread died", exc_info=True)
            raise


class AlertsApi:
    """Loop thread only, except :attr:`handlers` (its own thread). ``feed`` hands scheduler events
    to the loop's scheduler (drain, resume)."""

    def __init__(self, *, config: HealthMonitorSection, store: Store, hub: EventHub, workers: WorkerTable,
                 feed: Callable[[list[sch.Event]], object], handlers: AlertHandlers | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.book = AlertBook(Thresholds.from_config(config))
        self.store = store
        self.hub = hub
        self.workers = workers
        self.feed = feed
        self.handlers = handlers
        self.clock = clock
        self.restored_rows = 0
        self.ops: dict[str, tuple[type[Any], Callable[[Any], Any]]] = {
            "list_alerts": (ListAlerts, self.list_alerts),
            "ack_alerts": (AckAlerts, self.ack_alerts),
            "mute_alert": (MuteAlert, self.mute_alert),
            "drain_worker": (WorkerRef, self.drain_worker),
            "resume_worker": (WorkerRef, self.resume_worker),
        }

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self.handlers is not None:
            self.handlers.start()

    def close(self) -> None:
        if self.handlers is not None:
            self.handlers.stop()

    def restore(self) -> int:
        """At start: replay what an earlier life published, reading only what the book keeps (the
        events table holds every transition ever made; a year of them must not hold up the start):
        the newest KEEP_CLEARED cleared alerts, the alerts still raised, the acknowledgements of those
        and of the newest findings, and the mutes still in effect. Each read walks the events
        (kind, id) index; what comes back to Python is bounded by what the book keeps.
        :attr:`restored_rows` says how many rows came back. Returns the alerts still raised."""
        now = self.clock()
        q = self.store.query
        # Alerts: the newest cleared ones, and every raised one whose episode has no clear row.
        rows = q("SELECT id, data FROM events WHERE kind = 'alert' AND json_valid(data) "
                 "AND json_extract(data, '$.state') = 'cleared' ORDER BY id DESC LIMIT ?", (rules.KEEP_CLEARED,))
        rows += q("SELECT id, data FROM events WHERE kind = 'alert' AND json_valid(data) "
                  "AND json_extract(data, '$.state') = 'raised' AND subject NOT IN ("
                  "SELECT subject FROM events WHERE kind = 'alert' AND json_valid(data) "
                  "AND json_extract(data, '$.state') = 'cleared')")
        n = len(rows)
        bad = 0
        for _, data in sorted(rows):
            try:
                self.book.restore_alert(Alert.from_dict(msgspec.json.decode(data)))
            except (msgspec.DecodeError, ValueError, TypeError, AttributeError):
                bad += 1
        # Acknowledgements: of the alerts kept (however old the ack) ...
        kept = self.book.ids()
        ack_ids = ("FROM events e, json_each(e.data, '$.ids') j WHERE e.kind = 'alert_ack' AND json_valid(e.data) "
                    "AND json_type(e.data, '$.ids') = 'array'")
        acked = q(f"SELECT DISTINCT j.value {ack_ids} AND j.value IN (SELECT value FROM json_each(?))",
                  (msgspec.json.encode(kept).decode(),)) if kept else []
        self.book.ack([str(i) for (i,) in acked], now)
        # ... and of the newest findings (an alert's id, kept or long forgotten, is no finding).
        newest = q(f"SELECT j.value, max(e.id) AS last {ack_ids} AND substr(j.value, 1, instr(j.value, ':') - 1) "
                   f"NOT IN ({', '.join('?' * len(ALERT_KINDS))}) GROUP BY j.value ORDER BY last DESC LIMIT ?",
                   (*ALERT_KINDS, rules.KEEP_ACKED_FINDINGS))
        findings = [str(i) for i, _ in newest]
        self.book.ack(findings[::-1], now)
        # Mutes: the latest of each scope (a short mute ends a long one), if it has not ended.
        mutes = q("SELECT data FROM events WHERE id IN (SELECT max(id) FROM events WHERE kind = 'alert_mute' "
                  "AND json_valid(data) GROUP BY json_extract(data, '$.worker_id'), json_extract(data, '$.kind')) "
                  "ORDER BY id")
        for (data,) in mutes:
            try:
                d = msgspec.json.decode(data)
                until = float(d.get("until", 0.0))
                if until > now:
                    self.book.mute(d.get("worker_id"), d.get("kind"), until, now)
            except (msgspec.DecodeError, ValueError, TypeError, AttributeError):
                bad += 1
        self.restored_rows = n + len(acked) + len(newest) + len(mutes)
        bad += int(q("SELECT count(*) FROM events WHERE kind IN ('alert', 'alert_ack', 'alert_mute') "
                     "AND NOT json_valid(data)")[0][0])
        if bad:
            log.warning("%d stored alert row(s) could not be read back; skipped", bad)
        raised = len(self.book.raised())
        if raised:
            log.info("%d alert(s) still raised from before the restart", raised)
        return raised

    # -- what the loop learns ----------------------------------------------------------------------

    def heartbeat(self, w: WorkerRecord) -> None:
        self._publish(self.book.heartbeat(w.worker_id, w.performance_metrics, self.clock()))

    def task_ended(self, worker_id: str, failed: bool) -> None:
        self._publish(self.book.task_ended(worker_id, failed, self.clock()))

    def workers_lost(self, events: Iterable[sch.Event]) -> None:
        """The worker table's verdicts of a liveness sweep: those lost raise an offline alert."""
        for ev in events:
            if isinstance(ev, sch.WorkerLost):
                w = self.workers.get(ev.worker_id)
                reason = str(w.health_status.get("reason", "")) if w is not None else ""
                self._publish(self.book.worker_lost(ev.worker_id, reason, self.clock()))

    def worker_left(self, worker_id: str, why: str) -> None:
        self._publish(self.book.worker_left(worker_id, self.clock(), why))

    def worker_back(self, worker_id: str) -> None:
        self._publish(self.book.worker_back(worker_id, self.clock()))

    def _publish(self, alerts: list[Alert]) -> None:
        for a in alerts:
            d = a.to_dict()
            self.hub.add("alert", d, a.time)
            self.store.put_event("alert", a.alert_id, d, when=a.time)
            if a.state == "raised":
                log.warning("alert: %s", a.message)
            else:
                log.info("alert cleared: %s", a.message)
            if a.notify and self.handlers is not None:
                self.handlers.submit(d)

    def _republish(self, alerts: list[Alert]) -> None:
        """A flag changed (acknowledged, muted): the window hears it; the row is the ack/mute's own."""
        for a in alerts:
            self.hub.add("alert", a.to_dict(), self.clock())

    # -- operations --------------------------------------------------------------------------------

    def list_alerts(self, a: ListAlerts) -> dict[str, Any]:
        alerts = self.book.alerts(self.clock(), a.include_cleared, a.limit)
        acked = list(self.book.acked_findings)[-LIST_ACKED_FINDINGS:]
        now = self.clock()
        mutes = [{"worker_id": w, "kind": k, "until": u} for (w, k), u in self.book.mutes.items() if u > now]
        return {"alerts": [x.to_dict() for x in alerts], "acked_findings": acked[::-1], "mutes": mutes}

    def ack_alerts(self, a: AckAlerts) -> dict[str, Any]:
        now = self.clock()
        taken, changed = self.book.ack(a.alert_ids, now)
        self.store.put_event("alert_ack", "", {"ids": taken}, when=now)
        self._republish(changed)
        return {"acked": taken}

    def mute_alert(self, a: MuteAlert) -> dict[str, Any]:
        now = self.clock()
        until = now + a.seconds
        changed = self.book.mute(a.worker_id, a.kind, until, now)
        self.store.put_event("alert_mute", a.worker_id or "", {"worker_id": a.worker_id, "kind": a.kind,
                                                              "until": until}, when=now)
        self._republish(changed)
        return {"muted_until": until}

    def _worker(self, worker_id: str) -> WorkerRecord:
        """The worker, live; or, for one that has not registered since the coordinator started (a
        restart, the machine still off), its stored row: draining it or resuming it changes the row,
        which applies when it registers."""
        w = self.workers.get(worker_id) or self.workers.stored(worker_id)
        if w is None:
            known = ", ".join(self.workers.ids()[:20]) or "none yet"
            raise ApiRefusal(f"no worker {worker_id!r} has ever registered with this coordinator "
                             f"(connected now: {known})")
        return w

    def drain_worker(self, a: WorkerRef) -> dict[str, Any]:
        w = self._worker(a.worker_id)
        self.feed(self.workers.set_draining(w, True))
        return w.summary()

    def resume_worker(self, a: WorkerRef) -> dict[str, Any]:
        w = self._worker(a.worker_id)
        self.feed(self.workers.set_draining(w, False))
        return w.summary()
