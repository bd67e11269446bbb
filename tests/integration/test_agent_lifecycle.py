"""Agents and coordinators come and go; work is neither lost nor run twice.

- An agent stopped with SIGTERM kills its tasks' trees, says goodbye, and those tasks run again
  elsewhere without counting as the test's failure.
- A coordinator restarted on the same ports and database gets its state back from SQLite; an
  agent that kept running a task through the restart reports it and the task is adopted, not
  started a second time.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtf_gui.client import Client
from tests.helpers import ProcessTracker, dtf_command, read_coordinator_json, wait_until

FAST = """\
health_monitor:
  heartbeat_interval: 0.5
  heartbeat_timeout: 5
task_scheduler:
  retry_limit: 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restartable_serve(procs: ProcessTracker, dtf_home: Path,
                      dtf_env: dict[str, str]) -> Callable[[str], tuple[Any, dict[str, Any]]]:
    """``start(name)`` starts an insecure `dtf serve` on ports fixed for the test (a restarted
    coordinator must come back where its agents reconnect) and returns it with its coordinator.json."""
    (dtf_home / "coordinator.yaml").write_text(FAST, encoding="utf-8")
    ports = ["--port", str(free_port()), "--agent-port", str(free_port()), "--events-port", str(free_port())]

    def start(name: str) -> tuple[Any, dict[str, Any]]:
        proc = procs.start(name, dtf_command("dtf") + ["serve", "--insecure", *ports], dtf_env)

        def up() -> dict[str, Any] | None:
            info = read_coordinator_json(dtf_home)
            return info if info and info["pid"] == proc.pid else None

        return proc, wait_until(up, 20, message=lambda: procs.log(name))

    return start


def test_a_stopping_agent_hands_its_tasks_back(serve, tmp_path):
    s = serve(FAST)
    leaving = s.start_agent("leaving", slots=1)
    s.wait_workers_online("leaving")
    marker = tmp_path / "runs.txt"
    tid = s.call("create_task", {"command": f"echo run >> {marker}; sleep 30"})["task_id"]
    s.wait_task_status(tid, "running")
    wait_until(marker.exists, 10)
    s.tracker.stop(leaving, grace=20)
    t = s.wait_task_status(tid, "pending")
    assert t["result_list"] == [], "a task killed by its agent's shutdown is not a failed attempt"
    assert s.worker_status("leaving") == "offline"
    s.start_agent("staying", slots=1)
    s.wait_workers_online("staying")
    t = s.wait_task_status(tid, "running")
    assert t["worker_id"] == "staying"


def test_coordinator_restart_adopts_the_task_an_agent_kept_running(procs: ProcessTracker, dtf_home: Path,
                                                                   dtf_env: dict[str, str], tmp_path: Path):
    start_serve = restartable_serve(procs, dtf_home, dtf_env)

    serve1, info = start_serve("serve-1")
    procs.start("agent", dtf_command("dtf-agent") + ["--coordinator", info["agent_endpoint"], "--worker-id", "keeper",
                                                     "--slots", "1"], dtf_env)
    marker = tmp_path / "runs.txt"
    with Client(info["client_endpoint"], timeout=20) as c:
        wait_until(lambda: c.call("get_status")["workers_online"] == 1, 20)
        tid = c.call("create_task", {"command": f"echo run >> {marker}; sleep 4; echo done"})["task_id"]
        wait_until(lambda: c.call("get_task", {"task_id": tid})["status"] == "running", 20)
    serve1.send_signal(signal.SIGTERM)
    serve1.wait(20)

    _, info = start_serve("serve-2")
    with Client(info["client_endpoint"], timeout=20) as c:
        def completed() -> dict[str, Any] | None:
            t = c.call("get_task", {"task_id": tid})
            return t if t["status"] == "completed" else None

        t = wait_until(completed, 30, message=lambda: procs.logs())
    assert t["worker_id"] == "keeper"
    assert len(t["result_list"]) == 1
    assert t["result_list"][0]["raw_data"]["stdout_tail"].strip() == "done"
    # Adopted, not dispatched again: a second dispatch would have been attempt 2.
    assert t["result_list"][0]["attempt"] == 1
    assert marker.read_text().count("run") == 1, "the task ran twice"


