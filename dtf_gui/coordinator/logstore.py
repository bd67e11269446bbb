"""Task output at rest: what agents stream in LogChunk messages, kept under ``$DTF_HOME/logs/``.

Each task stream (attempt x stdout/stderr) is bounded by ``max_bytes``: the first half is kept (the
head: how the run started, the collection errors, the first failure), then the newest output up to
the other half (the tail: how it ended). What falls between is dropped and shown as one marker line.
Offsets are always those of the task's original stream, so a follower that reads on from
``next_offset`` neither repeats nor skips a kept byte while the tail rolls on under it.

Layout, under ``root/<task_id[:2]>/<task_id>/`` (a "." in the two-character bucket becomes "_", so
that an id such as "..x" cannot name the parent directory):

  ``<attempt>.<stream>.json``           metadata, replaced atomically (tempfile + os.replace)
  ``<attempt>.<stream>.<seq>``          a segment kept raw: the open one, or one that did not compress
  ``<attempt>.<stream>.<seq>.gz``       a closed segment, compressed (one gzip member)

So ``zcat -f <attempt>.<stream>.0*`` on the coordinator host prints the kept output (no markers).
Only the open segment grows, by plain appends; the metadata is rewritten when the shape changes
(a segment closes or is dropped, a gap, the end), not per chunk: after a restart the open segment's
length is its file's size. A file no metadata names (a crash between writing a compressed segment
and naming it) is deleted the next time the stream is written.

Why gzip level 1 on closed 1 MiB segments, the open segment raw, and an LRU of 64 write handles.
Figures from ``tests/bench/logstore.py --mib 32 --runs 3`` (64 KiB appends then close(), medians of
3 runs, on a shared 2-core VM whose page cache makes wall figures move by up to half between runs,
CPU-time ones a little less). Per kind: write MB/s (wall), write MB per CPU-second, bytes on disk /
bytes written, then reading it all back in 1 MiB slices, MB/s (warm page cache):

                     test-log text            repetitive text          random bytes
                     wall  cpu  disk    read  wall  cpu  disk    read  wall  cpu  disk    read
  raw                 476  590 1.0001   2369   390  535 1.0001   4124   424  546 1.0001   3195
  zlib-1               87   93 0.1787    307   176  192 0.0065   1243   256  318 1.0001   3743
  zlib-6               45   46 0.1220    378    86   93 0.0031   1033   299  344 1.0001   3092
  gzip-1 (chosen)      90   97 0.1787    317   148  176 0.0065   1128   234  277 1.0001   3264
  gzip-6               48   50 0.1220    364    95  102 0.0031    998   283  321 1.0001   3425
  lzma-0               21   21 0.1460     87    71   77 0.0004    415   200  229 1.0001   3189
  lzma-6                2    2 0.0969    106    23   27 0.0004    356   122  145 1.0001   3756
  gzip-1, no probe     91   96 0.1787    289   131  160 0.0065    984    25   28 1.0001   2948
  gzip members, 1     110  127 0.1882    198   412  559 0.0080    640    38   39 1.0006    328
  gzip members, 6      58   58 0.1388    260   165  165 0.0045    480    34   34 1.0006    333

- Deflate at level 1 keeps test-log text in 18 % of its size at ~90 MB/s. Level 6 saves another
  third of that (12 %) at half the write speed; lzma at preset 0 is slower and bigger than level 6,
  at preset 6 it reaches 10 % at 2 MB/s. One writer thread serves every agent at once and the queue
  in front of it drops chunks when it falls behind, so write speed wins over the last few percent.
- gzip rather than zlib: the same deflate (18 bytes and a CRC more, within the noise above), and a
  person can zcat the files.
- Per-chunk gzip members (no raw open segment) write text a little faster, but a read at an offset
  must inflate the file from its start, and incompressible output is compressed in full (38 MB/s).
- Random bytes: before a closed segment is compressed its first 4 KiB are, as a probe; when that
  saves under 10 % the segment stays raw, so random output takes no more disk than raw. The probe
  costs ~0.1 ms a segment against ~0.6 ms for the bare writes of its MiB (more through the store);
  across five runs gzip-1 wrote random bytes at 134-271 MB/s and raw at 148-424: noise of the same
  size. Without the probe: 25 MB/s. A whole compression that saves under 3 % is thrown away too.
  The benchmark's test-log text compresses to at most 0.32 in any 4 KiB probe.
- Handles: 64 streams written round-robin took 26 us a chunk with the LRU against 47 us opening
  and closing per chunk at 4 KiB (70 against 102 us at 64 KiB); with 256 streams, where the LRU
  thrashes, 50 against 46 us and 102 against 90 us: a loss within the noise. It holds at most 64
  descriptors. A new stream costs ~1.6 ms on that VM's disk (directories, a segment, the metadata).
- gzip.decompress of a closed 1 MiB segment costs ~4 ms; the last 4 decompressed segments are
  cached for followers reading one segment in small slices.

The choice lives in one place: ``DEFAULT_CODEC`` (and ``LogStore._max_handles`` for the handles).
Each segment's codec is written in the metadata, so a store keeps reading segments written under an
earlier choice.

Threads: append/close/remove/close_all run on one writer thread, read/tail/attempts/stats on others;
one lock guards everything, and reads are short (``limit`` caps them). One process writes a root
(the coordinator holds the home lock); what it caches in memory is the truth for its readers, and
other processes that look at the files see only whole metadata files (os.replace).

close() is due when an attempt ends whatever its outcome: until then its streams stay in memory.
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import io
import json
import lzma
import os
import re
import shutil
import tempfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["DEFAULT_CODEC", "MARKER", "STREAMS", "LogSlice", "LogStore"]

STREAMS = ("stdout", "stderr")

MARKER = ("\n[... {n} bytes of output dropped here by DTF: the log keeps the first and the last {half} "
          "of each stream (execution.max_log_bytes) ...]\n")
# A segment that cannot be read back (a disk that lost it) is skipped, said so, and not fatal.
_DAMAGED = "\n[... {n} bytes of output lost here by DTF: a damaged log file ({name}) ...]\n"

_MAX_TASK_ID = 200
_FORMAT = 1

# A probe this big decides whether a closed segment is worth compressing at all.
_PROBE_BYTES = 4 * 1024
_PROBE_KEEP = 0.90      # the probe must shrink below this fraction of its size...
_WHOLE_KEEP = 0.97      # ...and the whole segment below this one, or it stays raw

# Decompressed segments kept for followers reading one segment in many small slices.
_CACHE_SEGMENTS = 4
# Complete streams remembered in memory (reloaded from their metadata when forgotten).
_DONE_STATES = 4096

_META_RE = re.compile(r"^(\d+)\.(stdout|stderr)\.json$")


@dataclass(frozen=True)
class _Codec:
    name: str
    suffix: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _ident(b: bytes) -> bytes:
    return b


_CODECS: dict[str, _Codec] = {
    c.name: c
    for c in (
        _Codec("raw", "", _ident, _ident),
        _Codec("zlib-1", ".z", lambda b: zlib.compress(b, 1), zlib.decompress),
        _Codec("zlib-6", ".z", lambda b: zlib.compress(b, 6), zlib.decompress),
        _Codec("gzip-1", ".gz", lambda b: gzip.compress(b, 1, mtime=0), gzip.decompress),
        _Codec("gzip-6", ".gz", lambda b: gzip.compress(b, 6, mtime=0), gzip.decompress),
        _Codec("lzma-0", ".xz", lambda b: lzma.compress(b, preset=0), lzma.decompress),
        _Codec("lzma-6", ".xz", lambda b: lzma.compress(b, preset=6), lzma.decompress),
    )
}

# The one place the format is chosen (see the module docstring for the figures behind it).
DEFAULT_CODEC = "gzip-1"

_READ_ERRORS = (OSError, zlib.error, lzma.LZMAError, EOFError, KeyError, ValueError)


@dataclass(frozen=True)
class LogSlice:
    data: bytes          # bytes from the asked offset, a marker where output was dropped
    next_offset: int     # where the next read continues (original stream offsets)
    size: int            # bytes the task wrote to this stream so far (original offsets)
    dropped: int         # bytes dropped so far
    complete: bool       # the stream ended (eof seen, or close() called)
    attempt: int         # which attempt this is


@dataclass
class _Seg:
    seq: int
    start: int           # original offset of its first byte
    length: int
    head: bool
    codec: str = "raw"
    stored: int = 0      # bytes on disk

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class _State:
    task_id: str
    attempt: int
    stream: str
    dir: str
    segs: list[_Seg]
    received: int = 0
    head_end: int | None = None
    complete: bool = False
    next_seq: int = 0
    open: _Seg | None = None
    head_kept: int = 0
    tail_kept: int = 0
    meta_bytes: int = 0
    saved: bool = False      # its metadata exists on disk
    cleaned: bool = False

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.task_id, self.attempt, self.stream)

    @property
    def dropped(self) -> int:
        return self.received - self.head_kept - self.tail_kept

    @property
    def prefix(self) -> str:
        return f"{self.attempt}.{self.stream}."

    def seg_path(self, seg: _Seg, codec: str | None = None) -> str:
        suffix = _CODECS[codec or seg.codec].suffix
        return os.path.join(self.dir, f"{self.prefix}{seg.seq:06d}{suffix}")

    @property
    def meta_path(self) -> str:
        return os.path.join(self.dir, f"{self.prefix}json")


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    v = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        v /= 1024
        if v < 1024 or unit == "TiB":
            break
    return f"{v:.1f}".rstrip("0").rstrip(".") + f" {unit}"


def _check_task(task_id: str) -> None:
    if (not isinstance(task_id, str) or task_id in ("", ".", "..") or len(task_id) > _MAX_TASK_ID
            or "/" in task_id or "\\" in task_id or "\0" in task_id):
        raise ValueError(f"not a task id for a log: {task_id!r}")


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"not a log stream: {stream!r} (stdout or stderr)")


def _check_attempt(attempt: int) -> None:
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise ValueError(f"not an attempt number: {attempt!r}")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _tree_bytes(top: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class LogStore:
    """Bounded, compressed, restart-proof storage of task output; see the module docstring."""

    # Class attributes so that the benchmark can measure the alternatives on a subclass.
    _codec_name: ClassVar[str] = DEFAULT_CODEC
    _probe: ClassVar[bool] = True
    # Open handles kept for the most recently written segments (0: open, append, close per chunk).
    _max_handles: ClassVar[int] = 64

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 64 * 1024**2,
                 segment_bytes: int = 1024**2) -> None:
        if max_bytes < 2:
            raise ValueError("max_bytes must be at least 2")
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be at least 1")
        self._root = os.fspath(root)
        os.makedirs(self._root, exist_ok=True)
        self._half = max_bytes // 2
        # Segments are what the tail drops whole, so a segment larger than a fraction of the tail
        # would leave the tail far short of its budget after a drop: at most an eighth of it.
        self._seg_bytes = max(1, min(segment_bytes, self._half // 8))
        self._codec = _CODECS[self._codec_name]
        self._lock = threading.Lock()
        self._live: dict[tuple[str, int, str], _State] = {}
        self._done: OrderedDict[tuple[str, int, str], _State] = OrderedDict()
        self._handles: OrderedDict[str, io.FileIO] = OrderedDict()
        self._cache: OrderedDict[tuple[str, int, str, int], bytes] = OrderedDict()
        self._disk: int | None = None   # counted on the first stats(): walking a big root costs
        self._pending: list[tuple[str, int]] = []

    # ------------------------------------------------------------------ writer side

    def append(self, task_id: str, attempt: int, stream: str, offset: int, data: bytes,
               eof: bool = False) -> None:
        _check_task(task_id)
        _check_attempt(attempt)
        _check_stream(stream)
        if offset < 0:
            raise ValueError(f"negative log offset: {offset}")
        with self._lock:
            st = self._state(task_id, attempt, stream, create=True)
            assert st is not None
            self._prepare_write(st)
            if st.complete:
                return   # the attempt ended: a late or resent chunk has nowhere to go
            changed = not st.saved
            mv = memoryview(data).cast("B")
            if offset < st.received:
                mv = mv[min(len(mv), st.received - offset):]
                offset = st.received
            try:
                if offset > st.received:
                    # A gap: the bytes between count as dropped, and a segment never spans one.
                    self._close_open(st)
                    st.received = offset
                    changed = True
                while len(mv):
                    changed |= self._settle(st)
                    seg = st.open
                    if seg is None:
                        seg = _Seg(st.next_seq, st.received, 0, head=st.head_end is None)
                        st.next_seq += 1
                        st.segs.append(seg)
                        st.open = seg
                        changed = True
                    room = self._seg_bytes - seg.length
                    if seg.head:
                        room = min(room, self._half - st.head_kept)
                    n = self._write(st, seg, mv[:room])
                    seg.length += n
                    seg.stored += n
                    st.received += n
                    if seg.head:
                        st.head_kept += n
                    else:
                        st.tail_kept += n
                    mv = mv[n:]
                changed |= self._settle(st)
                if eof:
                    self._close_open(st)
                    st.complete = True
                    changed = True
            finally:
                if changed:
                    self._save(st)
                self._flush_pending()
            if st.complete:
                self._remember(st)

    def close(self, task_id: str, attempt: int) -> None:
        _check_task(task_id)
        _check_attempt(attempt)
        with self._lock:
            for stream in STREAMS:
                st = self._state(task_id, attempt, stream, create=True)
                assert st is not None
                self._prepare_write(st)
                if st.complete:
                    continue
                try:
                    self._close_open(st)
                    st.complete = True
                    self._save(st)
                finally:
                    self._flush_pending()
                self._remember(st)

    def remove(self, task_id: str) -> None:
        _check_task(task_id)
        with self._lock:
            tdir = self._task_dir(task_id)
            for states in (self._live, self._done):
                for key in [k for k in states if k[0] == task_id]:
                    del states[key]
            for path in [p for p in self._handles if os.path.dirname(p) == tdir]:
                self._handles.pop(path).close()
            for ckey in [k for k in self._cache if k[0] == task_id]:
                del self._cache[ckey]
            if self._disk is not None:
                self._disk -= _tree_bytes(tdir)
            shutil.rmtree(tdir, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(tdir))   # only when empty: other tasks share the bucket

    def close_all(self) -> None:
        # The metadata is already current except for the open segments' lengths, which a restart
        # takes from the files themselves; only the handles need closing.
        with self._lock:
            while self._handles:
                self._handles.popitem()[1].close()

    # ------------------------------------------------------------------ reader side

    def read(self, task_id: str, stream: str = "stdout", *, attempt: int | None = None,
             offset: int = 0, limit: int = 1024**2) -> LogSlice:
        _check_task(task_id)
        _check_stream(stream)
        if attempt is not None:
            _check_attempt(attempt)
        if offset < 0:
            raise ValueError(f"negative log offset: {offset}")
        with self._lock:
            known = self._attempts(task_id)
            if not known:
                return LogSlice(b"", 0, 0, 0, False, 0)
            if attempt is None:
                attempt = known[-1]
            st = self._state(task_id, attempt, stream, create=False)
            if st is None:
                return LogSlice(b"", offset, 0, 0, False, attempt)
            data, pos = self._read(st, offset, limit)
            return LogSlice(data, pos, st.received, st.dropped, st.complete, attempt)

    def tail(self, task_id: str, stream: str, nbytes: int, attempt: int | None = None) -> bytes:
        """The last ``nbytes`` of kept output (markers included where some was dropped among them)."""
        _check_task(task_id)
        _check_stream(stream)
        if attempt is not None:
            _check_attempt(attempt)
        if nbytes <= 0:
            return b""
        with self._lock:
            if attempt is None:
                known = self._attempts(task_id)
                if not known:
                    return b""
                attempt = known[-1]
            st = self._state(task_id, attempt, stream, create=False)
            if st is None or not st.segs:
                return b""
            # Walk back over kept bytes, not offsets: a dropped middle is not "output" to count.
            need = nbytes
            start = st.segs[0].start
            for seg in reversed(st.segs):
                if seg.length >= need:
                    start = seg.end - need
                    break
                need -= seg.length
            data, _ = self._read(st, start, nbytes)
            return data

    def attempts(self, task_id: str) -> list[int]:
        _check_task(task_id)
        with self._lock:
            return self._attempts(task_id)

    def stats(self) -> dict[str, int]:
        with self._lock:
            if self._disk is None:
                self._disk = _tree_bytes(self._root)
            return {"bytes_on_disk": self._disk, "streams_open": len(self._live),
                    "handles_open": len(self._handles)}

    # ------------------------------------------------------------------ internals (lock held)

    def _task_dir(self, task_id: str) -> str:
        return os.path.join(self._root, task_id[:2].replace(".", "_"), task_id)

    def _adjust(self, delta: int) -> None:
        if self._disk is not None:
            self._disk += delta

    def _attempts(self, task_id: str) -> list[int]:
        # Every stream's metadata is written by the call that creates it, so the directory is the index.
        try:
            names = os.listdir(self._task_dir(task_id))
        except OSError:
            return []
        return sorted({int(m.group(1)) for m in map(_META_RE.match, names) if m})

    def _state(self, task_id: str, attempt: int, stream: str, *, create: bool) -> _State | None:
        key = (task_id, attempt, stream)
        st = self._live.get(key)
        if st is not None:
            return st
        st = self._done.get(key)
        if st is not None:
            self._done.move_to_end(key)
            return st
        st = self._load(task_id, attempt, stream)
        if st is None:
            if not create:
                return None
            st = _State(task_id, attempt, stream, self._task_dir(task_id), [])
            os.makedirs(st.dir, exist_ok=True)
            # Its metadata is written at the end of the call that made it (attempts() lists by it).
        self._remember(st)
        return st

    def _remember(self, st: _State) -> None:
        if st.complete:
            self._live.pop(st.key, None)
            self._done[st.key] = st
            self._done.move_to_end(st.key)
            while len(self._done) > _DONE_STATES:
                self._done.popitem(last=False)
        else:
            self._live[st.key] = st

    def _load(self, task_id: str, attempt: int, stream: str) -> _State | None:
        st = _State(task_id, attempt, stream, self._task_dir(task_id), [])
        try:
            with open(st.meta_path, "rb") as f:
                blob = f.read()
            doc: dict[str, Any] = json.loads(blob)
            st.received = int(doc["received"])
            st.head_end = None if doc["head_end"] is None else int(doc["head_end"])
            st.complete = bool(doc["complete"])
            st.next_seq = int(doc["next_seq"])
            open_seq = doc.get("open")
            for s in doc["segments"]:
                seg = _Seg(int(s["seq"]), int(s["start"]), int(s["length"]), bool(s["head"]),
                           str(s["codec"]), int(s["stored"]))
                if seg.codec not in _CODECS:
                    seg.codec = "raw"   # unknown to this version: reads report it as damaged
                if seg.seq == open_seq and not st.complete:
                    # The open segment grows without metadata updates: its file says how long it is.
                    try:
                        seg.length = seg.stored = os.stat(st.seg_path(seg)).st_size
                    except FileNotFoundError:
                        seg.length = seg.stored = 0
                    if seg.length == 0:
                        continue
                    st.open = seg
                st.segs.append(seg)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None   # unreadable metadata: the stream starts afresh (its files are swept)
        st.meta_bytes = len(blob)
        st.saved = True
        st.segs.sort(key=lambda s: s.start)
        st.head_kept = sum(s.length for s in st.segs if s.head)
        st.tail_kept = sum(s.length for s in st.segs if not s.head)
        if st.segs:
            st.received = max(st.received, st.segs[-1].end)
        return st

    def _prepare_write(self, st: _State) -> None:
        """Before this process first writes a stream: sweep the files its metadata does not name."""
        if st.cleaned:
            return
        st.cleaned = True
        keep = {os.path.basename(st.seg_path(s)) for s in st.segs}
        keep.add(os.path.basename(st.meta_path))
        try:
            names = os.listdir(st.dir)
        except OSError:
            return
        for name in names:
            stale = ((name.startswith(st.prefix) and name not in keep)
                     or (name.startswith("." + st.prefix) and name.endswith(".tmp")))
            if stale:
                path = os.path.join(st.dir, name)
                with contextlib.suppress(OSError):
                    size = os.lstat(path).st_size
                    os.unlink(path)
                    self._adjust(-size)

    def _write(self, st: _State, seg: _Seg, piece: memoryview) -> int:
        path = st.seg_path(seg, "raw")
        f = self._handles.pop(path, None)
        if f is None:
            f = open(path, "ab", buffering=0)
        try:
            done = 0
            while done < len(piece):
                n = f.write(piece[done:])
                done += n or 0
        except OSError:
            # Leave the file as long as the state says, so offsets stay true; the caller hears why.
            with contextlib.suppress(OSError):
                f.truncate(seg.length)
            f.close()
            raise
        if self._max_handles > 0:
            self._handles[path] = f
            while len(self._handles) > self._max_handles:
                self._handles.popitem(last=False)[1].close()
        else:
            f.close()
        self._adjust(done)
        return done

    def _settle(self, st: _State) -> bool:
        """Close a full open segment, mark where the head ends, drop the oldest tail segments."""
        changed = False
        seg = st.open
        if seg is not None and (seg.length >= self._seg_bytes
                                or (seg.head and st.head_kept >= self._half)):
            self._close_open(st)
            changed = True
        if st.head_end is None and st.head_kept >= self._half:
            st.head_end = max((s.end for s in st.segs if s.head), default=st.received)
            changed = True
        while st.tail_kept > self._half:
            victim = next((s for s in st.segs if not s.head and s is not st.open), None)
            if victim is None:
                break
            st.segs.remove(victim)
            st.tail_kept -= victim.length
            self._cache.pop((st.task_id, st.attempt, st.stream, victim.seq), None)
            # Deleted after the metadata stops naming it (see _flush_pending).
            self._pending.append((st.seg_path(victim), victim.stored))
            changed = True
        return changed

    def _close_open(self, st: _State) -> None:
        seg = st.open
        if seg is None:
            return
        st.open = None
        raw_path = st.seg_path(seg, "raw")
        f = self._handles.pop(raw_path, None)
        if f is not None:
            f.close()
        codec = self._codec
        if codec.name == "raw":
            return
        try:
            with open(raw_path, "rb") as fr:
                if self._probe and seg.length > _PROBE_BYTES:
                    sample = fr.read(_PROBE_BYTES)
                    if len(codec.compress(sample)) > _PROBE_KEEP * len(sample):
                        return
                    fr.seek(0)
                raw = fr.read()
            packed = codec.compress(raw)
            if len(raw) != seg.length or len(packed) > _WHOLE_KEEP * len(raw):
                return
            with open(st.seg_path(seg, codec.name), "wb") as fw:
                fw.write(packed)
        except OSError:
            return   # the raw segment is still whole and named: keeping it raw loses nothing
        self._adjust(len(packed))
        self._pending.append((raw_path, seg.stored))
        seg.codec = codec.name
        seg.stored = len(packed)

    def _save(self, st: _State) -> None:
        gaps: list[list[int]] = []
        pos = 0
        for seg in st.segs:
            if seg.start > pos:
                gaps.append([pos, seg.start])
            pos = seg.end
        if st.received > pos:
            gaps.append([pos, st.received])
        doc = {
            "format": _FORMAT, "task_id": st.task_id, "attempt": st.attempt, "stream": st.stream,
            "received": st.received, "head_end": st.head_end, "complete": st.complete,
            "next_seq": st.next_seq, "open": None if st.open is None else st.open.seq,
            "segments": [{"seq": s.seq, "start": s.start, "length": s.length, "head": s.head,
                          "codec": s.codec, "stored": s.stored} for s in st.segs],
            # Derived from the segments (reads use those); here for people and tools.
            "dropped": gaps, "dropped_bytes": st.dropped,
        }
        blob = json.dumps(doc, separators=(",", ":")).encode()
        fd, tmp = tempfile.mkstemp(dir=st.dir, prefix="." + st.prefix, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, st.meta_path)
        except BaseException:
            _unlink(tmp)
            raise
        self._adjust(len(blob) - st.meta_bytes)
        st.meta_bytes = len(blob)
        st.saved = True

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for path, size in pending:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError:
                continue   # an undeletable file is swept as unnamed on a later write
            self._adjust(-size)

    def _read(self, st: _State, offset: int, limit: int) -> tuple[bytes, int]:
        out: list[bytes] = []
        pos = offset
        budget = max(0, limit)
        segs = st.segs
        i = bisect.bisect_right(segs, pos, key=lambda s: s.start) - 1
        if i < 0 or segs[i].end <= pos:
            i += 1
        while budget > 0 and pos < st.received:
            if i >= len(segs):
                # Dropped up to the end (a gap that a last, empty chunk announced).
                out.append(self._marker(st.received - pos))
                pos = st.received
                break
            seg = segs[i]
            if pos < seg.start:
                out.append(self._marker(seg.start - pos))
                pos = seg.start
            take = min(budget, seg.end - pos)
            piece = self._seg_data(st, seg, pos - seg.start, take)
            if piece is None:
                name = os.path.basename(st.seg_path(seg))
                out.append(_DAMAGED.format(n=seg.end - pos, name=name).encode())
                pos = seg.end
            else:
                out.append(piece)
                pos += take
                budget -= take
            if pos < seg.end:
                break
            i += 1
        return b"".join(out), pos

    def _marker(self, n: int) -> bytes:
        return MARKER.format(n=n, half=_human(self._half)).encode()

    def _seg_data(self, st: _State, seg: _Seg, lo: int, n: int) -> bytes | None:
        path = st.seg_path(seg)
        try:
            if seg.codec == "raw":
                with open(path, "rb") as f:
                    f.seek(lo)
                    b = f.read(n)
                return b if len(b) == n else None
            key = (st.task_id, st.attempt, st.stream, seg.seq)
            blob = self._cache.get(key)
            if blob is None:
                with open(path, "rb") as f:
                    blob = _CODECS[seg.codec].decompress(f.read())
                if len(blob) != seg.length:
                    return None
                self._cache[key] = blob
                while len(self._cache) > _CACHE_SEGMENTS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            return blob[lo:lo + n]
        except _READ_ERRORS:
            return None
