"""A non-blocking exclusive lock on an open file, for "one owner at a time" files (the agent's
spool, the coordinator's home). The lock goes with the process: a crash leaves nothing to clean up.
"""

from __future__ import annotations

import os
import sys

__all__ = ["try_lock"]

if sys.platform == "win32":  # pragma: no cover - the lab's machines run Linux; kept so DTF starts on Windows
    import msvcrt

    # msvcrt locks byte ranges, and a locked range cannot be read by others: lock one byte far past
    # the owner's info, so a second opener can still read who holds the lock.
    _WIN_LOCK_OFFSET = 1 << 20

    def try_lock(fd: int) -> bool:
        """Take the lock on ``fd``; False when another process holds it."""
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
else:
    import fcntl

    def try_lock(fd: int) -> bool:
        """Take the lock on ``fd``; False when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
