"""Online backups of the coordinator's database, their retention, and the start-up check.

A backup is SQLite's backup API run from a read-only connection of its own, so it works while
the coordinator writes (WAL: a reader never blocks the writer). The copy is one snapshot: the
source connection holds a single read transaction for the whole copy, otherwise every commit by
the coordinator between two steps would restart the copy from page one (and a busy coordinator
would keep it from ever finishing). The copy is written under a temporary name, switched to
rollback-journal mode (a self-contained single file), checked with ``PRAGMA quick_check``, and only
then renamed over the destination, so a failed or interrupted backup never leaves a file that
looks like a good one.

:class:`Backups` makes them on a schedule into ``<home>/backups/`` and keeps the newest few;
:func:`check_database` runs before the coordinator opens its database and, if the file is damaged,
says which backup to restore and how.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

BACKUP_DIR = "backups"
# Pages copied per backup step: 4 MiB at the default page size, so progress moves and a stop
# request is seen a few times a second even on a slow disk.
STEP_PAGES = 1024
# Scheduled backups: a name of their own (UTC, so the order of the names is the order of time
# across a change of daylight saving), so retention never deletes a backup someone made by hand.
AUTO_PREFIX = "dtf-auto-"
_AUTO_NAME = re.compile(r"^dtf-auto-(\d{8}-\d{6})(?:-(\d+))?\.sqlite$")
# Any backup DTF names: `dtf backup`'s default (local time) and the scheduled ones.
_ANY_NAME = re.compile(r"^dtf-(?:auto-)?\d{8}-\d{6}(?:-\d+)?\.sqlite$")
# SQLite's result codes for a damaged file (sqlite3.h); Python 3.11+ puts them on the exception.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

Progress = Callable[[int, int], None]  # (pages copied, pages in all)


class BackupError(RuntimeError):
    """A backup could not be made or its copy failed the check (no destination file was written)."""


class BackupCancelled(BackupError):
    """The backup was stopped on request before it finished (no destination file was written)."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int  # bytes
    seconds: float
    pages: int


def readonly_uri(path: str | os.PathLike[str]) -> str:
    """A ``mode=ro`` URI for any path (``?`` or ``#`` in a directory name would otherwise cut it)."""
    return f"file:{quote(str(Path(path).resolve()))}?mode=ro"


def backup_database(db_path: str | os.PathLike[str], dest_path: str | os.PathLike[str], *,
                    progress: Progress | None = None, cancel: threading.Event | None = None,
                    step_pages: int = STEP_PAGES) -> BackupResult:
    """Copy the live database at ``db_path`` to ``dest_path`` (replaced if it exists), consistently,
    while the coordinator keeps writing. ``cancel`` set stops the copy between two steps
    (:class:`BackupCancelled`). Raises :class:`BackupError` when the source cannot be read or the
    copy fails its check."""
    src_path, dest = Path(db_path), Path(dest_path)
    if not src_path.is_file():
        raise BackupError(f"no database at {src_path}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Next to the destination: os.replace is atomic only within one file system.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    started = time.monotonic()
    pages = 0

    def step(_status: int, remaining: int, total: int) -> None:
        nonlocal pages
        pages = total
        if cancel is not None and cancel.is_set():
            # An exception from the progress callback makes sqlite3 abandon the backup.
            raise BackupCancelled(f"backup of {src_path} stopped before it finished")
        if progress is not None:
            progress(total - remaining, total)

    try:
        src = sqlite3.connect(readonly_uri(src_path), uri=True, isolation_level=None)
        try:
            src.execute("PRAGMA busy_timeout=5000")
            # One read transaction for the whole copy: a snapshot (see the module docstring).
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            tmp.unlink(missing_ok=True)
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst, pages=step_pages, progress=step)
                # The copied header says WAL, like the source; a backup is better one plain file.
                dst.execute("PRAGMA journal_mode=DELETE")
                problems = _quick_check(dst)
                if problems:
                    raise BackupError(f"the copy of {src_path} failed its check: {'; '.join(problems[:5])}")
            finally:
                dst.close()
        finally:
            src.close()
        with open(tmp, "rb+") as f:  # on disk before it takes the destination's name
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {src_path} failed: {exc}") from exc
    finally:
        # Whatever went wrong, no half-made copy stays behind (nor its journal).
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
    return BackupResult(dest, dest.stat().st_size, time.monotonic() - started, pages)


def _quick_check(conn: sqlite3.Connection) -> list[str]:
    """The problems ``PRAGMA quick_check`` reports; empty when the file is sound."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    return [] if rows == ["ok"] else rows


def default_backup_name(now: float | None = None) -> str:
    """`dtf backup`'s file name: local time, as a person reads it."""
    return time.strftime("dtf-%Y%m%d-%H%M%S.sqlite", time.localtime(now))


