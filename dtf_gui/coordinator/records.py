"""Records that cross rooms inside the coordinator, typed, so that a renamed field fails loudly.

- :class:`TaskRecord`: one task as the coordinator holds it while it lives (the task table owns
  them, the loop changes them as the scheduler instructs, the store writes their rows). The
  client API builds one from a request, once; it joins the table only after the scheduler
  accepted its :class:`~dtf_gui.coordinator.scheduler.TaskSpec`.
- :class:`WorkerRecord`: one agent as the worker table knows it.
- :class:`Result`: one attempt's outcome, built by the loop, written by the store and read by the
  live detector on the analysis thread (frozen: the two threads share nothing either changes).

Task and worker records are plain ``__slots__`` classes rather than Structs: the store reads a
whole row out of one with a single ``operator.attrgetter`` call (a consistent snapshot under the
GIL, however the loop changes the record afterwards), and they change on every status update.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dtf_agent.protocol import ONLINE, PENDING, ResultRecord
from dtf_gui.coordinator.scheduler import NO_REQUIREMENTS, Requirements, TaskSpec

__all__ = ["Result", "TaskRecord", "WorkerRecord", "requirements_from_dict", "requirements_to_dict"]


def requirements_to_dict(req: Requirements) -> dict[str, Any] | None:
    """What was asked, as stored and shown: only the fields that ask for something."""
    if req == NO_REQUIREMENTS:
        return None
    out: dict[str, Any] = {}
    for name in req.__struct_fields__:
        value = getattr(req, name)
        if value is None or value == 0 or (isinstance(value, frozenset) and not value):
            continue
        out[name] = sorted(value) if isinstance(value, frozenset) else value
    return out or None


def requirements_from_dict(d: dict[str, Any] | None) -> Requirements:
    """The stored form back (see :func:`requirements_to_dict`); unknown keys are ignored."""
    if not d:
        return NO_REQUIREMENTS
    return Requirements(
        tags=frozenset(d.get("tags") or ()), hardware=d.get("hardware"),
        min_memory_gb=float(d.get("min_memory_gb") or 0.0), gpu_count=int(d.get("gpu_count") or 0),
        gpu_memory_gb=float(d.get("gpu_memory_gb") or 0.0), os=d.get("os"), worker=d.get("worker"),
        group=d.get("group"))


class TaskRecord:
    """A task's row (the seed's Task model) plus what the loop needs of it on the hot path.

    ``spec`` is the scheduler's view (dependencies, requirements, slots, retry limit ...), fixed at
    submit; ``parameters`` and ``metadata`` are fixed too. The other attributes change as the
    scheduler instructs. ``stored`` tells the store an INSERT already happened; ``sent`` is when
    the current attempt went out (perf_counter), for the dispatch latency figures."""

    __slots__ = ("attempt", "create_time", "end_time", "error", "failures", "lost", "metadata", "parameters",
                 "pinned_to", "priority", "results", "retry_at", "sent", "spec", "start_time", "status",
                 "status_reason", "stored", "task_id", "test_id", "timeout", "type", "worker_id")

    def __init__(self, spec: TaskSpec, *, type: str, parameters: dict[str, Any], timeout: float | None,
                 metadata: dict[str, Any] | None, create_time: float, status: str = PENDING) -> None:
        self.spec = spec
        self.task_id = spec.task_id
        self.type = type
        self.parameters = parameters
        self.timeout = timeout
        self.metadata = metadata or None
        self.create_time = create_time
        self.priority = spec.priority
        self.test_id = spec.test_id
        self.status = status
        self.status_reason: str | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.worker_id: str | None = None
        self.results: str | None = None
        self.error: str | None = None
        self.attempt = 0
        # The scheduler's memory of this task, stored so that a restart resumes it where it was:
        # failed attempts and worker losses (against retry_limit and lost_limit), the backoff
        # deadline (epoch seconds) and the worker an engineer pinned it to.
        self.failures = 0
        self.lost = 0
        self.retry_at: float | None = None
        self.pinned_to: str | None = None
        self.stored = False
        self.sent: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TaskRecord:
        """A task loaded back from SQLite (JSON columns decoded), as it was stored."""
        meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else None
        spec = TaskSpec(
            task_id=row["task_id"], priority=int(row["priority"]),
            dependencies=tuple(row.get("dependencies") or ()),
            requirements=requirements_from_dict(row.get("requirements")),
            test_id=row.get("test_id") or "", submit_time=row.get("create_time") or 0.0,
            submission=str((meta or {}).get("submission", "")), cpu_slots=int(row.get("cpu_slots") or 1),
            retry_limit=row.get("retry_limit"), expected_duration=row.get("expected_duration"))
        rec = cls(spec, type=row.get("type") or "command", parameters=row.get("parameters") or {},
                  timeout=row.get("timeout"), metadata=meta, create_time=row.get("create_time") or 0.0,
                  status=row.get("status") or PENDING)
        for name in ("status_reason", "start_time", "end_time", "worker_id", "results", "error"):
            setattr(rec, name, row.get(name))
        rec.attempt = row.get("attempt") or 0
        rec.failures = row.get("failures") or 0
        rec.lost = row.get("lost") or 0
        rec.retry_at = row.get("retry_at")
        rec.pinned_to = row.get("pinned_to")
        rec.stored = True
        return rec

    def public(self) -> dict[str, Any]:
        """The whole task as the client API returns it (the seed's Task fields)."""
        spec = self.spec
        return {
            "task_id": self.task_id, "type": self.type, "status": self.status, "priority": self.priority,
            "create_time": self.create_time, "start_time": self.start_time, "end_time": self.end_time,
            "worker_id": self.worker_id, "parameters": self.parameters or None,
            "dependencies": list(spec.dependencies) or None,
            "requirements": requirements_to_dict(spec.requirements), "results": self.results,
            "error": self.error, "metadata": self.metadata, "timeout": self.timeout, "attempt": self.attempt,
            "test_id": self.test_id, "status_reason": self.status_reason,
        }

    def summary(self) -> dict[str, Any]:
        """What the window and the event stream need of a task: small, no JSON to decode."""
        command = self.parameters.get("command") if self.parameters else None
        return {
            "task_id": self.task_id, "type": self.type, "status": self.status, "priority": self.priority,
            "worker_id": self.worker_id, "create_time": self.create_time, "start_time": self.start_time,
            "end_time": self.end_time, "attempt": self.attempt,
            "command": command if isinstance(command, str) else None, "error": self.error,
            "status_reason": self.status_reason, "test_id": self.test_id,
            "why": self.error or self.status_reason,
        }


class WorkerRecord:
    """An agent's row (the seed's Worker model) plus its live connection state.

    ``identity`` is its ZeroMQ routing id (one per connection, given by the coordinator's socket);
    ``key`` is the CURVE public key that connection proved ("" when insecure): every frame on that
    routing id must come with it. ``seen_at`` (monotonic) is what liveness is judged on,
    ``last_seen`` (epoch) is what people are shown."""

    __slots__ = ("capabilities", "current_task", "first_seen", "health_status", "hardware_id", "hostname",
                 "identity", "incarnation", "key", "last_seen", "metadata", "online", "performance_metrics",
                 "seen_at", "slots", "status", "tags", "worker_id")

    def __init__(self, worker_id: str, identity: bytes, *, hostname: str, slots: int,
                 capabilities: dict[str, Any], tags: list[str], metadata: dict[str, Any], running: list[str],
                 now: float, first_seen: float, seen_at: float, incarnation: str = "", key: str = "") -> None:
        self.worker_id = worker_id
        self.identity = identity
        self.key = key
        self.incarnation = incarnation
        self.hostname = hostname
        self.status = ONLINE
        self.hardware_id: str | None = capabilities.get("hardware_id")
        self.capabilities = capabilities
        self.tags = tags
        self.slots = slots
        self.last_seen = now
        self.first_seen = first_seen
        self.current_task = running
        self.performance_metrics: dict[str, float] = {}
        self.health_status: dict[str, Any] = {"state": "healthy"}
        self.metadata = metadata
        self.seen_at = seen_at
        self.online = True

    def public(self) -> dict[str, Any]:
        """The seed's Worker fields, as the client API returns them."""
        return {name: getattr(self, name) for name in WORKER_FIELDS}

    def summary(self) -> dict[str, Any]:
        """What the window's worker table shows."""
        pm = self.performance_metrics
        return {
            "worker_id": self.worker_id, "hostname": self.hostname, "status": self.status, "slots": self.slots,
            "running": len(self.current_task), "last_seen": self.last_seen,
            "cpu_percent": pm.get("cpu_percent"), "memory_percent": pm.get("memory_percent"),
            "disk_percent": pm.get("disk_percent"), "gpu_percent": pm.get("gpu_percent"),
            "gpu_memory_percent": pm.get("gpu_memory_percent"),
            "hardware_id": self.hardware_id, "tags": self.tags, "hardware": hardware_line(self.capabilities),
            "draining": bool(self.health_status.get("draining")),
            "health": self.health_status.get("state"), "reason": self.health_status.get("reason"),
        }


def hardware_line(caps: dict[str, Any]) -> str:
    """A worker's hardware in a few words for a table cell: cores, memory, GPUs, OS."""
    parts = []
    if caps.get("cpu_count"):
        parts.append(f"{caps['cpu_count']} cores")
    if caps.get("memory_gb"):
        parts.append(f"{float(caps['memory_gb']):.0f} GB")
    gpus = caps.get("gpus") or []
    if gpus:
        names = sorted({str(g.get("name", "GPU")) for g in gpus if isinstance(g, dict)})
        parts.append(f"{len(gpus)}× {'/'.join(names) or 'GPU'}")
    if caps.get("os"):
        parts.append(str(caps["os"]))
    return ", ".join(parts)


WORKER_FIELDS: tuple[str, ...] = ("worker_id", "hostname", "status", "hardware_id", "capabilities", "tags", "slots",
                                  "last_seen", "first_seen", "current_task", "performance_metrics",
                                  "health_status", "metadata")


# The result status of a test row, by its outcome (a skip is neither a success nor a failure).
_TEST_STATUS = {"passed": "success", "xfailed": "success", "xpassed": "success", "flaky": "success",
                "skipped": "partial"}


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt's outcome as the coordinator stores it (the seed's Result model).

    ``timestamp`` is when the attempt ended (the agent's clock, display data); ``metrics`` are the
    numbers the task reported, ``raw_data`` the tails of its output."""

    result_id: str
    task_id: str
    worker_id: str
    test_id: str = ""
    timestamp: float = 0.0
    status: str = "success"
    execution_time: float | None = None
    exit_code: int | None = None
    error: str = ""
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    hardware_metrics: dict[str, float] = msgspec.field(default_factory=dict)
    environment: dict[str, Any] | None = None
    raw_data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    attempt: int = 1
    run_id: str = ""
    # A pytest test's outcome (passed, failed, skipped, error, xfailed, xpassed, crashed, flaky);
    # "" for a task's own result.
    outcome: str = ""

    @classmethod
    def reported(cls, rec: ResultRecord, worker_id: str, test_id: str, now: float, run_id: str = "") -> Result:
        """What an agent reported (``rec``), attributed to the worker whose connection it came on;
        ``test_id`` is the task's, used when the agent named none."""
        tails = {"stdout_tail": rec.stdout_tail, "stderr_tail": rec.stderr_tail}
        return cls(result_id=rec.result_id, task_id=rec.task_id, worker_id=worker_id, test_id=rec.test_id or test_id,
                   timestamp=rec.end_time or now, status=rec.status, execution_time=rec.execution_time,
                   exit_code=rec.exit_code, error=rec.error, metrics=rec.metrics,
                   hardware_metrics=rec.hardware_metrics,
                   raw_data=tails if (rec.stdout_tail or rec.stderr_tail) else None, attempt=rec.attempt,
                   run_id=run_id)

    @classmethod
    def per_test(cls, rec: ResultRecord, worker_id: str, when: float, run_id: str = "") -> list[Result]:
        """A pytest shard's tests, a row each (test_id = node id): they feed the duration history,
        the run's counts and, with their metrics, the aggregator. Ids derive from the shard's
        result id, so a resent result cannot store them twice."""
        return [cls(result_id=f"{rec.result_id}/{i}", task_id=rec.task_id, worker_id=worker_id, test_id=t.nodeid,
                    timestamp=when, status=_TEST_STATUS.get(t.outcome, "failure"), execution_time=t.duration,
                    error=t.longrepr, metrics=t.metrics, raw_data={"output": t.output} if t.output else None,
                    attempt=rec.attempt, run_id=run_id, outcome=t.outcome)
                for i, t in enumerate(rec.tests)]
