"""dtf_agent/logsetup.py: JSON lines with the task and worker ids, the rotated file under
$DTF_HOME/logs/, when there is no file, and the coordinator's task logs in the same directory."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtf_agent import logsetup
from dtf_gui.coordinator.outputs import LogWriter


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    level = logging.getLogger().level
    try:
        yield
    finally:
        logsetup.reset()
        logging.getLogger().setLevel(level)


def parse(argv: list[str], env: dict[str, str] | None = None) -> logsetup.LogOptions:
    ap = argparse.ArgumentParser()
    logsetup.add_log_args(ap, env=env or {})
    return logsetup.options_from_args(ap.parse_args(argv), env=env or {})


def json_lines(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert lines, "no log lines at all"
    return [json.loads(line) for line in lines]


# ------------------------------------------------------------------------------ the JSON lines


def test_a_json_line_has_the_fields_and_the_ids_a_record_carries() -> None:
    out = io.StringIO()
    logsetup.configure("dtf-serve", logsetup.LogOptions(format="json"), stream=out)
    log = logging.getLogger("dtf_gui.coordinator.server")
    log.info("task %s assigned to %s", "T-1", "w1", extra={"task_id": "T-1", "worker_id": "w1", "attempt": 2})
    log.warning("two\nlines, and \u00e9")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second, third = json_lines(out.getvalue())
    assert set(first) == {"time", "level", "logger", "message", "program", "pid", "task_id", "worker_id", "attempt"}
    assert (first["level"], first["logger"], first["message"]) == ("INFO", "dtf_gui.coordinator.server",
                                                                  "task T-1 assigned to w1")
    assert (first["task_id"], first["worker_id"], first["attempt"], first["program"]) == ("T-1", "w1", 2, "dtf-serve")
    assert first["pid"] == os.getpid()
    stamp = str(first["time"])
    assert stamp.endswith("Z") and abs(time.time() - _epoch(stamp)) < 60
    # One record, one line, whatever its message holds; ASCII, so any stderr encoding keeps it JSON.
    assert second["message"] == "two\nlines, and \u00e9" and "task_id" not in second
    assert out.getvalue().isascii()
    assert "ValueError: boom" in str(third["exception"]) and third["level"] == "ERROR"


def _epoch(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_the_agent_stamps_its_worker_id_on_every_record_unless_one_names_another() -> None:
    out = io.StringIO()
    logsetup.configure("dtf-agent", logsetup.LogOptions(format="json"), stream=out)
    logging.getLogger("dtf_agent.enroll").info("before the worker id is known")
    logsetup.set_context(worker_id="bench-7")
    logging.getLogger("dtf_agent.agent").info("running", extra={"task_id": "T-9"})
    logging.getLogger("some.library").debug("not shown at INFO")
    logging.getLogger("zmq.somewhere").warning("a library's record")
    logging.getLogger("dtf_agent.agent").info("about another", extra={"worker_id": "other"})
    lines = json_lines(out.getvalue())
    assert [(d["message"], d.get("worker_id"), d.get("task_id")) for d in lines] == [
        ("before the worker id is known", None, None),
        ("running", "bench-7", "T-9"),
        ("a library's record", "bench-7", None),
        ("about another", "other", None),
    ]


def test_text_keeps_the_format_people_and_tests_read() -> None:
    out = io.StringIO()
    logsetup.configure("dtf-agent", logsetup.LogOptions(), stream=out)
    logging.getLogger("dtf_agent").info("hello %d", 3)
    assert out.getvalue().rstrip("\n").split(" ", 2)[2] == "dtf-agent INFO hello 3"


def test_configure_twice_leaves_one_handler() -> None:
    out = io.StringIO()
    for _ in range(3):
        logsetup.configure("dtf-agent", logsetup.LogOptions(format="json"), stream=out)
    logging.getLogger("x").warning("once")
    assert len(out.getvalue().splitlines()) == 1


def test_an_uncaught_exception_and_a_warning_in_json_mode_are_json_lines_too(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent("""
        import threading, warnings
        from dtf_agent import logsetup
        logsetup.configure("dtf-agent", logsetup.LogOptions(format="json"))
        warnings.warn("old thing")
        t = threading.Thread(target=lambda: 1 / 0, name="worker-thread")
        t.start(); t.join()
        raise RuntimeError("the end")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    lines = json_lines(out.stderr)
    assert [d["logger"] for d in lines] == ["py.warnings", "dtf.crash", "dtf.crash"], out.stderr
    assert "old thing" in str(lines[0]["message"])
    assert "worker-thread" in str(lines[1]["message"]) and "ZeroDivisionError" in str(lines[1]["exception"])
    assert lines[2]["level"] == "CRITICAL" and "RuntimeError: the end" in str(lines[2]["exception"])


