"""Results not yet acknowledged, on disk: an append-only journal with checksums.

The agent writes each result here, and fsyncs, before it sends it; the result stays until the
coordinator acknowledges it. An agent killed at any moment (kill -9, power loss) therefore finds
on its next start every result the coordinator may not have stored, and sends it again; the
coordinator recognises a resend by its result_id.

File format (``results.journal`` in the spool directory)::

    MAGIC, then records:  length (u32 LE) | crc32 of body (u32 LE) | body (length bytes)
    body:                 kind (1 byte) | msgpack payload
    kind b"R":            a protocol.ResultRecord (a later one with the same result_id replaces it)
    kind b"A":            a list of result_ids acknowledged

Reading stops at the first record that does not check out. One that runs past the end of the file
(or whose checksum fails and which ends exactly there) is a write the agent did not finish: it is
dropped and the file truncated there. Anything else is damage: the records before it are kept,
the damaged file is set aside for inspection, and a warning names it and the offset.

One agent per spool: a lock file (flock) is held while the spool is open, so two agents started
with the same worker id on one machine cannot silently send each other's results.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import msgspec

from dtf_agent.filelock import try_lock
from dtf_agent.paths import dtf_home
from dtf_agent.protocol import ResultRecord

log = logging.getLogger(__name__)

__all__ = ["JOURNAL", "LOCK", "MAGIC", "Spool", "SpoolLocked", "default_spool_dir"]

JOURNAL = "results.journal"
LOCK = "lock"
MAGIC = b"DTFSPL1\n"
_HEADER = struct.Struct("<II")
_RESULT = b"R"
_ACK = b"A"
# A result is bounded by the protocol (three 1 MiB texts, 2 x 10,000 metrics ...): a length far
# past that is not one we wrote.
MAX_RECORD = 64 * 1024 * 1024
# Compaction rewrites the live records; it waits until the dead ones are at least this many bytes
# and at least half of the file, so that its cost stays proportional to what was appended.
COMPACT_MIN_BYTES = 1024 * 1024

_encode = msgspec.msgpack.Encoder().encode
_decode_result = msgspec.msgpack.Decoder(ResultRecord).decode
_decode_ack = msgspec.msgpack.Decoder(list[str]).decode


class SpoolLocked(RuntimeError):
    """Another process holds this spool (an agent with the same worker id)."""


def default_spool_dir(worker_id: str, home: Path | None = None) -> Path:
    """``<DTF home>/agent/<worker id>/spool``. A worker id that is not a safe file name gets a
    hash of itself appended, so two ids that read alike on disk still get spools of their own."""
    name = re.sub(r"[^\w.-]", "_", worker_id)
    if name != worker_id or name.strip(".") == "":
        name = f"{name[:80]}-{hashlib.sha1(worker_id.encode()).hexdigest()[:10]}"
    return (home or dtf_home()) / "agent" / name / "spool"


def _frame(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


class _Damage(Exception):
    def __init__(self, offset: int, reason: str, *, torn: bool) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        # A write the agent did not finish (the end of the file), as opposed to damage.
        self.torn = torn


def _records(data: bytes) -> Iterator[tuple[int, int, bytes, ResultRecord | list[str]]]:
    """(offset, size, kind, decoded payload) for each valid record after MAGIC; raises _Damage
    at the first one that is not, once the valid ones before it have been yielded."""
    pos = len(MAGIC)
    end = len(data)
    while pos < end:
        if end - pos < _HEADER.size:
            raise _Damage(pos, "incomplete record header", torn=True)
        length, crc = _HEADER.unpack_from(data, pos)
        if length < 1 or length > MAX_RECORD:
            raise _Damage(pos, f"impossible record length {length}", torn=False)
        stop = pos + _HEADER.size + length
        if stop > end:
            # Every byte present is one we wrote (a write is cut short, not scrambled): the header
            # is sound and the rest never reached the disk.
            raise _Damage(pos, "incomplete record", torn=True)
        body = data[pos + _HEADER.size:stop]
        if zlib.crc32(body) != crc:
            # At the very end it is the last write, half on disk (a file system may leave zeros
            # there after a power loss); anywhere else the file was damaged after it was written.
            raise _Damage(pos, "checksum mismatch", torn=stop == end)
        kind, payload = body[:1], body[1:]
        try:
            if kind == _RESULT:
                value: ResultRecord | list[str] = _decode_result(payload)
            elif kind == _ACK:
                value = _decode_ack(payload)
            else:
                raise _Damage(pos, f"unknown record kind {kind!r}", torn=False)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _Damage(pos, f"undecodable record ({exc})", torn=False) from None
        yield pos, stop - pos, kind, value
        pos = stop


def _fsync_dir(path: Path) -> None:
    # A rename or a new file is durable only once its directory is; Windows has no such call.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _take_lock(directory: Path) -> int:
    path = directory / LOCK
    # os.open's descriptors are not inherited: the tasks the agent starts never hold the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not try_lock(fd):
            pid = _read_pid(fd)
            holder = f"pid {pid}" if pid else "a process that has not written its pid yet"
            raise SpoolLocked(
                f"the result spool {directory} is in use by another agent ({holder}): an agent with the same "
                f"worker id is already running on this machine. Stop it, or give this one another --worker-id "
                f"(or its own execution.spool_dir in worker.yaml).")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except BaseException:
        os.close(fd)
        raise
    return fd


class Spool:
    """The journal of one agent. Not thread-safe: the agent's loop thread owns it.

    Opening it takes the lock (raising :class:`SpoolLocked` when another process holds it) and
    replays the journal: :meth:`pending` then lists the results still unacknowledged.
    """

    def __init__(self, directory: str | os.PathLike[str], *, compact_min_bytes: int = COMPACT_MIN_BYTES) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / JOURNAL
        self.compact_min_bytes = compact_min_bytes
        self._lock_fd: int | None = _take_lock(self.dir)
        # result_id -> (record, bytes it takes in the file), in the order first written.
        self._live: dict[str, tuple[ResultRecord, int]] = {}
        self._size = 0  # bytes of records in the file (MAGIC not counted)
        self._dead = 0  # of which no longer needed: acknowledged, replaced, and the ack records
        self._fh: IO[bytes] | None = None
        try:
            self._replay()
            self._fh = open(self.path, "ab")  # held open until close()
            if self._should_compact():
                self.compact()
        except BaseException:
            self.close()
            raise

    # -- reading -----------------------------------------------------------------------------

    def pending(self) -> list[ResultRecord]:
        """The results not acknowledged yet, oldest first."""
        return [rec for rec, _size in self._live.values()]

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, result_id: object) -> bool:
        return result_id in self._live

    @property
    def file_size(self) -> int:
        return len(MAGIC) + self._size

    def _replay(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._start_fresh()
            return
        if not data.startswith(MAGIC):
            if MAGIC.startswith(data):
                # Created, but the agent stopped before its first bytes were on disk.
                self._start_fresh()
            else:
                self._set_aside(0, "not a result spool journal (wrong magic bytes)", kept=0)
            return
        try:
            for _offset, size, kind, value in _records(data):
                self._apply(kind, value, size)
        except _Damage as damage:
            if damage.torn:
                log.warning("result spool %s: dropped an unfinished record at offset %d (%s); the agent stopped "
                            "while writing it, before the result was sent", self.path, damage.offset, damage.reason)
                with open(self.path, "r+b") as fh:
                    fh.truncate(damage.offset)
                    fh.flush()
                    os.fsync(fh.fileno())
            else:
                self._set_aside(damage.offset, damage.reason, kept=len(self._live))

    def _apply(self, kind: bytes, value: ResultRecord | list[str], size: int) -> None:
        self._size += size
        if isinstance(value, ResultRecord):
            old = self._live.get(value.result_id)
            if old is not None:
                self._dead += old[1]
            self._live[value.result_id] = (value, size)  # a replacement keeps its place
        else:
            self._dead += size
            for rid in value:
                gone = self._live.pop(rid, None)
                if gone is not None:
                    self._dead += gone[1]

    def _start_fresh(self) -> None:
        self._write_journal(MAGIC)

    def _set_aside(self, offset: int, reason: str, *, kept: int) -> None:
        """Damage in the middle: keep the valid records before it in a new journal, and the damaged
        file beside it for whoever wants to look (appending after the damage would hide what
        follows from every later replay)."""
        aside = self.path.with_name(f"{JOURNAL}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(self.path, aside)
        log.warning("result spool %s: damaged at offset %d (%s); kept the %d unacknowledged result(s) before "
                    "that point, and the damaged file as %s", self.path, offset, reason, kept, aside)
        self._rewrite()

    # -- writing -----------------------------------------------------------------------------

    def append(self, records: Sequence[ResultRecord]) -> None:
        """Journal ``records`` durably (one write and one fsync for the whole batch). A record
        whose result_id is already here replaces it (a resend under a newer attempt)."""
        if not records:
            return
        frames = [_frame(_RESULT, _encode(rec)) for rec in records]
        self._write(b"".join(frames), sync=True)
        for rec, frame in zip(records, frames, strict=True):
            self._apply(_RESULT, rec, len(frame))

    def ack(self, result_ids: Iterable[str]) -> int:
        """Forget the acknowledged results among ``result_ids``; returns how many were here."""
        ids = [rid for rid in dict.fromkeys(result_ids) if rid in self._live]
        if not ids:
            return 0
        frame = _frame(_ACK, _encode(ids))
        # Not fsynced: an ack lost in a crash costs one resend, which the coordinator recognises
        # by its result_id and acknowledges again.
        self._write(frame, sync=False)
        self._apply(_ACK, ids, len(frame))
        if self._should_compact():
            self.compact()
        return len(ids)

    def _write(self, data: bytes, *, sync: bool) -> None:
        fh = self._fh
        if fh is None:
            raise ValueError("the result spool is closed")
        start = fh.tell()
        try:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        except OSError:
            # A partial record (disk full) would read as damage once more records follow it.
            try:
                fh.truncate(start)
            except OSError:
                pass
            raise

    def _should_compact(self) -> bool:
        return self._dead >= self.compact_min_bytes and 2 * self._dead >= self._size

    def compact(self) -> None:
        """Rewrite the journal with only the live records (temp file, fsync, rename, fsync dir)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        try:
            self._rewrite()
        finally:
            # Reopened whatever happened: a failed rewrite leaves the old journal where it was.
            self._fh = open(self.path, "ab")  # held open until close()

    def _rewrite(self) -> None:
        frames = {rid: _frame(_RESULT, _encode(rec)) for rid, (rec, _size) in self._live.items()}
        self._write_journal(MAGIC + b"".join(frames.values()))
        self._live = {rid: (rec, len(frames[rid])) for rid, (rec, _size) in self._live.items()}
        self._size = sum(len(f) for f in frames.values())
        self._dead = 0

    def _write_journal(self, data: bytes) -> None:
        tmp = self.path.with_name(f"{JOURNAL}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.dir)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
