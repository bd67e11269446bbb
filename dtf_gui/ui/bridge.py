"""The one object through which the window talks to the coordinator.

Events arrive on the coordinator's thread, already batched (10-20 Hz); the bridge hands each batch
over as ONE queued Qt signal, so the GUI thread sees one slot call per batch, never one per event.
Commands go the other way as client-API requests handed to the coordinator's loop
(:meth:`Coordinator.request`): the window never touches a socket or the database itself.

The coordinator is either embedded (:meth:`CoordinatorBridge.embedded`, a thread of this process)
or elsewhere (:meth:`CoordinatorBridge.remote`, `dtf-gui --connect`: :class:`~dtf_gui.remote.RemoteCoordinator`
speaks the client API and listens to the events port). Both have the same face (:class:`Backend`);
the window's code does not know which it has.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from PySide6.QtCore import QObject, Signal

from dtf_agent import protocol as p
from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.config import ServerSettings
from dtf_gui.coordinator.records import hardware_line
from dtf_gui.coordinator.server import Coordinator
from dtf_gui.coordinator.trust import role_allows, role_needed
from dtf_gui.remote import RESYNC, RemoteCoordinator, RemoteError

EventSink = Callable[[list[p.Event]], None]
# What call_async hands back, in the GUI thread: the operation's data, or None and the error's text.
Done = Callable[[Any, "str | None"], None]

# Operations that change who may connect: a coordinator running --insecure has no keys to decide on.
ENROLLMENT_OPS = frozenset({"accept_agents", "reject_agents", "revoke_agents", "create_token"})


_PAST = {"accept": "accepted", "reject": "rejected", "revoke": "revoked"}


class Backend(Protocol):
    """What the bridge needs of a coordinator, in-process or remote."""

    def start(self) -> Any: ...
    def stop(self) -> None: ...
    @property
    def is_running(self) -> bool: ...
    def endpoint(self, which: str) -> str: ...
    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any: ...


log = logging.getLogger(__name__)


# A change point's state as the findings table and the alerts dock name it.
CHANGE_KIND_TEXT = {"suspected": "change (suspected)", "confirmed": "change point", "retracted": "change (retracted)"}
# The kinds of hub event that are findings (a change point's state travels in its data).
FINDING_EVENT_KINDS = ("anomaly", "change_point", "trend")


def _change_detail(f: dict[str, Any], state: str) -> str:
    pct = f"{(f.get('rel_change') or 0) * 100:+.1f}%"
    before, now = f"{f.get('mean_before', 0):.4g}", f"{f.get('mean_after', 0):.4g}"
    step = f"{pct} ({before} -> {now})"
    n = f.get("n_after")
    after = f" after {n} result{'' if n == 1 else 's'}" if isinstance(n, int) else ""
    if state == "suspected":
        return f"{step} suspected{after}"
    if state == "retracted":
        # The statistics are the level's when it was withdrawn (where it stands now), not the step.
        return f"not confirmed{after}: {before} -> {now} ({pct})"
    return f"{step}, p={f.get('p_value', 0):.2g}"


def _trend_detail(f: dict[str, Any]) -> str:
    n = f.get("n")
    over = f" over {n} results" if isinstance(n, int) else ""
    return (f"{(f.get('rel_slope_per_100') or 0) * 100:+.2f}% per 100 results{over} "
            f"(Mann-Kendall p={f.get('p_value', 0):.2g})")


def finding_row(f: dict[str, Any]) -> dict[str, Any]:
    """An anomaly, change or trend (an event's data), flattened for the findings table.

    A change is keyed by its ``change_id`` (the result where it was first located; the result id
    in findings stored before changes had states), so that its suspected, confirmed and retracted
    events update one row; ``state`` is "suspected", "confirmed" or "retracted" for a change and
    "" otherwise."""
    series = f.get("series") or {}
    raw_kind = str(f.get("kind") or "")
    state = ""
    if raw_kind == "anomaly":
        detail = f"value {f.get('value', 0):.4g}, robust z {f.get('score', 0):+.1f}"
        lo, hi = f.get("expected_low"), f.get("expected_high")
        if lo is not None and hi is not None:
            detail += f" (expected {lo:.4g} .. {hi:.4g})"
        key, kind = f.get("result_id"), "anomaly"
    elif raw_kind == "trend":
        detail, key, kind = _trend_detail(f), f.get("result_id"), "trend"
    else:
        state = str(f.get("state") or "confirmed")
        if state not in CHANGE_KIND_TEXT:
            state = "confirmed"
        raw_kind = "change_point"
        detail, key, kind = _change_detail(f, state), f.get("change_id") or f.get("result_id"), CHANGE_KIND_TEXT[state]
    return {
        "finding_id": f"{raw_kind}:{key}:{f.get('metric')}",
        "kind": kind, "finding_kind": raw_kind, "state": state,
        "time": f.get("timestamp"), "test_id": series.get("test_id"), "worker_id": series.get("worker_id"),
        "metric": f.get("metric"), "direction": f.get("direction"), "detail": detail,
        "result_id": f.get("result_id"),
    }


def history_worker_row(w: dict[str, Any]) -> dict[str, Any]:
    """A stored worker (list_workers) in the shape of a live worker event (WorkerRecord.summary)."""
    pm = w.get("performance_metrics") or {}
    hs = w.get("health_status") or {}
    return {"worker_id": w["worker_id"], "hostname": w.get("hostname"), "status": w.get("status"),
            "slots": w.get("slots"), "running": len(w.get("current_task") or ()), "last_seen": w.get("last_seen"),
            **{k: pm.get(k) for k in ("cpu_percent", "memory_percent", "disk_percent", "gpu_percent",
                                      "gpu_memory_percent")},
            "hardware_id": w.get("hardware_id"), "tags": w.get("tags") or [],
            "hardware": hardware_line(w.get("capabilities") or {}), "draining": bool(hs.get("draining")),
            "health": hs.get("state"), "reason": hs.get("reason")}


def agent_row(a: dict[str, Any]) -> dict[str, Any]:
    """An enrolled (or asking) agent, as list_agents and enrollment events give it."""
    return {**a, "key": a.get("fingerprint") or a.get("name")}


class CoordinatorBridge(QObject):
    # list[protocol.Event]; emitted from the coordinator thread, delivered queued in the GUI thread.
    # Every signal carrying rows is declared `object`, not `list`: PySide converts a `list` argument
    # to a QVariantList and back for each slot, ~30 ms per batch of 2,500 task rows (measured), which
    # at 50,000 events/s starved the GUI thread; `object` passes the Python list as it is.
    eventsReady = Signal(object)
    workersChanged = Signal(object)
    tasksChanged = Signal(object)
    statsChanged = Signal(object)
    findingsChanged = Signal(object)
    findingsLoaded = Signal(object)  # the stored ones, at open: the same rows, but not news
    historyReloaded = Signal()  # events may have been lost (a resync): read the database again
    findingsRetracted = Signal(object)  # finding ids
    agentsChanged = Signal(object)  # enrollment rows (list_agents' shape)
    securityEvents = Signal(object)  # {"seq", "what", "subject", "detail", "time"}
    identityChanged = Signal(dict)  # whoami
    alertsChanged = Signal(object)  # health alerts as raised, cleared, acknowledged (coordinator/alerts.py)
    errorRaised = Signal(str)
    # (callback, data, error) of a call_async, queued into the GUI thread.
    _answered = Signal(object, object, object)

    def __init__(self, make_backend: Callable[[list[EventSink]], Backend], *, remote: bool = False,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.coordinator: Backend = make_backend([self._on_events_coordinator_thread])
        self.remote = remote
        self.eventsReady.connect(self._on_events_gui_thread)
        self.last_stats: dict[str, Any] = {}
        self.identity: dict[str, Any] = {}
        self.batches_received = 0
        self._security_seq = itertools.count(1)
        self._answered.connect(self._deliver)
        # Reads that may take a while (a window of a million tasks, a series of 100,000 points, a log)
        # wait here, never in the GUI thread. Two threads: a slow report does not hold up a page of tasks.
        self._reads: ThreadPoolExecutor | None = None

    @classmethod
    def embedded(cls, settings: ServerSettings) -> CoordinatorBridge:
        """A coordinator thread in this process (the window owns it)."""
        return cls(lambda sinks: Coordinator(settings, event_sinks=sinks))

    @classmethod
    def remote_to(cls, endpoint: str | None, key_file: str | None = None) -> CoordinatorBridge:
        """A coordinator elsewhere (`dtf serve`), through its client and events ports. Raises
        RemoteError (bad address or key file); :meth:`start` raises it when nobody answers."""
        return cls(lambda sinks: RemoteCoordinator.open(endpoint, key_file, event_sinks=sinks), remote=True)

    def start(self) -> None:
        self.coordinator.start()
        self._reads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dtf-gui-reads")
        self.refresh_identity()

    def stop(self) -> None:
        """Reads not started are dropped; the ones in flight fail fast once the coordinator is gone
        (a remote one that stopped answering would otherwise hold the window's close for their whole
        timeout), and their answers are not delivered."""
        pool, self._reads = self._reads, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.coordinator.stop()
        if pool is not None:
            pool.shutdown(wait=True)

    # -- who we are to the coordinator -----------------------------------------------------------

    def refresh_identity(self) -> dict[str, Any]:
        try:
            self.identity = self.coordinator.request("whoami", None, timeout=10.0) or {}
        except (ApiError, RemoteError) as exc:
            if "unknown operation" not in str(exc):
                raise
            # A coordinator from before keys and roles: plain text, and everyone may do everything.
            self.identity = {"role": "admin", "name": "", "insecure": True, "coordinator_key": "",
                             "fingerprint": "", "coordinator_id": ""}
        self.identityChanged.emit(self.identity)
        return self.identity

    @property
    def role(self) -> str:
        return str(self.identity.get("role") or "viewer")

    def allows(self, op: str) -> bool:
        """Whether the coordinator would run ``op`` for us: our role allows it (the coordinator's own
        table, dtf_gui/coordinator/trust.py) and, for enrollment, the coordinator has keys at all. The
        coordinator decides; this only keeps the window from offering what would be refused."""
        if op in ENROLLMENT_OPS and self.identity.get("insecure"):
            return False
        try:
            return role_allows(self.role, op)
        except ValueError:  # a role this window does not know: offer nothing
            return False

    def why_not(self, op: str) -> str:
        """Why :meth:`allows` says no, for a tooltip."""
        if op in ENROLLMENT_OPS and self.identity.get("insecure"):
            return "the coordinator runs --insecure: it accepts every agent, there are no keys to decide on"
        return f"needs the {role_needed(op)} role (you are {self.role})"

    def describe(self) -> str:
        """Where the coordinator is, for the status bar."""
        c = self.coordinator
        if self.remote:
            name = self.identity.get("name")
            return f"Connected to {c.endpoint('clients')} " + (f"as {name}, {self.role} role" if name else f"({self.role} role)")
        return f"Coordinator {c.endpoint('agents')} (clients {c.endpoint('clients')})"

    # -- coordinator thread: hand over, touch nothing else ----------------------------------------

    def _on_events_coordinator_thread(self, events: list[p.Event]) -> None:
        self.eventsReady.emit(events)

    # -- GUI thread ---------------------------------------------------------------------------------

    def _on_events_gui_thread(self, events: list[p.Event]) -> None:
        self.batches_received += 1
        if any(e.kind == RESYNC for e in events):
            self.load_history()  # batches were lost: what the window shows may be stale
        workers = [e.data for e in events if e.kind == "worker"]
        tasks = [e.data for e in events if e.kind == "task"]
        if workers:
            self.workersChanged.emit(workers)
        if tasks:
            self.tasksChanged.emit(tasks)
        agents = [agent_row(e.data) for e in events if e.kind == "enrollment"]
        if agents:
            self.agentsChanged.emit(agents)
        security = [self._security_row(e) for e in events if e.kind == "security"]
        if security:
            self.securityEvents.emit(security)
        findings = [finding_row(e.data) for e in events if e.kind in FINDING_EVENT_KINDS]
        if findings:
            self.findingsChanged.emit(findings)
        alerts = [e.data for e in events if e.kind == "alert"]
        if alerts:
            self.alertsChanged.emit(alerts)
        retracted = [f"{e.data.get('kind')}:{rid}:{e.data.get('metric')}"
                     for e in events if e.kind == "retracted" for rid in e.data.get("result_ids", ())]
        if retracted:
            self.findingsRetracted.emit(retracted)
        for e in events:
            if e.kind == "stats":
                self.last_stats = e.data
                self.statsChanged.emit(e.data)

    def _security_row(self, e: p.Event) -> dict[str, Any]:
        d = e.data
        return {"seq": next(self._security_seq), "time": d.get("time") or e.time, "what": d.get("what"),
                "subject": d.get("subject"), "detail": d.get("detail")}

    def load_history(self) -> None:
        """Every known worker, agent, the stored findings and security events from the database, as
        if their events had just arrived (call after connecting the models); views that read the
        database in pages (tasks) start over (``historyReloaded``)."""
        self.historyReloaded.emit()
        workers = self.call("list_workers") or []
        if workers:
            self.workersChanged.emit([history_worker_row(w) for w in workers])
        self.load_agents()
        self.call_async("list_findings", {"limit": 1000}, self._on_stored_findings)
        security = self.call("list_security_events", {"limit": 500}, quiet=True) or []
        if security:
            self.securityEvents.emit([self._security_row(p.Event(kind="security", data=d, time=d.get("time") or 0.0))
                                      for d in reversed(security)])
        stats = self.call("get_status")
        if stats:
            self.last_stats = stats
            self.statsChanged.emit(stats)

    def _on_stored_findings(self, data: Any, error: str | None) -> None:
        if error is None and data:
            self.findingsLoaded.emit([finding_row(f) for f in reversed(data)])

    def load_agents(self) -> None:
        agents = self.call("list_agents", quiet=True) or []
        if agents:
            self.agentsChanged.emit([agent_row(a) for a in agents])

    def call(self, op: str, args: dict[str, Any] | None = None, *, quiet: bool = False) -> Any:
        """A client-API request; errors are shown to the engineer (``quiet``: only logged, for reads
        the window can do without), not raised into Qt."""
        try:
            return self.coordinator.request(op, args, timeout=10.0)
        except (ApiError, RemoteError) as exc:
            if quiet:
                log.info("%s: %s", op, exc)
            else:
                self.errorRaised.emit(str(exc))
            return None

    def call_async(self, op: str, args: dict[str, Any] | None, done: Done, *, timeout: float = 60.0) -> bool:
        """A client-API request answered off the GUI thread: ``done(data, None)`` or ``done(None, error)``
        runs later in the GUI thread. Returns False (and calls nothing) once the bridge has stopped."""
        pool = self._reads
        if pool is None:
            return False

        def work() -> tuple[Any, str | None]:
            try:
                return self.coordinator.request(op, args, timeout=timeout), None
            except (ApiError, RemoteError) as exc:
                return None, str(exc)

        def finished(fut: Future[tuple[Any, str | None]]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:  # a bug, not a refusal: said, never swallowed
                log.error("%s failed in the reader thread", op, exc_info=exc)
                self._answered.emit(done, None, f"{op} failed: {type(exc).__name__}: {exc}")
                return
            data, error = fut.result()
            self._answered.emit(done, data, error)

        try:
            pool.submit(work).add_done_callback(finished)
        except RuntimeError:  # shut down between the check and the submit
            return False
        return True

    def _deliver(self, done: Done, data: Any, error: str | None) -> None:
        if self._reads is None:
            return  # stopped: the views it was for are closing
        try:
            done(data, error)
        except Exception:  # a view's bug must not take the bridge's signal down with it
            log.exception("a call_async callback failed")

    def submit_task(self, fields: dict[str, Any]) -> str | None:
        data = self.call("create_task", fields)
        return data["task_id"] if data else None

    def cancel_task(self, task_id: str) -> bool:
        return self.call("cancel_task", {"task_id": task_id}) is not None

    def decide_agents(self, decision: str, agents: list[str] | None = None, *, all_pending: bool = False,
                      ) -> list[str]:
        """accept / reject / revoke agents (names or fingerprints); returns the names it applied to."""
        op = f"{decision}_agents"
        data = self.call(op, {"agents": list(agents or []), "all_pending": all_pending})
        if data is None:
            return []
        done = list(data.get(_PAST[decision], []))
        self.load_agents()  # the answer is the truth now; events follow and agree
        return done

    def create_token(self, uses: int, ttl: float, tags: list[str]) -> dict[str, Any] | None:
        return self.call("create_token", {"uses": uses, "ttl": ttl, "tags": tags})

    def seen_agents(self) -> list[dict[str, Any]]:
        return self.call("seen_agents", quiet=True) or []
