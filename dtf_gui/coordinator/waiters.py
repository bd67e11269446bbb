"""Clients waiting for tasks to end (the client API's ``wait``): no polling, no I/O.

The loop registers a waiter with the statuses it already knows, tells the table of every task that
reaches a final status, and expires waiters at their deadline. A waiter fires once, with every
status it learnt, through the ``deliver`` callback the loop gave it (which sends the reply after
the statuses it reports are committed).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["Waiters"]


class _Waiter:
    __slots__ = ("deliver", "fired", "left", "statuses")

    def __init__(self, statuses: dict[str, str | None], deliver: Callable[[dict[str, Any]], None]) -> None:
        self.statuses = statuses
        self.left = sum(1 for s in statuses.values() if s is None)
        self.deliver = deliver
        self.fired = False

    def fire(self, timed_out: bool) -> None:
        if self.fired:
            return
        self.fired = True
        done = {k: v for k, v in self.statuses.items() if v is not None}
        counts: dict[str, int] = {}
        for v in done.values():
            counts[v] = counts.get(v, 0) + 1
        self.deliver({"finished": done, "pending": [k for k, v in self.statuses.items() if v is None],
                      "counts": counts, "timed_out": timed_out})


class Waiters:
    """Owned by the coordinator's loop thread."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._by_task: dict[str, list[_Waiter]] = {}
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self.live = 0

    def add(self, statuses: dict[str, str | None], deadline: float,
            deliver: Callable[[dict[str, Any]], None]) -> None:
        """``statuses``: each task's final status, None while it is unfinished. Fires at once when
        none is unfinished; ``deadline`` is monotonic seconds."""
        w = _Waiter(statuses, deliver)
        if not w.left:
            w.fire(False)
            return
        if self.live >= self.limit:
            raise OverflowError(f"{self.live} clients are waiting already (the limit is {self.limit})")
        self.live += 1
        for task_id, status in statuses.items():
            if status is None:
                self._by_task.setdefault(task_id, []).append(w)
        heapq.heappush(self._deadlines, (deadline, next(self._seq), w))

    def finished(self, task_id: str, status: str) -> None:
        """A task reached a final status."""
        waiting = self._by_task.pop(task_id, None)
        if not waiting:
            return
        for w in waiting:
            if w.fired or w.statuses.get(task_id) is not None:
                continue
            w.statuses[task_id] = status
            w.left -= 1
            if not w.left:
                self.live -= 1
                w.fire(False)

    def expire(self, now: float) -> None:
        """Waiters whose deadline passed answer with what they have."""
        dl = self._deadlines
        while dl and (dl[0][0] <= now or dl[0][2].fired):
            _, _, w = heapq.heappop(dl)
            if not w.fired:
                self.live -= 1
                for task_id, status in w.statuses.items():
                    if status is None:
                        lst = self._by_task.get(task_id)
                        if lst is not None:
                            lst[:] = [x for x in lst if x is not w]
                            if not lst:
                                del self._by_task[task_id]
                w.fire(True)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None
