"""One coordinator per DTF home, and the database's backups, with real `dtf serve` processes.

A second `dtf serve` on a home in use stops at once naming the first (its pid and endpoints) and
leaves the first's coordinator.json and service alone; `dtf backup` copies the database of a
running coordinator; a damaged database stops `dtf serve` with the backup to restore; scheduled
backups appear and are pruned while the coordinator runs.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dtf_gui.coordinator.backup import auto_backups, backup_database, readonly_uri
from dtf_gui.coordinator.homelock import HomeLock, HomeLockError
from tests.helpers import ProcessTracker, Serve, cli, dtf_command, read_coordinator_json, wait_until

FREE_PORTS = ["--port", "0", "--agent-port", "0", "--events-port", "0", "--insecure", "--no-mdns"]


def quick_check(path: Path) -> str:
    conn = sqlite3.connect(readonly_uri(path), uri=True)  # a missing file is an error, not a new database
    try:
        return conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()


def task_ids_in(path: Path) -> set[str]:
    conn = sqlite3.connect(readonly_uri(path), uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT task_id FROM tasks")}
    finally:
        conn.close()


# -- in one process ----------------------------------------------------------------------------------


def test_a_second_lock_on_the_same_home_fails_at_once_and_is_free_again_after_release(dtf_home: Path):
    first = HomeLock(dtf_home, "dtf serve").acquire()
    first.write_info({"client_endpoint": "tcp://127.0.0.1:1234"})
    try:
        with pytest.raises(HomeLockError) as exc:
            HomeLock(dtf_home).acquire()
        assert f"pid {os.getpid()}" in str(exc.value)
        assert "dtf serve" in str(exc.value) and "tcp://127.0.0.1:1234" in str(exc.value)
        assert str(dtf_home) in str(exc.value)
        assert exc.value.owner["pid"] == os.getpid()
    finally:
        first.release()
    with HomeLock(dtf_home) as again:
        assert again.held
    assert (dtf_home / "coordinator.lock").read_bytes() == b"", "a released lock still names its owner"


def test_the_message_takes_the_endpoints_from_coordinator_json_when_the_lock_file_has_none(dtf_home: Path):
    lock = HomeLock(dtf_home).acquire()  # pid only, as between taking the lock and listening
    try:
        (dtf_home / "coordinator.json").write_text(
            f'{{"pid": {os.getpid()}, "client_endpoint": "tcp://127.0.0.1:8080"}}', encoding="utf-8")
        with pytest.raises(HomeLockError, match=r"pid \d+, clients tcp://127\.0\.0\.1:8080"):
            HomeLock(dtf_home).acquire()
        # A coordinator.json left by another (dead) process is not taken for the owner's.
        (dtf_home / "coordinator.json").write_text('{"pid": 1, "client_endpoint": "tcp://10.0.0.1:1"}',
                                                   encoding="utf-8")
        with pytest.raises(HomeLockError) as exc:
            HomeLock(dtf_home).acquire()
        assert "10.0.0.1" not in str(exc.value)
    finally:
        lock.release()


# -- with real processes --------------------------------------------------------------------------------


def test_a_second_serve_on_the_same_home_exits_at_once_naming_the_first_and_leaves_it_running(
        serve: Callable[..., Serve], procs: ProcessTracker, dtf_env: dict[str, str], dtf_home: Path):
    first = serve(None, "--no-mdns")
    published = read_coordinator_json(dtf_home)
    started = time.monotonic()
    second = procs.start("serve-2", dtf_command("dtf") + ["serve", *FREE_PORTS], dtf_env)
    code = second.wait(30)
    took = time.monotonic() - started
    log = procs.log("serve-2")
    assert code == 1, log
    assert f"pid {first.proc.pid}" in log and first.client_endpoint in log and str(dtf_home) in log, log
    assert "Traceback" not in log
    # It stopped before loading the coordinator (numpy, scipy: seconds): at the lock.
    assert took < 10, f"the second serve took {took:.1f} s to give up"
    assert read_coordinator_json(dtf_home) == published, "the second serve touched coordinator.json"
    out = cli(dtf_env, "status")
    assert out.returncode == 0, out.stderr
    assert first.info["coordinator_id"] in out.stdout


def test_the_home_is_free_again_once_serve_has_stopped(serve: Callable[..., Serve], procs: ProcessTracker,
                                                       dtf_home: Path):
    first = serve(None, "--no-mdns")
    assert procs.stop(first.proc, grace=15) == 0, procs.log("serve")
    assert read_coordinator_json(dtf_home) is None, "serve left its coordinator.json behind"
    second = serve(None, "--no-mdns")  # would raise if the home were still locked
    assert second.info["pid"] == second.proc.pid != first.proc.pid


def test_dtf_backup_copies_the_database_of_a_running_coordinator(serve: Callable[..., Serve],
                                                                dtf_env: dict[str, str], dtf_home: Path,
                                                                tmp_path: Path):
    s = serve(None, "--no-mdns")
    ids = set(s.call("create_tasks", {"tasks": [{"type": "noop"}] * 50})["task_ids"])

    def stored() -> bool:  # the coordinator writes in batches; the copy can only hold what is written
        with s.db() as conn:
            return ids <= {r[0] for r in conn.execute("SELECT task_id FROM tasks")}

    wait_until(stored, 15, message=s.tracker.logs)
    dest = tmp_path / "copy.sqlite"
    out = cli(dtf_env, "backup", str(dest))
    assert out.returncode == 0, out.stderr
    assert str(dest) in out.stdout and " MB" in out.stdout and out.stdout.rstrip().endswith(" s")
    assert quick_check(dest) == "ok"
    assert ids <= task_ids_in(dest)
    # Without a path: into the home's backups/, under the default name.
    out = cli(dtf_env, "backup")
    assert out.returncode == 0, out.stderr
    made = Path(out.stdout.split()[0])
    assert made.parent == dtf_home / "backups" and made.name.startswith("dtf-") and made.suffix == ".sqlite"
    assert ids <= task_ids_in(made)
    assert s.call("get_status")["coordinator_id"] == s.info["coordinator_id"]  # still serving


def test_serve_refuses_a_damaged_database_and_names_the_backup_to_restore(serve: Callable[..., Serve],
                                                                          procs: ProcessTracker,
                                                                          dtf_env: dict[str, str],
                                                                          dtf_home: Path):
    s = serve(None, "--no-mdns")
    s.call("create_task", {"type": "noop"})
    backup = backup_database(s.db_path, dtf_home / "backups" / "dtf-20240101-000000.sqlite").path
    assert procs.stop(s.proc, grace=15) == 0, procs.log("serve")
    with open(s.db_path, "r+b") as f:  # garbage over the header: "file is not a database"
        f.write(os.urandom(4096))
    out = cli(dtf_env, "serve", *FREE_PORTS)
    assert out.returncode == 1, out.stderr
    assert str(s.db_path) in out.stderr and f"cp {backup} {s.db_path}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert read_coordinator_json(dtf_home) is None
    # Restored as the message says, it starts again.
    os.replace(backup, s.db_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{s.db_path}{suffix}").unlink(missing_ok=True)
    serve(None, "--no-mdns")


def test_serve_makes_scheduled_backups_and_keeps_the_newest(serve: Callable[..., Serve], procs: ProcessTracker,
                                                            dtf_home: Path):
    s = serve("database:\n  backup_interval: 0.2\n  backups_kept: 2\n", "--no-mdns")
    directory = dtf_home / "backups"
    seen: set[str] = set()

    def several_made() -> bool:
        seen.update(p.name for p in auto_backups(directory))
        return len(seen) >= 4

    wait_until(several_made, 30, message=lambda: f"backups seen: {sorted(seen)}")
    # Stopped, so that nothing is pruned while we look: retention ran after the last backup.
    assert procs.stop(s.proc, grace=15) == 0, procs.log("serve")
    kept = auto_backups(directory)
    assert len(kept) == 2, kept
    assert all(quick_check(p) == "ok" for p in kept)
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
