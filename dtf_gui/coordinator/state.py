"""The coordinator's in-memory tasks (owned by the coordinator thread).

Active tasks live in a dict in storage form (see ``TaskTable.add_new``) plus decoded copies of
the fields the loop needs on the hot path (``_parameters``, ``_dependencies`` ...). Finished tasks
stay for a while in a bounded recent set so late or resent results are recognised without a
database read; older ones are only in SQLite.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, OrderedDict
from typing import Any

from dtf_gui.coordinator.store import TASK_COLUMNS, json_or_none

RECENT_FINISHED = 50_000


_ID_SUFFIX = os.urandom(1).hex()
_next_id = time.time_ns() // 1000


def new_task_id() -> str:
    """Time-ordered ids: a counter that starts at this process's start time in microseconds, in
    hex. New rows append to the end of the SQLite b-trees instead of landing on random pages
    (markedly cheaper inserts); a later coordinator starts above every id of an earlier one as long
    as it made fewer than a million ids a second; the random suffix tells apart two coordinators
    started in the same microsecond."""
    global _next_id
    _next_id += 1
    return f"{_next_id:x}{_ID_SUFFIX}"


class TaskTable:
    def __init__(self, recent_limit: int = RECENT_FINISHED) -> None:
        self.active: dict[str, dict[str, Any]] = {}
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.recent_limit = recent_limit
        self.finished_counts: Counter[str] = Counter()
        # Kept up to date on every change, so a status request never walks the table.
        self.active_counts: Counter[str] = Counter()

    def get(self, task_id: str) -> dict[str, Any] | None:
        t = self.active.get(task_id)
        if t is None:
            t = self.recent.get(task_id)
        return t

    def add_new(self, task: dict[str, Any]) -> dict[str, Any]:
        """``task`` has plain values (validated by the API). Returns the live record: storage form
        (every TASK_COLUMNS key, JSON columns encoded once, here) plus decoded copies for the loop."""
        g = task.get
        params = g("parameters") or {}
        deps = list(g("dependencies") or ())
        req = g("requirements") or {}
        meta = g("metadata")
        rec = {
            "task_id": task["task_id"], "type": g("type", "command"), "status": g("status") or "pending",
            "priority": g("priority", 5), "create_time": g("create_time"), "start_time": g("start_time"),
            "end_time": g("end_time"), "worker_id": g("worker_id"),
            "parameters": json_or_none(params), "dependencies": json_or_none(deps),
            "requirements": json_or_none(req), "results": g("results"), "error": g("error"),
            "metadata": json_or_none(meta), "timeout": g("timeout"), "attempt": g("attempt") or 0,
            "test_id": g("test_id") or "", "status_reason": g("status_reason"),
            "_parameters": params, "_dependencies": deps, "_requirements": req,
            "_retry_limit": g("retry_limit"), "_cpu_slots": g("cpu_slots") or req.get("cpu_slots") or 1,
            "_expected_duration": g("expected_duration"), "_stored": bool(g("_stored")),
            "_submission": str((meta or {}).get("submission", "")) if isinstance(meta, dict) else "",
        }
        self.active[rec["task_id"]] = rec
        self.active_counts[rec["status"]] += 1
        return rec

    def add_from_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A task loaded back from SQLite (JSON columns decoded by the store)."""
        return self.add_new(row)

    def set_status(self, task: dict[str, Any], status: str) -> None:
        if task["task_id"] in self.active:
            self.active_counts[task["status"]] -= 1
            self.active_counts[status] += 1
        task["status"] = status

    def discard(self, task_id: str) -> None:
        rec = self.active.pop(task_id, None)
        if rec is not None:
            self.active_counts[rec["status"]] -= 1

    def finished(self, task_id: str) -> None:
        rec = self.active.pop(task_id, None)
        if rec is None:
            return
        self.active_counts[rec["status"]] -= 1
        self.finished_counts[rec["status"]] += 1
        self.recent[task_id] = rec
        if len(self.recent) > self.recent_limit:
            self.recent.popitem(last=False)

    def revive(self, task_id: str) -> dict[str, Any] | None:
        """A finished task that runs again (retry): back among the active ones."""
        rec = self.recent.pop(task_id, None)
        if rec is None:
            return self.active.get(task_id)
        self.finished_counts[rec["status"]] -= 1
        self.active[task_id] = rec
        self.active_counts[rec["status"]] += 1
        return rec

    def status_counts(self) -> dict[str, int]:
        counts = self.active_counts + self.finished_counts
        return {s: counts.get(s, 0) for s in ("pending", "assigned", "running", "completed", "failed",
                                              "cancelled")}

    @staticmethod
    def summary(task: dict[str, Any]) -> dict[str, Any]:
        """What the window and the event stream need of a task: small, no JSON to decode."""
        params = task.get("_parameters") or {}
        return {
            "task_id": task["task_id"], "type": task["type"], "status": task["status"],
            "priority": task["priority"], "worker_id": task["worker_id"], "create_time": task["create_time"],
            "start_time": task["start_time"], "end_time": task["end_time"], "attempt": task["attempt"],
            "command": params.get("command") if isinstance(params.get("command"), str) else None,
            "error": task["error"], "status_reason": task["status_reason"], "test_id": task["test_id"],
            "why": task["error"] or task["status_reason"],
        }

    @staticmethod
    def public(task: dict[str, Any]) -> dict[str, Any]:
        """The whole task as the client API returns it (JSON columns decoded)."""
        out = {}
        for c in TASK_COLUMNS:
            v = task.get(c)
            if c in ("parameters", "dependencies", "requirements", "metadata") and isinstance(v, str):
                v = json.loads(v)
            out[c] = v
        return out

