"""The client API: one handler per operation, arguments validated by a Struct per operation.

The operation names are the seed's REST/WebSocket operations (create_task, get_task, list_tasks,
list_workers, get_worker, list_results, get_status ...). The CLI, scripts and the window all use
this table; the window, in the same process, reaches it through ``Coordinator.request``.
Handlers run in the coordinator thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from dtf_agent import protocol as p
from dtf_gui.coordinator import scheduler as sch
from dtf_gui.coordinator.state import TaskTable, new_task_id
from dtf_gui.coordinator.store import RESULT_COLUMNS, result_row_to_dict

if TYPE_CHECKING:
    from dtf_gui.coordinator.server import Coordinator

log = logging.getLogger(__name__)

TASK_TYPES = ("command", "noop")
MAX_LIST = 100_000


class ApiError(Exception):
    """A request the coordinator refuses; the message goes back to the client as is."""


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RequirementArgs(_Args):
    """What a worker must offer (all optional): tags it has, a hardware kind, memory, GPUs, OS, a
    named worker or group. A misspelt key is refused rather than silently ignored."""

    tags: list[str] = msgspec.field(default_factory=list)
    hardware: str | None = None
    min_memory_gb: float = 0.0
    gpu_count: int = 0
    gpu_memory_gb: float = 0.0
    os: str | None = None
    worker: str | None = None
    group: str | None = None


class CreateTask(_Args):
    type: str = "command"
    command: str | list[str] | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: int | None = None
    timeout: float | None = None
    dependencies: list[str] = msgspec.field(default_factory=list)
    requirements: RequirementArgs | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    task_id: str | None = None
    retry_limit: int | None = None
    test_id: str = ""
    cpu_slots: int = 1
    expected_duration: float | None = None


class CreateTasks(_Args):
    tasks: list[CreateTask]


class TaskRef(_Args):
    task_id: str


class AssignArgs(_Args):
    task_id: str
    worker_id: str


class PriorityArgs(_Args):
    task_id: str
    priority: int


class WorkerRef(_Args):
    worker_id: str


class ListTasks(_Args):
    status: str | None = None
    worker_id: str | None = None
    limit: int = 100


class ListResults(_Args):
    task_id: str | None = None
    worker_id: str | None = None
    limit: int = 1000


class NoArgs(_Args):
    pass


class Analysis(_Args):
    """The seed's aggregator calls: aggregate_results, get_result_anomalies, get_comparison_report."""

    result_type: str = "performance"
    aggregation_level: str | list[str] = "test_id"
    filter_params: dict[str, Any] | None = None
    time_range: tuple[float, float] | None = None
    threshold: float | None = None
    lookback_days: float | None = None


class Deferred(msgspec.Struct):
    """A request answered later, off the coordinator loop (see Coordinator._defer)."""

    req_id: int
    op: str
    fn: Callable[[], Any]


def _filtered(equal: dict[str, Any], order: str, limit: int) -> tuple[str, list[Any]]:
    """WHERE col=? for each filter that is set, then ORDER BY and a capped LIMIT."""
    used = {k: v for k, v in equal.items() if v}
    where = ("WHERE " + " AND ".join(f"{k}=?" for k in used)) if used else ""
    return f"{where} ORDER BY {order} LIMIT ?", [*used.values(), max(1, min(limit, MAX_LIST))]


