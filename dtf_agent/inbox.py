"""A hand-over point from any thread to the one thread that owns a zmq.Poller loop.

libzmq sockets belong to one thread, so other threads (task runners in the agent; the window and
the analysis thread in the coordinator) never touch them: they
:meth:`Inbox.put` an item and the loop thread, woken through a pipe that its poller watches,
takes everything that arrived (:meth:`Inbox.take`). Methods are grouped by the thread that may
call them.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        # Guards the write end against close(): a late put() (a signal during shutdown, a runner
        # finishing after the loop ended) must not write to a closed descriptor, or to whatever
        # file has been given its number since.
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The descriptor the owner's poller watches for POLLIN."""
        return self._r

    # -- any thread ----------------------------------------------------------------------------

    def put(self, item: T) -> None:
        """Hand ``item`` to the owner and wake it. Never blocks."""
        self._items.put(item)
        self.wake()

    def wake(self) -> None:
        """Wake the owner without an item (e.g. to make it notice a stop flag)."""
        with self._lock:
            if self._w < 0:
                return
            try:
                os.write(self._w, b"x")
            except BlockingIOError:
                pass  # the pipe is full, so the owner is being woken anyway

    # -- the owner's thread --------------------------------------------------------------------

    def clear_wake(self) -> None:
        """Call when the poller reports the descriptor readable: empties the wake-up pipe (one
        read; anything left keeps it readable, so the poller simply fires again)."""
        try:
            os.read(self._r, 4096)
        except BlockingIOError:
            pass

    def take(self) -> list[T]:
        """Everything handed over so far, in order (the owner is the only consumer). No system
        call when nothing is waiting, so a loop may call it on every turn."""
        items: list[T] = []
        q = self._items
        while not q.empty():
            items.append(q.get_nowait())
        return items

    def close(self) -> None:
        with self._lock:
            r, w = self._r, self._w
            self._r = self._w = -1
        if w >= 0:
            os.close(r)
            os.close(w)
