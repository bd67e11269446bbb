"""Whole task output, streamed: `dtf logs`, `--follow`, `--stderr`, the middle of a 10 MB log
dropped with one marker, and `dtf submit --wait` showing a failing task's stderr."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Serve, cli, dtf_command, serve_lab, wait_until

AGENT = "logs-box"
PY = shlex.quote(sys.executable)
LINES = 700_000  # "line 00000000\n" is 14 bytes: 9.8 MB
KEEP = 1024 * 1024  # server.max_log_bytes in this test's coordinator.yaml


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, dict[str, str]]]:
    with serve_lab(tmp_path_factory.mktemp("logs"), {AGENT: 2}, config=f"server:\n  max_log_bytes: {KEEP}\n") as lab:
        yield lab


def test_ten_megabytes_keep_head_and_tail_with_one_marker(lab: tuple[Serve, dict[str, str]], tmp_path: Path) -> None:
    serve, env = lab
    script = tmp_path / "loud.py"
    script.write_text(
        "import sys\n"
        f"w = sys.stdout.write\nfor i in range({LINES}):\n    w('line %08d\\n' % i)\n"
        "sys.stdout.flush()\nsys.stderr.write('ERR-FIRST\\n' + 'e' * 100 + '\\nERR-LAST\\n')\nsys.exit(3)\n")
    proc = cli(env, "submit", "--command", f"{PY} {script}", "--retries", "0", "--wait", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The failing task's stderr, labelled, under its status line.
    assert re.search(r"--- stderr \(last \d+ lines\) ---\nERR-FIRST\n", proc.stdout), proc.stdout
    task_id = proc.stdout.split(":", 1)[0].strip()

    def stored() -> str | None:
        out = cli(env, "logs", task_id, timeout=60)
        return out.stdout if out.stdout.endswith(f"line {LINES - 1:08d}\n") else None

    log = wait_until(stored, 30)
    assert log.startswith("line 00000000\nline 00000001\n")
    markers = re.findall(r"\[\.\.\. (\d+) bytes of output dropped here by DTF", log)
    assert len(markers) == 1, log[:200]
    total = 14 * LINES
    kept = len(log.encode()) - len(re.search(r"\n\[\.\.\..*?\]\n", log, re.S).group(0))  # type: ignore[union-attr]
    assert kept + int(markers[0]) == total
    assert KEEP * 0.9 <= kept <= KEEP * 1.1
    # Every kept line is whole and in order on each side of the marker.
    head, _, tail = log.partition("\n[...")
    numbers = [int(x) for x in re.findall(r"^line (\d{8})$", head + "\n" + tail.split("]\n", 1)[1], re.M)]
    assert numbers == sorted(numbers) and numbers[-1] == LINES - 1
    err = cli(env, "logs", task_id, "--stderr", timeout=60)
    assert err.stdout.startswith("ERR-FIRST\n") and err.stdout.endswith("ERR-LAST\n")


def test_follow_prints_while_the_task_runs_and_stops_when_it_ends(lab: tuple[Serve, dict[str, str]]) -> None:
    serve, env = lab
    code = ("import time\nfor i in range(12):\n    print('tick', i, flush=True)\n    time.sleep(0.25)\n"
            "print('done', flush=True)\n")
    task_id = serve.call("create_task", {"command": [sys.executable, "-c", code]})["task_id"]
    serve.wait_task_status(task_id, "running")
    follower = subprocess.Popen(dtf_command("dtf") + ["logs", task_id, "--follow"], env=env,
                                stdout=subprocess.PIPE, text=True)
    try:
        first = follower.stdout.readline() if follower.stdout else ""
        # Output arrives while the task still runs.
        assert first.startswith("tick ")
        assert serve.task(task_id)["status"] == "running"
        # Read through the same buffered file as readline (communicate() would skip what it buffered).
        rest = follower.stdout.read() if follower.stdout else ""
        follower.wait(30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0
    lines = (first + rest).splitlines()
    assert lines[-1] == "done" and [ln for ln in lines if ln.startswith("tick")] == [f"tick {i}" for i in
                                                                                   range(int(first.split()[1]), 12)]
