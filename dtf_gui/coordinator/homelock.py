"""One coordinator per DTF home: an advisory lock on ``<home>/coordinator.lock``.

Two coordinators on one home would share its database (two writers, one of them unexpected) and
its ``coordinator.json`` (the second overwrites the first's endpoints, and deletes the file when it
exits while the first still runs). The entry points (``dtf serve`` and the window) take this lock
before they open the database and hold it for the life of the process; the kernel drops it when
the process ends, however it ends, so a crash never leaves a stale lock behind. The Coordinator
class itself does not lock: tests and self-checks start several in one process, each on its own
database.

The owner writes its pid (at once) and its endpoints (once it listens) into the lock file, so a
second start can name the running one even before that one has written ``coordinator.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from dtf_agent.filelock import try_lock
from dtf_agent.paths import COORDINATOR_FILE

LOCK_FILE = "coordinator.lock"


class HomeLockError(RuntimeError):
    """Another coordinator holds the home. A RuntimeError, so `dtf` reports it as a failed start
    (exit 1, no traceback) and the window shows it like any other start failure."""

    def __init__(self, message: str, owner: dict[str, Any]) -> None:
        super().__init__(message)
        self.owner = owner


class HomeLock:
    """``HomeLock(home).acquire()`` or ``with HomeLock(home):``; raises :class:`HomeLockError` at once
    (never waits) when another process holds it. ``label`` names this kind of owner in the message
    a second start prints ("dtf serve", "dtf-gui")."""

    def __init__(self, home: str | os.PathLike[str], label: str = "coordinator") -> None:
        self.home = Path(home)
        self.path = self.home / LOCK_FILE
        self.label = label
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> HomeLock:
        if self._fd is not None:
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        # os.open makes a non-inheritable descriptor: the window's local agent (a child process)
        # must not keep the home locked after the window has gone.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            owner = read_owner(self.home)
            raise HomeLockError(busy_message(self.home, owner), owner)
        self._fd = fd
        self.write_info({})
        return self

    def write_info(self, info: dict[str, Any]) -> None:
        """Record who holds the lock (pid and label always; ``info`` adds endpoints, db ...)."""
        if self._fd is None:
            raise RuntimeError("HomeLock.write_info: the lock is not held")
        data = json.dumps({**info, "pid": os.getpid(), "owner": self.label,
                           "locked_at": time.time()}).encode()
        # Rewritten in place, never replaced by a new file: the lock belongs to this inode.
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, data)

    def release(self) -> None:
        """Drop the lock (the process's end drops it too). The file stays: removing it would let a
        newcomer lock a fresh inode while a late starter still locks the old one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # while still locked: nobody reads our stale pid afterwards
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> HomeLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or read half-written: the owner rewrites it in place
        return {}
    return data if isinstance(data, dict) else {}


def read_owner(home: str | os.PathLike[str]) -> dict[str, Any]:
    """What is known of the process holding ``home``: the lock file's record, completed from
    ``coordinator.json`` when that file is the same process's. Empty when nothing can be read."""
    home = Path(home)
    owner = _read_json(home / LOCK_FILE)
    published = _read_json(home / COORDINATOR_FILE)
    if published and (not owner.get("pid") or published.get("pid") == owner.get("pid")):
        owner = {**published, **owner}
    return owner


def busy_message(home: Path, owner: dict[str, Any]) -> str:
    parts = [str(owner["owner"])] if owner.get("owner") else []
    parts.append(f"pid {owner['pid']}" if owner.get("pid") else "pid unknown")
    if owner.get("client_endpoint"):
        parts.append(f"clients {owner['client_endpoint']}")
    if owner.get("agent_endpoint"):
        parts.append(f"agents {owner['agent_endpoint']}")
    return (f"another coordinator ({', '.join(parts)}) already uses {home}; "
            "stop it, or set DTF_HOME to another directory")