class ClientApi:
    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self._submissions = 0
        self.ops: dict[str, tuple[type[_Args], Callable[[Any], Any]]] = {
            "ping": (NoArgs, self.ping),
            "create_task": (CreateTask, self.create_task),
            "create_tasks": (CreateTasks, self.create_tasks),
            "get_task": (TaskRef, self.get_task),
            "list_tasks": (ListTasks, self.list_tasks),
            "cancel_task": (TaskRef, self.cancel_task),
            "assign_task": (AssignArgs, self.assign_task),
            "unassign_task": (TaskRef, self.unassign_task),
            "retry_task": (TaskRef, self.retry_task),
            "set_priority": (PriorityArgs, self.set_priority),
            "list_workers": (NoArgs, self.list_workers),
            "get_worker": (WorkerRef, self.get_worker),
            "list_results": (ListResults, self.list_results),
            "get_status": (NoArgs, self.get_status),
        }
        # Read-only analysis over possibly millions of rows: run on the analysis thread.
        self.deferred_ops: dict[str, tuple[type[_Args], Callable[[Any], Any]]] = {
            "aggregate_results": (Analysis, self.aggregate_results),
            "get_result_anomalies": (Analysis, self.get_result_anomalies),
            "get_comparison_report": (Analysis, self.get_comparison_report),
        }

    def handle(self, req: p.Request) -> p.Reply | Deferred:
        problem = p.version_problem(req.protocol_version)
        if problem:
            return p.Reply(req_id=req.req_id, ok=False, error=problem)
        entry = self.ops.get(req.op) or self.deferred_ops.get(req.op)
        if entry is None:
            known = ", ".join(sorted([*self.ops, *self.deferred_ops]))
            return p.Reply(req_id=req.req_id, ok=False, error=f"unknown operation {req.op!r}; known: {known}")
        schema, fn = entry
        try:
            args = msgspec.convert(req.args, schema, strict=False)
        except msgspec.ValidationError as exc:
            return p.Reply(req_id=req.req_id, ok=False, error=f"{req.op}: invalid arguments: {exc}")
        if req.op in self.deferred_ops:
            return Deferred(req.req_id, req.op, lambda: fn(args))
        try:
            return p.Reply(req_id=req.req_id, data=fn(args))
        except ApiError as exc:
            return p.Reply(req_id=req.req_id, ok=False, error=str(exc))
        except Exception as exc:
            log.exception("client operation %s failed", req.op)
            return p.Reply(req_id=req.req_id, ok=False, error=f"{req.op} failed: {type(exc).__name__}: {exc}")

    # -- operations -------------------------------------------------------------------------------

    def ping(self, _: NoArgs) -> dict[str, Any]:
        return {"protocol_version": p.PROTOCOL_VERSION, "coordinator_id": self.c.s.coordinator_id}

    def _task_dict(self, a: CreateTask) -> dict[str, Any]:
        if a.type not in TASK_TYPES:
            raise ApiError(f"unknown task type {a.type!r}; known: {', '.join(TASK_TYPES)}")
        params = dict(a.parameters)
        if a.command is not None:
            params["command"] = a.command
        if a.type == "command" and not params.get("command"):
            raise ApiError("a command task needs a command")
        if a.timeout is not None and a.timeout <= 0:
            raise ApiError(f"timeout must be positive, got {a.timeout}")
        if a.retry_limit is not None and a.retry_limit < 0:
            raise ApiError(f"retry_limit must be 0 or more, got {a.retry_limit}")
        if a.cpu_slots < 1:
            raise ApiError(f"cpu_slots must be at least 1, got {a.cpu_slots}")
        test_id = a.test_id or str(params.get("test_id", ""))
        req = None
        if a.requirements is not None:
            # Only what differs from "no requirement" is kept, so the stored JSON says what was asked.
            req = {k: v for k, v in msgspec.structs.asdict(a.requirements).items()
                   if v not in (None, 0, 0.0, [])} or None
        return {
            "task_id": a.task_id or new_task_id(), "type": a.type, "status": "pending",
            "priority": self.c.s.scheduler.default_priority if a.priority is None else a.priority,
            "parameters": params, "dependencies": list(a.dependencies), "requirements": req,
            "metadata": a.metadata, "timeout": a.timeout, "attempt": 0, "test_id": test_id,
            "retry_limit": a.retry_limit, "cpu_slots": a.cpu_slots, "expected_duration": a.expected_duration,
        }

    def _check_given_ids(self, ids: list[str]) -> None:
        """Ids the engineer chose must be new; ids we generate are unique by construction, so a
        bulk submission of generated ids costs no database look-up."""
        if not ids:
            return
        if len(set(ids)) != len(ids):
            raise ApiError("task ids repeat within one request")
        given = [i for i in ids if self.c.tasks.get(i) is None]
        clash = self.c.store.existing_task_ids(given) if given else set()
        if clash:
            raise ApiError(f"task id(s) already exist: {', '.join(sorted(clash)[:10])}")

    def create_task(self, a: CreateTask) -> dict[str, Any]:
        self._check_given_ids([a.task_id] if a.task_id else [])
        task = self._task_dict(a)
        accepted, refused = self.c.submit([task])
        if refused:
            raise ApiError(f"task {task['task_id']} refused: {refused[task['task_id']]}")
        return TaskTable.public(accepted[0])

    def create_tasks(self, a: CreateTasks) -> dict[str, Any]:
        self._check_given_ids([t.task_id for t in a.tasks if t.task_id])
        tasks = [self._task_dict(t) for t in a.tasks]
        # One request is one submission: load_balancer.worker_cap limits how many workers its
        # tasks occupy at once, leaving the others for everybody else.
        self._submissions += 1
        submission = f"{self.c.s.coordinator_id}-{self._submissions}"
        for t in tasks:
            t["metadata"] = {**(t["metadata"] or {}), "submission": submission}
        accepted, refused = self.c.submit(tasks)
        if refused:
            detail = "; ".join(f"{k}: {v}" for k, v in list(refused.items())[:20])
            raise ApiError(f"submission refused, no task was added: {len(refused)} of {len(tasks)} task(s) "
                           f"have problems: {detail}")
        return {"task_ids": [r["task_id"] for r in accepted]}

    def get_task(self, a: TaskRef) -> dict[str, Any]:
        rec = self.c.tasks.get(a.task_id)
        if rec is not None:
            out = TaskTable.public(rec)
        else:
            rows = self.c.store.load_tasks("WHERE task_id=?", (a.task_id,))
            if not rows:
                raise ApiError(f"no task {a.task_id!r}")
            out = rows[0]
        out["why"] = (self.c.sched.why_waiting(a.task_id) if out["status"] in ("pending", "assigned")
                      else out.get("error") or out.get("status_reason") or "")
        out["result_list"] = self.c.store.load_results("WHERE task_id=? ORDER BY timestamp", (a.task_id,))
        return out

    def list_tasks(self, a: ListTasks) -> list[dict[str, Any]]:
        if a.status and a.status not in p.TASK_STATUSES:
            raise ApiError(f"unknown status {a.status!r}; known: {', '.join(p.TASK_STATUSES)}")
        sql, params = _filtered({"status": a.status, "worker_id": a.worker_id}, "create_time DESC, task_id", a.limit)
        rows = self.c.store.load_tasks(sql, params)
        for row in rows:
            # Why a task waits is the scheduler's live knowledge, not a stored column.
            row["why"] = (self.c.sched.why_waiting(row["task_id"]) if row["status"] in ("pending", "assigned")
                          else row.get("error") or row.get("status_reason") or "")
        return rows

    def cancel_task(self, a: TaskRef) -> dict[str, Any]:
        if self.c.tasks.get(a.task_id) is None:
            raise ApiError(f"no active task {a.task_id!r}")
        self.c.cancel(a.task_id)
        return {"task_id": a.task_id, "status": self.c.tasks.get(a.task_id)["status"]}

    def _known(self, task_id: str) -> dict[str, Any]:
        task = self.c.tasks.get(task_id)
        if task is None:
            raise ApiError(f"no task {task_id!r} (or it finished long ago; see `dtf tasks`)")
        return task

    def _state(self, task_id: str) -> dict[str, Any]:
        task = self._known(task_id)
        return {"task_id": task_id, "status": task["status"], "worker_id": task["worker_id"],
                "priority": task["priority"], "why": self.c.sched.why_waiting(task_id)}

    def assign_task(self, a: AssignArgs) -> dict[str, Any]:
        self._known(a.task_id)
        if a.worker_id not in self.c.workers:
            known = ", ".join(sorted(self.c.workers)) or "none yet"
            raise ApiError(f"cannot assign {a.task_id}: no worker {a.worker_id!r} (known: {known})")
        self.c.command(sch.Pin(time.time(), a.task_id, a.worker_id), "assign")
        return self._state(a.task_id)

    def unassign_task(self, a: TaskRef) -> dict[str, Any]:
        self._known(a.task_id)
        self.c.command(sch.Unpin(time.time(), a.task_id), "unassign")
        return self._state(a.task_id)

    def retry_task(self, a: TaskRef) -> dict[str, Any]:
        self._known(a.task_id)
        self.c.command(sch.Retry(time.time(), a.task_id), "retry")
        return self._state(a.task_id)

    def set_priority(self, a: PriorityArgs) -> dict[str, Any]:
        task = self._known(a.task_id)
        self.c.command(sch.SetPriority(time.time(), a.task_id, a.priority), "change the priority of")
        task["priority"] = a.priority
        self.c.store.put_task(task)
        return self._state(a.task_id)

    def list_workers(self, _: NoArgs) -> list[dict[str, Any]]:
        return self.c.store.load_workers()

    def get_worker(self, a: WorkerRef) -> dict[str, Any]:
        w = self.c.workers.get(a.worker_id)
        if w is None:
            raise ApiError(f"no worker {a.worker_id!r}")
        return dict(w.row)

    def list_results(self, a: ListResults) -> list[dict[str, Any]]:
        sql, params = _filtered({"task_id": a.task_id, "worker_id": a.worker_id}, "timestamp DESC", a.limit)
        rows = self.c.store.query(f"SELECT {','.join(RESULT_COLUMNS)} FROM results {sql}", params)
        return [result_row_to_dict(r) for r in rows]

    def get_status(self, _: NoArgs) -> dict[str, Any]:
        return self.c.stats()

    # -- analysis (run on the analysis thread; they only read) -------------------------------------

    def aggregate_results(self, a: Analysis) -> dict[str, Any]:
        return self.c.aggregator.aggregate_results(a.result_type, a.aggregation_level, a.filter_params,
                                                   a.time_range)

    def get_result_anomalies(self, a: Analysis) -> list[dict[str, Any]]:
        return self.c.aggregator.get_result_anomalies(a.result_type, a.aggregation_level, a.filter_params,
                                                      a.time_range, threshold=a.threshold)

    def get_comparison_report(self, a: Analysis) -> dict[str, Any]:
        return self.c.aggregator.get_comparison_report(a.result_type, a.aggregation_level, a.filter_params,
                                                       a.time_range, lookback_days=a.lookback_days)
