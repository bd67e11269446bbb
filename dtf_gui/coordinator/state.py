"""The task table: the coordinator's in-memory tasks (owned by the coordinator thread).

Active tasks live here as :class:`~dtf_gui.coordinator.records.TaskRecord`\\ s. Finished tasks stay
for a while in a bounded recent set, so late or resent results are recognised without a database
read; older ones are only in SQLite. Status counts are kept up to date on every change, so a
status request never walks the table.
"""

from __future__ import annotations

import os
import time
from collections import Counter, OrderedDict

from dtf_agent.protocol import TASK_STATUSES
from dtf_gui.coordinator.records import TaskRecord

__all__ = ["RECENT_FINISHED", "TaskTable", "new_task_id"]

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

    def status_counts(self) -> dict[str, int]:
        counts = self.active_counts + self.finished_counts
        return {s: counts.get(s, 0) for s in TASK_STATUSES}
