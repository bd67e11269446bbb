"""Worker health alerts: a state machine with no I/O. Stimuli go in, alert transitions come out.

    book = AlertBook(Thresholds(cpu=95, memory=90, disk=90, sustained_s=30, failure_threshold=5))
    changes = book.heartbeat("lab-3", {"cpu_percent": 98.0, ...}, now)

The coordinator's loop feeds it what it learns (heartbeats, task ends, workers lost, leaving and
coming back, an engineer's acknowledgements and mutes) and carries out what it answers: each
:class:`Alert` returned is a transition to publish (event stream, events table, handlers). Time
arrives with each stimulus; nothing here reads a clock, so every rule is testable alone.

Rules
-----
- **Resources** (``cpu``, ``memory``, ``disk``, ``gpu_memory``): raised once the value has stayed
  above its threshold for ``sustained_s`` seconds (judged at each heartbeat; 0 raises on the first
  one above), cleared once it is below threshold - :data:`HYSTERESIS` points, so a value hovering
  at the threshold does not flap. GPU memory uses the memory threshold. A heartbeat without a
  value (no GPU) changes nothing but restarts the "above since" clock.
- **Failures**: raised when ``failure_threshold`` tasks in a row fail on one worker (a sick
  machine, not a bad test); cleared by the next success there.
- **Offline**: raised when a worker is lost (silent past the heartbeat timeout); cleared once it
  has been back for ``back_s`` seconds (judged at its heartbeats). A worker that flaps (lost, back,
  lost ...) keeps one raised alert: lost again before it settled raises nothing new, so a web hook
  hears one raise and, once the machine is steady, one clear, not two posts per flap. A worker
  that leaves on purpose (goodbye, revoked) raises none, and its open alerts are cleared: nobody
  needs to watch a machine that was switched off on purpose.
- An episode (raise .. clear) keeps one ``alert_id``; a new episode gets a new one.
- **Acknowledge** marks alerts seen (the window stops asking for attention); ids that are no
  alert of this book are regression findings the window acknowledges the same way: they are kept
  in :attr:`AlertBook.acked_findings`.
- **Mute** (a worker, a kind, or both, or everything, until a time): a muted alert is still
  recorded and listed, with ``muted`` set, and its transitions say ``notify`` False (no handler
  call, no desktop notification).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

__all__ = ["ALERT_KINDS", "HYSTERESIS", "RESOURCE_KINDS", "Alert", "AlertBook", "Thresholds"]

RESOURCE_KINDS = ("cpu", "memory", "disk", "gpu_memory")
ALERT_KINDS = (*RESOURCE_KINDS, "failures", "offline")
#: Points below the threshold a resource must fall to clear its alert.
HYSTERESIS = 5.0
#: A resource at or above this (%) is critical, not a warning: the machine is about to be full.
CRITICAL_PERCENT = 98.0
# Cleared alerts remembered for the list (the newest); raised ones are always kept.
KEEP_CLEARED = 5000
# Acknowledged finding ids remembered (the newest): each is one small string.
KEEP_ACKED_FINDINGS = 100_000

_METRIC = {"cpu": "cpu_percent", "memory": "memory_percent", "disk": "disk_percent",
           "gpu_memory": "gpu_memory_percent"}
_LABEL = {"cpu": "CPU", "memory": "memory", "disk": "disk", "gpu_memory": "GPU memory"}


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """health_monitor's alert settings (percent, seconds, a count)."""

    cpu: float = 95.0
    memory: float = 90.0
    disk: float = 90.0
    sustained_s: float = 30.0
    failure_threshold: int = 5
    #: Seconds a lost worker must be back before its offline alert clears (one heartbeat interval).
    back_s: float = 5.0

    @classmethod
    def from_config(cls, hm: Any) -> Thresholds:
        """From a :class:`~dtf_gui.coordinator.config.HealthMonitorSection` (duck-typed: no import)."""
        return cls(cpu=hm.cpu_threshold, memory=hm.memory_threshold, disk=hm.disk_threshold,
                   sustained_s=hm.sustained_s, failure_threshold=hm.failure_threshold,
                   back_s=hm.heartbeat_interval)

    def of(self, kind: str) -> float:
        return {"cpu": self.cpu, "memory": self.memory, "disk": self.disk, "gpu_memory": self.memory}[kind]


