"""The task table: the coordinator's in-memory tasks (owned by the coordinator thread).

Active tasks live here as :class:`~dtf_gui.coordinator.records.TaskRecord`\\ s. Finished tasks stay
for a while in a bounded recent set, so late or resent results are recognised without a database
read; older ones are only in SQLite. Status counts are kept up to date on every change, so a
status request never walks the table.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict

from dtf_agent.protocol import COMPLETED, PENDING, TASK_STATUSES, TERMINAL_STATUSES
from dtf_gui.coordinator import scheduler as sch
from dtf_gui.coordinator.records import TaskRecord
from dtf_gui.coordinator.store import Store

log = logging.getLogger(__name__)

__all__ = ["RECENT_FINISHED", "TaskTable", "new_task_id", "recover"]

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
        self.active: dict[str, TaskRecord] = {}
        self.recent: OrderedDict[str, TaskRecord] = OrderedDict()
        self.recent_limit = recent_limit
        self.finished_counts: Counter[str] = Counter()
        self.active_counts: Counter[str] = Counter()

    def get(self, task_id: str) -> TaskRecord | None:
        t = self.active.get(task_id)
        if t is None:
            t = self.recent.get(task_id)
        return t

    def add(self, task: TaskRecord) -> None:
        """A task the scheduler accepted (or one recovered from SQLite)."""
        self.active[task.task_id] = task
        self.active_counts[task.status] += 1

    def set_status(self, task: TaskRecord, status: str) -> None:
        if task.task_id in self.active:
            self.active_counts[task.status] -= 1
            self.active_counts[status] += 1
        task.status = status

    def finished(self, task_id: str) -> None:
        rec = self.active.pop(task_id, None)
        if rec is None:
            return
        self.active_counts[rec.status] -= 1
        self.finished_counts[rec.status] += 1
        self.recent[task_id] = rec
        if len(self.recent) > self.recent_limit:
            self.recent.popitem(last=False)

    def revive(self, task_id: str) -> TaskRecord | None:
        """A finished task that runs again (retry): back among the active ones."""
        rec = self.recent.pop(task_id, None)
        if rec is None:
            return self.active.get(task_id)
        self.finished_counts[rec.status] -= 1
        self.active[task_id] = rec
        self.active_counts[rec.status] += 1
        return rec

    def apply_status(self, ins: sch.StatusChanged, now: float) -> TaskRecord | None:
        """The record follows the scheduler's word: status, reason, worker, times, error. A retried
        task comes back among the active ones. None for a task this table no longer holds."""
        task = self.get(ins.task_id)
        if task is None:
            return None
        status = ins.status
        if status not in TERMINAL_STATUSES and task.task_id not in self.active:
            self.revive(task.task_id)
            task.end_time = None
            task.error = None
        self.set_status(task, status)
        task.status_reason = ins.reason or None
        if ins.worker_id is not None:
            task.worker_id = ins.worker_id
        if status == PENDING:
            task.worker_id = None
            task.start_time = None
        elif status in TERMINAL_STATUSES:
            task.end_time = task.end_time or now
            if status != COMPLETED and ins.reason:
                task.error = ins.reason
        return task

    def status_counts(self) -> dict[str, int]:
        counts = self.active_counts + self.finished_counts
        return {s: counts.get(s, 0) for s in TASK_STATUSES}


def recover(store: Store, sched: sch.Scheduler, tasks: TaskTable) -> list[sch.Instruction]:
    """After a start, state comes back from SQLite: the duration history placement predicts from
    is seeded, and unfinished tasks are offered to the scheduler again in the order they came
    (running ones go back to the queue; a reconnecting agent that still runs one gets it adopted).
    Returns the scheduler's instructions for the loop to carry out.

    A task the scheduler refuses (its dependency is no longer known) stays in SQLite, pending,
    with the reason as its status_reason."""
    for test_id, hardware, seconds in store.duration_history(sched.config.history_window):
        sched.record_duration(test_id, hardware, seconds)
    out: list[sch.Instruction] = []
    now = time.time()
    for row in store.load_tasks("WHERE status NOT IN ('completed','failed','cancelled') ORDER BY create_time"):
        task = TaskRecord.from_row(row)
        ins = sched.handle([sch.Submit(now, task.spec)])
        refused = [i.reason for i in ins if isinstance(i, sch.Rejected) and i.task_id == task.task_id]
        if refused:
            log.warning("task %s cannot be recovered: %s", task.task_id, refused[0])
            task.status_reason = f"not recovered after a coordinator restart: {refused[0]}"
            store.put_task(task)
            continue
        if task.status != PENDING:
            task.worker_id = None
            task.start_time = None
            task.status = PENDING
        tasks.add(task)
        out.extend(ins)
    return out