def next_auto_name(directory: str | os.PathLike[str], now: float | None = None) -> Path:
    """The next scheduled backup's path: named after the time, and always after every scheduled
    backup already there, since retention deletes by that order. Within one second: -1, -2 ...
    (never the number of one already pruned); after the clock went back: the newest's time."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    newest = _auto_keyed(directory)[-1:]
    if newest and newest[0][0][0] >= stamp:
        stamp, seq = newest[0][0][0], newest[0][0][1] + 1
        return Path(directory) / f"{AUTO_PREFIX}{stamp}-{seq}.sqlite"
    return Path(directory) / f"{AUTO_PREFIX}{stamp}.sqlite"


def _auto_keyed(directory: str | os.PathLike[str]) -> list[tuple[tuple[str, int], Path]]:
    found = []
    try:
        entries = list(Path(directory).iterdir())
    except FileNotFoundError:
        return []
    for p in entries:
        m = _AUTO_NAME.match(p.name)
        if m and p.is_file():
            found.append(((m.group(1), int(m.group(2) or 0)), p))
    return sorted(found)


def auto_backups(directory: str | os.PathLike[str]) -> list[Path]:
    """The scheduled backups in ``directory``, oldest first (by the time in their names)."""
    return [p for _, p in _auto_keyed(directory)]


def newest_backup(directory: str | os.PathLike[str]) -> Path | None:
    """The most recently written backup DTF named (scheduled or by hand) in ``directory``."""
    try:
        candidates = [p for p in Path(directory).iterdir() if _ANY_NAME.match(p.name) and p.is_file()]
    except FileNotFoundError:
        return None
    # By modification time: hand-made names are local time, scheduled ones UTC; mtime orders both.
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def prune_backups(directory: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` scheduled backups; returns what was deleted."""
    doomed = auto_backups(directory)[:-keep] if keep > 0 else auto_backups(directory)
    deleted = []
    for p in doomed:
        try:
            p.unlink()
            deleted.append(p)
        except FileNotFoundError:
            pass
    return deleted


class Backups:
    """Scheduled backups of ``db_path`` into ``directory`` every ``interval`` seconds (0 = none),
    keeping the newest ``keep``. The thread is this object's: :meth:`start` starts it, :meth:`stop`
    ends it (an unfinished copy is abandoned) and joins it. A failed backup is logged with its
    traceback and counted in :attr:`failures`; the next one is tried at the next interval.

    The first backup is due ``interval`` after the newest scheduled one already in ``directory``
    (at once if there is none), so a coordinator restarted more often than ``interval`` still
    makes backups.
    """

    def __init__(self, db_path: str | os.PathLike[str], directory: str | os.PathLike[str], interval: float,
                 keep: int = 5) -> None:
        if interval < 0 or keep < 1:
            raise ValueError(f"Backups: interval must be >= 0 and keep >= 1 (got {interval}, {keep})")
        self.db_path = Path(db_path)
        self.directory = Path(directory)
        self.interval = interval
        self.keep = keep
        self.made = 0
        self.failures = 0
        self.last: BackupResult | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def start(self) -> Backups:
        if self.enabled and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dtf-backups", daemon=True)
            self._thread.start()
            log.info("backups of %s every %g s into %s (keeping %d)", self.db_path, self.interval,
                     self.directory, self.keep)
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("the backup thread did not stop within %s s", timeout)

    def backup_now(self) -> BackupResult:
        """One scheduled backup, then retention (from the thread; callable directly, e.g. by tests)."""
        result = backup_database(self.db_path, next_auto_name(self.directory), cancel=self._stop)
        for p in prune_backups(self.directory, self.keep):
            log.info("old backup deleted: %s", p)
        return result

    def _first_delay(self) -> float:
        existing = auto_backups(self.directory)
        if not existing:
            return 0.0
        try:
            age = time.time() - existing[-1].stat().st_mtime
        except OSError:
            return 0.0
        return min(max(self.interval - age, 0.0), self.interval)

    def _run(self) -> None:
        delay = self._first_delay()
        while not self._stop.wait(delay):
            started = time.monotonic()
            try:
                self.last = self.backup_now()
                self.made += 1
                self.last_error = None
                log.info("backup written: %s (%d bytes, %.2f s)", self.last.path, self.last.size,
                         self.last.seconds)
            except BackupCancelled:
                return
            except Exception as exc:  # the thread must live on to try again; the log says why
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("backup of %s into %s failed", self.db_path, self.directory)
            # The interval runs from start to start; a backup longer than it runs back to back.
            delay = max(self.interval - (time.monotonic() - started), 0.0)


# -- the start-up check -------------------------------------------------------------------------------


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "damaged file" errors (not for a locked or unreadable file)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def check_database(db_path: str | os.PathLike[str], backup_dir: str | os.PathLike[str] | None = None) -> str | None:
    """None when the database at ``db_path`` is sound or does not exist yet (a new one is made);
    else what is wrong with it and how to restore the newest backup in ``backup_dir`` (default:
    ``backups/`` next to the database). Run it before the coordinator opens the file, while no
    coordinator has it open (the home lock is held)."""
    path = Path(db_path)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            problems = _quick_check(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            return f"the database {path} cannot be read: {exc}"
        problems = [str(exc)]
    if not problems:
        return None
    return corruption_message(path, problems, Path(backup_dir) if backup_dir else path.parent / BACKUP_DIR)


def corruption_message(db_path: Path, problems: list[str], backup_dir: Path) -> str:
    """What is wrong and, step by step, how to put the newest backup in its place."""
    shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
    lines = [f"the database {db_path} is damaged: {shown}"]
    newest = newest_backup(backup_dir)
    if newest is None:
        lines.append(f"no backup found in {backup_dir}. Move the damaged file aside to start with an "
                     "empty database, or try `sqlite3 DB .recover` on a copy of it.")
    else:
        taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest.stat().st_mtime))
        lines += [
            f"newest backup: {newest} (written {taken})",
            "to restore it: stop DTF (every `dtf serve` and window on this home), then",
            f"  cp {newest} {db_path}",
            f"  rm -f {db_path}-wal {db_path}-shm",
            "and start again.",
        ]
    return "\n".join(lines)