class Alert(msgspec.Struct, kw_only=True):
    """One alert in its latest state. ``notify``: whether this transition is for handlers and
    notifications (False when muted, and for acknowledgement and mute updates)."""

    alert_id: str
    kind: str
    worker_id: str
    state: str                  # "raised" | "cleared"
    severity: str               # "warning" | "critical"
    message: str
    value: float | None = None
    threshold: float | None = None
    time: float = 0.0
    acked: bool = False
    muted: bool = False
    notify: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The event's and the API's shape (``notify`` is the loop's business, not the window's)."""
        return {"alert_id": self.alert_id, "kind": self.kind, "worker_id": self.worker_id, "state": self.state,
                "severity": self.severity, "message": self.message, "value": self.value,
                "threshold": self.threshold, "time": self.time, "acked": self.acked, "muted": self.muted}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        """A stored alert back; raises ValueError for a row that is not one."""
        try:
            return msgspec.convert({k: d[k] for k in d if k != "notify"}, cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"not an alert: {exc}") from None


class _Resource:
    __slots__ = ("above_since", "alert")

    def __init__(self) -> None:
        self.above_since: float | None = None
        self.alert: Alert | None = None


class _Worker:
    __slots__ = ("back_since", "failures", "failures_alert", "offline_alert", "resources")

    def __init__(self) -> None:
        self.resources: dict[str, _Resource] = {k: _Resource() for k in RESOURCE_KINDS}
        self.failures = 0
        self.failures_alert: Alert | None = None
        self.offline_alert: Alert | None = None
        # When a lost worker came back; its offline alert clears once that lasted back_s.
        self.back_since: float | None = None


def _pct(x: float) -> str:
    """A reading: whole percent is what an engineer needs."""
    return f"{x:.0f}%"


def _lim(x: float) -> str:
    """A threshold as it was configured (90%, 97.5%)."""
    return f"{x:g}%"


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


class AlertBook:
    """See the module docstring. Not thread-safe: one owner (the coordinator loop) calls it."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.t = thresholds or Thresholds()
        self._workers: dict[str, _Worker] = {}
        # Every alert by id in its latest state, oldest transition first (the list's order reversed).
        self._alerts: collections.OrderedDict[str, Alert] = collections.OrderedDict()
        # The cleared ones among them, oldest clear first: the next to forget is at the front (O(1)).
        self._cleared: collections.OrderedDict[str, None] = collections.OrderedDict()
        # (worker_id or None, kind or None) -> muted until (the stimuli's clock).
        self.mutes: dict[tuple[str | None, str | None], float] = {}
        self.acked_findings: collections.OrderedDict[str, None] = collections.OrderedDict()

    # -- stimuli ---------------------------------------------------------------------------------

    def heartbeat(self, worker_id: str, metrics: Mapping[str, float | None], now: float) -> list[Alert]:
        w = self._worker(worker_id)
        out: list[Alert] = self._settle(worker_id, w, now)
        for kind in RESOURCE_KINDS:
            r = w.resources[kind]
            raw = metrics.get(_METRIC[kind])
            value = float(raw) if isinstance(raw, (int, float)) and math.isfinite(raw) else None
            limit = self.t.of(kind)
            if value is None:
                r.above_since = None
                continue
            if r.alert is not None:
                if value < limit - HYSTERESIS:
                    r.above_since = None
                    out.append(self._clear(r.alert, now, f"{worker_id}: {_LABEL[kind]} back to {_pct(value)} "
                                                         f"(alert at {_lim(limit)})", value))
                    r.alert = None
                continue
            if value <= limit:
                r.above_since = None
                continue
            if r.above_since is None:
                r.above_since = now
            lasted = now - r.above_since
            if lasted >= self.t.sustained_s:
                held = f" for {_secs(lasted)}" if self.t.sustained_s > 0 else ""
                severity = "critical" if value >= CRITICAL_PERCENT else "warning"
                r.alert = self._raise(kind, worker_id, now, severity, f"{worker_id}: {_LABEL[kind]} above "
                                      f"{_lim(limit)}{held} ({_pct(value)})", value, limit)
                out.append(r.alert)
        return out

    def task_ended(self, worker_id: str, failed: bool, now: float) -> list[Alert]:
        w = self._worker(worker_id)
        n = self.t.failure_threshold
        if not failed:
            before = w.failures
            w.failures = 0
            if w.failures_alert is None:
                return []
            a = self._clear(w.failures_alert, now, f"{worker_id}: a task succeeded again after {before} failures "
                                                   "in a row", 0.0)
            w.failures_alert = None
            return [a]
        w.failures += 1
        if w.failures_alert is not None or w.failures < n:
            return []
        w.failures_alert = self._raise("failures", worker_id, now, "critical",
                                       f"{worker_id}: {w.failures} tasks failed in a row there (a sick machine? "
                                       "other workers may run the same tests)", float(w.failures), float(n))
        return [w.failures_alert]

    def worker_lost(self, worker_id: str, reason: str, now: float) -> list[Alert]:
        w = self._worker(worker_id)
        for r in w.resources.values():
            r.above_since = None
        w.back_since = None
        if w.offline_alert is not None:
            return []  # still raised (perhaps back, but not for long): the same episode goes on
        why = f": {reason}" if reason else ""
        w.offline_alert = self._raise("offline", worker_id, now, "critical", f"{worker_id} is offline{why}; its "
                                      "tasks went back to the queue", None, None)
        return [w.offline_alert]

    def worker_back(self, worker_id: str, now: float) -> list[Alert]:
        """The worker is heard from again: its offline alert clears once it stayed (``back_s``,
        judged here and at its heartbeats), not at once: a flapping machine must not post a clear
        and a new raise each time round."""
        w = self._workers.get(worker_id)
        if w is None or w.offline_alert is None:
            return []
        if w.back_since is None:
            w.back_since = now
        return self._settle(worker_id, w, now)

    def _settle(self, worker_id: str, w: _Worker, now: float) -> list[Alert]:
        if w.offline_alert is None or w.back_since is None or now - w.back_since < self.t.back_s:
            return []
        held = f" (for {_secs(now - w.back_since)})" if self.t.back_s > 0 else ""
        a = self._clear(w.offline_alert, now, f"{worker_id} is back online{held}", None)
        w.offline_alert = None
        w.back_since = None
        return [a]

    def worker_left(self, worker_id: str, now: float, why: str = "left") -> list[Alert]:
        """The worker went away on purpose: no offline alert, and its open alerts end."""
        w = self._workers.pop(worker_id, None)
        if w is None:
            return []
        out = []
        for a in (*(r.alert for r in w.resources.values()), w.failures_alert, w.offline_alert):
            if a is not None:
                out.append(self._clear(a, now, f"{worker_id} {why}: its {_LABEL.get(a.kind, a.kind)} alert is "
                                               "closed", None))
        return out

    def ack(self, ids: Iterable[str], now: float) -> tuple[list[str], list[Alert]]:
        """Acknowledge: (every id taken, the alerts whose flag changed, to publish again)."""
        taken: list[str] = []
        changed: list[Alert] = []
        for i in dict.fromkeys(ids):
            taken.append(i)
            a = self._alerts.get(i)
            if a is None:
                self.acked_findings[i] = None
                self.acked_findings.move_to_end(i)
                while len(self.acked_findings) > KEEP_ACKED_FINDINGS:
                    self.acked_findings.popitem(last=False)
            elif not a.acked:
                a.acked = True
                changed.append(self._update(a))
        return taken, changed

    def mute(self, worker_id: str | None, kind: str | None, until: float, now: float) -> list[Alert]:
        """Mute a worker's alerts, a kind everywhere, one kind of one worker, or (both None)
        everything, until ``until``; a new mute of the same scope replaces the old one (a
        short one ends it). Returns the raised alerts whose flag changed."""
        if kind is not None and kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r}; known: {', '.join(ALERT_KINDS)}")
        self.mutes[(worker_id, kind)] = until
        self.mutes = {k: u for k, u in self.mutes.items() if u > now}
        changed = []
        for a in self._alerts.values():
            if a.state == "raised":
                m = self.is_muted(a.worker_id, a.kind, now)
                if m != a.muted:
                    a.muted = m
                    changed.append(self._update(a))
        return changed

    def is_muted(self, worker_id: str, kind: str, now: float) -> bool:
        m = self.mutes
        return any(m.get(k, 0.0) > now for k in ((None, None), (worker_id, None), (None, kind), (worker_id, kind)))

    # -- reading ---------------------------------------------------------------------------------

    def get(self, alert_id: str) -> Alert | None:
        return self._alerts.get(alert_id)

    def alerts(self, now: float, include_cleared: bool = False, limit: int = 500) -> list[Alert]:
        """Newest transition first; a raised alert's ``muted`` as of ``now``."""
        out: list[Alert] = []
        for a in reversed(self._alerts.values()):
            if len(out) >= limit:
                break
            if a.state == "raised":
                out.append(msgspec.structs.replace(a, muted=self.is_muted(a.worker_id, a.kind, now)))
            elif include_cleared:
                out.append(a)
        return out

    def ids(self) -> list[str]:
        """Every alert kept (raised, and the newest cleared), oldest transition first."""
        return list(self._alerts)

    def raised(self) -> list[Alert]:
        return [a for a in self._alerts.values() if a.state == "raised"]

    # -- restoring from what was published (a restart) --------------------------------------------

    def restore_alert(self, a: Alert) -> None:
        """Replay a published transition: the book's state becomes what it was after it."""
        old = self._alerts.get(a.alert_id)
        if old is not None:
            a.acked = a.acked or old.acked
        self._put(a)
        w = self._worker(a.worker_id)
        live = a if a.state == "raised" else None
        if a.kind in RESOURCE_KINDS:
            w.resources[a.kind].alert = live
        elif a.kind == "failures":
            w.failures_alert = live
            w.failures = int(a.value or 0) if live else 0
        elif a.kind == "offline":
            w.offline_alert = live

    # -- inside ----------------------------------------------------------------------------------

    def _worker(self, worker_id: str) -> _Worker:
        w = self._workers.get(worker_id)
        if w is None:
            w = self._workers[worker_id] = _Worker()
        return w

    def _put(self, a: Alert) -> None:
        aid = a.alert_id
        if aid in self._alerts:
            self._alerts.move_to_end(aid)
        self._alerts[aid] = a
        if a.state == "cleared":
            self._cleared[aid] = None
            self._cleared.move_to_end(aid)
            while len(self._cleared) > KEEP_CLEARED:
                old, _ = self._cleared.popitem(last=False)
                del self._alerts[old]
        else:
            self._cleared.pop(aid, None)

    def _raise(self, kind: str, worker_id: str, now: float, severity: str, message: str, value: float | None,
               threshold: float | None) -> Alert:
        # One id per episode: the worker, the kind, and when it began (ms), unique across restarts.
        aid = f"{kind}:{worker_id}:{int(now * 1000)}"
        n = 1
        while aid in self._alerts:
            n += 1
            aid = f"{kind}:{worker_id}:{int(now * 1000)}.{n}"
        muted = self.is_muted(worker_id, kind, now)
        a = Alert(alert_id=aid, kind=kind, worker_id=worker_id, state="raised", severity=severity, message=message,
                  value=value, threshold=threshold, time=now, muted=muted, notify=not muted)
        self._put(a)
        return msgspec.structs.replace(a)

    def _clear(self, raised: Alert, now: float, message: str, value: float | None) -> Alert:
        cur = self._alerts.get(raised.alert_id, raised)
        muted = self.is_muted(cur.worker_id, cur.kind, now)
        a = msgspec.structs.replace(cur, state="cleared", message=message, value=value, time=now, muted=muted,
                                    notify=not muted)
        self._put(a)
        return msgspec.structs.replace(a)

    def _update(self, a: Alert) -> Alert:
        """A flag changed (ack, mute): publish it again, not for handlers."""
        return msgspec.structs.replace(a, notify=False)
