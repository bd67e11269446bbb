"""A real agent process keeps what it has not had acknowledged through kill -9.

The coordinator here is a ROUTER socket driven by the test, so that it can withhold the ack and
watch every frame the agent sends after its restart.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from dtf_agent import protocol as p
from dtf_agent.spool import JOURNAL, Spool, _records, default_spool_dir
from dtf_agent.transport import bind, make_socket
from tests.helpers import ProcessTracker, dtf_command, wait_until

T = TypeVar("T")

WORKER = "spooler"


class Router:
    """The coordinator's end of the agent socket, nothing more."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = make_socket(self.ctx, zmq.ROUTER)
        self.endpoint = f"tcp://127.0.0.1:{bind(self.sock, '127.0.0.1', 0)}"
        self.identity = b""
        self.seen: list[p.Message] = []

    def recv(self, kind: type[T], timeout: float = 30, log: str = "") -> T:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise AssertionError(f"no {kind.__name__} from the agent within {timeout:g} s; saw "
                                     f"{[type(m).__name__ for m in self.seen]}\n{log}")
            self.identity, frame = self.sock.recv_multipart()
            msg = p.decode(frame)
            self.seen.append(msg)
            if isinstance(msg, kind):
                return msg

    def send(self, msg: p.Message) -> None:
        self.sock.send_multipart([self.identity, p.encode(msg)])

    def welcome(self, heartbeat_interval: float = 5.0) -> None:
        self.send(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id=WORKER,
                            heartbeat_interval=heartbeat_interval))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def router() -> Any:
    r = Router()
    try:
        yield r
    finally:
        r.close()


def test_results_survive_kill_9_and_are_resent_not_rerun(router: Router, procs: ProcessTracker,
                                                         dtf_env: dict[str, str], dtf_home: Path,
                                                         tmp_path: Path) -> None:
    argv = dtf_command("dtf-agent") + ["--coordinator", router.endpoint, "--insecure", "--worker-id", WORKER,
                                       "--slots", "1"]  # the fake coordinator speaks plain text
    marker = tmp_path / "runs.txt"
    command = f"echo run >> {marker}; echo out"

    first = procs.start("agent-1", argv, dtf_env)
    reg1 = router.recv(p.Register, log=procs.log("agent-1"))
    assert reg1.finished == [] and reg1.incarnation
    router.welcome()
    router.send(p.Assign(tasks=[p.RunSpec(task_id="t1", parameters={"command": command}, attempt=1)]))
    (held,) = router.recv(p.Results, log=procs.log("agent-1")).results
    assert (held.task_id, held.status, held.stdout_tail) == ("t1", "success", "out\n")
    # Journalled before it was sent: a kill now loses nothing.
    first.kill()
    first.wait(10)
    journal = default_spool_dir(WORKER, dtf_home) / JOURNAL
    assert journal.exists(), "the spool lives under the DTF home, per worker id"

    second = procs.start("agent-2", argv, dtf_env)
    reg2 = router.recv(p.Register, log=procs.log("agent-2"))
    assert reg2.finished == ["t1"], "the held result's task is named, so it is not run elsewhere"
    assert reg2.incarnation and reg2.incarnation != reg1.incarnation, "a restart is a new incarnation"
    assert reg2.running == []
    router.welcome()
    resent = router.recv(p.Results, log=procs.log("agent-2")).results
    assert [(r.result_id, r.attempt, r.stdout_tail) for r in resent] == [(held.result_id, 1, "out\n")]

    # The coordinator never stored it and assigns the task again: the agent answers with the result
    # it holds, under the new attempt, and does not run the command a second time.
    router.send(p.Assign(tasks=[p.RunSpec(task_id="t1", parameters={"command": command}, attempt=2)]))
    again = router.recv(p.Results, log=procs.log("agent-2")).results
    assert [(r.result_id, r.attempt) for r in again] == [(held.result_id, 2)]
    assert marker.read_text() == "run\n", "the command ran again"

    # One agent per spool: a second one with the same worker id stops at once, naming the first.
    third = procs.start("agent-dup", argv, dtf_env)
    assert third.wait(30) == 2
    log = procs.log("agent-dup")
    assert f"pid {second.pid}" in log and "same worker id" in log, log

    router.send(p.ResultAck(result_ids=[held.result_id]))

    def ack_on_disk() -> bool:
        return any(v == [held.result_id] for _o, _s, _k, v in _records(journal.read_bytes()))

    wait_until(ack_on_disk, 15, message=lambda: procs.log("agent-2"))
    second.send_signal(signal.SIGKILL)  # the ack is in the file already; no goodbye needed
    second.wait(10)

    fourth = procs.start("agent-4", argv, dtf_env)
    reg4 = router.recv(p.Register, log=procs.log("agent-4"))
    assert reg4.finished == [], "an acknowledged result is gone from the spool"
    router.welcome(heartbeat_interval=0.2)
    router.recv(p.Heartbeat, log=procs.log("agent-4"))
    router.recv(p.Heartbeat, log=procs.log("agent-4"))
    assert not [m for m in router.seen[router.seen.index(reg4):] if isinstance(m, p.Results)], "resent after its ack"
    procs.stop(fourth)
    with Spool(journal.parent) as spool:
        assert spool.pending() == []
    assert marker.read_text() == "run\n"
