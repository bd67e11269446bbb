"""What tasks leave behind besides their result rows: streamed output, progress, and the bundles
they run.

- :class:`TaskOutputs` takes what agents send of these (LogChunk, Progress, FetchBundle), each
  frame attributed to the worker whose key it came with: a worker writes only the logs of the
  attempts it runs, and fetches only the bundles of tasks given to it.

- :class:`LogWriter` owns the writes to the :class:`~dtf_gui.coordinator.logstore.LogStore` on a
  thread of its own: appending and compressing a log is file I/O the coordinator's loop must not
  wait for. The queue is bounded in bytes; past it a chunk is dropped and counted, and the log shows
  the gap (chunks carry their offsets) instead of the coordinator's memory growing.
- :class:`BundleStore` keeps the bundles clients upload (``put_bundle``), by digest, and reads the
  pieces agents fetch. A bundle appears under its digest only once complete and verified, with one
  ``os.replace``: a reader never sees a half-written one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

from dtf_agent import protocol as p
from dtf_agent.runners.bundles import DIGEST_RE, BundleError, digest_of
from dtf_gui.coordinator.logstore import LogStore
from dtf_gui.coordinator.state import TaskTable

log = logging.getLogger(__name__)

_Item = tuple[str, int, str, int, bytes, bool] | tuple[str, int] | None
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
_SWEEP_EVERY = 3600.0


def log_key(task_id: str) -> str:
    """The name a task's logs go under: its id when that is a plain file name (ours always are), else a
    hash of it (an engineer's id may hold "/" or start with a dot)."""
    if _SAFE_KEY.fullmatch(task_id):
        return task_id
    return "h-" + hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class LogWriter:
    """Streams of task output, written on the ``dtf-log-writer`` thread; read from any thread."""

    def __init__(self, root: Path, *, max_bytes: int, max_queued_bytes: int = 256 * 1024 * 1024,
                 retention_days: float = 30.0) -> None:
        self.root = root
        self.retention_days = retention_days
        self.swept = 0
        self.store = LogStore(root, max_bytes=max_bytes)
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0  # changed under _lock: the loop adds, the writer thread takes away
        self.dropped_chunks = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._q: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="dtf-log-writer", daemon=True)
        self._thread.start()

    def append(self, task_id: str, attempt: int, stream: str, offset: int, data: bytes, eof: bool) -> bool:
        """Queue a chunk (loop thread); False when it was dropped because the writer is behind."""
        with self._lock:
            if self.queued_bytes + len(data) > self.max_queued_bytes:
                self.dropped_chunks += 1
                return False
            self.queued_bytes += len(data)
        self._q.put((log_key(task_id), attempt, stream, offset, data, eof))
        return True

    def close_attempt(self, task_id: str, attempt: int) -> None:
        """The attempt has its result: its streams are complete whatever chunks were lost."""
        self._q.put((log_key(task_id), attempt))

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(30)
        self.store.close_all()

    def _run(self) -> None:
        next_sweep = time.monotonic() + 60.0  # not in the busy first minute of a start
        while True:
            try:
                item = self._q.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                next_sweep = time.monotonic() + _SWEEP_EVERY
                self._sweep()
                continue
            if item is None:
                return
            try:
                if len(item) == 2:
                    self.store.close(item[0], item[1])
                else:
                    task_id, attempt, stream, offset, data, eof = item
                    with self._lock:
                        self.queued_bytes -= len(data)
                    self.store.append(task_id, attempt, stream, offset, data, eof)
            except Exception:  # one bad stream (a full disk) must not stop the others being written
                self.errors += 1
                if self.errors <= 10 or self.errors % 1000 == 0:
                    log.exception("cannot write the output of task %s (%d error(s) so far)", item[0], self.errors,
                                  extra={"task_id": item[0]})

    def _sweep(self) -> None:
        """Logs untouched for longer than server.log_retention_days go (0 keeps them for ever)."""
        if self.retention_days <= 0:
            return
        cutoff = time.time() - self.retention_days * 86400
        try:
            for task_dir in self.root.glob("*/*"):
                try:
                    newest = max((f.stat().st_mtime for f in task_dir.iterdir()), default=0.0)
                except OSError:
                    continue
                if newest < cutoff:
                    self.store.remove(task_dir.name)
                    self.swept += 1
        except Exception:  # a sweep that fails is tried again in an hour; the writes go on
            log.exception("cannot remove old logs under %s", self.root)

    def stats(self) -> dict[str, Any]:
        # Counters only: walking the logs on disk is not for the loop thread.
        return {"log_queued_bytes": self.queued_bytes, "log_dropped_chunks": self.dropped_chunks,
                "log_errors": self.errors, "logs_removed": self.swept}


