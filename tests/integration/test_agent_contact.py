"""A real agent process at first contact: which coordinators' Welcome it takes, and what of its
enrollment secrets its tasks can see."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtf_agent import protocol as p
from tests.helpers import ProcessTracker, Serve, dtf_command
from tests.integration.test_agent_spool import Router


@pytest.fixture
def router() -> Iterator[Router]:
    r = Router()
    try:
        yield r
    finally:
        r.close()


def _agent(router: Router, procs: ProcessTracker, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    argv = dtf_command("dtf-agent") + ["--coordinator", router.endpoint, "--insecure", "--worker-id", name,
                                       "--slots", "1"]  # the fake coordinator speaks plain text
    return procs.start(name, argv, env)


def test_a_newer_coordinators_welcome_is_taken(router: Router, procs: ProcessTracker,
                                               dtf_env: dict[str, str]) -> None:
    # It accepted this agent's version (a coordinator serves the versions before its own): the agent
    # does not second-guess it, and works for it.
    _agent(router, procs, dtf_env, "older-agent")
    router.recv(p.Register, log=procs.log("older-agent"))
    router.send(p.Welcome(protocol_version=p.PROTOCOL_VERSION + 1, worker_id="older-agent",
                          heartbeat_interval=5.0))
    router.send(p.Assign(tasks=[p.RunSpec(task_id="t1", parameters={"command": "echo served"})]))
    (done,) = router.recv(p.Results, log=procs.log("older-agent")).results
    assert (done.task_id, done.status, done.stdout_tail) == ("t1", "success", "served\n")


def test_a_coordinator_too_old_for_the_agent_is_refused_by_it(router: Router, procs: ProcessTracker,
                                                             dtf_env: dict[str, str]) -> None:
    agent = _agent(router, procs, dtf_env, "newer-agent")
    router.recv(p.Register, log=procs.log("newer-agent"))
    router.send(p.Welcome(protocol_version=p.MIN_COMPATIBLE_VERSION - 1, worker_id="newer-agent",
                          heartbeat_interval=5.0))
    assert agent.wait(30) == 2
    said = procs.log("newer-agent")
    assert f"the coordinator speaks protocol {p.MIN_COMPATIBLE_VERSION - 1}" in said
    assert "upgrade the coordinator" in said, said


def test_tasks_never_see_the_agents_enrollment_secrets(serve: Callable[..., Serve], tmp_path: Path) -> None:
    s = serve()
    token = s.call("create_token", {"uses": 1})["token"]
    s.start_agent("keeper", 1, {"DTF_JOIN_TOKEN": token, "DTF_ENROLLMENT_TOKEN": "x" * 32})
    s.wait_workers_online("keeper")
    # The agent joined with the token (it was read before it was dropped).
    assert {a["name"]: a["how"] for a in s.call("list_agents")}["keeper"].startswith("token")
    tid = s.call("create_task", {"command": 'echo "join=[$DTF_JOIN_TOKEN] enroll=[$DTF_ENROLLMENT_TOKEN]"'})[
        "task_id"]
    done = s.wait_task_status(tid, "completed", "failed")
    assert done["result_list"][0]["raw_data"]["stdout_tail"] == "join=[] enroll=[]\n"
