"""`dtf serve --log-format json` and `dtf-agent --log-format json`, real processes: every line they
write to stderr and to their rotated files under $DTF_HOME/logs/ is one JSON object with the fields
an operator greps by; one task's life can be followed by its id across both; the files sit beside
the coordinator's task output without disturbing it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ProcessTracker, Serve, cli

AGENT = "json-agent"
FIELDS = {"time", "level", "logger", "message", "program", "pid"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class StderrApartTracker(ProcessTracker):
    """As ProcessTracker, but stderr goes to NAME.stderr, apart from stdout (where `dtf serve` prints
    its banner, except with JSON logs)."""

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "wb") as out, open(self.log_dir / f"{name}.stderr", "wb") as err:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, cwd=cwd)
        self.procs.append((name, proc))
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        text = ""
        for suffix in (".log", ".stderr"):
            try:
                text += (self.log_dir / f"{name}{suffix}").read_text(encoding="utf-8", errors="replace")
            except OSError:
                pass
        return f"--- {name} (last {tail} chars) ---\n{text[-tail:]}"


@dataclass
class Lab:
    home: Path
    task_id: str
    serve_stdout: str
    serve_stderr: str
    agent_stderr: str
    serve_code: int | None
    agent_code: int | None
    task_output: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("json-logs")
    home, logs = root / "home", root / "out"
    home.mkdir()
    logs.mkdir()
    env = dict(os.environ, DTF_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("JOURNAL_STREAM", None)  # a test run from a systemd unit: the files are wanted all the same
    tracker = StderrApartTracker(logs)
    try:
        serve = Serve(tracker, home, env, "--no-mdns", "--log-format", "json", "--log-level", "DEBUG")
        # The agent's file rotates at 1 KiB (the least allowed), so that a short run shows the rotation.
        agent = serve.start_agent(AGENT, 1, None, "--log-format", "json", "--log-level", "DEBUG",
                                  "--log-max-size", "1K", "--log-backups", "2")
        serve.wait_workers_online(AGENT)
        out = cli(env, "submit", "--command", "echo out-of-the-task; echo err-of-the-task >&2", "--wait",
                  "--test-id", "json-logs", timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr + tracker.logs()
        task_id = out.stdout.split(":", 1)[0].strip()
        shown = cli(env, "logs", task_id, timeout=60)
        serve.close()
        # SIGTERM, as systemd stops them: the goodbye and shutdown lines are written too.
        agent_code = tracker.stop(agent)
        serve_code = tracker.stop(serve.proc)
        yield Lab(home=home, task_id=task_id, serve_stdout=(logs / "serve.log").read_text(encoding="utf-8"),
                  serve_stderr=(logs / "serve.stderr").read_text(encoding="utf-8"),
                  agent_stderr=(logs / f"{AGENT}.stderr").read_text(encoding="utf-8"),
                  serve_code=serve_code, agent_code=agent_code, task_output=shown.stdout)
    finally:
        tracker.close()


def records(text: str, where: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"{where}:{n} is not JSON: {line[:300]!r}")
        assert isinstance(doc, dict), (where, n, line)
        out.append(doc)
    assert out, f"{where}: no log lines"
    return out


def check_fields(docs: list[dict[str, Any]], program: str, where: str) -> None:
    for doc in docs:
        assert FIELDS <= set(doc), (where, doc)
        assert TIME.match(doc["time"]), (where, doc)
        assert doc["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), (where, doc)
        assert isinstance(doc["message"], str) and doc["logger"], (where, doc)
        assert doc["program"] == program, (where, doc)


def files(home: Path, name: str) -> list[Path]:
    """name.log and its backups, oldest first."""
    found = sorted((home / "logs").glob(f"{name}.log*"), key=lambda p: p.name)
    assert found and found[0].name == f"{name}.log", sorted(p.name for p in (home / "logs").iterdir())
    return [*reversed(found[1:]), found[0]]


def test_every_line_on_stderr_and_in_the_files_is_a_json_record(lab: Lab) -> None:
    assert (lab.serve_code, lab.agent_code) == (0, 0)
    # No plain banner either: under systemd, journald mixes stdout into the same stream.
    assert lab.serve_stdout == ""
    serve = records(lab.serve_stderr, "dtf serve stderr")
    agent = records(lab.agent_stderr, "dtf-agent stderr")
    check_fields(serve, "dtf-serve", "dtf serve stderr")
    check_fields(agent, "dtf-agent", "dtf-agent stderr")
    # The coordinator said where it listens; the agent that it was registered, as who.
    assert any(d["message"].startswith("coordinator ") and "listening" in d["message"] for d in serve)
    assert any("registered with coordinator" in d["message"] for d in agent)
    # DEBUG asked for and given: the level reaches the program's own loggers.
    assert {d["level"] for d in serve} >= {"INFO"} and {d["level"] for d in agent} >= {"INFO"}
    # The agent stamps its worker id on every record it writes.
    assert {d.get("worker_id") for d in agent} == {AGENT}
    # The files hold the same records as stderr, in the same form.
    serve_file = [d for p in files(lab.home, "dtf-serve") for d in records(p.read_text(encoding="utf-8"), str(p))]
    check_fields(serve_file, "dtf-serve", "dtf-serve.log")
    assert [d["message"] for d in serve_file] == [d["message"] for d in serve]


def test_the_agent_file_rotated_at_its_size_and_kept_its_backups(lab: Lab) -> None:
    paths = files(lab.home, f"dtf-agent-{AGENT}")
    names = [p.name for p in paths]
    # 1 KiB a file: the agent's start alone fills more than one; at most 2 backups stay.
    assert f"dtf-agent-{AGENT}.log.1" in names and len(paths) <= 3, names
    kept: list[dict[str, Any]] = []
    for p in paths:
        assert p.stat().st_size <= 1024, (p, p.stat().st_size)
        kept += records(p.read_text(encoding="utf-8"), str(p))
    check_fields(kept, "dtf-agent", "agent files")
    # The newest records, whole and in order: the end of what went to stderr.
    messages = [d["message"] for d in records(lab.agent_stderr, "stderr")]
    assert [d["message"] for d in kept] == messages[len(messages) - len(kept):]


def test_the_task_output_beside_the_program_logs_is_intact(lab: Lab) -> None:
    assert lab.task_output == "out-of-the-task\n"
    top = sorted(p.name for p in (lab.home / "logs").iterdir() if p.is_file())
    assert "dtf-serve.log" in top and f"dtf-agent-{AGENT}.log" in top
    # The task's own output is in its bucket directory, not mixed into the program logs.
    assert (lab.home / "logs" / lab.task_id[:2].replace(".", "_") / lab.task_id).is_dir()
    for name in top:
        assert "out-of-the-task" not in (lab.home / "logs" / name).read_text(encoding="utf-8")


def test_one_task_can_be_followed_by_its_id_in_both_programs(lab: Lab) -> None:
    """`jq 'select(.task_id == "T")'` over the coordinator's and the agent's lines shows the task's
    life: both programs log about it, and every line that names it carries its id as a field."""
    tid = lab.task_id
    for where, text in (("dtf serve", lab.serve_stderr), ("dtf-agent", lab.agent_stderr)):
        docs = records(text, where)
        about = [d for d in docs if d.get("task_id") == tid]
        assert about, f"{where} wrote no record with task_id {tid!r} (its log calls about a task pass " \
                      f"extra={{'task_id': ...}})"
        naming = [d for d in docs if tid in d["message"]]
        assert all(d.get("task_id") == tid for d in naming), [d for d in naming if d.get("task_id") != tid]
    agent_about = [d for d in records(lab.agent_stderr, "agent") if d.get("task_id") == tid]
    assert all(d["worker_id"] == AGENT for d in agent_about)
