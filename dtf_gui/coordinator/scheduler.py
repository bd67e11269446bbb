"""The task scheduler: a state machine with no I/O. Events go in, instructions come out.

    sched = Scheduler(SchedulerConfig(...), rng=random.Random(0))
    instructions = sched.handle([Submit(now, TaskSpec(task_id="t1")), WorkerUp(now, WorkerSpec(...))])

The coordinator loop feeds it what happened (:data:`Event`: :class:`Submit`, :class:`FinishReported`,
...) and carries out what it answers (:data:`Instruction`: :class:`Dispatch`, :class:`StatusChanged`,
:class:`Rejected`, :class:`CancelOnWorker`, :class:`PriorityChanged`), in order. A refused event
(an unknown task, a bad spec, a worker that cannot take a pinned task) comes back as a
:class:`Rejected` among the instructions of the same call; there is no other channel.

Events are named so that they cannot be mistaken for wire messages (``dtf_agent.protocol``):
what an agent reports is ``...Reported``, what an engineer asks is ``CancelRequested``, ``Pin``,
``Unpin``, ``SetPriority``, ``Retry``.

Time arrives on the events (``now``, seconds) and only ever from the coordinator's own clock: an
agent's clock is display data and never reaches here, so a worker with a fast clock cannot move
backoff deadlines. Randomness (retry jitter) comes from the ``rng`` passed in. Nothing here reads a
clock, sleeps, logs or touches a socket (an import-linter contract keeps it so), so every rule is
testable alone.

Rules
-----
- **Priority: a higher number runs first** (``HIGHER_PRIORITY_FIRST``; default priority 5). Within
  a priority, the strategy's ``queue_key`` orders (``duration_aware``: longest first), then submit
  time. **Aging**: with ``aging_interval = A`` seconds, a task that has waited ``A`` seconds ranks
  like one submitted now with priority + 1; this is a static sort key (``submit_time -
  priority * A``), so aging costs nothing per tick and never rescans the queue. ``0`` switches it off.
- **Dependencies**: a task becomes ready when all its dependencies completed. Unknown ids and cycles
  are refused at submit (:class:`SubmitBatch` accepts a set of tasks that name each other, in any
  order). When a dependency ends failed or cancelled, dependents end ``failed`` with "dependency X
  failed" (``dependency_failure="fail"``) or run anyway (``"run"``). :class:`Retry` on such a
  dependency revives the dependents it took down.
- **Requirements** (:class:`Requirements`) must all be met by a worker: tags are a subset of the
  worker's tags, hardware one of its hardware kinds, memory/GPU count/GPU memory at least, OS equal,
  a named worker or a group. While running, a task reserves ``cpu_slots`` slots and ``gpu_count``
  GPUs. A task no known worker could ever run waits with reason "unschedulable: ..." (it starts if
  a capable worker appears); one whose capable workers are all offline waits with "no capable
  worker online: ...".
- **Retries**: a failed attempt retries after ``min(base * 2**(n-1), max)`` seconds, scaled by a
  random factor in ``[1 - retry_jitter, 1]``, up to ``retry_limit`` retries (per-task override;
  0 = never). A worker lost mid-task sends the task back to the queue at once without counting a
  failure, up to ``lost_limit`` times; beyond that the task fails ("worker lost ...").
- **Caps**: ``task_cap_per_worker`` limits tasks in flight on one worker (below its slots);
  ``worker_cap`` limits how many workers the tasks of one submission (``TaskSpec.submission``)
  occupy at once. Tasks without a submission id are not capped.
- **Manual assignment**: :class:`Pin` pins a pending task (or moves an assigned, not yet started
  one) to a worker; it dispatches there as soon as the worker has room and the task is ready, ahead
  of the queue (the worker takes no queued work while a pinned task waits for it). Refused with the
  reason when the worker is unknown, offline, not approved or lacks a capability, or the task is
  running or finished. :class:`Unpin` drops the pin / takes an assigned task back to the queue.
- **Draining**: :class:`DrainWorker` stops offering a worker new tasks (queued or pinned); what
  runs there finishes. Tasks pinned to it wait and say so; :class:`Pin` onto it is refused.
  :class:`ResumeWorker` ends that. The flag outlives the worker going offline and coming back (a
  drain of a worker not seen yet is kept for when it registers).
- Dispatches come out of every ``handle()`` call that leaves free capacity, not only on
  :class:`Tick`. ``Tick`` releases tasks whose retry backoff ended.
- Stale reports (a StartReported/FinishReported from a worker the task is no longer on, or for another
  attempt) are ignored and counted; a worker claiming to run a task it should not gets a
  :class:`CancelOnWorker`. After a coordinator restart, :class:`Adopt` records a task a
  reconnecting agent says it is running.
- Finished tasks are remembered (for dependencies and queries) up to ``keep_finished``; older ones
  are forgotten, oldest first, and a new task naming one as a dependency is refused as unknown.

Worker choice is delegated to a strategy from :mod:`dtf_gui.coordinator.balancer`.

Cost: tasks are grouped into requirement classes (same requirements, slots and submission), each
with its own heap and its own map of workers that could take one of its tasks now; a decision
looks at the head of each class with queued work, never at the whole queue.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import msgspec

from dtf_agent.protocol import (
    ASSIGNED,
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    TASK_STATUSES,
    TERMINAL_STATUSES,
)
from dtf_gui.coordinator.balancer import DurationPredictor, Strategy, load_strategy

__all__ = [
    "HIGHER_PRIORITY_FIRST", "Adopt", "CancelOnWorker", "CancelRequested", "Dispatch", "Event", "FinishReported",
    "DrainWorker", "Instruction", "Pin", "PriorityChanged", "Rejected", "Requirements", "ResumeWorker", "Retry",
    "Scheduler", "SchedulerConfig",
    "SetPriority", "StartReported", "StatusChanged", "Submit", "SubmitBatch", "TaskSpec", "Tick", "Unpin", "WorkerLost",
    "WorkerSpec", "WorkerUp", "mismatch",
]

#: A larger ``priority`` number runs first (like Kubernetes PriorityClass and RabbitMQ), so "raise the
#: priority" means "make the number bigger" in the window, the CLI and the config alike.
HIGHER_PRIORITY_FIRST: bool = True


# Where a pending task waits.
_W_NONE, _W_DEPS, _W_BACKOFF, _W_PIN, _W_QUEUE = range(5)
_SIGN = 1 if HIGHER_PRIORITY_FIRST else -1


# ----------------------------------------------------------------------------- specs and config


class Requirements(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker must offer to run a task. Every field left at its default asks for nothing."""

    tags: frozenset[str] = frozenset()
    hardware: str | None = None          # "cpu", "cuda", "rocm", ...: one of WorkerSpec.hardware
    min_memory_gb: float = 0.0
    gpu_count: int = 0                   # GPUs reserved while the task runs
    gpu_memory_gb: float = 0.0           # per GPU, at least
    os: str | None = None                # compared case-insensitively with WorkerSpec.os
    worker: str | None = None            # only this worker
    group: str | None = None             # only workers in this group


