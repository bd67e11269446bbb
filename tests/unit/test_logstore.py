"""LogStore: bounded head + tail per task stream, original offsets, restarts, compression at rest."""

from __future__ import annotations

import json
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dtf_gui.coordinator.logstore import MARKER, LogSlice, LogStore

KiB = 1024
MiB = 1024 * 1024

_MARK_RE = re.compile(
    re.escape(MARKER).replace(re.escape("{n}"), r"(\d+)").replace(re.escape("{half}"), r"[^\]]+?").encode()
    + rb"|\n\[\.\.\. (\d+) bytes of output lost here[^\]]*\]\n"
)


def text(n: int, seed: int = 0) -> bytes:
    """Test-log-like lines, each unique (a counter), so an offset error cannot go unnoticed."""
    rng = random.Random(seed)
    words = ["PASSED", "FAILED", "collected", "warning:", "tests/unit/test_x.py::test_y", "assert", "0x7f3a"]
    out = bytearray()
    i = 0
    while len(out) < n:
        out += f"{i:08d} {rng.choice(words)} {rng.randrange(10**6)} {' '.join(rng.sample(words, 3))}\n".encode()
        i += 1
    return bytes(out[:n])


def pieces(data: bytes, offset: int) -> tuple[list[tuple[int, bytes]], list[tuple[int, int]]]:
    """Split a read into (offset, kept bytes) runs and (offset, n) markers, replaying the offsets."""
    runs: list[tuple[int, bytes]] = []
    marks: list[tuple[int, int]] = []
    pos = offset
    last = 0
    for m in _MARK_RE.finditer(data):
        if m.start() > last:
            runs.append((pos, data[last:m.start()]))
            pos += m.start() - last
        n = int(m.group(1) or m.group(2))
        marks.append((pos, n))
        pos += n
        last = m.end()
    if last < len(data):
        runs.append((pos, data[last:]))
        pos += len(data) - last
    return runs, marks


def read_all(store: LogStore, task: str, stream: str = "stdout", limit: int = 100 * MiB, **kw: int) -> LogSlice:
    return store.read(task, stream, limit=limit, **kw)


def feed(store: LogStore, task: str, src: bytes, chunk: int, *, attempt: int = 1, stream: str = "stdout",
         eof: bool = True) -> None:
    for off in range(0, len(src), chunk):
        store.append(task, attempt, stream, off, src[off:off + chunk])
    if eof:
        store.append(task, attempt, stream, len(src), b"", eof=True)


_PACKED_RE = re.compile(r"^\d+\.std(out|err)\.\d{6}\.\w+$")   # a segment with a codec suffix


def packed(root: Path, task: str = "") -> list[Path]:
    return sorted(p for p in root.rglob("*") if _PACKED_RE.match(p.name) and task in p.parent.name)


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- round trips and bounding


