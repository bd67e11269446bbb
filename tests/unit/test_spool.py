"""The agent's result spool: what is journalled comes back after a restart until it is
acknowledged; a torn last record is dropped, damage in the middle keeps what came before it; one
agent per spool."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from dtf_agent.protocol import ResultRecord
from dtf_agent.spool import JOURNAL, MAGIC, Spool, SpoolLocked, _records, default_spool_dir


def rec(n: int, *, attempt: int = 1, big: int = 0) -> ResultRecord:
    return ResultRecord(result_id=f"r{n}", task_id=f"t{n}", status="success", attempt=attempt,
                        start_time=1.5, end_time=2.5, metrics={"x": float(n)}, stdout_tail="o" * big)


def ids(spool: Spool) -> list[str]:
    return [r.result_id for r in spool.pending()]


def record_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of each record in the journal file."""
    return [(off, size) for off, size, _kind, _value in _records(path.read_bytes())]


def test_append_ack_and_replay_round_trip(tmp_path):
    with Spool(tmp_path) as s:
        s.append([rec(1), rec(2)])
        s.append([rec(3)])
        assert s.ack(["r2", "unknown"]) == 1
        assert ids(s) == ["r1", "r3"]
    with Spool(tmp_path) as s:
        assert s.pending() == [rec(1), rec(3)], "records come back whole, in the order written"
        assert s.ack(["r1", "r3"]) == 2
    with Spool(tmp_path) as s:
        assert s.pending() == []


def test_a_record_with_the_same_result_id_replaces_the_earlier_one(tmp_path):
    with Spool(tmp_path) as s:
        s.append([rec(1), rec(2)])
        s.append([msgspec.structs.replace(rec(1), attempt=3)])
    with Spool(tmp_path) as s:
        assert [(r.result_id, r.attempt) for r in s.pending()] == [("r1", 3), ("r2", 1)]


def _journal_with_a_last_record(directory: Path) -> tuple[bytes, int]:
    """A journal whose last record is r4, and the offset where r4 starts."""
    with Spool(directory) as s:
        s.append([rec(1), rec(2, big=300)])
        s.ack(["r1"])
        s.append([rec(3)])
        s.append([rec(4, big=50)])
    path = directory / JOURNAL
    last_offset, _size = record_offsets(path)[-1]
    return path.read_bytes(), last_offset


def test_a_torn_last_record_is_dropped_at_every_cut(tmp_path):
    data, last = _journal_with_a_last_record(tmp_path / "src")
    for cut in range(last, len(data)):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / JOURNAL).write_bytes(data[:cut])
        with Spool(d) as s:
            assert ids(s) == ["r2", "r3"], f"cut at {cut}"
        assert (d / JOURNAL).read_bytes() == data[:last], f"cut at {cut}: the file is truncated at the torn record"
        assert not list(d.glob(f"{JOURNAL}.damaged-*")), "a torn tail is not damage"
    # What is appended after the truncation reads back.
    d = tmp_path / f"cut{len(data) - 1}"
    with Spool(d) as s:
        s.append([rec(5)])
    with Spool(d) as s:
        assert ids(s) == ["r2", "r3", "r5"]


def test_a_last_record_with_a_bad_checksum_is_dropped(tmp_path):
    data, last = _journal_with_a_last_record(tmp_path)
    path = tmp_path / JOURNAL
    for garbage in (b"\0" * (len(data) - last - 8), b"\xff" * 3):
        # Its header survived; its body did not (zeros from a power loss, or scribbled bytes).
        path.write_bytes(data[:last + 8] + garbage + data[last + 8 + len(garbage):])
        with Spool(tmp_path) as s:
            assert ids(s) == ["r2", "r3"]
        assert path.read_bytes() == data[:last]


def test_damage_in_the_middle_keeps_what_came_before_and_sets_the_file_aside(tmp_path, caplog):
    with Spool(tmp_path) as s:
        s.append([rec(1)])
        s.append([rec(2)])
        s.append([rec(3)])
    path = tmp_path / JOURNAL
    offsets = record_offsets(path)
    damaged_at = offsets[1][0]
    data = bytearray(path.read_bytes())
    data[damaged_at + 12] ^= 0xFF  # a byte of r2's body: its checksum no longer matches
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="dtf_agent.spool"), Spool(tmp_path) as s:
        assert ids(s) == ["r1"]
        s.append([rec(5)])
    (aside,) = tmp_path.glob(f"{JOURNAL}.damaged-*")
    assert aside.read_bytes() == bytes(data), "the damaged file is kept as it was"
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(path) in warning and f"offset {damaged_at}" in warning and "checksum" in warning
    assert aside.name in warning
    with Spool(tmp_path) as s:
        assert ids(s) == ["r1", "r5"], "the new journal holds the records kept, and what came after"