NO_REQUIREMENTS = Requirements()


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    priority: int = 5
    dependencies: tuple[str, ...] = ()
    requirements: Requirements = NO_REQUIREMENTS
    test_id: str = ""                    # key of the duration history
    cpu_slots: int = 1
    retry_limit: int | None = None       # None: SchedulerConfig.retry_limit; 0: never retried
    submit_time: float = 0.0             # 0: the Submit event's now
    expected_duration: float | None = None  # seconds on a speed-1.0 worker, used until history exists
    submission: str = ""                 # tasks submitted together (a plan run); worker_cap applies per submission


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    slots: int = 1
    tags: frozenset[str] = frozenset()
    hardware: frozenset[str] = frozenset({"cpu"})
    memory_gb: float = math.inf          # unknown memory does not block tasks that ask for some
    gpus: int = 0
    gpu_memory_gb: float = 0.0
    os: str = ""
    groups: frozenset[str] = frozenset()
    approved: bool = True
    speed: float = 1.0                   # relative; durations in the history are normalised by it


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """task_scheduler.* and load_balancer.* settings; every field has a default."""

    default_priority: int = 5
    max_queue_size: int = 1_000_000      # pending tasks held at most
    retry_limit: int = 3
    retry_backoff_base: float = 1.0
    retry_backoff_max: float = 60.0
    retry_jitter: float = 0.5            # the delay is scaled by uniform(1 - jitter, 1)
    lost_limit: int = 3
    dependency_failure: str = "fail"     # "fail" | "run"
    aging_interval: float = 60.0         # seconds per priority step; 0 = no aging
    strategy: str = "duration_aware"     # built-in name or "package.module:ClassName"
    worker_cap: int | None = None        # workers one submission may occupy at once
    task_cap_per_worker: int | None = None
    history_window: int = 9              # runs per (test, hardware) the duration median uses
    default_duration: float = 60.0       # seconds predicted for a test with no history and no hint
    keep_finished: int = 200_000         # finished tasks remembered for dependencies and queries

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"scheduler setting {key}: {why}, got {getattr(self, key)!r}")

        if self.max_queue_size < 1:
            raise bad("max_queue_size", "must be >= 1")
        if self.retry_limit < 0:
            raise bad("retry_limit", "must be >= 0")
        if not self.retry_backoff_base >= 0:
            raise bad("retry_backoff_base", "must be >= 0 seconds")
        if not self.retry_backoff_max >= self.retry_backoff_base:
            raise bad("retry_backoff_max", f"must be >= retry_backoff_base ({self.retry_backoff_base})")
        if not 0 <= self.retry_jitter <= 1:
            raise bad("retry_jitter", "must be between 0 and 1")
        if self.lost_limit < 0:
            raise bad("lost_limit", "must be >= 0")
        if self.dependency_failure not in ("fail", "run"):
            raise bad("dependency_failure", "must be 'fail' or 'run'")
        if not self.aging_interval >= 0:
            raise bad("aging_interval", "must be >= 0 seconds (0 switches aging off)")
        if self.worker_cap is not None and self.worker_cap < 1:
            raise bad("worker_cap", "must be >= 1 or null")
        if self.task_cap_per_worker is not None and self.task_cap_per_worker < 1:
            raise bad("task_cap_per_worker", "must be >= 1 or null")
        if self.history_window < 1:
            raise bad("history_window", "must be >= 1")
        if not self.default_duration > 0:
            raise bad("default_duration", "must be > 0 seconds")
        if self.keep_finished < 0:
            raise bad("keep_finished", "must be >= 0")


# ----------------------------------------------------------------------------- events (in)


class Submit(msgspec.Struct, frozen=True):
    now: float
    task: TaskSpec


class SubmitBatch(msgspec.Struct, frozen=True):
    """Tasks that may name each other as dependencies, in any order; all accepted or all refused."""

    now: float
    tasks: tuple[TaskSpec, ...]


class CancelRequested(msgspec.Struct, frozen=True):
    now: float
    task_id: str


class WorkerUp(msgspec.Struct, frozen=True):
    """A worker registered, came back, or changed its capabilities or approval."""

    now: float
    worker: WorkerSpec


class WorkerLost(msgspec.Struct, frozen=True):
    now: float
    worker_id: str


class StartReported(msgspec.Struct, frozen=True):
    now: float
    task_id: str
    worker_id: str
    attempt: int | None = None


class FinishReported(msgspec.Struct, frozen=True):
    now: float
    task_id: str
    worker_id: str
    success: bool
    error: str = ""
    duration: float | None = None        # measured on the worker; default: now - start
    attempt: int | None = None


class Pin(msgspec.Struct, frozen=True):
    now: float
    task_id: str
    worker_id: str


class Unpin(msgspec.Struct, frozen=True):
    now: float
    task_id: str


class DrainWorker(msgspec.Struct, frozen=True):
    """An engineer drains a worker: no new tasks go there; its running ones finish."""

    now: float
    worker_id: str


class ResumeWorker(msgspec.Struct, frozen=True):
    now: float
    worker_id: str


class SetPriority(msgspec.Struct, frozen=True):
    now: float
    task_id: str
    priority: int


class Retry(msgspec.Struct, frozen=True):
    now: float
    task_id: str


class Tick(msgspec.Struct, frozen=True):
    now: float


class Adopt(msgspec.Struct, frozen=True):
    """After a coordinator restart: a reconnecting worker reports it is running this task (or holds
    its result), under ``attempt`` (the attempt it was given; None: a new one is counted)."""

    now: float
    task_id: str
    worker_id: str
    attempt: int | None = None


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """What the scheduler had learnt about a task before a restart (see :class:`Restore`)."""

    attempt: int = 0                     # attempts dispatched so far; the next one is attempt + 1
    failures: int = 0                    # against retry_limit
    lost: int = 0                        # against lost_limit
    error: str = ""                      # the last failure's error
    retry_at: float = 0.0                # backoff deadline (epoch seconds); 0: none
    pinned_to: str | None = None         # the worker an engineer assigned it to
    # The worker that was running it: the task waits for that worker to reconnect until
    # ``hold_until`` rather than start a second copy elsewhere at once.
    held_for: str | None = None
    hold_until: float = 0.0


class Restore(msgspec.Struct, frozen=True):
    """At start: the unfinished tasks of an earlier life, with what was known of them. Unlike a
    submission each is accepted or refused alone (a dependency no longer known refuses the task
    and its dependents, nothing else); dependencies may come in any order."""

    now: float
    tasks: tuple[tuple[TaskSpec, Progress], ...]


class Remember(msgspec.Struct, frozen=True):
    """Tasks that ended before the scheduler's memory begins (they are only in the database):
    (task_id, final status). Lets a restored or new task depend on them."""

    now: float
    tasks: tuple[tuple[str, str], ...]


class Reconcile(msgspec.Struct, frozen=True):
    """A worker registered (again) and listed the tasks it ``holds`` (running, or finished with the
    result not yet acknowledged). Tasks the scheduler had on it and it does not hold go back to
    the queue; ``restarted`` (a new agent process) counts that as a loss against lost_limit, a
    reconnect of the same process does not. Tasks restored from an earlier life and held for this
    worker (see Progress.held_for) that it does not hold stop waiting for it."""

    now: float
    worker_id: str
    holds: frozenset[str]
    restarted: bool


# ----------------------------------------------------------------------------- instructions (out)


class Dispatch(msgspec.Struct, frozen=True):
    task_id: str
    worker_id: str
    attempt: int


class StatusChanged(msgspec.Struct, frozen=True):
    task_id: str
    status: str
    reason: str = ""
    worker_id: str | None = None


class Rejected(msgspec.Struct, frozen=True):
    task_id: str
    reason: str


class CancelOnWorker(msgspec.Struct, frozen=True):
    task_id: str
    worker_id: str


class PriorityChanged(msgspec.Struct, frozen=True):
    task_id: str
    priority: int


Event = (Submit | SubmitBatch | CancelRequested | WorkerUp | WorkerLost | StartReported | FinishReported | Pin
         | Unpin | SetPriority | Retry | Tick | Adopt | Restore | Remember | Reconcile | DrainWorker | ResumeWorker)
Instruction = Dispatch | StatusChanged | Rejected | CancelOnWorker | PriorityChanged


# ----------------------------------------------------------------------------- matching


def mismatch(req: Requirements, cpu_slots: int, w: WorkerSpec) -> str | None:
    """Why worker ``w`` can never run a task with ``req`` and ``cpu_slots``; None when it can."""
    if req.worker is not None and req.worker != w.worker_id:
        return f"needs worker {req.worker}"
    if req.group is not None and req.group not in w.groups:
        return f"needs group {req.group}"
    if req.tags and not req.tags <= w.tags:
        return "needs tag " + ", ".join(sorted(req.tags - w.tags))
    if req.hardware is not None:
        want = req.hardware.lower()
        if not any(h.lower() == want for h in w.hardware):
            return f"needs hardware {req.hardware}"
    if req.os and req.os.lower() != w.os.lower():
        return f"needs OS {req.os}"
    if req.min_memory_gb > w.memory_gb:
        return f"needs {req.min_memory_gb:g} GB memory"
    if req.gpu_count > w.gpus:
        return f"needs {req.gpu_count} GPU{'s' if req.gpu_count != 1 else ''}"
    if req.gpu_memory_gb > 0 and (w.gpus < 1 or req.gpu_memory_gb > w.gpu_memory_gb):
        return f"needs {req.gpu_memory_gb:g} GB GPU memory"
    if cpu_slots > w.slots:
        return f"needs {cpu_slots} CPU slots"
    return None