# ------------------------------------------------------------------------------ the file


def test_the_file_goes_under_home_logs_and_rotates_with_a_few_backups(tmp_path: Path) -> None:
    home = tmp_path / "home"
    logsetup.configure("dtf-agent", parse(["--log-format", "json", "--log-max-size", "2K", "--log-backups", "2"]),
                       stream=io.StringIO())
    logsetup.set_context(worker_id="rack/7 b")
    path = logsetup.open_log_file(home, "rack/7 b")
    # A worker id is any string; the file name is made safe, and one agent's name is its own.
    assert path == home / "logs" / "dtf-agent-rack_7_b.log"
    log = logging.getLogger("dtf_agent.agent")
    for i in range(200):
        log.info("line %03d %s", i, "x" * 40, extra={"task_id": f"T{i}"})
    names = sorted(p.name for p in (home / "logs").iterdir())
    assert names == ["dtf-agent-rack_7_b.log", "dtf-agent-rack_7_b.log.1", "dtf-agent-rack_7_b.log.2"]
    seen = []
    for name in reversed(names):
        f = home / "logs" / name
        assert f.stat().st_size <= 2048
        for d in json_lines(f.read_text(encoding="utf-8")):
            n = int(str(d["message"]).split()[1])
            assert (d["task_id"], d["worker_id"]) == (f"T{n}", "rack/7 b")
            seen.append(n)
    # The newest lines are kept, in order, with nothing between them lost.
    assert seen == list(range(200 - len(seen), 200)) and len(seen) > 20


def test_no_file_when_stderr_is_the_journal_or_when_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    journal = (tmp_path / "journal").open("w")
    try:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.stderr_is_journal(journal)
        logsetup.configure("dtf-serve", parse([]), stream=journal)
        assert logsetup.open_log_file(home, stream=journal) is None
        # Another stream than the journal's (a terminal, a pipe): the file again.
        other = io.StringIO()
        assert not logsetup.stderr_is_journal(other)
        logsetup.configure("dtf-serve", parse([]), stream=other)
        assert logsetup.open_log_file(home, stream=other) == home / "logs" / "dtf-serve.log"
        # An explicit file is written even under the journal.
        logsetup.configure("dtf-serve", parse(["--log-file", str(tmp_path / "x.log")]), stream=journal)
        assert logsetup.open_log_file(home, stream=journal) == tmp_path / "x.log"
    finally:
        journal.close()
    for argv, env in ((["--no-log-file"], {}), ([], {"DTF_LOG_FILE": "off"}), (["--log-file", "none"], {})):
        logsetup.configure("dtf-serve", parse(argv, env), stream=io.StringIO())
        assert logsetup.open_log_file(tmp_path / "other-home") is None, (argv, env)
    assert not (tmp_path / "other-home").exists()