def test_an_impossible_length_is_damage_not_a_torn_tail(tmp_path):
    with Spool(tmp_path) as s:
        s.append([rec(1), rec(2), rec(3)])
    path = tmp_path / JOURNAL
    data = bytearray(path.read_bytes())
    second = record_offsets(path)[1][0]
    data[second:second + 4] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with Spool(tmp_path) as s:
        assert ids(s) == ["r1"]
    assert list(tmp_path.glob(f"{JOURNAL}.damaged-*"))


def test_a_file_that_is_not_a_journal_is_set_aside(tmp_path):
    (tmp_path / JOURNAL).write_bytes(b"hello, not a journal")
    with Spool(tmp_path) as s:
        assert s.pending() == []
    assert (tmp_path / JOURNAL).read_bytes() == MAGIC
    assert list(tmp_path.glob(f"{JOURNAL}.damaged-*"))


def test_a_journal_cut_inside_its_magic_starts_fresh(tmp_path):
    (tmp_path / JOURNAL).write_bytes(MAGIC[:3])
    with Spool(tmp_path) as s:
        assert s.pending() == []
    assert not list(tmp_path.glob(f"{JOURNAL}.damaged-*"))


def test_compaction_keeps_exactly_the_live_records(tmp_path):
    path = tmp_path / JOURNAL
    with Spool(tmp_path, compact_min_bytes=2000) as s:
        for i in range(0, 200, 10):
            s.append([rec(n, big=20) for n in range(i, i + 10)])
        grown = path.stat().st_size
        s.ack([f"r{n}" for n in range(200) if n % 7])  # keep every 7th
        live = [f"r{n}" for n in range(200) if n % 7 == 0]
        assert ids(s) == live
        assert path.stat().st_size < grown / 3, "compacted once the dead share passed half"
        # The file holds exactly the live results, and nothing else.
        on_disk = [v.result_id for _o, _s, kind, v in _records(path.read_bytes()) if isinstance(v, ResultRecord)]
        assert on_disk == live
        assert not list(tmp_path.glob("*.tmp"))
        s.append([rec(500)])
    with Spool(tmp_path) as s:
        assert ids(s) == [*live, "r500"]


def test_small_dead_share_is_not_compacted(tmp_path):
    path = tmp_path / JOURNAL
    with Spool(tmp_path, compact_min_bytes=10_000) as s:
        s.append([rec(1), rec(2)])
        before = path.stat().st_size
        s.ack(["r1"])
        assert path.stat().st_size > before, "an ack is a record appended, not a rewrite"


def test_a_second_opener_is_refused_naming_the_holder(tmp_path):
    with Spool(tmp_path):
        with pytest.raises(SpoolLocked) as info:
            Spool(tmp_path)
        assert f"pid {os.getpid()}" in str(info.value) and str(tmp_path) in str(info.value)
    with Spool(tmp_path):
        pass  # released by close()


def test_another_process_is_refused_while_the_spool_is_held(tmp_path):
    script = textwrap.dedent(f"""
        from dtf_agent.spool import Spool, SpoolLocked
        try:
            Spool({str(tmp_path)!r})
        except SpoolLocked as exc:
            print(exc)
            raise SystemExit(3)
    """)
    with Spool(tmp_path):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 3, out.stderr
    assert f"pid {os.getpid()}" in out.stdout
    ok = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, "the lock goes with its holder"


def test_default_spool_dir_is_per_worker_under_the_dtf_home(tmp_path):
    assert default_spool_dir("lab-7.a", tmp_path) == tmp_path / "agent" / "lab-7.a" / "spool"
    odd = [default_spool_dir(w, tmp_path) for w in ("a/b", "a_b", "..", "a b")]
    assert len(set(odd)) == 4, "ids that read alike on disk still get spools of their own"
    for d in odd:
        assert d.parent.parent == tmp_path / "agent"
