"""A stand-in coordinator for the health and alerts views: the fakes.py coordinator plus workers, alerts
and the operations on them (list_alerts, ack_alerts, mute_alert, drain_worker, resume_worker,
assign_task), answering from dicts as the contract of issue 11 describes them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtf_agent import protocol as p
from dtf_gui.coordinator.api import ApiError
from tests.gui.fakes import FakeCoordinator, fake_bridge


def shot(widget: Any, name: str) -> Path | None:
    """Render ``widget`` (it must paint without error); saved as DTF_SHOTS/<name>.png only when the
    DTF_SHOTS environment variable names a folder, for a person to look at. None otherwise."""
    image = widget.grab()
    assert not image.isNull() and image.width() > 0
    folder = os.environ.get("DTF_SHOTS")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert image.save(str(path)), path
    return path


def worker(worker_id: str, *, status: str = "online", cpu: float | None = 20.0, memory: float | None = 40.0,
           disk: float | None = 55.0, gpu: float | None = None, gpu_memory: float | None = None, running: int = 0,
           slots: int = 4, tags: list[str] | None = None, hardware: str = "16 cores, 64 GB, Linux",
           draining: bool = False, last_seen: float | None = None, health: str | None = None) -> dict[str, Any]:
    """A worker summary (WorkerRecord.summary's shape); ``hardware`` is "N cores, M GB[, K× GPU], OS"
    (what the fake's stored row turns back into capabilities)."""
    return {"worker_id": worker_id, "hostname": f"{worker_id}.lab", "status": status, "slots": slots,
            "running": running, "last_seen": time.time() if last_seen is None else last_seen,
            "cpu_percent": cpu, "memory_percent": memory, "disk_percent": disk, "gpu_percent": gpu,
            "gpu_memory_percent": gpu_memory, "hardware_id": f"hw-{worker_id}", "tags": tags or [],
            "hardware": hardware, "draining": draining, "health": health}


def _capabilities(line: str) -> dict[str, Any]:
    """The capabilities hardware_line() would describe as ``line``."""
    caps: dict[str, Any] = {}
    for part in (s.strip() for s in line.split(",")):
        if part.endswith(" cores"):
            caps["cpu_count"] = int(part.split()[0])
        elif part.endswith(" GB"):
            caps["memory_gb"] = float(part.split()[0])
        elif "× " in part:
            count, name = part.split("× ", 1)
            caps["gpus"] = [{"name": name}] * int(count)
        else:
            caps["os"] = part
    return caps


def alert(alert_id: str, worker_id: str, kind: str = "cpu", *, state: str = "raised", severity: str = "warning",
          value: float = 97.0, threshold: float = 90.0, acked: bool = False, muted: bool = False,
          when: float | None = None, message: str | None = None) -> dict[str, Any]:
    return {"alert_id": alert_id, "kind": kind, "worker_id": worker_id, "state": state, "severity": severity,
            "message": message or f"{kind} at {value:.0f}% (threshold {threshold:.0f}%)", "value": value,
            "threshold": threshold, "time": time.time() if when is None else when, "acked": acked, "muted": muted}


class FakeHealthCoordinator(FakeCoordinator):
    def __init__(self, sinks: list[Callable[[list[p.Event]], None]], *, workers: list[dict[str, Any]] | None = None,
                 alerts: list[dict[str, Any]] | None = None, acked_findings: list[str] | None = None,
                 refuse: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(sinks, **kwargs)
        self.workers = {w["worker_id"]: dict(w) for w in workers or []}
        self.alerts = {a["alert_id"]: dict(a) for a in alerts or []}
        self.acked_findings = list(acked_findings or [])
        self.mutes: list[dict[str, Any]] = []
        # task id -> why assigning it is refused (every other assignment succeeds)
        self.refuse = dict(refuse or {})
        self.assigned: list[tuple[str, str]] = []

    def emit_many(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """One batch of events, as the coordinator's batching hands them over."""
        for sink in self.sinks:
            sink([p.Event(kind=kind, data=r, time=time.time()) for r in rows])

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        args = args or {}
        if op == "list_workers":
            self.calls.append((op, args))
            # The stored shape: performance figures and health inside their JSON columns.
            return [{"worker_id": w["worker_id"], "hostname": w["hostname"], "status": w["status"],
                     "slots": w["slots"], "current_task": [], "last_seen": w["last_seen"],
                     "hardware_id": w["hardware_id"], "tags": w["tags"],
                     "capabilities": _capabilities(w["hardware"]),
                     "performance_metrics": {k: w[k] for k in ("cpu_percent", "memory_percent", "disk_percent",
                                                                "gpu_percent", "gpu_memory_percent")},
                     "health_status": {"draining": w["draining"], "state": w.get("health")}}
                    for w in self.workers.values()]
        if op in ("list_alerts", "ack_alerts", "mute_alert", "drain_worker", "resume_worker", "assign_task",
                  "assign_tasks"):
            self.calls.append((op, args))
            from dtf_gui.coordinator.trust import role_allows, role_needed

            if not role_allows(self.identity["role"], op):
                raise ApiError(f"{op} needs the {role_needed(op)} role; the client key "
                               f"{self.identity['name']!r} has the {self.identity['role']} role")
            return getattr(self, f"_{op}")(args)
        return super().request(op, args, timeout)

    def _list_alerts(self, args: dict[str, Any]) -> dict[str, Any]:
        rows = sorted(self.alerts.values(), key=lambda a: a["time"], reverse=True)
        if not args.get("include_cleared"):
            rows = [a for a in rows if a["state"] == "raised"]
        now = time.time()
        return {"alerts": rows[: args.get("limit") or 500], "acked_findings": list(self.acked_findings),
                "mutes": [{"worker_id": m["worker_id"], "kind": m["kind"], "until": m["until"]} for m in self.mutes
                          if m["until"] > now]}

    def _ack_alerts(self, args: dict[str, Any]) -> dict[str, Any]:
        if not 1 <= len(args["alert_ids"]) <= 1000:  # AckAlerts' bound
            raise ApiError(f"alert_ids: expected 1 to 1000 ids, got {len(args['alert_ids'])}")
        acked = []
        for aid in args["alert_ids"]:
            if aid in self.alerts:
                self.alerts[aid]["acked"] = True
                self.emit("alert", dict(self.alerts[aid]))
                acked.append(aid)
            elif ":" in aid:  # a finding id
                self.acked_findings.append(aid)
                acked.append(aid)
        return {"acked": acked}

    def _mute_alert(self, args: dict[str, Any]) -> dict[str, Any]:
        until = time.time() + args["seconds"]
        self.mutes.append({**args, "until": until})
        return {"muted_until": until}

    def _drain_worker(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._set_draining(args["worker_id"], True)

    def _resume_worker(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._set_draining(args["worker_id"], False)

    def _set_draining(self, worker_id: str, draining: bool) -> dict[str, Any]:
        w = self.workers.get(worker_id)
        if w is None:
            raise ApiError(f"no worker {worker_id!r}")
        w["draining"] = draining
        self.emit("worker", dict(w))
        return dict(w)

    def _assign_tasks(self, args: dict[str, Any]) -> dict[str, Any]:
        """api.py's batch shape: {"done": [ids], "refused": {id: reason}}."""
        if not 1 <= len(args["task_ids"]) <= 10_000:
            raise ApiError("task_ids: expected 1 to 10000 ids")
        done: list[str] = []
        refused: dict[str, str] = {}
        for tid in dict.fromkeys(args["task_ids"]):
            try:
                self._assign_task({"task_id": tid, "worker_id": args["worker_id"]})
                done.append(tid)
            except ApiError as exc:
                refused[tid] = str(exc)
        return {"done": done, "refused": refused}

    def _assign_task(self, args: dict[str, Any]) -> dict[str, Any]:
        why = self.refuse.get(args["task_id"])
        if why:
            raise ApiError(why)
        self.assigned.append((args["task_id"], args["worker_id"]))
        return {"task_id": args["task_id"]}


def fake_health_bridge(**kwargs: Any) -> tuple[Any, FakeHealthCoordinator]:
    bridge, fake = fake_bridge(FakeHealthCoordinator, **kwargs)
    return bridge, fake
