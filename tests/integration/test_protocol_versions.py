"""Agents one protocol version apart, each side running its own release's code.

The previous protocol version's agent comes from this repository's history (the last commit that
spoke it, found by reading dtf_agent/protocol.py back through the log): it must keep working with
this coordinator. This release's agent, against that release's coordinator, must be refused with
a message that names both versions and the side to upgrade, and stop (exit 2) instead of retrying.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtf_agent import protocol as p
from tests.helpers import ProcessTracker, Serve, dtf_command, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_VERSION = re.compile(r"^PROTOCOL_VERSION = (\d+)$", re.M)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def last_commit_speaking(version: int) -> str | None:
    """The newest commit whose protocol.py has PROTOCOL_VERSION = ``version``."""
    for commit in _git("log", "--format=%H", "--", "dtf_agent/protocol.py").split():
        found = _VERSION.search(_git("show", f"{commit}:dtf_agent/protocol.py"))
        if found and int(found.group(1)) == version:
            return commit
    return None


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's code as the last commit of the previous protocol version left it."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs this repository's git history (the previous release's code), and there is none")
    if _git("rev-parse", "--is-shallow-repository").strip() == "true":
        pytest.skip("a shallow clone: the previous protocol version's release is not in its history")
    commit = last_commit_speaking(p.PROTOCOL_VERSION - 1)
    assert commit is not None, f"no commit in the history speaks protocol {p.PROTOCOL_VERSION - 1}"
    tree = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "dtf_agent", "dtf_gui"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    # What a process started as these tests start the old side imports: the old code, not this checkout.
    spoken = subprocess.run([sys.executable, "-c", "import dtf_agent.protocol as p; print(p.PROTOCOL_VERSION)"],
                            cwd=tree, env=previous(dict(os.environ), tree), capture_output=True, text=True, check=True)
    assert spoken.stdout.strip() == str(p.PROTOCOL_VERSION - 1)
    return tree


def previous(env: dict[str, str], tree: Path) -> dict[str, str]:
    """The environment that runs the previous release's code (its tree first on the path)."""
    return dict(env, PYTHONPATH=str(tree))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[ProcessTracker, Path, dict[str, str]]]:
    home, logs = tmp_path / "home", tmp_path / "logs"
    home.mkdir()
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DTF_HOME=str(home), PYTHONUNBUFFERED="1")
    tracker = ProcessTracker(logs)
    try:
        yield tracker, home, env
    finally:
        tracker.close()


def test_the_previous_protocol_versions_agent_runs_tasks_for_this_coordinator(
        previous_release: Path, lab: tuple[ProcessTracker, Path, dict[str, str]]) -> None:
    tracker, home, env = lab
    serve = Serve(tracker, home, env, "--no-mdns")
    try:
        old = tracker.start("old-agent", [sys.executable, "-m", "dtf_agent.cli", "--coordinator", serve.agent_endpoint,
                                          "--worker-id", "old-agent", "--slots", "1"],
                            previous(env, previous_release), cwd=previous_release)
        if p.MIN_COMPATIBLE_VERSION > p.PROTOCOL_VERSION - 1:
            # Served no more: refused, told to upgrade, and it stops instead of retrying.
            wait_until(lambda: old.poll() is not None, 30, message=tracker.logs)
            assert "upgrade the agent" in tracker.log("old-agent")
            return
        serve.wait_workers_online("old-agent")
        serve.call("create_task", {"task_id": "across-versions", "type": "command",
                                   "parameters": {"command": "echo spoken-by-an-older-agent"}})
        task = serve.wait_task_status("across-versions", "completed", "failed", timeout=30)
        assert task["status"] == "completed", task
        assert task["worker_id"] == "old-agent"
        [result] = task["result_list"]
        assert "spoken-by-an-older-agent" in result["raw_data"]["stdout_tail"]
    finally:
        serve.close()


def test_this_agent_is_refused_by_the_previous_versions_coordinator_naming_both(
        previous_release: Path, lab: tuple[ProcessTracker, Path, dict[str, str]]) -> None:
    tracker, home, env = lab
    serve = Serve(tracker, home, previous(env, previous_release), "--no-mdns",
                  command=[sys.executable, "-m", "dtf_gui.cli"], cwd=previous_release)
    try:
        agent = tracker.start("new-agent", dtf_command("dtf-agent") + [
            "--coordinator", serve.agent_endpoint, "--worker-id", "new-agent"], env)
        wait_until(lambda: agent.poll() is not None, 30, message=tracker.logs)
        said = tracker.log("new-agent")
        assert agent.returncode == 2, said
        assert f"protocol version {p.PROTOCOL_VERSION}" in said
        assert f"{p.PROTOCOL_VERSION - 1}" in said.split(f"protocol version {p.PROTOCOL_VERSION}", 1)[1]
        assert "upgrade the coordinator" in said
        # The old coordinator refused it: it never became a worker there.
        assert all(w["worker_id"] != "new-agent" for w in serve.call("list_workers"))
    finally:
        serve.close()
