"""The client API: one handler per operation, arguments validated by a Struct per operation.

The operation names are the seed's REST/WebSocket operations (create_task, get_task, list_tasks,
list_workers, get_worker, list_results, get_status ...). The CLI, scripts and the window all use
this table; the window, in the same process, reaches it through ``Coordinator.request``.
Handlers run in the coordinator thread.

The API gets narrow parts of the coordinator, never the Coordinator itself: the task and worker
tables and the scheduler to read, the store and the query service to read from, and a small
:class:`Commands` interface for every change (which all go through the scheduler).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import msgspec

from dtf_agent import protocol as p
from dtf_agent import tracing
from dtf_gui.coordinator import scheduler as sch
from dtf_gui.coordinator.aggregator.queries import ResultQueries
from dtf_gui.coordinator.alerts_api import AlertsApi
from dtf_gui.coordinator.health import WorkerTable
from dtf_gui.coordinator.records import TaskRecord
from dtf_gui.coordinator.runs_api import RunsApi
from dtf_gui.coordinator.state import TaskTable, new_task_id
from dtf_gui.coordinator.store import RESULT_COLUMNS, Store, result_row_to_dict
from dtf_gui.coordinator.trust import ClientKey, Trust
from dtf_gui.coordinator.trust_api import ApiRefusal, TrustApi, TrustCommands
from dtf_gui.coordinator.views_api import ViewsApi

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

TASK_TYPES = ("command", "noop", "pytest")
MAX_LIST = 100_000
MAX_WAIT = 24 * 3600.0

# Ranges for every number a client sends: out of range is refused with the field named, never
# stored (a priority beyond 64 bits once made SQLite refuse a whole batch of other rows).
Priority = Annotated[int, msgspec.Meta(ge=-p.MAX_PRIORITY, le=p.MAX_PRIORITY)]
Slots = Annotated[int, msgspec.Meta(ge=1, le=4096)]
RetryLimit = Annotated[int, msgspec.Meta(ge=0, le=1000)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=p.MAX_TIMEOUT)]
Memory = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIST)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


# Operations that change nothing: their replies need no commit to wait for (and keep flowing while
# the database refuses writes).
READ_ONLY_OPS = frozenset({"ping", "get_task", "list_tasks", "list_workers", "get_worker", "list_results",
                           "get_status", "whoami", "list_agents", "list_clients", "seen_agents",
                           "list_security_events", "get_log", "get_run", "list_runs", "task_progress",
                           "bundle_missing", "metric_info", "list_alerts"})


class ApiError(Exception):
    """A request the coordinator refuses; the message goes back to the client as is."""


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RequirementArgs(_Args):
    """What a worker must offer (all optional): tags it has, a hardware kind, memory, GPUs, OS, a
    named worker or group. A misspelt key is refused rather than silently ignored."""

    tags: p.NameList = msgspec.field(default_factory=list)
    hardware: p.Name | None = None
    min_memory_gb: Memory = 0.0
    gpu_count: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    gpu_memory_gb: Memory = 0.0
    os: p.Name | None = None
    worker: p.Name | None = None
    group: p.Name | None = None


class CreateTask(_Args):
    type: p.Name = "command"
    command: Annotated[str, msgspec.Meta(max_length=p.MAX_COMMAND)] | list[str] | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: Priority | None = None
    timeout: Seconds | None = None
    dependencies: Annotated[list[p.Id], msgspec.Meta(max_length=10_000)] = msgspec.field(default_factory=list)
    requirements: RequirementArgs | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    task_id: Annotated[str, msgspec.Meta(min_length=1, max_length=p.MAX_ID)] | None = None
    retry_limit: RetryLimit | None = None
    test_id: p.Name = ""
    cpu_slots: Slots = 1
    expected_duration: Seconds | None = None
    # The run (see create_run) this task's results belong to.
    run_id: p.Id = ""


class CreateTasks(_Args):
    tasks: Annotated[list[CreateTask], msgspec.Meta(max_length=MAX_LIST)]
    # Every task of the batch belongs to this run (a task may name its own instead).
    run_id: p.Id = ""


class TaskRef(_Args):
    task_id: p.Id


class AssignArgs(_Args):
    task_id: p.Id
    worker_id: p.Name


# The most tasks one batch command (cancel_tasks, retry_tasks, assign_tasks) acts on.
MAX_BATCH = 10_000
BatchIds = Annotated[list[p.Id], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class BatchRef(_Args):
    task_ids: BatchIds


class BatchAssign(_Args):
    task_ids: BatchIds
    worker_id: p.Name


class PriorityArgs(_Args):
    task_id: p.Id
    priority: Priority


class WorkerRef(_Args):
    worker_id: p.Name


class ListTasks(_Args):
    status: p.Name | None = None
    worker_id: p.Name | None = None
    limit: Limit = 100
    offset: Offset = 0


class ListResults(_Args):
    task_id: p.Id | None = None
    worker_id: p.Name | None = None
    limit: Limit = 1000
    offset: Offset = 0


class WaitArgs(_Args):
    """Wait until every one of these tasks is final, or ``timeout`` seconds have passed."""

    task_ids: Annotated[list[p.Id], msgspec.Meta(min_length=1, max_length=MAX_LIST)]
    timeout: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] = 60.0


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
    include_trends: bool = False


class Waiting(msgspec.Struct):
    """A request answered when its tasks end (the loop's waiter table), or at its timeout."""

    req_id: int
    task_ids: list[str]
    timeout: float


class Deferred(msgspec.Struct):
    """A request answered later, off the coordinator loop (see Coordinator._defer)."""

    req_id: int
    op: str
    fn: Callable[[], Any]


class Commands(Protocol):
    """What the API asks of the coordinator's loop: every change goes through the scheduler."""

    def submit(self, tasks: Sequence[TaskRecord]) -> dict[str, str]:
        """Offer new tasks to the scheduler as one batch; {task_id: reason} when it refused them
        (then none was added), else empty."""
        ...

    def command(self, event: sch.Event) -> str | None:
        """One engineer's command about one task; the scheduler's reason when it refused it."""
        ...

    def stats(self) -> dict[str, Any]: ...


class LoopCommands(Commands, TrustCommands, Protocol):
    """Everything the API asks of the loop."""


def _filtered(equal: dict[str, Any], order: str, limit: int, offset: int = 0) -> tuple[str, list[Any]]:
    """WHERE col=? for each filter that is set, then ORDER BY and a capped LIMIT (a page)."""
    used = {k: v for k, v in equal.items() if v}
    where = ("WHERE " + " AND ".join(f"{k}=?" for k in used)) if used else ""
    return f"{where} ORDER BY {order} LIMIT ? OFFSET ?", [*used.values(), max(1, min(limit, MAX_LIST)), offset]


class ClientApi:
    def __init__(self, *, tasks: TaskTable, workers: WorkerTable, sched: sch.Scheduler, store: Store,
                 queries: ResultQueries, commands: LoopCommands, coordinator_id: str, trust: Trust,
                 runs_api: RunsApi, views_api: ViewsApi | None = None, alerts_api: AlertsApi | None = None) -> None:
        self.tasks = tasks
        self.workers = workers
        self.sched = sched
        self.store = store
        self.queries = queries
        self.commands = commands
        self.coordinator_id = coordinator_id
        self._submissions = 0
        # Each submitted task's submit span, the root of its trace (dtf_agent/tracing.py); None: off.
        self.tracer: Tracer | None = None
        # Who sent the request being handled (set by handle; the loop runs one at a time).
        self.caller = ClientKey("", "nobody", "viewer", "", 0.0)
        self.trust_api = TrustApi(trust, commands, lambda: self.caller, self._security_events, coordinator_id)
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
            "cancel_tasks": (BatchRef, self.cancel_tasks),
            "retry_tasks": (BatchRef, self.retry_tasks),
            "assign_tasks": (BatchAssign, self.assign_tasks),
            "list_workers": (NoArgs, self.list_workers),
            "get_worker": (WorkerRef, self.get_worker),
            "list_results": (ListResults, self.list_results),
            "get_status": (NoArgs, self.get_status),
            "wait": (WaitArgs, self.wait),
            **self.trust_api.ops,
            **runs_api.ops,
            **(alerts_api.ops if alerts_api is not None else {}),
        }
        self.runs = runs_api.runs
        # Read-only analysis over possibly millions of rows: run on the analysis thread.
        self.deferred_ops: dict[str, tuple[type[_Args], Callable[[Any], Any]]] = {
            "aggregate_results": (Analysis, self.aggregate_results),
            "get_result_anomalies": (Analysis, self.get_result_anomalies),
            "get_comparison_report": (Analysis, self.get_comparison_report),
            **runs_api.deferred_ops,
            **(views_api.deferred_ops if views_api is not None else {}),
        }

    def knows(self, op: str) -> bool:
        return op in self.ops or op in self.deferred_ops

    def handle(self, req: p.Request, caller: ClientKey | None = None) -> p.Reply | Deferred | Waiting:
        if caller is not None:
            self.caller = caller
        problem = p.version_problem(req.protocol_version, peer="client")
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
            data = fn(args)
            if isinstance(data, Waiting):  # answered later by the loop's waiter table
                return msgspec.structs.replace(data, req_id=req.req_id)
            return p.Reply(req_id=req.req_id, data=data)
        except (ApiError, ApiRefusal) as exc:
            return p.Reply(req_id=req.req_id, ok=False, error=str(exc))
        except Exception as exc:
            log.exception("client operation %s failed", req.op)
            return p.Reply(req_id=req.req_id, ok=False, error=f"{req.op} failed: {type(exc).__name__}: {exc}")

    # -- operations -------------------------------------------------------------------------------

    def wait(self, a: WaitArgs) -> Waiting:
        return Waiting(0, list(dict.fromkeys(a.task_ids)), a.timeout)

    def _writable(self) -> None:
        """Nothing is accepted that could not be stored: while the database refuses writes (disk
        full, I/O error) submissions are refused with the reason; reads go on."""
        if self.store.failing:
            raise ApiError(f"the database cannot be written right now ({self.store.failing}); nothing was "
                           "submitted. Free some disk space (or fix the error); DTF resumes on its own")

    def ping(self, _: NoArgs) -> dict[str, Any]:
        return {"protocol_version": p.PROTOCOL_VERSION, "coordinator_id": self.coordinator_id}

    def _new_task(self, a: CreateTask, now: float, submission: str = "", run: str = "") -> TaskRecord:
        """A request becomes a task, once: the scheduler's spec (whose fields the scheduler
        validates when it is offered) and the fields only an agent reads (checked here)."""
        if a.type not in TASK_TYPES:
            raise ApiError(f"unknown task type {a.type!r}; known: {', '.join(TASK_TYPES)}")
        params = dict(a.parameters)
        if a.command is not None:
            params["command"] = a.command
        command = params.get("command")
        if a.type == "command" and not command:
            raise ApiError("a command task needs a command")
        if isinstance(command, list) and sum(len(str(x)) + 1 for x in command) > p.MAX_COMMAND:
            raise ApiError(f"the command is longer than {p.MAX_COMMAND} bytes")
        metadata = dict(a.metadata)
        if submission:
            metadata["submission"] = submission
        run_id = a.run_id or run
        if run_id:
            if not self.runs.exists(run_id):
                raise ApiError(f"no run {run_id!r}: create it first (create_run), or leave run_id out")
            metadata["run"] = run_id
        r = a.requirements
        spec = sch.TaskSpec(
            task_id=a.task_id or new_task_id(),
            priority=self.sched.config.default_priority if a.priority is None else a.priority,
            dependencies=tuple(a.dependencies),
            requirements=sch.NO_REQUIREMENTS if r is None else sch.Requirements(
                tags=frozenset(r.tags), hardware=r.hardware, min_memory_gb=r.min_memory_gb, gpu_count=r.gpu_count,
                gpu_memory_gb=r.gpu_memory_gb, os=r.os, worker=r.worker, group=r.group),
            test_id=a.test_id or str(params.get("test_id", "")), cpu_slots=a.cpu_slots, retry_limit=a.retry_limit,
            submit_time=now, expected_duration=a.expected_duration, submission=submission)
        return TaskRecord(spec, type=a.type, parameters=params, timeout=a.timeout, metadata=metadata,
                          create_time=now)

    def _trace_submit(self, tasks: list[TaskRecord]) -> list[tuple[str, Span]]:
        """A submit span per task, each the root of the task's trace (or the child of the context a
        client put in the task's metadata "trace", to join a trace of its own: a CI pipeline's). Its
        context replaces that entry: stored with the task, it is what every attempt's dispatch span
        hangs from, across coordinator restarts too."""
        assert self.tracer is not None
        spans = []
        for t in tasks:
            meta = t.metadata or {}
            span = tracing.start_span(self.tracer, "dtf.submit", tracing.parent_from(meta.get("trace")), kind="server",
                                      attributes={"dtf.task_id": t.task_id, "dtf.task_type": t.type,
                                                  "dtf.test_id": t.test_id or None, "dtf.client": self.caller.name,
                                                  "dtf.submission": meta.get("submission"), "dtf.run_id": meta.get("run")})
            t.metadata = {**meta, "trace": tracing.context_of(span)}
            spans.append((t.task_id, span))
        return spans

    def _submit(self, tasks: list[TaskRecord]) -> dict[str, str]:
        """commands.submit, with each task's submit span when tracing: ended whatever the outcome,
        an exception's included (its text is the spans' error)."""
        if self.tracer is None:
            return self.commands.submit(tasks)
        spans = self._trace_submit(tasks)
        try:
            refused = self.commands.submit(tasks)
        except BaseException as exc:
            _end_submit(spans, {}, f"the submission failed: {type(exc).__name__}: {exc}")
            raise
        _end_submit(spans, refused)
        return refused

    def _check_given_ids(self, ids: list[str]) -> None:
        """Ids the engineer chose must be new. The scheduler knows the live and recently finished
        ones; older ones are only in SQLite. Ids we generate are unique by construction, so a bulk
        submission of generated ids costs no database look-up."""
        if not ids:
            return
        if len(set(ids)) != len(ids):
            raise ApiError("task ids repeat within one request")
        given = [i for i in ids if self.sched.task_state(i) is None]
        clash = self.store.existing_task_ids(given) if given else set()
        if clash:
            raise ApiError(f"task id(s) already exist: {', '.join(sorted(clash)[:10])}")

    def create_task(self, a: CreateTask) -> dict[str, Any]:
        self._writable()
        self._check_given_ids([a.task_id] if a.task_id else [])
        task = self._new_task(a, time.time())
        refused = self._submit([task])
        if refused:
            raise ApiError(f"task {task.task_id} refused: {refused[task.task_id]}")
        return task.public()

    def create_tasks(self, a: CreateTasks) -> dict[str, Any]:
        self._writable()
        self._check_given_ids([t.task_id for t in a.tasks if t.task_id])
        # One request is one submission: load_balancer.worker_cap limits how many workers its
        # tasks occupy at once, leaving the others for everybody else.
        self._submissions += 1
        submission = f"{self.coordinator_id}-{self._submissions}"
        now = time.time()
        tasks = [self._new_task(t, now, submission, a.run_id) for t in a.tasks]
        refused = self._submit(tasks)
        if refused:
            detail = "; ".join(f"{k}: {v}" for k, v in list(refused.items())[:20])
            raise ApiError(f"submission refused, no task was added: {len(refused)} of {len(tasks)} task(s) "
                           f"have problems: {detail}")
        return {"task_ids": [t.task_id for t in tasks]}

    def _why(self, task_id: str, status: str, row: dict[str, Any]) -> str:
        # Why a task waits is the scheduler's live knowledge, not a stored column.
        if status in (p.PENDING, p.ASSIGNED):
            return self.sched.why_waiting(task_id)
        return row.get("error") or row.get("status_reason") or ""

    def get_task(self, a: TaskRef) -> dict[str, Any]:
        rec = self.tasks.get(a.task_id)
        if rec is not None:
            out = rec.public()
        else:
            rows = self.store.load_tasks("WHERE task_id=?", (a.task_id,))
            if not rows:
                raise ApiError(f"no task {a.task_id!r}")
            out = rows[0]
        out["why"] = self._why(a.task_id, out["status"], out)
        # The task's own results (one per attempt); a pytest shard's per-test rows are the run's (run_tests).
        out["result_list"] = self.store.load_results("WHERE task_id=? AND outcome IS NULL ORDER BY timestamp",
                                                     (a.task_id,))
        return out

    def list_tasks(self, a: ListTasks) -> list[dict[str, Any]]:
        if a.status and a.status not in p.TASK_STATUSES:
            raise ApiError(f"unknown status {a.status!r}; known: {', '.join(p.TASK_STATUSES)}")
        sql, params = _filtered({"status": a.status, "worker_id": a.worker_id}, "create_time DESC, task_id", a.limit,
                                a.offset)
        rows = self.store.load_tasks(sql, params)
        for row in rows:
            row["why"] = self._why(row["task_id"], row["status"], row)
        return rows

    def _known(self, task_id: str) -> TaskRecord:
        task = self.tasks.get(task_id)
        if task is None:
            raise ApiError(f"no task {task_id!r} (or it finished long ago; see `dtf tasks`)")
        return task

    def _command(self, event: sch.Event, what: str, task_id: str) -> dict[str, Any]:
        reason = self.commands.command(event)
        if reason is not None:
            raise ApiError(reason if reason.startswith("cannot") else f"cannot {what} {task_id}: {reason}")
        task = self._known(task_id)
        return {"task_id": task_id, "status": task.status, "worker_id": task.worker_id,
                "priority": task.priority, "why": self.sched.why_waiting(task_id)}

    def cancel_task(self, a: TaskRef) -> dict[str, Any]:
        if self.tasks.get(a.task_id) is None:
            raise ApiError(f"no active task {a.task_id!r}")
        return self._command(sch.CancelRequested(time.time(), a.task_id), "cancel", a.task_id)

    def assign_task(self, a: AssignArgs) -> dict[str, Any]:
        self._known(a.task_id)
        if a.worker_id not in self.workers:
            known = ", ".join(self.workers.ids()) or "none yet"
            raise ApiError(f"cannot assign {a.task_id}: no worker {a.worker_id!r} (known: {known})")
        return self._command(sch.Pin(time.time(), a.task_id, a.worker_id), "assign", a.task_id)

    def unassign_task(self, a: TaskRef) -> dict[str, Any]:
        self._known(a.task_id)
        return self._command(sch.Unpin(time.time(), a.task_id), "unassign", a.task_id)

    def retry_task(self, a: TaskRef) -> dict[str, Any]:
        self._known(a.task_id)
        return self._command(sch.Retry(time.time(), a.task_id), "retry", a.task_id)

    @staticmethod
    def _each(task_ids: list[str], one: Callable[[str], Any]) -> dict[str, Any]:
        """A command for many tasks, one at a time through the single-task path (same checks, same
        reasons): a refusal is recorded for its task and the others go on."""
        done: list[str] = []
        refused: dict[str, str] = {}
        for tid in dict.fromkeys(task_ids):
            try:
                one(tid)
            except ApiError as exc:
                refused[tid] = str(exc)
            else:
                done.append(tid)
        return {"done": done, "refused": refused}

    def cancel_tasks(self, a: BatchRef) -> dict[str, Any]:
        return self._each(a.task_ids, lambda tid: self.cancel_task(TaskRef(task_id=tid)))

    def retry_tasks(self, a: BatchRef) -> dict[str, Any]:
        return self._each(a.task_ids, lambda tid: self.retry_task(TaskRef(task_id=tid)))

    def assign_tasks(self, a: BatchAssign) -> dict[str, Any]:
        return self._each(a.task_ids, lambda tid: self.assign_task(AssignArgs(task_id=tid, worker_id=a.worker_id)))

    def set_priority(self, a: PriorityArgs) -> dict[str, Any]:
        self._known(a.task_id)
        return self._command(sch.SetPriority(time.time(), a.task_id, a.priority), "change the priority of",
                             a.task_id)

    def list_workers(self, _: NoArgs) -> list[dict[str, Any]]:
        return self.store.load_workers()

    def get_worker(self, a: WorkerRef) -> dict[str, Any]:
        w = self.workers.get(a.worker_id)
        if w is None:
            raise ApiError(f"no worker {a.worker_id!r}")
        return w.public()

    def list_results(self, a: ListResults) -> list[dict[str, Any]]:
        sql, params = _filtered({"task_id": a.task_id, "worker_id": a.worker_id}, "timestamp DESC", a.limit,
                                a.offset)
        rows = self.store.query(f"SELECT {','.join(RESULT_COLUMNS)} FROM results {sql}", params)
        return [result_row_to_dict(r) for r in rows]

    def get_status(self, _: NoArgs) -> dict[str, Any]:
        return self.commands.stats()

    def _security_events(self, limit: int) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT time, kind, subject, data FROM events WHERE kind LIKE 'security\\_%' "
                                "ESCAPE '\\' ORDER BY id DESC LIMIT ?", [limit])
        out = []
        for t, kind, subject, data in rows:
            detail = msgspec.json.decode(data).get("detail", "") if data else ""
            out.append({"time": t, "what": kind.removeprefix("security_"), "subject": subject, "detail": detail})
        return out

    # -- analysis (run on the analysis thread; they only read) -------------------------------------

    def aggregate_results(self, a: Analysis) -> dict[str, Any]:
        return self.queries.aggregate_results(a.result_type, a.aggregation_level, a.filter_params, a.time_range,
                                              include_trends=a.include_trends)

    def get_result_anomalies(self, a: Analysis) -> list[Any]:
        return self.queries.get_result_anomalies(a.result_type, a.aggregation_level, a.filter_params,
                                                 a.time_range, threshold=a.threshold)

    def get_comparison_report(self, a: Analysis) -> dict[str, Any]:
        return self.queries.get_comparison_report(a.result_type, a.aggregation_level, a.filter_params,
                                                  a.time_range, lookback_days=a.lookback_days)


def _end_submit(spans: list[tuple[str, Span]], refused: dict[str, str], failed: str | None = None) -> None:
    """A submission is accepted or refused whole: each span ends with its task's fate (``failed``:
    the submission raised, and this is why)."""
    whole = failed or (f"the submission was refused ({len(refused)} task(s) with problems)" if refused else None)
    for task_id, span in spans:
        tracing.end_span(span, refused.get(task_id) or whole)
