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

from dtf_agent.protocol import ASSIGNED, COMPLETED, FAILED, PENDING, RUNNING, TASK_STATUSES, TERMINAL_STATUSES
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


def recover(store: Store, sched: sch.Scheduler, tasks: TaskTable, hold: float) -> tuple[list[sch.Instruction],
                                                                                     dict[str, str]]:
    """After a start the scheduler is rebuilt from SQLite, so that a restart is invisible to the
    work: the duration history placement predicts from; every unfinished task with its attempt
    number, failure and loss counts, backoff deadline and pin; the final status of the finished
    tasks they depend on. A task that was assigned or running waits up to ``hold`` seconds for the
    worker that had it to reconnect and claim it, rather than start a second copy elsewhere.

    Returns the scheduler's instructions for the loop to carry out, and {task_id: worker_id} of
    the tasks held for a worker. A task the scheduler refuses (a dependency that is in no table)
    ends failed with the reason: nothing stays pending forever."""
    for test_id, hardware, seconds in store.duration_history(sched.config.history_window):
        sched.record_duration(test_id, hardware, seconds)
    now = time.time()
    records = [TaskRecord.from_row(row) for row in store.load_tasks(
        "WHERE status NOT IN ('completed','failed','cancelled') ORDER BY create_time, task_id")]
    ids = {r.task_id for r in records}
    outside = {d for r in records for d in r.spec.dependencies if d not in ids}
    finished = store.task_statuses(outside) if outside else {}
    held = {r.task_id: r.worker_id for r in records if r.status in (ASSIGNED, RUNNING) and r.worker_id}
    restore = sch.Restore(now, tuple(
        (r.spec, sch.Progress(attempt=r.attempt, failures=r.failures, lost=r.lost, error=r.error or "",
                              retry_at=r.retry_at or 0.0, pinned_to=r.pinned_to, held_for=held.get(r.task_id),
                              hold_until=now + hold))
        for r in records))
    ins = sched.handle([sch.Remember(now, tuple(finished.items())), restore])
    refused = {i.task_id: i.reason for i in ins if isinstance(i, sch.Rejected)}
    for r in records:
        why = refused.get(r.task_id)
        if why is not None:
            log.warning("task %s cannot be recovered: %s", r.task_id, why, extra={"task_id": r.task_id})
            r.status = FAILED
            r.error = r.status_reason = f"not recovered after a coordinator restart: {why}"
            r.end_time = now
            store.put_task(r)
            held.pop(r.task_id, None)
            continue
        if r.status != PENDING:
            r.status = PENDING
            r.start_time = None
        tasks.add(r)
    # Counts of what ended in earlier lives, so status shows the database, not this run.
    counts = store.status_counts()
    for status in TERMINAL_STATUSES:
        tasks.finished_counts[status] += counts.get(status, 0)
    return [i for i in ins if not isinstance(i, sch.Rejected)], held
