"""Database backups: a consistent online copy while another connection keeps writing, a stop
that leaves nothing behind, retention of scheduled backups, the backup thread and its failures,
and the start-up check that names the backup to restore when the database is damaged."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtf_gui.coordinator.backup import (
    BackupCancelled,
    BackupError,
    Backups,
    auto_backups,
    backup_database,
    check_database,
    newest_backup,
    next_auto_name,
    prune_backups,
)
from tests.helpers import wait_until

PAD = "x" * 900  # about a row per page quarter: a few hundred pages, so a backup takes many steps


def make_db(path: Path, rows: int = 2000) -> None:
    """A WAL database like the coordinator's: ``items`` 1..rows and ``meta.n`` = rows, written
    together in each transaction, so any consistent snapshot has n == count == max(i)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (i INTEGER PRIMARY KEY, pad TEXT)")
    conn.execute("CREATE TABLE meta (n INTEGER)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, PAD) for i in range(1, rows + 1)))
    conn.execute("INSERT INTO meta VALUES (?)", (rows,))
    conn.execute("COMMIT")
    conn.close()


def snapshot(path: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(path)
    try:
        count, top = conn.execute("SELECT count(*), max(i) FROM items").fetchone()
        (n,) = conn.execute("SELECT n FROM meta").fetchone()
        return count, top, n
    finally:
        conn.close()


def quick_check(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()


class Writer:
    """Another connection committing one row (and the counter) per transaction, on a thread."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.commits = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.conn.execute("BEGIN IMMEDIATE")
                (n,) = self.conn.execute("SELECT n FROM meta").fetchone()
                self.conn.execute("INSERT INTO items VALUES (?, ?)", (n + 1, PAD))
                self.conn.execute("UPDATE meta SET n = ?", (n + 1,))
                self.conn.execute("COMMIT")
                self.commits += 1
        except sqlite3.Error as exc:  # reported by the test, not lost with the thread
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "dtf.sqlite"
    make_db(path)
    return path


@pytest.fixture
def writer(db: Path) -> Iterator[Writer]:
    w = Writer(db)
    try:
        yield w
    finally:
        w.stop()


def test_a_backup_taken_while_another_connection_writes_is_one_consistent_snapshot(db, writer, tmp_path):
    dest = tmp_path / "copy.sqlite"
    steps: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if not steps:
            # Between the first two steps, make sure the writer commits several times: the copy
            # must not restart, nor take rows from after its snapshot.
            seen = writer.commits
            wait_until(lambda: writer.commits >= seen + 20, 10, message=lambda: f"writer error {writer.error}")
        steps.append((done, total))

    result = backup_database(db, dest, progress=progress, step_pages=8)
    assert writer.error is None
    assert result.path == dest and result.size == dest.stat().st_size and result.pages > 100
    assert len(steps) > 10, "the copy was not made in steps"
    done = [d for d, _ in steps]
    assert done == sorted(done), f"the copy restarted: {done}"
    assert quick_check(dest) == "ok"
    count, top, n = snapshot(dest)
    assert count == top == n >= 2000, "the copy is not one prefix of the writes"
    writer.stop()
    assert snapshot(db)[0] > count, "the writer's later commits are in the source, not the copy"
    # One self-contained file: rollback journal, no -wal beside it.
    conn = sqlite3.connect(dest)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert not dest.with_name(dest.name + "-wal").exists()


def test_a_stopped_backup_leaves_neither_the_destination_nor_a_temporary_file(db, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stop = threading.Event()
    stop.set()
    with pytest.raises(BackupCancelled):
        backup_database(db, out / "copy.sqlite", cancel=stop, step_pages=8)
    assert list(out.iterdir()) == []


def test_a_missing_source_is_an_error_naming_it(tmp_path):
    with pytest.raises(BackupError, match="no database at"):
        backup_database(tmp_path / "absent.sqlite", tmp_path / "copy.sqlite")
    assert not (tmp_path / "copy.sqlite").exists()


def test_retention_keeps_exactly_the_newest_n_scheduled_backups_and_nothing_else_is_touched(db, tmp_path):
    directory = tmp_path / "backups"
    directory.mkdir()
    by_hand = directory / "dtf-20200101-000000.sqlite"  # `dtf backup`'s name: never pruned
    other = directory / "notes.txt"
    by_hand.write_bytes(b"")
    other.write_text("keep me")
    backups = Backups(db, directory, interval=3600, keep=3)
    made = [backups.backup_now().path for _ in range(5)]  # same second: -1, -2 ... keep them apart
    assert len(set(made)) == 5
    assert auto_backups(directory) == made[-3:]
    assert by_hand.exists() and other.exists()
    assert all(quick_check(p) == "ok" for p in made[-3:])


def test_prune_orders_by_the_time_in_the_name(tmp_path):
    names = ["dtf-auto-20240301-120000.sqlite", "dtf-auto-20240101-000000.sqlite",
             "dtf-auto-20240301-120000-1.sqlite", "dtf-auto-20231231-235959.sqlite",
             "dtf-auto-20240301-120000-10.sqlite", "dtf-auto-20240301-120000-2.sqlite"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    deleted = prune_backups(tmp_path, 3)
    assert sorted(p.name for p in deleted) == ["dtf-auto-20231231-235959.sqlite", "dtf-auto-20240101-000000.sqlite",
                                               "dtf-auto-20240301-120000.sqlite"]
    assert [p.name for p in auto_backups(tmp_path)] == ["dtf-auto-20240301-120000-1.sqlite",
                                                         "dtf-auto-20240301-120000-2.sqlite",
                                                         "dtf-auto-20240301-120000-10.sqlite"]


def test_the_backup_thread_makes_backups_keeps_n_and_stops_when_told(db, tmp_path):
    directory = tmp_path / "backups"
    backups = Backups(db, directory, interval=0.01, keep=2).start()
    try:
        wait_until(lambda: backups.made >= 4, 20, message=lambda: f"last error {backups.last_error}")
    finally:
        backups.stop()
    assert not any(t.name == "dtf-backups" for t in threading.enumerate())
    made = backups.made
    assert len(auto_backups(directory)) == 2
    assert backups.failures == 0
    assert backups.made == made, "a backup was made after stop()"
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_a_failing_backup_is_logged_and_counted_and_the_thread_lives_on(tmp_path, caplog):
    backups = Backups(tmp_path / "absent.sqlite", tmp_path / "backups", interval=0.01, keep=2)
    with caplog.at_level(logging.ERROR, logger="dtf_gui.coordinator.backup"):
        backups.start()
        try:
            wait_until(lambda: backups.failures >= 2, 20)
        finally:
            backups.stop()
    assert "no database at" in (backups.last_error or "")
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None, "the failure was logged without its traceback"


def test_interval_zero_starts_no_thread(db, tmp_path):
    backups = Backups(db, tmp_path / "backups", interval=0, keep=5).start()
    assert not backups.enabled
    assert not any(t.name == "dtf-backups" for t in threading.enumerate())
    backups.stop()
    assert not (tmp_path / "backups").exists()


# -- check_database -----------------------------------------------------------------------------------


def test_a_missing_or_sound_database_passes_the_check(db, tmp_path):
    assert check_database(tmp_path / "new.sqlite") is None
    assert check_database(db) is None


def test_a_database_with_uncheckpointed_wal_after_a_crash_passes_the_check(tmp_path):
    # The coordinator killed mid-run: its last commits are only in the -wal file; that is no damage.
    path = tmp_path / "crashed.sqlite"
    make_db(path, rows=10)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO items VALUES (11, 'x')")
    assert path.with_name(path.name + "-wal").stat().st_size > 0
    assert check_database(path) is None
    conn.close()


def two_backups(db: Path, directory: Path) -> Path:
    """An older and a newer backup of ``db`` (the newer by modification time); returns the newer."""
    older = backup_database(db, directory / "dtf-auto-20240101-000000.sqlite").path
    newer = backup_database(db, directory / "dtf-20230101-000000.sqlite").path  # by hand; named older
    os.utime(older, (1_700_000_000, 1_700_000_000))
    os.utime(newer, (1_700_000_100, 1_700_000_100))
    return newer


def checkpoint(db: Path) -> None:
    """Everything into the main file, as after a clean stop, so the damage below is in what is read."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def test_garbage_over_pages_of_the_database_is_reported_with_the_newest_backup_and_how_to_restore(db, tmp_path):
    directory = tmp_path / "backups"
    newer = two_backups(db, directory)
    assert newest_backup(directory) == newer
    checkpoint(db)
    page = 4096
    size = db.stat().st_size
    with open(db, "r+b") as f:  # every page but the first (the header stays: it is still "a database")
        f.seek(page)
        f.write(os.urandom(size - page))
    message = check_database(db, directory)
    assert message is not None
    assert str(db) in message and "damaged" in message
    assert f"cp {newer} {db}" in message
    assert f"{db}-wal" in message and f"{db}-shm" in message
    assert "stop DTF" in message


def test_garbage_over_the_first_page_is_reported_the_same_way(db, tmp_path):
    directory = tmp_path / "backups"
    newer = two_backups(db, directory)
    checkpoint(db)
    with open(db, "r+b") as f:
        f.write(os.urandom(4096))
    message = check_database(db, directory)
    assert message is not None and "not a database" in message
    assert f"cp {newer} {db}" in message


def test_a_damaged_database_without_backups_says_so(db, tmp_path):
    checkpoint(db)
    with open(db, "r+b") as f:
        f.write(b"garbage" * 1000)
    message = check_database(db, tmp_path / "no-backups")
    assert message is not None and "no backup found" in message


def test_the_next_scheduled_name_sorts_after_every_existing_one(tmp_path):
    t = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    assert next_auto_name(tmp_path, t).name == "dtf-auto-20231114-221320.sqlite"
    (tmp_path / "dtf-auto-20231114-221320-4.sqlite").write_bytes(b"")  # -0 .. -3 already pruned
    assert next_auto_name(tmp_path, t).name == "dtf-auto-20231114-221320-5.sqlite"
    # The clock went back an hour: still after the newest, or retention would delete it first.
    assert next_auto_name(tmp_path, t - 3600).name == "dtf-auto-20231114-221320-5.sqlite"
    assert next_auto_name(tmp_path, t + 1).name == "dtf-auto-20231114-221321.sqlite"
