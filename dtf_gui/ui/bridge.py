"""The one object through which the window talks to the coordinator.

Events arrive on the coordinator's thread, already batched (10-20 Hz); the bridge hands each batch
over as ONE queued Qt signal, so the GUI thread sees one slot call per batch, never one per event.
Commands go the other way as client-API requests handed to the coordinator's loop
(:meth:`Coordinator.request`): the window never touches a socket or the database itself.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, Signal

from dtf_agent import protocol as p
from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.config import ServerSettings
from dtf_gui.coordinator.server import Coordinator

log = logging.getLogger(__name__)


def finding_row(f: dict[str, Any]) -> dict[str, Any]:
    """An anomaly or change point, flattened for the findings table."""
    series = f.get("series") or {}
    if f.get("kind") == "anomaly":
        detail = f"value {f.get('value', 0):.4g}, robust z {f.get('score', 0):+.1f}"
        lo, hi = f.get("expected_low"), f.get("expected_high")
        if lo is not None and hi is not None:
            detail += f" (expected {lo:.4g} .. {hi:.4g})"
    else:
        detail = (f"{(f.get('rel_change') or 0) * 100:+.1f}% ({f.get('mean_before', 0):.4g} -> "
                  f"{f.get('mean_after', 0):.4g}), p={f.get('p_value', 0):.2g}")
    return {
        "finding_id": f"{f.get('kind')}:{f.get('result_id')}:{f.get('metric')}",
        "kind": "change point" if f.get("kind") == "change_point" else "anomaly",
        "time": f.get("timestamp"), "test_id": series.get("test_id"), "worker_id": series.get("worker_id"),
        "metric": f.get("metric"), "direction": f.get("direction"), "detail": detail,
        "result_id": f.get("result_id"),
    }


def history_task_row(t: dict[str, Any]) -> dict[str, Any]:
    """A stored task (list_tasks) in the shape of a live task event (TaskRecord.summary)."""
    command = (t.get("parameters") or {}).get("command")
    keys = ("task_id", "type", "status", "priority", "worker_id", "create_time", "start_time", "end_time",
            "attempt", "error", "status_reason", "test_id", "why")
    return {**{k: t.get(k) for k in keys}, "command": command if isinstance(command, str) else None}


def history_worker_row(w: dict[str, Any]) -> dict[str, Any]:
    """A stored worker (list_workers) in the shape of a live worker event (WorkerRecord.summary)."""
    pm = w.get("performance_metrics") or {}
    return {"worker_id": w["worker_id"], "hostname": w.get("hostname"), "status": w.get("status"),
            "slots": w.get("slots"), "running": len(w.get("current_task") or ()), "last_seen": w.get("last_seen"),
            "cpu_percent": pm.get("cpu_percent"), "memory_percent": pm.get("memory_percent"),
            "hardware_id": w.get("hardware_id"), "tags": w.get("tags") or []}


class CoordinatorBridge(QObject):
    # list[protocol.Event]; emitted from the coordinator thread, delivered queued in the GUI thread.
    eventsReady = Signal(object)
    workersChanged = Signal(list)
    tasksChanged = Signal(list)
    statsChanged = Signal(dict)
    findingsChanged = Signal(list)
    findingsRetracted = Signal(list)  # finding ids
    errorRaised = Signal(str)

    def __init__(self, settings: ServerSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.coordinator = Coordinator(settings, event_sinks=[self._on_events_coordinator_thread])
        self.eventsReady.connect(self._on_events_gui_thread)
        self.last_stats: dict[str, Any] = {}
        self.batches_received = 0

    def start(self) -> None:
        self.coordinator.start()

    def stop(self) -> None:
        self.coordinator.stop()

    # -- coordinator thread: hand over, touch nothing else ----------------------------------------

    def _on_events_coordinator_thread(self, events: list[p.Event]) -> None:
        self.eventsReady.emit(events)

    # -- GUI thread ---------------------------------------------------------------------------------

    def _on_events_gui_thread(self, events: list[p.Event]) -> None:
        self.batches_received += 1
        workers = [e.data for e in events if e.kind == "worker"]
        tasks = [e.data for e in events if e.kind == "task"]
        if workers:
            self.workersChanged.emit(workers)
        if tasks:
            self.tasksChanged.emit(tasks)
        findings = [finding_row(e.data) for e in events if e.kind in ("anomaly", "change_point")]
        if findings:
            self.findingsChanged.emit(findings)
        retracted = [f"{e.data.get('kind')}:{rid}:{e.data.get('metric')}"
                     for e in events if e.kind == "retracted" for rid in e.data.get("result_ids", ())]
        if retracted:
            self.findingsRetracted.emit(retracted)
        for e in events:
            if e.kind == "stats":
                self.last_stats = e.data
                self.statsChanged.emit(e.data)

    def load_history(self, limit: int = 2000) -> None:
        """The latest ``limit`` tasks and every known worker from the database, as if their events
        had just arrived (call after connecting the models)."""
        tasks = self.call("list_tasks", {"limit": limit}) or []
        if tasks:
            self.tasksChanged.emit([history_task_row(t) for t in reversed(tasks)])
        workers = self.call("list_workers") or []
        if workers:
            self.workersChanged.emit([history_worker_row(w) for w in workers])
        stats = self.call("get_status")
        if stats:
            self.last_stats = stats
            self.statsChanged.emit(stats)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """A client-API request; errors are shown to the engineer, not raised into Qt."""
        try:
            return self.coordinator.request(op, args, timeout=10.0)
        except ApiError as exc:
            self.errorRaised.emit(str(exc))
            return None

    def submit_task(self, fields: dict[str, Any]) -> str | None:
        data = self.call("create_task", fields)
        return data["task_id"] if data else None

    def cancel_task(self, task_id: str) -> bool:
        return self.call("cancel_task", {"task_id": task_id}) is not None