def test_head_only_round_trip(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    src = text(300 * KiB)
    feed(store, "t1", src, 7000, eof=False)
    s = read_all(store, "t1")
    assert (s.data, s.next_offset, s.size, s.dropped, s.complete, s.attempt) == (src, len(src), len(src), 0, False, 1)
    store.append("t1", 1, "stdout", len(src), b"", eof=True)
    s = read_all(store, "t1")
    assert s.data == src and s.complete
    # Reading in small slices gives the same bytes.
    got, off = b"", 0
    while off < len(src):
        part = store.read("t1", offset=off, limit=4096)
        got, off = got + part.data, part.next_offset
    assert got == src


def test_head_and_tail_with_exactly_one_marker(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    src = text(200 * KiB)
    feed(store, "t1", src, 3000)
    s = read_all(store, "t1")
    runs, marks = pieces(s.data, 0)
    assert len(marks) == 1 and len(runs) == 2
    (h_off, head), (t_off, tail) = runs
    assert h_off == 0 and head == src[:32 * KiB]
    assert t_off + len(tail) == len(src) and tail == src[t_off:]
    assert 28 * KiB < len(tail) <= 32 * KiB
    assert marks[0] == (32 * KiB, t_off - 32 * KiB)
    assert s.dropped == t_off - 32 * KiB and s.size == len(src) and s.next_offset == len(src)


def test_ten_mb_in_64k_chunks_keeps_first_and_last_half_mib(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=1 * MiB)
    src = text(10_000_000, seed=3)
    feed(store, "big", src, 64 * KiB)
    s = read_all(store, "big")
    runs, marks = pieces(s.data, 0)
    assert len(marks) == 1 and len(runs) == 2
    assert runs[0] == (0, src[:512 * KiB])
    t_off, tail = runs[1]
    assert tail == src[t_off:] and t_off + len(tail) == len(src)
    assert 448 * KiB <= len(tail) <= 512 * KiB
    dropped = len(src) - 512 * KiB - len(tail)
    assert s.dropped == dropped
    assert f"\n[... {dropped} bytes of output dropped here".encode() in s.data
    assert b"512 KiB" in s.data
    assert disk_bytes(tmp_path) < 1 * MiB   # bounded, and compressed


def test_chunk_larger_than_segments_and_crossing_the_head_end(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=256 * KiB, segment_bytes=8 * KiB)
    src = text(3 * MiB + 123)
    feed(store, "t1", src, 1 * MiB)
    runs, marks = pieces(read_all(store, "t1").data, 0)
    assert runs[0] == (0, src[:128 * KiB]) and len(marks) == 1
    assert runs[1][1] == src[runs[1][0]:]


# ---------------------------------------------------------------- followers


def _follow_check(src: bytes, seen: list[tuple[int, bytes]], marks: list[tuple[int, int]], end: int) -> set[int]:
    """Every run matches the source at its offset, no offset twice, a marker at every jump."""
    covered: set[int] = set()
    events = sorted([(o, len(b), "run") for o, b in seen] + [(o, n, "mark") for o, n in marks])
    pos = 0
    prev_kind = ""
    for o, n, kind in events:
        assert o == pos, "offsets must follow on: no byte twice, no silent skip"
        assert not (kind == "mark" and prev_kind == "mark"), "one marker per dropped region"
        pos, prev_kind = o + n, kind
    assert pos == end
    for o, b in seen:
        assert b == src[o:o + len(b)]
        covered.update(range(o, o + len(b)))
    return covered


def _kept_offsets(store: LogStore, task: str) -> set[int]:
    runs, _ = pieces(read_all(store, task).data, 0)
    return {i for o, b in runs for i in range(o, o + len(b))}


def test_slow_follower_sees_each_kept_byte_once_while_the_tail_rolls(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=32 * KiB, segment_bytes=2 * KiB)
    src = text(400 * KiB, seed=5)
    seen: list[tuple[int, bytes]] = []
    marks: list[tuple[int, int]] = []
    off = 0
    chunk = 1000
    for i, pos in enumerate(range(0, len(src), chunk)):
        store.append("f", 1, "stdout", pos, src[pos:pos + chunk])
        # Slower than the writer for a while (its place gets dropped under it), then faster.
        s = store.read("f", offset=off, limit=300 if i < 250 else 5000)
        r, m = pieces(s.data, off)
        seen += r
        marks += m
        off = s.next_offset
    store.close("f", 1)
    while True:
        s = store.read("f", offset=off, limit=777)
        r, m = pieces(s.data, off)
        seen += r
        marks += m
        off = s.next_offset
        if s.complete and off == s.size:
            break
    covered = _follow_check(src, seen, marks, len(src))
    assert _kept_offsets(store, "f") <= covered
    # It fell behind inside the tail: a region was dropped under it, not only the first one.
    assert len(marks) >= 2 and any(o > 16 * KiB for o, _ in marks)


def test_follower_that_keeps_up_sees_everything_and_no_marker(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=32 * KiB, segment_bytes=2 * KiB)
    src = text(200 * KiB, seed=6)
    got = bytearray()
    off = 0
    for pos in range(0, len(src), 1500):
        store.append("f", 1, "stdout", pos, src[pos:pos + 1500])
        s = store.read("f", offset=off)
        got += s.data
        off = s.next_offset
    assert bytes(got) == src
    assert store.read("f").dropped > 0


def test_late_reader_in_small_slices_sees_one_marker(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=32 * KiB, segment_bytes=2 * KiB)
    src = text(200 * KiB, seed=7)
    feed(store, "f", src, 4096)
    seen, marks, off = [], [], 0
    while off < len(src):
        s = store.read("f", offset=off, limit=1000)
        r, m = pieces(s.data, off)
        seen += r
        marks += m
        off = s.next_offset
    assert len(marks) == 1
    assert _follow_check(src, seen, marks, len(src)) == _kept_offsets(store, "f")


def test_follower_thread_against_writer_thread(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    src = text(512 * KiB, seed=8)
    seen: list[tuple[int, bytes]] = []
    marks: list[tuple[int, int]] = []

    def follow() -> None:
        off = 0
        while True:
            s = store.read("t", offset=off, limit=2000)
            r, m = pieces(s.data, off)
            seen.extend(r)
            marks.extend(m)
            off = s.next_offset
            if s.complete and off == s.size:
                return

    store.append("t", 1, "stdout", 0, b"")   # the task exists before the follower starts
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(follow)
        feed(store, "t", src, 3000)
        reader.result(timeout=60)   # re-raises what went wrong in the follower
    assert _kept_offsets(store, "t") <= _follow_check(src, seen, marks, len(src))


def test_metadata_is_never_seen_half_written(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=16 * KiB, segment_bytes=512)
    store.append("m1", 1, "stdout", 0, b"x")
    meta = next(tmp_path.rglob("1.stdout.json"))
    done = threading.Event()
    bad: list[str] = []
    reads = 0

    def writer() -> None:
        src = text(150 * KiB)
        for pos in range(1, len(src), 700):
            store.append("m1", 1, "stdout", pos, src[pos:pos + 700])
        done.set()

    w = threading.Thread(target=writer)
    w.start()
    while not done.is_set() or reads == 0:
        blob = meta.read_bytes()
        reads += 1
        try:
            json.loads(blob)
        except ValueError:
            bad.append(blob[:80].decode(errors="replace"))
    w.join()
    assert not bad and reads > 0


# ---------------------------------------------------------------- offsets: gaps, resends, order


def test_gaps_show_as_markers(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("g", 1, "stdout", 5, b"abc")        # the first 5 bytes never came
    store.append("g", 1, "stdout", 20, b"xyz")       # nor 8..20
    s = read_all(store, "g")
    runs, marks = pieces(s.data, 0)
    assert marks == [(0, 5), (8, 12)] and runs == [(5, b"abc"), (20, b"xyz")]
    assert (s.size, s.dropped, s.next_offset) == (23, 17, 23)
    # Inside a gap: the marker counts what this reader misses, then the data.
    s = store.read("g", offset=10)
    assert pieces(s.data, 10) == ([(20, b"xyz")], [(10, 10)])
    # A last empty chunk further on: dropped up to there, and the stream ends.
    store.append("g", 1, "stdout", 30, b"", eof=True)
    s = store.read("g", offset=23)
    assert pieces(s.data, 23) == ([], [(23, 7)]) and s.next_offset == 30 and s.complete and s.dropped == 24


def test_resent_and_overlapping_chunks_are_trimmed(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=4 * KiB, segment_bytes=256)
    src = text(20 * KiB)
    for a, b in [(0, 100), (50, 150), (0, 100), (150, 3000), (2000, 2500), (3000, 20 * KiB), (100, 200)]:
        store.append("r", 1, "stdout", a, src[a:b])
    s = read_all(store, "r")
    runs, marks = pieces(s.data, 0)
    assert s.size == len(src) and len(marks) == 1
    for o, b in runs:
        assert b == src[o:o + len(b)]


def test_older_data_after_a_gap_is_ignored(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("o", 1, "stderr", 0, b"0123456789")
    store.append("o", 1, "stderr", 20, b"KLMNOPQRST")
    store.append("o", 1, "stderr", 10, b"abcdefghij")   # late: its place is already a gap
    s = read_all(store, "o", "stderr")
    assert pieces(s.data, 0) == ([(0, b"0123456789"), (20, b"KLMNOPQRST")], [(10, 10)])
    assert s.dropped == 10


# ---------------------------------------------------------------- restart


def test_a_new_store_reads_what_an_earlier_one_wrote_and_appends_on(tmp_path: Path) -> None:
    src = text(300 * KiB, seed=9)
    a = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    feed(a, "r1", src[:200 * KiB], 3333, eof=False)
    feed(a, "r1", src[:10 * KiB], 999, stream="stderr")   # complete
    feed(a, "r1", b"second attempt\n", 5, attempt=2, eof=False)
    before = read_all(a, "r1", attempt=1)
    a.close_all()

    b = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    assert b.attempts("r1") == [1, 2]
    assert read_all(b, "r1", attempt=1) == before
    assert read_all(b, "r1", "stderr", attempt=1) == LogSlice(src[:10 * KiB], 10 * KiB, 10 * KiB, 0, True, 1)
    assert read_all(b, "r1").data == b"second attempt\n"
    # The interrupted stream keeps taking chunks where it stopped.
    for pos in range(200 * KiB, len(src), 3333):
        b.append("r1", 1, "stdout", pos, src[pos:pos + 3333])
    b.close("r1", 1)
    s = read_all(b, "r1", attempt=1)
    runs, marks = pieces(s.data, 0)
    assert s.complete and s.size == len(src) and len(marks) == 1
    assert runs[0] == (0, src[:32 * KiB]) and runs[1][1] == src[runs[1][0]:]

    c = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    assert read_all(c, "r1", attempt=1) == s


def test_restart_takes_the_open_segment_length_from_its_file(tmp_path: Path) -> None:
    a = LogStore(tmp_path)
    a.append("o", 1, "stdout", 0, b"hello ")
    a.append("o", 1, "stdout", 6, b"world")   # no metadata write for a plain append
    b = LogStore(tmp_path)
    assert read_all(b, "o").data == b"hello world"
    b.append("o", 1, "stdout", 6, b"world!!")  # a resend overlapping what survived
    assert read_all(b, "o").data == b"hello world!!"


def test_unnamed_files_are_swept_on_the_next_write(tmp_path: Path) -> None:
    a = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    feed(a, "s", text(20 * KiB), 1000, eof=False)
    tdir = next(tmp_path.rglob("1.stdout.json")).parent
    (tdir / "1.stdout.999999.gz").write_bytes(b"left by a crash")
    (tdir / ".1.stdout.abc.tmp").write_bytes(b"{")
    (tdir / "other.txt").write_bytes(b"not ours")
    b = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    assert read_all(b, "s").data == text(20 * KiB)
    assert (tdir / "1.stdout.999999.gz").exists()   # a reader leaves files alone
    b.append("s", 1, "stdout", 20 * KiB, b"more")
    assert not (tdir / "1.stdout.999999.gz").exists() and not (tdir / ".1.stdout.abc.tmp").exists()
    assert (tdir / "other.txt").exists()
    assert read_all(b, "s").data == text(20 * KiB) + b"more"


def test_a_damaged_segment_is_reported_not_fatal(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    src = text(16 * KiB)
    feed(store, "d", src, 1000)
    victim = packed(tmp_path)[1]
    victim.write_bytes(b"garbage")
    fresh = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    s = read_all(fresh, "d")
    runs, marks = pieces(s.data, 0)
    assert f"damaged log file ({victim.name})".encode() in s.data
    assert marks == [(4 * KiB, 4 * KiB)] and s.next_offset == len(src)
    assert runs == [(0, src[:4 * KiB]), (8 * KiB, src[8 * KiB:])]


# ---------------------------------------------------------------- compression


def test_compression_shrinks_text_and_keeps_random_raw(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "a")
    src = text(3 * MiB)
    feed(store, "txt", src, 64 * KiB)
    assert store.stats()["bytes_on_disk"] < len(src) // 3
    assert packed(tmp_path / "a", "txt")
    noise = random.Random(1).randbytes(3 * MiB)
    feed(store, "rnd", noise, 64 * KiB)
    rnd_files = [p for p in (tmp_path / "a").rglob("*") if p.is_file() and "rnd" in str(p)]
    assert sum(p.stat().st_size for p in rnd_files) < len(noise) + 4 * KiB   # raw segments + metadata
    assert not packed(tmp_path / "a", "rnd")
    assert read_all(store, "txt").data == src and read_all(store, "rnd").data == noise


def test_close_compresses_the_open_segment_and_completes_both_streams(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    src = text(200 * KiB)
    store.append("c", 3, "stdout", 0, src)
    assert not packed(tmp_path)
    store.close("c", 3)
    assert [p.name.split(".")[:3] for p in packed(tmp_path)] == [["3", "stdout", "000000"]]
    assert read_all(store, "c") == LogSlice(src, len(src), len(src), 0, True, 3)
    assert read_all(store, "c", "stderr") == LogSlice(b"", 0, 0, 0, True, 3)
    store.append("c", 3, "stdout", len(src), b"too late")   # the attempt ended
    assert read_all(store, "c").size == len(src)
    assert store.stats()["streams_open"] == 0


# ---------------------------------------------------------------- ids, tail, attempts, remove, stats


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "/abs", "a\\b", "a\0b", "x" * 201])
def test_bad_task_ids_are_refused(tmp_path: Path, bad: str) -> None:
    store = LogStore(tmp_path / "logs")
    with pytest.raises(ValueError):
        store.append(bad, 1, "stdout", 0, b"x")
    with pytest.raises(ValueError):
        store.read(bad)
    with pytest.raises(ValueError):
        store.remove(bad)
    with pytest.raises(ValueError):
        store.attempts(bad)
    assert not any((tmp_path / "logs").iterdir())


def test_bad_streams_attempts_offsets_are_refused(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    with pytest.raises(ValueError):
        store.append("t", 1, "stdin", 0, b"x")
    with pytest.raises(ValueError):
        store.read("t", "both")
    with pytest.raises(ValueError):
        store.append("t", -1, "stdout", 0, b"x")
    with pytest.raises(ValueError):
        store.append("t", 1, "stdout", -5, b"x")


def test_dotted_ids_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    store = LogStore(root)
    for tid in ("..x", ".a", "a.."):
        store.append(tid, 1, "stdout", 0, tid.encode())
        assert read_all(store, tid).data == tid.encode()
    assert not (tmp_path / "x").exists() and not (tmp_path / "a").exists()
    assert all(root in p.parents for p in root.rglob("*"))


def test_tail(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    src = text(100 * KiB)
    feed(store, "t", src, 5000, stream="stderr")
    assert store.tail("t", "stderr", 100) == src[-100:]
    assert store.tail("t", "stderr", 10 * KiB) == src[-10 * KiB:]
    whole = store.tail("t", "stderr", 10 * MiB)
    assert whole == read_all(store, "t", "stderr").data
    (_, head), (t_off, kept_tail) = pieces(whole, 0)[0]
    near = store.tail("t", "stderr", 33 * KiB)   # reaches back over the dropped middle into the head
    start = len(head) - (33 * KiB - len(kept_tail))
    assert pieces(near, start) == ([(start, src[start:len(head)]), (t_off, kept_tail)],
                                   [(len(head), t_off - len(head))])
    assert store.tail("t", "stdout", 100) == b"" and store.tail("nope", "stderr", 100) == b""
    assert store.tail("t", "stderr", 0) == b""


def test_attempts_and_latest(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    assert store.attempts("a") == []
    assert store.read("a") == LogSlice(b"", 0, 0, 0, False, 0)
    assert store.read("a", attempt=4, offset=9) == LogSlice(b"", 0, 0, 0, False, 0)
    for attempt in (2, 10, 1):
        store.append("a", attempt, "stdout", 0, f"attempt {attempt}".encode())
    store.append("a", 11, "stderr", 0, b"only stderr")
    assert store.attempts("a") == [1, 2, 10, 11]
    assert store.read("a", "stderr").data == b"only stderr"
    latest = store.read("a", offset=3)
    assert (latest.data, latest.attempt, latest.next_offset) == (b"", 11, 3)
    assert store.read("a", attempt=10).data == b"attempt 10"
    assert store.read("a", attempt=7) == LogSlice(b"", 0, 0, 0, False, 7)


def test_remove(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("ab1", 1, "stdout", 0, text(10 * KiB))
    store.append("ab2", 1, "stdout", 0, b"neighbour")
    store.close("ab1", 1)
    before = store.stats()["bytes_on_disk"]
    store.remove("ab1")
    assert store.attempts("ab1") == [] and store.read("ab1") == LogSlice(b"", 0, 0, 0, False, 0)
    assert not (tmp_path / "ab" / "ab1").exists() and (tmp_path / "ab" / "ab2").exists()
    assert store.stats()["bytes_on_disk"] < before
    store.remove("ab2")
    assert not (tmp_path / "ab").exists()
    store.remove("never-there")
    store.append("ab1", 1, "stdout", 0, b"new life")   # the id may come back
    assert read_all(store, "ab1").data == b"new life"


def test_stats_track_the_disk(tmp_path: Path) -> None:
    LogStore(tmp_path).append("old", 1, "stdout", 0, b"from before")
    store = LogStore(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    assert store.stats()["bytes_on_disk"] == disk_bytes(tmp_path)
    feed(store, "s1", text(300 * KiB), 3000)
    feed(store, "s2", text(50 * KiB), 3000, eof=False)
    store.append("s1", 2, "stderr", 0, b"e")
    store.remove("old")
    st = store.stats()
    assert st["bytes_on_disk"] == disk_bytes(tmp_path)
    assert st["streams_open"] == 2   # s2's stdout and s1's attempt 2 stderr; s1's stdout ended


class _Lru(LogStore):
    _max_handles = 2


class _NoHandles(LogStore):
    _max_handles = 0


@pytest.mark.parametrize("cls", [_Lru, _NoHandles])
def test_handle_policies_bound_open_files(tmp_path: Path, cls: type[LogStore]) -> None:
    store = cls(tmp_path, max_bytes=64 * KiB, segment_bytes=4 * KiB)
    srcs = {f"h{i}": text(30 * KiB, seed=i) for i in range(5)}
    for pos in range(0, 30 * KiB, 1000):
        for tid, src in srcs.items():
            store.append(tid, 1, "stdout", pos, src[pos:pos + 1000])
            assert store.stats()["handles_open"] <= 2
    store.remove("h0")
    store.close_all()
    assert store.stats()["handles_open"] == 0
    for tid, src in srcs.items():
        assert read_all(store, tid).data == (b"" if tid == "h0" else src)