def _bad_spec(t: TaskSpec) -> str | None:
    if not isinstance(t.task_id, str) or not t.task_id:
        return "task_id must be a non-empty string"
    if type(t.priority) is not int:
        return f"priority must be an integer, got {t.priority!r}"
    if type(t.cpu_slots) is not int or t.cpu_slots < 1:
        return f"cpu_slots must be an integer >= 1, got {t.cpu_slots!r}"
    if t.retry_limit is not None and (type(t.retry_limit) is not int or t.retry_limit < 0):
        return f"retry_limit must be null or an integer >= 0, got {t.retry_limit!r}"
    if t.expected_duration is not None and not t.expected_duration >= 0:
        return f"expected_duration must be >= 0 seconds, got {t.expected_duration!r}"
    r = t.requirements
    if type(r.gpu_count) is not int or r.gpu_count < 0:
        return f"requirement gpu_count must be an integer >= 0, got {r.gpu_count!r}"
    if not r.min_memory_gb >= 0:
        return f"requirement min_memory_gb must be >= 0, got {r.min_memory_gb!r}"
    if not r.gpu_memory_gb >= 0:
        return f"requirement gpu_memory_gb must be >= 0, got {r.gpu_memory_gb!r}"
    if r.hardware is not None and not r.hardware.strip():
        return "requirement hardware must be null or a name such as 'cuda'"
    if t.task_id in t.dependencies:
        return f"task {t.task_id} lists itself as a dependency"
    return None


def _fmt_time(t: float) -> str:
    # Epoch-like clocks get a readable UTC time; small monotonic values stay as seconds.
    if t > 1e9:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"t={t:.1f}s"


def _on(t: TaskState) -> str:
    """The worker an assigned or running task is on, for messages."""
    return t.worker.worker_id if t.worker is not None else "?"


