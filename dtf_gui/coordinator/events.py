"""Event batching and subscriptions: what the window and subscribed clients hear.

Rooms mark what changed (:meth:`EventHub.task_changed`, :meth:`EventHub.worker_changed`,
:meth:`EventHub.add`); the loop calls :meth:`EventHub.emit` every ``event_interval`` and the
changes since the last call go out as ONE :class:`~dtf_agent.protocol.EventBatch`: on the events
socket (XPUB) and to the in-process sinks (the window's bridge). A task that changed five times
in one interval is sent once, in its latest state, so a flood of results never floods the window.

Everything here runs on the coordinator's loop thread, which owns the socket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from dtf_agent import protocol as p
from dtf_gui.coordinator.records import TaskRecord, WorkerRecord

log = logging.getLogger(__name__)

__all__ = ["EventHub", "EventSink"]

EventSink = Callable[[list[p.Event]], None]


class EventHub:
    def __init__(self, sinks: list[EventSink] | None = None, stats_interval: float = 1.0) -> None:
        self.sinks: list[EventSink] = list(sinks or [])
        self.pub: zmq.Socket[Any] | None = None
        self.subscribers = 0
        self.seq = 0
        self.stats_interval = stats_interval
        self.completed = 0  # tasks completed since the last stats event (the window's throughput)
        self._tasks: dict[str, TaskRecord] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._other: list[p.Event] = []
        self._next_stats = 0.0
        self._last_stats = time.monotonic()

    def attach(self, pub: zmq.Socket[Any]) -> None:
        """The events socket (XPUB), made and owned by the loop thread."""
        self.pub = pub

    @property
    def listening(self) -> bool:
        """Per-task events are only built while someone (the window, a subscriber) listens."""
        return bool(self.sinks) or self.subscribers > 0

    def drain_subscriptions(self) -> None:
        """XPUB tells us of each (un)subscription: a one-byte 1 or 0, then the topic."""
        assert self.pub is not None
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    # -- marking changes -----------------------------------------------------------------------

    def task_changed(self, task: TaskRecord) -> None:
        if self.listening:
            self._tasks[task.task_id] = task

    def worker_changed(self, w: WorkerRecord) -> None:
        self._workers[w.worker_id] = w

    def add(self, kind: str, data: dict[str, Any], when: float | None = None) -> None:
        self._other.append(p.Event(kind=kind, data=data, time=time.time() if when is None else when))

    # -- sending -------------------------------------------------------------------------------

    def emit(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Send what changed since the last call as one batch; once a ``stats_interval`` the
        coordinator's figures (``stats()``) ride along."""
        now = time.time()
        events: list[p.Event] = []
        if self._workers:
            events.extend(p.Event(kind="worker", data=w.summary(), time=now) for w in self._workers.values())
            self._workers = {}
        if self._tasks:
            events.extend(p.Event(kind="task", data=t.summary(), time=now) for t in self._tasks.values())
            self._tasks = {}
        if self._other:
            events.extend(self._other)
            self._other = []
        mono = time.monotonic()
        if mono >= self._next_stats:
            # Counting tasks by status walks the active table: once a second is plenty.
            self._next_stats = mono + self.stats_interval
            data = stats()
            data["completed_in_interval"] = self.completed
            data["interval_s"] = mono - self._last_stats
            self._last_stats = mono
            self.completed = 0
            events.append(p.Event(kind="stats", data=data, time=now))
        if not events:
            return
        self.seq += 1
        if self.pub is not None:
            try:
                self.pub.send(p.encode(p.EventBatch(events=events, seq=self.seq)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # no subscriber keeps up or none is there: events are a live view, not a log
        for sink in self.sinks:
            try:
                sink(events)
            except Exception:
                log.exception("coordinator: an event sink failed")