def test_a_result_held_through_a_coordinator_restart_completes_the_task_without_a_rerun(tmp_path: Path):
    """The task finished while the coordinator was down: the agent names it in its Register and
    resends the result; the restarted coordinator must not hand it out again meanwhile."""
    from dtf_agent import protocol as p
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.server import Coordinator
    from tests.helpers import FakeAgent

    db = tmp_path / "dtf.sqlite"
    port = free_port()
    first = Coordinator(ephemeral_settings(db, server={"agent_port": port})).start()
    fake = FakeAgent(first.endpoint("agents"), "holder")
    second: Coordinator | None = None
    try:
        fake.register()
        fake.recv(p.Welcome)
        tid = first.request("create_task", {"command": "true"})["task_id"]
        (spec,) = fake.recv(p.Assign).tasks
        first.stop()
        second = Coordinator(ephemeral_settings(db, server={"agent_port": port})).start()
        fake.register_until_welcomed(p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="holder",
                                                hostname="fakehost", finished=[tid]))
        fake.send(p.Results(results=[p.ResultRecord(result_id="held-1", task_id=tid, status="success",
                                                     attempt=spec.attempt)]))
        ack = fake.recv(p.ResultAck)
        assert ack.result_ids == ["held-1"]
        coord = second
        t = wait_until(lambda: (x := coord.request("get_task", {"task_id": tid}))["status"] == "completed" and x, 10)
        assert [r["result_id"] for r in t["result_list"]] == ["held-1"]
        # The coordinator handles one agent's frames in order: an Assign caused by the Register
        # would have been sent before this ResultAck.
        assert not [m for m in fake.inbox if isinstance(m, p.Assign)], "the finished task was dispatched again"
    finally:
        fake.close()
        first.stop()
        if second is not None:
            second.stop()


def test_a_task_waiting_for_its_bundle_gets_it_after_a_coordinator_restart(procs: ProcessTracker, dtf_home: Path,
                                                                         dtf_env: dict[str, str], tmp_path: Path):
    """The agent asked the first coordinator for the bundle and never heard back: it asks the second
    one, which lets it fetch the bundle of the task it claimed back."""
    from dtf_gui.cli_bundles import upload_bundle

    start_serve = restartable_serve(procs, dtf_home, dtf_env)

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "data.txt").write_text("from the bundle\n")
    serve1, info = start_serve("serve-1")
    agent = procs.start("agent", dtf_command("dtf-agent") + ["--insecure", "--coordinator", info["agent_endpoint"],
                                                             "--worker-id", "fetcher", "--slots", "1"], dtf_env)
    with Client(info["client_endpoint"], timeout=20) as c:
        wait_until(lambda: c.call("get_status")["workers_online"] == 1, 20)
        digest = upload_bundle(c, suite, quiet=True)
        agent.send_signal(signal.SIGSTOP)  # the Assign reaches it; its FetchBundle meets a dead coordinator
        try:
            tid = c.call("create_task", {"command": "cat data.txt", "parameters": {"bundle": digest}})["task_id"]
            wait_until(lambda: c.call("get_task", {"task_id": tid})["status"] == "assigned", 20)
        finally:
            serve1.send_signal(signal.SIGKILL)
            serve1.wait(20)
            agent.send_signal(signal.SIGCONT)
    _, info = start_serve("serve-2")
    with Client(info["client_endpoint"], timeout=20) as c:
        def completed() -> dict[str, Any] | None:
            t = c.call("get_task", {"task_id": tid})
            return t if t["status"] == "completed" else None

        t = wait_until(completed, 40, message=lambda: procs.logs())
    assert t["result_list"][-1]["raw_data"]["stdout_tail"] == "from the bundle\n"