def _names(ids: Iterable[str], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# ----------------------------------------------------------------------------- internal state


class TaskState:
    """One task as the scheduler sees it (strategies may read the attributes named in balancer.py)."""

    __slots__ = ("assigned_at", "attempt", "cls", "dependents", "error", "expected_end", "failed_by",
                 "failures", "held_for", "hw", "lost", "pin", "predicted", "priority", "qseq", "reason", "spec",
                 "started_at", "state", "submit_time", "task_id", "until", "waiting_on", "where", "worker")

    def __init__(self, spec: TaskSpec, submit_time: float) -> None:
        self.spec = spec
        self.task_id = spec.task_id
        self.priority = spec.priority
        self.submit_time = submit_time
        self.state = PENDING
        self.reason = ""
        self.where = _W_NONE
        self.qseq = -1
        self.cls: TaskClass | None = None
        self.worker: WorkerState | None = None
        self.pin: WorkerState | None = None
        self.attempt = 0
        self.failures = 0
        self.lost = 0
        self.error = ""
        self.failed_by: str | None = None
        self.waiting_on: set[str] | None = None
        self.dependents: list[TaskState] | None = None
        self.until = 0.0
        self.held_for: str | None = None
        self.assigned_at = 0.0
        self.started_at = 0.0
        self.expected_end = 0.0
        self.predicted: float | None = None
        self.hw = spec.requirements.hardware.lower() if spec.requirements.hardware else "cpu"


class WorkerState:
    """One worker as the scheduler sees it (strategies may read the attributes named in balancer.py)."""

    __slots__ = ("classes", "draining", "last_dispatch", "max_tasks", "online", "pinned", "pinned_live", "score",
                 "spec", "speed", "tasks", "used_gpus", "used_slots", "worker_id")

    def __init__(self, spec: WorkerSpec) -> None:
        self.worker_id = spec.worker_id
        self.spec = spec
        self.online = False
        self.draining = False
        self.tasks: dict[str, TaskState] = {}
        self.used_slots = 0
        self.used_gpus = 0
        self.classes: dict[Any, TaskClass] = {}
        self.pinned: list[tuple[Any, ...]] = []
        self.pinned_live = 0
        self.last_dispatch = 0
        self.max_tasks = spec.slots
        self.speed = spec.speed
        self.score = 0.0


def _scarcity(s: WorkerSpec) -> float:
    # Rarer capabilities weigh more: GPUs above all, then special hardware, then tags and memory.
    extra_hw = sum(1 for h in s.hardware if h.lower() != "cpu")
    mem = 0.0 if math.isinf(s.memory_gb) else s.memory_gb / 1024.0
    return 100.0 * s.gpus + 50.0 * extra_hw + s.gpu_memory_gb / 10.0 + len(s.tags) + len(s.groups) + mem


class TaskClass:
    """Tasks with the same requirements, slots and (with worker_cap) submission: one queue, one open map."""

    __slots__ = ("cpu_slots", "gpus", "heap", "key", "known", "live", "ntasks", "online", "open", "reason",
                 "req", "status", "submission", "version")

    def __init__(self, key: Any, req: Requirements, cpu_slots: int, submission: str) -> None:
        self.key = key
        self.req = req
        self.cpu_slots = cpu_slots
        self.gpus = req.gpu_count
        self.submission = submission
        self.heap: list[tuple[Any, ...]] = []
        self.live = 0                                   # valid entries in heap
        self.ntasks = 0                                 # unfinished tasks of this class
        self.open: dict[str, WorkerState] = {}          # could take one of these tasks now
        self.online: dict[str, WorkerState] = {}        # online, approved and capable
        self.known: dict[str, WorkerState] = {}         # capable, in any state
        self.status = -1                                # 0 ok, 1 capable ones offline, 2 none capable
        self.reason = "queued"
        self.version = 0


# ----------------------------------------------------------------------------- the scheduler


class Scheduler:
    """See the module docstring. Not thread-safe: one owner (the coordinator loop) calls it."""

    def __init__(self, config: SchedulerConfig | None = None, rng: random.Random | None = None,
                 strategy: Strategy | None = None) -> None:
        self.config = cfg = config if config is not None else SchedulerConfig()
        self.rng = rng if rng is not None else random.Random(0)
        self.strategy: Strategy = strategy if strategy is not None else load_strategy(cfg.strategy)
        self.predictor = DurationPredictor(cfg.history_window, cfg.default_duration)
        self.now = 0.0
        self._tasks: dict[str, TaskState] = {}
        self._workers: dict[str, WorkerState] = {}
        self._classes: dict[Any, TaskClass] = {}
        self._ready: dict[Any, TaskClass] = {}              # classes with queued work
        self._pinned_ready: dict[str, WorkerState] = {}     # workers with pinned tasks waiting
        self._backoff: list[tuple[float, int, TaskState]] = []
        self._finished: deque[tuple[str, int]] = deque()
        self._sub_workers: dict[str, dict[str, int]] = {}   # submission -> worker_id -> tasks in flight
        self._seq = 0
        self._npending = 0
        self._counts = {"decisions": 0, "submitted": 0, "rejected": 0, "stale_reports": 0, "retries": 0,
                        "requeued_lost": 0, "held": 0, "forgotten": 0}
        self._fail_deps = cfg.dependency_failure == "fail"
        self._aging = cfg.aging_interval
        self._handlers: dict[type, Callable[[Any, list[Any]], None]] = {
            Submit: self._on_submit, SubmitBatch: self._on_submit_batch, CancelRequested: self._on_cancel,
            WorkerUp: self._on_worker_up, WorkerLost: self._on_worker_lost, StartReported: self._on_started,
            FinishReported: self._on_finished, Pin: self._on_pin, Unpin: self._on_unpin,
            SetPriority: self._on_set_priority, Retry: self._on_retry, Tick: self._on_tick, Adopt: self._on_adopt,
            Restore: self._on_restore, Remember: self._on_remember, Reconcile: self._on_reconcile,
            DrainWorker: self._on_drain, ResumeWorker: self._on_resume,
        }

    # ------------------------------------------------------------------ public API

    def handle(self, events: Iterable[Event]) -> list[Instruction]:
        """Apply ``events`` in order; return the instructions, in order, then any dispatches."""
        out: list[Any] = []
        handlers = self._handlers
        for ev in events:
            h = handlers.get(type(ev))
            if h is None:
                raise TypeError(f"Scheduler.handle: unknown event type {type(ev).__name__}")
            if ev.now > self.now:
                self.now = ev.now
            h(ev, out)
        self._dispatch(out)
        return out

    def task_state(self, task_id: str) -> str | None:
        t = self._tasks.get(task_id)
        return t.state if t is not None else None

    def pending_count(self) -> int:
        return self._npending

    def running_on(self, worker_id: str) -> list[str]:
        """Tasks assigned to or running on the worker."""
        w = self._workers.get(worker_id)
        return list(w.tasks) if w is not None else []

    def record_duration(self, test_id: str, hardware: str, duration: float, speed: float = 1.0) -> None:
        """Seed the duration history (e.g. from the database at startup)."""
        self.predictor.record(test_id, hardware.lower(), duration * speed)

    def predicted_duration(self, task_id: str) -> float | None:
        """Seconds the task is expected to take on a speed-1.0 worker."""
        t = self._tasks.get(task_id)
        if t is None:
            return None
        return self.predictor.predict(t.spec.test_id, t.hw, t.spec.expected_duration)

    def task(self, task_id: str) -> TaskState | None:
        """The live record of a task (read-only by convention)."""
        return self._tasks.get(task_id)

    def worker(self, worker_id: str) -> WorkerState | None:
        return self._workers.get(worker_id)

    def stats(self) -> dict[str, Any]:
        by_state: dict[str, int] = dict.fromkeys(TASK_STATUSES, 0)
        for t in self._tasks.values():
            by_state[t.state] += 1
        online = [w for w in self._workers.values() if w.online]
        return {
            **self._counts,
            "tasks": by_state,
            "pending": self._npending,
            "queued_ready": sum(c.live for c in self._ready.values()),
            "in_backoff": sum(1 for t in self._tasks.values() if t.where == _W_BACKOFF),
            "workers_known": len(self._workers),
            "workers_online": len(online),
            "workers_busy": sum(1 for w in online if w.tasks),
            "slots_total": sum(w.spec.slots for w in online),
            "slots_used": sum(w.used_slots for w in online),
            "requirement_classes": len(self._classes),
            "strategy": getattr(self.strategy, "name", type(self.strategy).__name__),
        }

    def why_waiting(self, task_id: str) -> str:
        """Human text: why this task is not running (or what it is doing)."""
        t = self._tasks.get(task_id)
        if t is None:
            return f"unknown task {task_id}"
        if t.state == ASSIGNED:
            return f"assigned to {_on(t)}, not started yet"
        if t.state == RUNNING:
            return f"running on {_on(t)}"
        if t.state in TERMINAL_STATUSES:
            return t.state + (f": {t.reason}" if t.reason else "")
        if t.where == _W_DEPS:
            return self._deps_reason(t)
        if t.where == _W_BACKOFF:
            return self._backoff_reason(t)
        if t.where == _W_PIN:
            w = t.pin
            assert w is not None
            if not w.online:
                return f"pinned to {w.worker_id}, which is offline"
            if w.draining:
                return f"pinned to {w.worker_id}, which is draining (it takes no new tasks until resumed)"
            if not w.spec.approved:
                return f"pinned to {w.worker_id}, which is not approved"
            return (f"pinned to {w.worker_id}: waiting for room there "
                    f"({w.used_slots}/{w.spec.slots} slots, {w.used_gpus}/{w.spec.gpus} GPUs in use)")
        c = t.cls
        assert c is not None
        if c.status != 0:
            return c.reason
        if c.open:
            sub = c.submission
            if sub and self.config.worker_cap is not None and len(self._sub_workers.get(sub, ())) >= \
                    self.config.worker_cap:
                return f"worker_cap reached: submission {sub} already occupies {self.config.worker_cap} workers"
            return "queued: capable workers have room; waiting behind higher-ranked tasks or for a faster worker"
        cap = self.config.task_cap_per_worker
        taking = [w for w in c.online.values() if not w.draining]
        if not taking:
            return f"waiting: every capable worker online is draining ({_names(sorted(c.online))})"
        full = [w for w in taking if w.pinned_live == 0]
        if not full:
            return "waiting: every capable worker is reserved for a pinned task"
        if cap is not None and all(len(w.tasks) >= cap for w in full):
            return f"waiting: task_cap_per_worker ({cap}) reached on all {len(full)} capable workers"
        need = f"{c.cpu_slots} slot{'s' if c.cpu_slots != 1 else ''}" + (f" and {c.gpus} GPUs" if c.gpus else "")
        return f"waiting for {need} on a capable worker: all {len(taking)} capable workers online are busy"

    # ------------------------------------------------------------------ submit

    def _reject(self, task_id: str, reason: str, out: list[Any]) -> None:
        self._counts["rejected"] += 1
        out.append(Rejected(task_id, reason))

    def _on_submit(self, ev: Submit, out: list[Any]) -> None:
        spec = ev.task
        why = _bad_spec(spec)
        if why is None:
            why = self._dup_or_full(spec.task_id, 1)
        if why is None:
            for d in spec.dependencies:
                if d not in self._tasks:
                    why = f"unknown dependency {d}"
                    break
        if why is not None:
            self._reject(spec.task_id, why, out)
            return
        self._accept(spec, ev.now, out)

    def _dup_or_full(self, task_id: str, n: int) -> str | None:
        old = self._tasks.get(task_id)
        if old is not None:
            return f"duplicate task id {task_id} (already {old.state})"
        if self._npending + n > self.config.max_queue_size:
            return (f"queue full: {self._npending} tasks pending, max_queue_size is "
                    f"{self.config.max_queue_size}")
        return None

    def _on_submit_batch(self, ev: SubmitBatch, out: list[Any]) -> None:
        specs = ev.tasks
        ids: dict[str, TaskSpec] = {}
        errors: dict[str, str] = {}
        for s in specs:
            why = _bad_spec(s)
            if why is None and s.task_id in ids:
                why = f"duplicate task id {s.task_id} in the batch"
            if why is None and s.task_id in self._tasks:
                why = f"duplicate task id {s.task_id} (already {self._tasks[s.task_id].state})"
            if why is not None:
                errors[s.task_id] = why
            ids.setdefault(s.task_id, s)
        if not errors:
            for s in specs:
                for d in s.dependencies:
                    if d not in ids and d not in self._tasks:
                        errors[s.task_id] = f"unknown dependency {d}"
                        break
        order: list[TaskSpec] = []
        # The common batch (a plan's leaves, a benchmark sweep) names no dependencies at all:
        # no cycle to look for and nothing to reorder.
        linked = any(s.dependencies for s in specs)
        if not errors and linked:
            # Kahn's algorithm over the batch: what is left over sits on a cycle.
            indeg = {i: 0 for i in ids}
            users: dict[str, list[str]] = {}
            for s in ids.values():
                for d in set(s.dependencies):
                    if d in ids:
                        indeg[s.task_id] += 1
                        users.setdefault(d, []).append(s.task_id)
            stack = [i for i, n in indeg.items() if n == 0]
            while stack:
                i = stack.pop()
                order.append(ids[i])
                for u in users.get(i, ()):
                    indeg[u] -= 1
                    if indeg[u] == 0:
                        stack.append(u)
            if len(order) < len(ids):
                cyc = sorted(i for i, n in indeg.items() if n > 0)
                for i in cyc:
                    errors[i] = f"dependency cycle among {_names(cyc)}"
        if not errors and self._npending + len(ids) > self.config.max_queue_size:
            for i in ids:
                errors[i] = (f"queue full: {self._npending} tasks pending + {len(ids)} submitted exceeds "
                             f"max_queue_size {self.config.max_queue_size}")
        if errors:
            first = next(iter(errors.items()))
            for s in specs:
                self._reject(s.task_id, errors.get(s.task_id) or
                             f"batch refused because task {first[0]}: {first[1]}", out)
            return
        if not linked:
            for spec in ids.values():
                self._accept(spec, ev.now, out)
            return
        # Keep the submitted order where the dependencies allow it (ties in the queue go by seq).
        pos = {s.task_id: n for n, s in enumerate(specs)}
        done: set[str] = set()
        ready = sorted((s for s in order if not any(d in ids for d in s.dependencies)), key=lambda s: pos[s.task_id])
        heap = [(pos[s.task_id], s.task_id) for s in ready]
        heapq.heapify(heap)
        left = {s.task_id: sum(1 for d in set(s.dependencies) if d in ids) for s in ids.values()}
        users2: dict[str, list[str]] = {}
        for s in ids.values():
            for d in set(s.dependencies):
                if d in ids:
                    users2.setdefault(d, []).append(s.task_id)
        while heap:
            _, i = heapq.heappop(heap)
            if i in done:
                continue
            done.add(i)
            self._accept(ids[i], ev.now, out)
            for u in users2.get(i, ()):
                left[u] -= 1
                if left[u] == 0:
                    heapq.heappush(heap, (pos[u], u))

    def _accept(self, spec: TaskSpec, now: float, out: list[Any], progress: Progress | None = None) -> None:
        t = TaskState(spec, spec.submit_time or now)
        self._tasks[t.task_id] = t
        self._counts["submitted"] += 1
        self._npending += 1
        self._join_class(t)
        if progress is not None:
            t.attempt = progress.attempt
            t.failures = progress.failures
            t.lost = progress.lost
            t.error = progress.error
            t.until = max(progress.retry_at, progress.hold_until if progress.held_for else 0.0)
            if progress.held_for and progress.hold_until > progress.retry_at:
                t.held_for = progress.held_for
            if progress.pinned_to:
                t.pin = self._workers.get(progress.pinned_to) or self._placeholder(progress.pinned_to)
        dead: TaskState | None = None
        if spec.dependencies:
            tasks = self._tasks
            for dep_id in spec.dependencies:
                d = tasks[dep_id]
                if d.dependents is None:
                    d.dependents = []
                d.dependents.append(t)
                if d.state == COMPLETED:
                    continue
                if d.state in TERMINAL_STATUSES:
                    if self._fail_deps and dead is None:
                        dead = d
                    continue
                if t.waiting_on is None:
                    t.waiting_on = set()
                t.waiting_on.add(dep_id)
        if dead is not None:
            t.failed_by = dead.task_id
            self._terminal(t, FAILED, self._dep_reason(dead), out)
            return
        self._place(t, out)

    def _class_key(self, spec: TaskSpec) -> Any:
        if self.config.worker_cap is not None and spec.submission:
            return (spec.requirements, spec.cpu_slots, spec.submission)
        return (spec.requirements, spec.cpu_slots)

    def _join_class(self, t: TaskState) -> None:
        spec = t.spec
        key = self._class_key(spec)
        c = self._classes.get(key)
        if c is None:
            sub = spec.submission if len(key) == 3 else ""
            c = self._classes[key] = TaskClass(key, spec.requirements, spec.cpu_slots, sub)
            for w in self._workers.values():
                if mismatch(c.req, c.cpu_slots, w.spec) is None:
                    c.known[w.worker_id] = w
                    w.classes[key] = c
                    if w.online and w.spec.approved:
                        c.online[w.worker_id] = w
                        if self._fits(w, c):
                            c.open[w.worker_id] = w
            self._class_status(c, None)
        c.ntasks += 1
        t.cls = c

    def _drop_class(self, c: TaskClass) -> None:
        del self._classes[c.key]
        self._ready.pop(c.key, None)
        for w in c.known.values():
            w.classes.pop(c.key, None)

    # ------------------------------------------------------------------ placing pending tasks

    def _status(self, t: TaskState, status: str, reason: str, out: list[Any], wid: str | None = None) -> None:
        if t.state == status and t.reason == reason:
            return
        t.state = status
        t.reason = reason
        out.append(StatusChanged(t.task_id, status, reason, wid))

    def _deps_reason(self, t: TaskState) -> str:
        waiting = sorted(t.waiting_on or ())
        return f"waiting for dependencies: {_names(waiting)}"

    def _backoff_reason(self, t: TaskState) -> str:
        if t.held_for:
            return (f"waiting until {_fmt_time(t.until)} for {t.held_for}, which was running it before the "
                    "coordinator restarted, to reconnect")
        limit = self._retry_limit(t)
        err = f": {t.error}" if t.error else ""
        return (f"backoff until {_fmt_time(t.until)} (attempt {t.attempt} failed{err}; "
                f"retry {t.failures} of {limit})")

    def _dep_reason(self, d: TaskState) -> str:
        return f"dependency {d.task_id} {'failed' if d.state == FAILED else 'was cancelled'}"

    def _place(self, t: TaskState, out: list[Any], note: str = "") -> None:
        """Put a pending task where it waits next and report why it waits."""
        if t.waiting_on:
            t.where = _W_DEPS
            reason = self._deps_reason(t)
        elif t.until > self.now:
            self._seq += 1
            t.qseq = self._seq
            t.where = _W_BACKOFF
            heapq.heappush(self._backoff, (t.until, self._seq, t))
            reason = self._backoff_reason(t)
        elif t.pin is not None:
            w = t.pin
            t.where = _W_PIN
            heapq.heappush(w.pinned, self._entry(t))
            w.pinned_live += 1
            if w.pinned_live == 1:
                self._pinned_ready[w.worker_id] = w
                self._refresh(w)
            reason = f"pinned to {w.worker_id}" + ("" if w.online else " (offline)") + \
                (" (draining)" if w.draining else "")
        else:
            c = t.cls
            assert c is not None
            t.where = _W_QUEUE
            heapq.heappush(c.heap, self._entry(t))
            c.live += 1
            if c.live == 1:
                self._ready[c.key] = c
            reason = c.reason
        self._status(t, PENDING, note + reason if note else reason, out)

    def _entry(self, t: TaskState) -> tuple[Any, ...]:
        self._seq += 1
        t.qseq = seq = self._seq
        k2 = self.strategy.queue_key(t, self)
        if self._aging > 0:
            return (t.submit_time - _SIGN * t.priority * self._aging, k2, 0.0, seq, t)
        return (-_SIGN * t.priority, k2, t.submit_time, seq, t)

    def _unqueue(self, t: TaskState) -> None:
        """Take a pending task out of whatever structure holds it (entries left behind are stale)."""
        where = t.where
        t.where = _W_NONE
        t.qseq = -1
        if where == _W_QUEUE:
            c = t.cls
            assert c is not None
            c.live -= 1
            if c.live == 0:
                c.heap.clear()
                self._ready.pop(c.key, None)
        elif where == _W_PIN:
            w = t.pin
            assert w is not None
            w.pinned_live -= 1
            if w.pinned_live == 0:
                w.pinned.clear()
                self._pinned_ready.pop(w.worker_id, None)
                self._refresh(w)

    def _retry_limit(self, t: TaskState) -> int:
        r = t.spec.retry_limit
        return self.config.retry_limit if r is None else r

    # ------------------------------------------------------------------ capacity

    def _fits(self, w: WorkerState, c: TaskClass) -> bool:
        """Could ``w`` take a task of class ``c`` right now (class capability already known)."""
        return (w.online and w.spec.approved and not w.draining and w.pinned_live == 0 and len(w.tasks) < w.max_tasks
                and w.spec.slots - w.used_slots >= c.cpu_slots and w.spec.gpus - w.used_gpus >= c.gpus)

    def _refresh(self, w: WorkerState) -> None:
        """Recompute which class open-maps hold ``w`` after its load or state changed."""
        wid = w.worker_id
        if not w.online or w.draining or w.pinned_live or len(w.tasks) >= w.max_tasks or not w.spec.approved:
            for c in w.classes.values():
                c.open.pop(wid, None)
            return
        fs = w.spec.slots - w.used_slots
        fg = w.spec.gpus - w.used_gpus
        for c in w.classes.values():
            if fs >= c.cpu_slots and fg >= c.gpus:
                if wid not in c.open:
                    c.open[wid] = w
            else:
                c.open.pop(wid, None)

    def _fits_pinned(self, w: WorkerState, t: TaskState) -> bool:
        if not (w.online and w.spec.approved and not w.draining and len(w.tasks) < w.max_tasks
                and w.spec.slots - w.used_slots >= t.spec.cpu_slots
                and w.spec.gpus - w.used_gpus >= t.spec.requirements.gpu_count):
            return False
        c = t.cls
        assert c is not None  # a pending task always has its class
        return self._under_worker_cap(c, w)

    def _under_worker_cap(self, c: TaskClass, w: WorkerState) -> bool:
        sub = c.submission
        cap = self.config.worker_cap
        if not sub or cap is None:
            return True
        used = self._sub_workers.get(sub)
        return used is None or w.worker_id in used or len(used) < cap

    def _occupy(self, t: TaskState, w: WorkerState) -> None:
        w.tasks[t.task_id] = t
        w.used_slots += t.spec.cpu_slots
        w.used_gpus += t.spec.requirements.gpu_count
        t.worker = w
        c = t.cls
        assert c is not None  # an unfinished task always has its class
        sub = c.submission
        if sub:
            used = self._sub_workers.setdefault(sub, {})
            used[w.worker_id] = used.get(w.worker_id, 0) + 1
        self._refresh(w)

    def _release(self, t: TaskState, out: list[Any], cancel: bool) -> None:
        w = t.worker
        assert w is not None
        del w.tasks[t.task_id]
        w.used_slots -= t.spec.cpu_slots
        w.used_gpus -= t.spec.requirements.gpu_count
        t.worker = None
        c = t.cls
        assert c is not None  # an unfinished task always has its class
        sub = c.submission
        if sub:
            used = self._sub_workers[sub]
            n = used[w.worker_id] - 1
            if n:
                used[w.worker_id] = n
            else:
                del used[w.worker_id]
                if not used:
                    del self._sub_workers[sub]
        if cancel:
            out.append(CancelOnWorker(t.task_id, w.worker_id))
        self._refresh(w)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, out: list[Any]) -> None:
        bh = self._backoff
        now = self.now
        while bh and bh[0][0] <= now:
            _, q, t = heapq.heappop(bh)
            if t.where == _W_BACKOFF and t.qseq == q:
                t.where = _W_NONE
                t.held_for = None
                self._place(t, out)
        if self._pinned_ready:
            self._dispatch_pinned(out)
        ready = self._ready
        if not ready:
            return
        held: set[TaskClass] = set()  # classes whose head task the strategy held back this round
        choose = self.strategy.choose
        cap = self.config.worker_cap
        heappop = heapq.heappop
        while True:
            best: TaskClass | None = None
            bk: Any = None
            for c in ready.values():
                if not c.open or c in held:
                    continue
                h = c.heap
                e = h[0]
                t = e[4]
                while t.qseq != e[3] or t.where != _W_QUEUE:
                    heappop(h)
                    e = h[0]
                    t = e[4]
                if best is None or e < bk:
                    best = c
                    bk = e
            if best is None:
                return
            t = bk[4]
            cands: Mapping[str, WorkerState] = best.open
            if cap is not None and best.submission:
                used = self._sub_workers.get(best.submission)
                if used is not None and len(used) >= cap:
                    cands = {k: w for k, w in cands.items() if k in used}
            chosen = choose(t, cands, self) if cands else None
            if chosen is None:
                held.add(best)
                self._counts["held"] += 1
                continue
            w = cands.get(chosen.worker_id)  # the scheduler's own record of the worker chosen
            if w is None:
                raise RuntimeError(f"strategy {getattr(self.strategy, 'name', self.strategy)!r} chose worker "
                                   f"{chosen.worker_id}, which was not among the candidates for task {t.task_id}")
            heappop(best.heap)
            self._unqueue(t)
            self._assign(t, w, out)

    def _dispatch_pinned(self, out: list[Any]) -> None:
        for w in list(self._pinned_ready.values()):
            h = w.pinned
            while w.pinned_live:
                e = h[0]
                t = e[4]
                if t.qseq != e[3] or t.where != _W_PIN:
                    heapq.heappop(h)
                    continue
                if not self._fits_pinned(w, t):
                    break
                heapq.heappop(h)
                self._unqueue(t)
                self._assign(t, w, out)

    def _assign(self, t: TaskState, w: WorkerState, out: list[Any]) -> None:
        self._npending -= 1
        self._counts["decisions"] += 1
        self._seq += 1
        w.last_dispatch = self._seq
        t.attempt += 1
        t.assigned_at = self.now
        t.pin = None
        self._occupy(t, w)
        self.strategy.on_dispatch(t, w, self)
        out.append(Dispatch(t.task_id, w.worker_id, t.attempt))
        t.state = ASSIGNED
        t.reason = ""
        out.append(StatusChanged(t.task_id, ASSIGNED, "", w.worker_id))

    # ------------------------------------------------------------------ endings

    def _terminal(self, t0: TaskState, state0: str, reason0: str, out: list[Any], wid0: str | None = None) -> None:
        """End a task (and, by the dependency rule, its dependents) in a terminal state."""
        stack = [(t0, state0, reason0)]
        wid = wid0
        while stack:
            t, state, reason = stack.pop()
            if t.state in TERMINAL_STATUSES:
                continue
            if t.state == PENDING:
                self._npending -= 1
                self._unqueue(t)
            if t is not t0:
                wid = None
            if t.worker is not None:
                wid = t.worker.worker_id
                self._release(t, out, cancel=True)
            t.pin = None
            t.where = _W_NONE
            t.state = state
            t.reason = reason
            out.append(StatusChanged(t.task_id, state, reason, wid))
            c = t.cls
            assert c is not None
            c.ntasks -= 1
            if c.ntasks == 0:
                self._drop_class(c)
            t.cls = None
            self._remember_finished(t)
            if not t.dependents:
                continue
            tid = t.task_id
            satisfied = state == COMPLETED or not self._fail_deps
            for x in t.dependents:
                if x.state in TERMINAL_STATUSES or not x.waiting_on or tid not in x.waiting_on:
                    continue
                if satisfied:
                    x.waiting_on.discard(tid)
                    if not x.waiting_on:
                        x.waiting_on = None
                    if x.where == _W_DEPS:
                        self._place(x, out)
                else:
                    x.failed_by = tid
                    stack.append((x, FAILED, self._dep_reason(t)))

    def _remember_finished(self, t: TaskState) -> None:
        # qseq marks this ending: a task retried and finished again is not forgotten by its older entry.
        self._seq += 1
        t.qseq = self._seq
        fin = self._finished
        fin.append((t.task_id, self._seq))
        keep = self.config.keep_finished
        tasks = self._tasks
        while len(fin) > keep:
            old, q = fin.popleft()
            x = tasks.get(old)
            if x is not None and x.qseq == q and x.state in TERMINAL_STATUSES:
                del tasks[old]
                self._counts["forgotten"] += 1

    def _rejoin(self, t: TaskState) -> None:
        """A finished task becomes unfinished again (Retry): rejoin its class and the pending count."""
        self._join_class(t)
        self._npending += 1

    # ------------------------------------------------------------------ event handlers

    def _on_tick(self, ev: Tick, out: list[Any]) -> None:
        return None  # backoff release and dispatch happen at the end of every handle()

    def _on_cancel(self, ev: CancelRequested, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        if t is None:
            self._reject(ev.task_id, f"cannot cancel: unknown task {ev.task_id}", out)
        elif t.state in TERMINAL_STATUSES:
            self._reject(ev.task_id, f"cannot cancel: task already {t.state}", out)
        else:
            self._terminal(t, CANCELLED, "cancelled on request", out)

    def _on_started(self, ev: StartReported, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        w = t.worker if t is not None else None
        if t is not None and w is not None and w.worker_id == ev.worker_id and \
                (ev.attempt is None or ev.attempt == t.attempt):
            if t.state == ASSIGNED:
                t.started_at = ev.now
                self._status(t, RUNNING, "", out, w.worker_id)
            return
        self._counts["stale_reports"] += 1
        if w is None or w.worker_id != ev.worker_id:
            # That worker should not be running this task (moved, cancelled, finished or unknown).
            out.append(CancelOnWorker(ev.task_id, ev.worker_id))

    def _on_finished(self, ev: FinishReported, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        w = t.worker if t is not None else None
        if t is None or w is None or w.worker_id != ev.worker_id or (ev.attempt is not None and ev.attempt != t.attempt):
            self._counts["stale_reports"] += 1
            return
        if ev.success:
            dur = ev.duration if ev.duration is not None else ev.now - (t.started_at if t.state == RUNNING
                                                                         else t.assigned_at)
            if t.spec.test_id:
                self.predictor.record(t.spec.test_id, t.hw, dur * w.speed)
            self._release(t, out, cancel=False)
            self._terminal(t, COMPLETED, "", out, w.worker_id)
            return
        t.failures += 1
        t.error = ev.error
        self._release(t, out, cancel=False)
        limit = self._retry_limit(t)
        if t.failures > limit:
            attempts = f"{t.attempt} attempt{'s' if t.attempt != 1 else ''}"
            self._terminal(t, FAILED, f"failed after {attempts}" + (f": {ev.error}" if ev.error else ""), out,
                           w.worker_id)
            return
        self._counts["retries"] += 1
        cfg = self.config
        delay = min(cfg.retry_backoff_base * (2.0 ** (t.failures - 1)), cfg.retry_backoff_max)
        delay *= 1.0 - cfg.retry_jitter * self.rng.random()
        t.until = self.now + delay
        self._npending += 1
        t.state = PENDING
        t.reason = ""
        self._place(t, out)

    def _on_worker_up(self, ev: WorkerUp, out: list[Any]) -> None:
        spec = ev.worker
        w = self._workers.get(spec.worker_id)
        changed = True
        if w is None:
            w = self._workers[spec.worker_id] = WorkerState(spec)
            # A newcomer changes the "no known worker can run it" explanations too.
            touched_all = [c for c in self._classes.values() if c.status == 2]
        else:
            touched_all = []
            changed = w.spec != spec
        w.spec = spec
        w.speed = spec.speed if spec.speed > 0 else 1.0
        w.score = _scarcity(spec)
        cap = self.config.task_cap_per_worker
        w.max_tasks = spec.slots if cap is None else min(cap, spec.slots)
        was_online = w.online
        w.online = True
        touched: list[TaskClass] = touched_all
        wid = w.worker_id
        for c in self._classes.values():
            ok = (mismatch(c.req, c.cpu_slots, spec) is None) if changed else (wid in c.known)
            if ok:
                if wid not in c.known:
                    c.known[wid] = w
                    w.classes[c.key] = c
                    touched.append(c)
                if spec.approved:
                    if wid not in c.online:
                        c.online[wid] = w
                        c.version += 1
                        touched.append(c)
                elif c.online.pop(wid, None) is not None:
                    c.version += 1
                    touched.append(c)
            elif wid in c.known:
                del c.known[wid]
                w.classes.pop(c.key, None)
                c.open.pop(wid, None)
                if c.online.pop(wid, None) is not None:
                    c.version += 1
                touched.append(c)
        self._refresh(w)
        for c in dict.fromkeys(touched):
            self._class_status(c, out)
        if changed or not was_online:
            self._recheck_pins(w, out)

    def _recheck_pins(self, w: WorkerState, out: list[Any]) -> None:
        """After a worker came back or changed: tell pinned tasks, and unpin the ones it can no longer run."""
        if not w.pinned_live:
            return
        for e in list(w.pinned):
            t = e[4]
            if t.qseq != e[3] or t.where != _W_PIN:
                continue
            why = mismatch(t.spec.requirements, t.spec.cpu_slots, w.spec)
            self._unqueue(t)
            if why is not None:
                t.pin = None
                self._place(t, out, note=f"unpinned from {w.worker_id} ({why}); ")
            else:
                self._place(t, out)

    def _on_worker_lost(self, ev: WorkerLost, out: list[Any]) -> None:
        w = self._workers.get(ev.worker_id)
        if w is None or not w.online:
            return
        w.online = False
        wid = w.worker_id
        touched = []
        for c in w.classes.values():
            c.open.pop(wid, None)
            if c.online.pop(wid, None) is not None:
                c.version += 1
                touched.append(c)
        limit = self.config.lost_limit
        for t in list(w.tasks.values()):
            self._release(t, out, cancel=False)
            t.lost += 1
            if t.lost > limit:
                self._terminal(t, FAILED, f"worker {wid} was lost while running it {t.lost} times "
                                          f"(lost_limit {limit})", out)
                continue
            self._counts["requeued_lost"] += 1
            self._npending += 1
            t.state = PENDING
            t.reason = ""
            self._place(t, out, note=f"requeued: worker {wid} lost ({t.lost}/{limit}); ")
        for c in touched:
            self._class_status(c, out)
        if w.pinned_live:
            for e in list(w.pinned):
                t = e[4]
                if t.qseq == e[3] and t.where == _W_PIN:
                    self._status(t, PENDING, f"pinned to {wid} (offline)", out)

    def _class_status(self, c: TaskClass, out: list[Any] | None) -> None:
        if c.online:
            # 3: capable workers are online but every one of them is draining.
            status = 0 if any(not w.draining for w in c.online.values()) else 3
        elif c.known:
            status = 1
        else:
            status = 2
        if status == c.status == 0:
            return
        c.status = status
        if status == 0:
            reason = "queued"
        elif status == 3:
            reason = f"waiting: every capable worker online is draining ({_names(sorted(c.online))})"
        elif status == 1:
            names = _names(sorted(c.known))
            reason = f"no capable worker online: {names} could run it but {'is' if len(c.known) == 1 else 'are'} " \
                     f"offline or not approved"
        elif not self._workers:
            reason = "no workers connected yet"
        else:
            why: dict[str, int] = {}
            for w in self._workers.values():
                r = mismatch(c.req, c.cpu_slots, w.spec) or "?"
                why[r] = why.get(r, 0) + 1
            parts = sorted(why.items(), key=lambda kv: -kv[1])[:3]
            reason = "unschedulable: no known worker can run it: " + "; ".join(
                f"{r} ({n} worker{'s' if n != 1 else ''} lack{'s' if n == 1 else ''} it)" for r, n in parts)
        if reason == c.reason:
            return
        c.reason = reason
        if out is None or not c.live:
            return
        for e in c.heap:
            t = e[4]
            if t.qseq == e[3] and t.where == _W_QUEUE:
                self._status(t, PENDING, reason, out)

    def _on_pin(self, ev: Pin, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        w = self._workers.get(ev.worker_id)
        tid, wid = ev.task_id, ev.worker_id
        if t is None:
            return self._reject(tid, f"cannot assign: unknown task {tid}", out)
        if w is None:
            return self._reject(tid, f"cannot assign {tid}: unknown worker {wid}", out)
        if not w.online:
            return self._reject(tid, f"cannot assign {tid}: worker {wid} is offline", out)
        if not w.spec.approved:
            return self._reject(tid, f"cannot assign {tid}: worker {wid} is not approved", out)
        if w.draining:
            return self._reject(tid, f"cannot assign {tid}: worker {wid} is draining (resume it first)", out)
        if t.state == RUNNING:
            return self._reject(tid, f"cannot assign {tid}: it is already running on {_on(t)}; cancel it first",
                                out)
        if t.state in TERMINAL_STATUSES:
            return self._reject(tid, f"cannot assign {tid}: task is {t.state} (retry it first)", out)
        why = mismatch(t.spec.requirements, t.spec.cpu_slots, w.spec)
        if why is not None:
            return self._reject(tid, f"cannot assign {tid} to {wid}: worker lacks a requirement: {why}", out)
        if t.state == ASSIGNED:
            if t.worker is w:
                return None
            self._release(t, out, cancel=True)
            self._npending += 1
            t.state = PENDING
        else:
            self._unqueue(t)
        t.pin = w
        self._place(t, out)

    def _on_drain(self, ev: DrainWorker, out: list[Any]) -> None:
        w = self._workers.get(ev.worker_id) or self._placeholder(ev.worker_id)
        if w.draining:
            return
        w.draining = True
        self._refresh(w)
        self._pinned_note(w, out)
        self._drain_note(w, out)

    def _on_resume(self, ev: ResumeWorker, out: list[Any]) -> None:
        w = self._workers.get(ev.worker_id)
        if w is None or not w.draining:
            return
        w.draining = False
        self._refresh(w)
        self._pinned_note(w, out)
        self._drain_note(w, out)

    def _drain_note(self, w: WorkerState, out: list[Any]) -> None:
        """Queued tasks of the classes ``w`` serves say again why they wait: a drain may have taken
        their last capable worker online, a resume may have given it back."""
        wid = w.worker_id
        for c in list(w.classes.values()):
            if wid in c.online:
                self._class_status(c, out)

    def _pinned_note(self, w: WorkerState, out: list[Any]) -> None:
        """Tasks pinned to ``w`` say again why they wait (draining or not)."""
        if not w.pinned_live:
            return
        reason = f"pinned to {w.worker_id}" + ("" if w.online else " (offline)") + \
            (" (draining)" if w.draining else "")
        for e in list(w.pinned):
            t = e[4]
            if t.qseq == e[3] and t.where == _W_PIN:
                self._status(t, PENDING, reason, out)

    def _on_unpin(self, ev: Unpin, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        tid = ev.task_id
        if t is None:
            return self._reject(tid, f"cannot unassign: unknown task {tid}", out)
        if t.state == ASSIGNED:
            self._release(t, out, cancel=True)
            self._npending += 1
            t.state = PENDING
            t.pin = None
            self._place(t, out, note="unassigned; ")
            return None
        if t.state == PENDING and t.pin is not None:
            self._unqueue(t)
            t.pin = None
            self._place(t, out, note="unpinned; ")
            return None
        if t.state == RUNNING:
            return self._reject(tid, f"cannot unassign {tid}: it is running on {_on(t)}; cancel it instead", out)
        return self._reject(tid, f"cannot unassign {tid}: task is {t.state} and not assigned to a worker", out)

    def _on_set_priority(self, ev: SetPriority, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        if t is None:
            return self._reject(ev.task_id, f"cannot set priority: unknown task {ev.task_id}", out)
        if type(ev.priority) is not int:
            return self._reject(ev.task_id, f"priority must be an integer, got {ev.priority!r}", out)
        if t.state in TERMINAL_STATUSES:
            return self._reject(ev.task_id, f"cannot set priority: task already {t.state}", out)
        t.priority = ev.priority
        out.append(PriorityChanged(t.task_id, ev.priority))
        if t.where in (_W_QUEUE, _W_PIN):
            self._unqueue(t)
            self._place(t, out)
        return None

    def _on_retry(self, ev: Retry, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        if t is None:
            return self._reject(ev.task_id, f"cannot retry: unknown task {ev.task_id}", out)
        if t.state not in (FAILED, CANCELLED):
            return self._reject(ev.task_id, f"cannot retry {ev.task_id}: it is {t.state}, not failed or cancelled",
                                out)
        why = self._revive_block(t)
        if why is not None:
            return self._reject(ev.task_id, f"cannot retry {ev.task_id}: {why}", out)
        stack = [t]
        while stack:
            x = stack.pop()
            if self._revive_block(x) is not None:
                continue
            self._revive(x, out)
            for y in x.dependents or ():
                if y.state == FAILED and y.failed_by == x.task_id:
                    stack.append(y)
        return None

    def _revive_block(self, t: TaskState) -> str | None:
        if not self._fail_deps:
            return None
        for d_id in t.spec.dependencies:
            d = self._tasks.get(d_id)
            if d is not None and d.state in (FAILED, CANCELLED):
                return f"its dependency {d_id} is {d.state}; retry {d_id} first"
        return None

    def _revive(self, t: TaskState, out: list[Any]) -> None:
        t.failures = 0
        t.lost = 0
        t.error = ""
        t.failed_by = None
        t.until = 0.0
        t.pin = None
        t.waiting_on = None
        self._rejoin(t)
        for d_id in t.spec.dependencies:
            d = self._tasks.get(d_id)
            if d is None or d.state in TERMINAL_STATUSES:
                continue  # completed, forgotten, or (with dependency_failure=run) ended any way
            if t.waiting_on is None:
                t.waiting_on = set()
            t.waiting_on.add(d_id)
        t.state = PENDING
        t.reason = ""
        self._place(t, out)

    def _on_adopt(self, ev: Adopt, out: list[Any]) -> None:
        t = self._tasks.get(ev.task_id)
        w = self._workers.get(ev.worker_id)
        if t is not None and t.worker is not None and t.worker is w:
            if t.state == ASSIGNED:
                t.started_at = ev.now
                self._status(t, RUNNING, "", out, w.worker_id)
            return
        if t is None or w is None or not w.online or t.state != PENDING:
            self._counts["stale_reports"] += 1
            out.append(CancelOnWorker(ev.task_id, ev.worker_id))
            return
        # The agent is running it already: record that even if it overbooks the worker, rather than kill work.
        self._unqueue(t)
        t.waiting_on = None
        t.pin = None
        t.held_for = None
        self._npending -= 1
        t.attempt = t.attempt + 1 if ev.attempt is None else max(t.attempt, ev.attempt)
        t.assigned_at = t.started_at = ev.now
        self._occupy(t, w)
        self.strategy.on_dispatch(t, w, self)
        self._status(t, RUNNING, "adopted after coordinator restart", out, w.worker_id)

    def _placeholder(self, worker_id: str) -> WorkerState:
        """A worker known only by name (a restored pin names it before it registers): offline,
        with a minimal spec, until its WorkerUp brings the real one."""
        w = self._workers[worker_id] = WorkerState(WorkerSpec(worker_id=worker_id))
        return w

    def _on_restore(self, ev: Restore, out: list[Any]) -> None:
        specs = {s.task_id: (s, pr) for s, pr in ev.tasks}
        pos = {i: n for n, i in enumerate(specs)}
        # Kahn's order over the restored tasks, ties in the order given (their submit order).
        waits = {i: {d for d in s.dependencies if d in specs and d != i} for i, (s, _) in specs.items()}
        users: dict[str, list[str]] = {}
        for i, ds in waits.items():
            for d in ds:
                users.setdefault(d, []).append(i)
        heap = [(pos[i], i) for i, ds in waits.items() if not ds]
        heapq.heapify(heap)
        done: set[str] = set()
        while heap:
            _, i = heapq.heappop(heap)
            done.add(i)
            spec, progress = specs[i]
            why = _bad_spec(spec)
            if why is None and i in self._tasks:
                why = f"duplicate task id {i} (already {self._tasks[i].state})"
            if why is None:
                why = next((f"unknown dependency {d}" for d in spec.dependencies if d not in self._tasks), None)
            if why is not None:
                self._reject(i, why, out)  # its dependents meet an unknown dependency in turn
            else:
                self._accept(spec, ev.now, out, progress)
            for u in users.get(i, ()):
                waits[u].discard(i)
                if not waits[u]:
                    heapq.heappush(heap, (pos[u], u))
        cyc = sorted(i for i in specs if i not in done)
        for i in cyc:
            self._reject(i, f"dependency cycle among {_names(cyc)}", out)

    def _on_remember(self, ev: Remember, out: list[Any]) -> None:
        for task_id, status in ev.tasks:
            if task_id in self._tasks or status not in TERMINAL_STATUSES:
                continue
            t = TaskState(TaskSpec(task_id=task_id), ev.now)
            t.state = status
            self._tasks[task_id] = t
            self._remember_finished(t)

    def _on_reconcile(self, ev: Reconcile, out: list[Any]) -> None:
        w = self._workers.get(ev.worker_id)
        if w is None:
            return
        wid = w.worker_id
        limit = self.config.lost_limit
        for t in [e[2] for e in self._backoff if e[2].held_for == wid and e[2].where == _W_BACKOFF
                  and e[2].qseq == e[1] and e[2].task_id not in ev.holds]:
            self._unqueue(t)
            t.held_for = None
            t.until = 0.0
            self._place(t, out, note=f"{wid} came back without it; ")
        for t in [t for t in w.tasks.values() if t.task_id not in ev.holds]:
            self._release(t, out, cancel=False)
            if ev.restarted:
                t.lost += 1
                if t.lost > limit:
                    self._terminal(t, FAILED, f"worker {wid} restarted while running it, {t.lost} losses "
                                              f"(lost_limit {limit})", out)
                    continue
                note = f"requeued: worker {wid} restarted ({t.lost}/{limit}); "
            else:
                note = f"requeued: worker {wid} reconnected without it; "
            self._counts["requeued_lost"] += 1
            self._npending += 1
            t.state = PENDING
            t.reason = ""
            self._place(t, out, note=note)