def test_environment_defaults_for_containers() -> None:
    opts = parse([], {"DTF_LOG_FORMAT": "json", "DTF_LOG_FILE": "/data/dtf.log"})
    assert (opts.format, opts.file) == ("json", "/data/dtf.log")
    assert parse(["--log-format", "text"], {"DTF_LOG_FORMAT": "json"}).format == "text"
    assert parse([]) == logsetup.LogOptions(level="INFO", format="text", file=None, max_bytes=10 * 1024**2, backups=5)


def test_a_misspelt_log_format_in_the_environment_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([], {"DTF_LOG_FORMAT": "jsno"}).format == "text"
    said = capsys.readouterr().err
    assert "DTF_LOG_FORMAT='jsno'" in said and "json" in said


@pytest.mark.parametrize("argv", [["--log-backups", "0"], ["--log-max-size", "10X"], ["--log-max-size", "100"],
                                  ["--log-format", "xml"]])
def test_bad_log_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_sizes() -> None:
    assert [logsetup.parse_size(s) for s in ("10M", "512k", "1G", "4096", "1.5K", "2MiB")] == [
        10 * 1024**2, 512 * 1024, 1024**3, 4096, 1536, 2 * 1024**2]


def test_a_file_that_cannot_be_opened_is_said_and_skipped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "logs").write_text("a file where the directory should be")
    out = io.StringIO()
    logsetup.configure("dtf-serve", parse([]), stream=out)
    assert logsetup.open_log_file(home) is None
    assert "cannot write the log file" in out.getvalue() and str(home / "logs") in out.getvalue()


# ------------------------------------------------------------------------------ beside the task logs


def test_the_task_log_store_neither_sweeps_nor_is_confused_by_the_program_logs(tmp_path: Path) -> None:
    """$DTF_HOME/logs/ also holds the task output (LogStore, swept after server.log_retention_days):
    old program logs survive its sweep, and a task whose id looks like their names keeps its own."""
    home = tmp_path / "home"
    logsetup.configure("dtf-serve", parse(["--log-max-size", "1K", "--log-backups", "2"]), stream=io.StringIO())
    path = logsetup.open_log_file(home)
    assert path is not None
    for i in range(60):
        logging.getLogger("dtf").info("coordinator line %d", i)
    program_files = sorted((home / "logs").iterdir())
    assert [p.name for p in program_files] == ["dtf-serve.log", "dtf-serve.log.1", "dtf-serve.log.2"]
    writer = LogWriter(home / "logs", max_bytes=1024**2, retention_days=1)
    try:
        for task_id in ("dtf-serve.log", "dt", "old-task"):
            writer.store.append(task_id, 0, "stdout", 0, f"output of {task_id}\n".encode(), eof=True)
        old = time.time() - 10 * 86400
        for p in [*program_files, *(home / "logs" / "ol").rglob("*")]:
            os.utime(p, (old, old))
        writer._sweep()
        assert writer.swept == 1  # old-task, and only it
        assert writer.store.attempts("old-task") == []
        assert all(p.exists() for p in program_files)
        assert writer.store.read("dtf-serve.log").data == b"output of dtf-serve.log\n"
        assert writer.store.read("dt").data == b"output of dt\n"
    finally:
        writer.stop()
    # And the program's file was not touched by the task of the same name.
    assert path.read_text(encoding="utf-8").splitlines()[-1].endswith("coordinator line 59")


@pytest.mark.parametrize(("argv", "level"), [
    (["--log-level", "DEBUG", "serve"], "DEBUG"), (["serve", "--log-level", "WARNING"], "WARNING"),
    (["serve"], "INFO"), (["--log-level", "DEBUG", "serve", "--log-level", "ERROR"], "ERROR"),
])
def test_dtf_serve_takes_the_level_before_or_after_the_command(argv: list[str], level: str) -> None:
    from dtf_gui.cli import dtf_parser

    args = dtf_parser("serve").parse_args([*argv, "--log-format", "json", "--no-log-file"])
    opts = logsetup.options_from_args(args, env={})
    assert (opts.level, opts.format, opts.file) == (level, "json", "")
