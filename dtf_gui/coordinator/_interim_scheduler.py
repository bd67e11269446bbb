"""Stand-in with the scheduler's API (priority queue, slots) until scheduler.py lands. No I/O."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque

import msgspec


class SchedulerConfig(msgspec.Struct, kw_only=True):
    retry_limit: int = 3


class Requirements(msgspec.Struct, frozen=True, kw_only=True):
    tags: frozenset[str] = frozenset()


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    priority: int = 5
    dependencies: tuple[str, ...] = ()
    requirements: Requirements = Requirements()
    test_id: str = ""
    cpu_slots: int = 1
    retry_limit: int | None = None
    submit_time: float = 0.0


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    slots: int = 1
    tags: frozenset[str] = frozenset()


class Submit(msgspec.Struct, frozen=True):
    now: float
    task: TaskSpec


class Cancel(msgspec.Struct, frozen=True):
    now: float
    task_id: str


class WorkerUp(msgspec.Struct, frozen=True):
    now: float
    worker: WorkerSpec


class WorkerLost(msgspec.Struct, frozen=True):
    now: float
    worker_id: str


class TaskStarted(msgspec.Struct, frozen=True):
    now: float
    task_id: str
    worker_id: str


class TaskFinished(msgspec.Struct, frozen=True):
    now: float
    task_id: str
    worker_id: str
    success: bool
    error: str = ""
    duration: float | None = None


class Tick(msgspec.Struct, frozen=True):
    now: float


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


class Scheduler:
    def __init__(self, config: SchedulerConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._tasks: dict[str, list] = {}  # id -> [state, worker, attempt, spec]
        self._workers: dict[str, WorkerSpec] = {}
        self._free: dict[str, int] = {}
        self._ready: deque[str] = deque()

    def task_state(self, task_id: str) -> str | None:
        t = self._tasks.get(task_id)
        return t[0] if t else None

    def why_waiting(self, task_id: str) -> str:
        return "waiting for a free worker slot" if self.task_state(task_id) == "pending" else ""

    def pending_count(self) -> int:
        return len(self._heap)

    def running_on(self, worker_id: str) -> list[str]:
        return [k for k, t in self._tasks.items() if t[1] == worker_id and t[0] in ("assigned", "running")]

    def handle(self, events: list) -> list:
        out: list = []
        for ev in events:
            getattr(self, "_on_" + type(ev).__name__)(ev, out)
        self._dispatch(out)
        return out

    def _on_Submit(self, ev: Submit, out: list) -> None:
        t = ev.task
        if t.task_id in self._tasks:
            out.append(Rejected(t.task_id, f"duplicate task id {t.task_id}"))
            return
        self._tasks[t.task_id] = ["pending", None, 0, t]
        heapq.heappush(self._heap, (-t.priority, next(self._seq), t.task_id))
        out.append(StatusChanged(t.task_id, "pending"))

    def _on_Cancel(self, ev: Cancel, out: list) -> None:
        t = self._tasks.get(ev.task_id)
        if t is None or t[0] in ("completed", "failed", "cancelled"):
            out.append(Rejected(ev.task_id, "task is not active"))
            return
        if t[0] in ("assigned", "running"):
            out.append(CancelOnWorker(ev.task_id, t[1]))
            self._free[t[1]] = self._free.get(t[1], 0) + 1
        t[0] = "cancelled"
        out.append(StatusChanged(ev.task_id, "cancelled", "cancelled by request"))

    def _on_WorkerUp(self, ev: WorkerUp, out: list) -> None:
        w = ev.worker
        busy = len(self.running_on(w.worker_id))
        self._workers[w.worker_id] = w
        self._free[w.worker_id] = w.slots - busy

    def _on_WorkerLost(self, ev: WorkerLost, out: list) -> None:
        self._workers.pop(ev.worker_id, None)
        self._free.pop(ev.worker_id, None)
        for tid in self.running_on(ev.worker_id):
            t = self._tasks[tid]
            t[0], t[1] = "pending", None
            heapq.heappush(self._heap, (-t[3].priority, next(self._seq), tid))
            out.append(StatusChanged(tid, "pending", f"worker {ev.worker_id} lost; requeued"))

    def _on_TaskStarted(self, ev: TaskStarted, out: list) -> None:
        t = self._tasks.get(ev.task_id)
        if t and t[0] == "assigned":
            t[0] = "running"
            out.append(StatusChanged(ev.task_id, "running", worker_id=ev.worker_id))

    def _on_TaskFinished(self, ev: TaskFinished, out: list) -> None:
        t = self._tasks.get(ev.task_id)
        if t is None or t[0] not in ("assigned", "running"):
            return
        if t[1] in self._free:
            self._free[t[1]] += 1
        limit = self.config.retry_limit if t[3].retry_limit is None else t[3].retry_limit
        if ev.success:
            t[0] = "completed"
            out.append(StatusChanged(ev.task_id, "completed", worker_id=ev.worker_id))
        elif t[2] <= limit:
            t[0], t[1] = "pending", None
            heapq.heappush(self._heap, (-t[3].priority, next(self._seq), ev.task_id))
            out.append(StatusChanged(ev.task_id, "pending", f"retrying after: {ev.error}"))
        else:
            t[0] = "failed"
            out.append(StatusChanged(ev.task_id, "failed", ev.error, worker_id=ev.worker_id))

    def _on_Tick(self, ev: Tick, out: list) -> None:
        pass

    def _dispatch(self, out: list) -> None:
        free = [w for w, n in self._free.items() if n > 0]
        while self._heap and free:
            _, _, tid = heapq.heappop(self._heap)
            t = self._tasks[tid]
            if t[0] != "pending":
                continue
            w = free[0]
            self._free[w] -= 1
            if self._free[w] == 0:
                free.pop(0)
            t[0], t[1] = "assigned", w
            t[2] += 1
            out.append(Dispatch(tid, w, t[2]))
            out.append(StatusChanged(tid, "assigned", worker_id=w))