class BundleStore:
    """Bundles by digest under ``root``: ``<digest>.tar.gz`` once complete, ``.part`` while uploading."""

    def __init__(self, root: Path, *, max_bundle_bytes: int = 1024**3, max_total_bytes: int = 10 * 1024**3) -> None:
        self.root = root
        self.max_bundle_bytes = max_bundle_bytes
        # Bundles kept in all; past it the least recently used go (a suite's next run sends its own again).
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()  # uploads run on the analysis thread, reads on the loop

    def _path(self, digest: str, suffix: str = ".tar.gz") -> Path:
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError(f"{digest[:80]!r} is not a bundle digest (sha256-<64 hex digits>)")
        return self.root / f"{digest}{suffix}"

    def has(self, digest: str) -> bool:
        return self._path(digest).exists()

    def received(self, digest: str) -> int:
        """Bytes of an unfinished upload so far (a client resumes from there)."""
        try:
            return self._path(digest, ".part").stat().st_size
        except FileNotFoundError:
            return 0

    def write(self, digest: str, offset: int, data: bytes, total: int) -> dict[str, Any]:
        """One piece of an upload. Out of order (a retried request) answers where to go on from."""
        final = self._path(digest)
        if total > self.max_bundle_bytes:
            raise ValueError(f"the bundle is {total} bytes, over the coordinator's limit of {self.max_bundle_bytes}")
        with self._lock:
            if final.exists():
                return {"received": total, "complete": True}
            part = self._path(digest, ".part")
            self.root.mkdir(parents=True, exist_ok=True)
            have = part.stat().st_size if part.exists() else 0
            if offset == 0 and have == 0:
                self._sweep_parts()
            if offset != have:
                return {"received": have, "complete": False}
            if have + len(data) > total:
                part.unlink(missing_ok=True)
                raise ValueError(f"the upload is longer than the {total} bytes it announced; start again")
            with open(part, "ab") as fh:
                fh.write(data)
            have += len(data)
            if have < total:
                return {"received": have, "complete": False}
            blob = part.read_bytes()
            try:
                got = digest_of(blob)
            except BundleError as exc:
                part.unlink(missing_ok=True)
                raise ValueError(f"the uploaded bundle is not a valid archive: {exc}") from None
            if got != digest:
                part.unlink(missing_ok=True)
                raise ValueError(f"the uploaded bundle's content hashes to {got}, not {digest}; nothing kept")
            os.replace(part, final)
            log.info("bundle %s stored (%d bytes)", digest, total)
            self._evict(keep=final)
            return {"received": total, "complete": True}

    def _sweep_parts(self) -> None:
        """Uploads left unfinished for a day are given up: their pieces go."""
        cutoff = time.time() - 86400
        for part in self.root.glob("sha256-*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
            except OSError:
                pass

    def _evict(self, keep: Path) -> None:
        """Least recently used first (a read or an upload marks a bundle used), never ``keep``."""
        found = []
        for path in self.root.glob("sha256-*.tar.gz"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in found)
        for _, size, path in sorted(found):
            if total <= self.max_total_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("bundle %s removed: the bundles kept exceed server.max_bundles_bytes", path.name)

    def read(self, digest: str, offset: int, size: int) -> tuple[bytes, int]:
        """(piece, total size); FileNotFoundError when there is no such bundle."""
        path = self._path(digest)
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            fh.seek(offset)
            data = fh.read(size)
        if offset == 0:
            os.utime(path)  # used: the last to be evicted
        return data, total


# Bytes of a bundle per answer to FetchBundle: a few milliseconds of the loop's time each.
BUNDLE_PIECE = 2 * 1024 * 1024
_MAX_GRANTS = 100_000


class TaskOutputs:
    """The loop's desk for output, progress and bundles (loop thread only, but for the stores' reads)."""

    def __init__(self, home: Path, tasks: TaskTable, *, max_log_bytes: int = 64 * 1024 * 1024,
                 max_bundle_bytes: int = 1024**3, max_bundles_bytes: int = 10 * 1024**3,
                 log_retention_days: float = 30.0) -> None:
        self.tasks = tasks
        self.logs = LogWriter(home / "logs", max_bytes=max_log_bytes, retention_days=log_retention_days)
        self.bundles = BundleStore(home / "bundles", max_bundle_bytes=max_bundle_bytes,
                                   max_total_bytes=max_bundles_bytes)
        # task id -> (attempt, done, failed, total, current test), as the agent last said.
        self.progress: dict[str, tuple[int, int, int, int, str]] = {}
        # (worker, digest) pairs a worker may fetch: those of the tasks dispatched to it.
        self._grants: dict[tuple[str, str], None] = {}
        self.refused = 0
        self.bundle_bytes_served = 0

    def _runs_on(self, task_id: str, attempt: int, worker_id: str) -> bool:
        task = self.tasks.get(task_id)
        if task is None or task.worker_id != worker_id or task.attempt != attempt:
            self.refused += 1
            return False
        return True

    def dispatched(self, worker_id: str, parameters: dict[str, Any]) -> None:
        digest = parameters.get("bundle") if parameters else None
        if isinstance(digest, str):
            if len(self._grants) >= _MAX_GRANTS:
                for key in list(self._grants)[:_MAX_GRANTS // 10]:  # the oldest tenth
                    del self._grants[key]
            self._grants[(worker_id, digest)] = None

    def _holds(self, worker_id: str, digest: str) -> bool:
        """A task of this bundle on this worker that was not dispatched in this life of the coordinator
        (it restarted, and the agent claimed the task back): found once, then granted."""
        for task in self.tasks.active.values():
            if task.worker_id == worker_id and task.parameters and task.parameters.get("bundle") == digest:
                self._grants[(worker_id, digest)] = None
                return True
        return False

    def log_chunk(self, worker_id: str, msg: p.LogChunk) -> None:
        if self._runs_on(msg.task_id, msg.attempt, worker_id):
            self.logs.append(msg.task_id, msg.attempt, msg.stream, msg.offset, msg.data, msg.eof)

    def progress_report(self, worker_id: str, msg: p.Progress) -> None:
        if self._runs_on(msg.task_id, msg.attempt, worker_id):
            self.progress[msg.task_id] = (msg.attempt, msg.done, msg.failed, msg.total, msg.current)

    def attempt_ended(self, task_id: str, attempt: int) -> None:
        self.logs.close_attempt(task_id, attempt)

    def task_final(self, task_id: str) -> None:
        self.progress.pop(task_id, None)

    def bundle_piece(self, worker_id: str, msg: p.FetchBundle) -> p.BundleChunk:
        if (worker_id, msg.digest) not in self._grants and not self._holds(worker_id, msg.digest):
            self.refused += 1
            return p.BundleChunk(digest=msg.digest, offset=msg.offset,
                                 error="no task given to this agent runs that bundle")
        try:
            data, total = self.bundles.read(msg.digest, msg.offset, BUNDLE_PIECE)
        except (OSError, ValueError) as exc:
            return p.BundleChunk(digest=msg.digest, offset=msg.offset,
                                 error=f"the coordinator has no bundle {msg.digest} ({type(exc).__name__})")
        self.bundle_bytes_served += len(data)
        return p.BundleChunk(digest=msg.digest, offset=msg.offset, total=total, data=data)

    def stop(self) -> None:
        self.logs.stop()

    def stats(self) -> dict[str, Any]:
        return {**self.logs.stats(), "refused_frames": self.refused, "progress_known": len(self.progress),
                "bundle_bytes_served": self.bundle_bytes_served}
