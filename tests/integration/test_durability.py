"""Nothing acknowledged is lost (issue 8): acks after commit, restart recovery, reconnection by
incarnation, bounded input, waiting without polling, a disk that refuses writes.

Real coordinator threads or `dtf serve` processes, real sockets and SQLite; agents are the test's
own DEALER sockets (FakeAgent) where the test needs to choose exactly what an agent says.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import zmq

from dtf_agent import protocol as p
from dtf_agent.transport import make_socket
from dtf_gui.client import find_credentials
from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.server import Coordinator
from dtf_gui.coordinator.store import connect_readonly
from tests.helpers import FakeAgent, Serve, wait_until


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeAgent]]:
    made: list[FakeAgent] = []

    def make(endpoint: str, worker_id: str) -> FakeAgent:
        f = FakeAgent(endpoint, worker_id)
        made.append(f)
        return f

    try:
        yield make
    finally:
        for f in made:
            f.close()


def register(fake: FakeAgent, incarnation: str, running: tuple[str, ...] = (), finished: tuple[str, ...] = (),
             slots: int = 1, attempts: dict[str, int] | None = None) -> None:
    fake.register_until_welcomed(p.Register(
        protocol_version=p.PROTOCOL_VERSION, worker_id=fake.worker_id, hostname="fakehost", slots=slots,
        incarnation=incarnation, running=list(running), finished=list(finished), attempts=attempts or {}))


def success(task_id: str, attempt: int, rid: str) -> p.ResultRecord:
    return p.ResultRecord(result_id=rid, task_id=task_id, status="success", attempt=attempt, start_time=1.0,
                          end_time=2.0, metrics={"value": 1.0})


# ----------------------------------------------------------------------------------- acks after commit


def test_tasks_acknowledged_just_before_a_kill_9_are_there_after_the_restart(serve: Callable[..., Serve]) -> None:
    # The reply to create_tasks is a promise: kill the process the moment it arrives.
    s = serve()
    ids = s.call("create_tasks", {"tasks": [{"type": "noop"} for _ in range(500)]})["task_ids"]
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(10)
    s.close()
    s2 = serve()
    db = s2.db()
    try:
        marks = ",".join("?" * len(ids))
        (stored,) = db.execute(f"SELECT count(*) FROM tasks WHERE task_id IN ({marks})", ids).fetchone()
        assert stored == len(ids)
        # ... and the restarted coordinator has them queued again, not just on disk.
        assert s2.call("get_status")["tasks"]["pending"] == len(ids)
    finally:
        db.close()


def test_a_result_is_acknowledged_only_once_it_is_in_the_database(coordinator: Callable[..., Coordinator],
                                                                   fakes: Callable[..., FakeAgent]) -> None:
    # A long flush interval: only the commit that an ack waits for can have written the result.
    coord = coordinator(database={"flush_interval": 60.0})
    fake = fakes(coord.endpoint("agents"), "w1")
    register(fake, "i1")
    tid = coord.request("create_task", {"command": "true"})["task_id"]
    (spec,) = fake.recv(p.Assign).tasks
    fake.send(p.Results(results=[success(tid, spec.attempt, "r-acked")]))
    ack = fake.recv(p.ResultAck)
    assert ack.result_ids == ["r-acked"]
    db = connect_readonly(coord.s.db_path)
    try:
        row = db.execute("SELECT r.task_id, t.status FROM results r JOIN tasks t USING (task_id) "
                         "WHERE r.result_id='r-acked'").fetchone()
        assert row is not None and tuple(row) == (tid, p.COMPLETED)  # the result and its task's status, together
    finally:
        db.close()


# ----------------------------------------------------------------------------------- restarts


def restart(coord: Coordinator, **sections: Any) -> Coordinator:
    coord.stop()
    port = coord.ports["agents"]
    return Coordinator(ephemeral_settings(coord.s.db_path, server={"agent_port": port}, **sections)).start()


def test_after_a_restart_new_and_recovered_tasks_may_depend_on_tasks_completed_before(
        coordinator: Callable[..., Coordinator], fakes: Callable[..., FakeAgent]) -> None:
    first = coordinator()
    second: Coordinator | None = None
    try:
        fake = fakes(first.endpoint("agents"), "w1")
        register(fake, "i1")
        a = first.request("create_task", {"command": "true", "task_id": "a"})["task_id"]
        (spec,) = fake.recv(p.Assign).tasks
        # b waits on c, which waits for a worker that never takes it: b is unfinished at the restart.
        first.request("create_tasks", {"tasks": [
            {"command": "true", "task_id": "c", "requirements": {"tags": ["nobody"]}},
            {"command": "true", "task_id": "b", "dependencies": ["a", "c"]}]})
        fake.send(p.Results(results=[success(a, spec.attempt, "ra")]))
        fake.recv(p.ResultAck)
        second = restart(first)
        fake2 = fakes(second.endpoint("agents"), "w2")
        register(fake2, "i2")
        d = second.request("create_task", {"command": "true", "dependencies": ["a"]})["task_id"]
        (spec_d,) = fake2.recv(p.Assign).tasks
        assert spec_d.task_id == d
        why_b = second.request("get_task", {"task_id": "b"})["why"]
        assert why_b == "waiting for dependencies: c"  # a counts as completed
    finally:
        if second is not None:
            second.stop()


def test_a_restart_keeps_attempts_retries_and_the_task_on_the_worker_that_runs_it(
        coordinator: Callable[..., Coordinator], fakes: Callable[..., FakeAgent]) -> None:
    sched = {"retry_limit": 1, "retry_backoff_base": 0.001, "retry_backoff_max": 0.001}
    coord = coordinator(task_scheduler=sched)
    second: Coordinator | None = None
    try:
        fake = fakes(coord.endpoint("agents"), "w1")
        register(fake, "i1")
        tid = coord.request("create_task", {"command": "false"})["task_id"]
        (first_try,) = fake.recv(p.Assign).tasks
        fake.send(p.Results(results=[p.ResultRecord(result_id="r1", task_id=tid, status="failure",
                                                    attempt=first_try.attempt, error="exit 1")]))
        (second_try,) = fake.recv(p.Assign).tasks
        assert second_try.attempt == first_try.attempt + 1
        second = restart(coord, task_scheduler=sched)
        # The agent is still running attempt 2: it claims it, nothing is dispatched again.
        register(fake, "i1", running=(tid,))
        wait_until(lambda: second.request("get_task", {"task_id": tid})["status"] == p.RUNNING, 10)
        fake.send(p.Results(results=[p.ResultRecord(result_id="r2", task_id=tid, status="failure",
                                                    attempt=second_try.attempt, error="exit 1")]))
        fake.recv(p.ResultAck)
        # retry_limit 1 was spent before the restart: this failure is final, not a third attempt.
        task = wait_until(lambda: (t := second.request("get_task", {"task_id": tid}))["status"] == p.FAILED and t,
                          10)
        attempts = sorted(r["attempt"] for r in task["result_list"])
        assert attempts == [first_try.attempt, second_try.attempt]
    finally:
        if second is not None:
            second.stop()


# ----------------------------------------------------------------------------------- incarnations


def test_the_same_incarnation_reconnecting_keeps_its_tasks_and_a_new_one_loses_them(
        coordinator: Callable[..., Coordinator], fakes: Callable[..., FakeAgent]) -> None:
    coord = coordinator()
    fake = fakes(coord.endpoint("agents"), "w1")
    register(fake, "first-life")
    tid = coord.request("create_task", {"command": "sleep 100"})["task_id"]
    (spec,) = fake.recv(p.Assign).tasks
    fake.send(p.TaskStarted(task_ids=[tid]))
    wait_until(lambda: coord.request("get_task", {"task_id": tid})["status"] == p.RUNNING, 10)
    for _ in range(3):  # reconnects of the same process: nothing moves, nothing is counted lost
        register(fake, "first-life", running=(tid,))
    task = coord.request("get_task", {"task_id": tid})
    assert (task["status"], task["worker_id"], task["attempt"]) == (p.RUNNING, "w1", spec.attempt)
    assert coord.sched.task(tid).lost == 0
    # A new process under the same name does not hold it any more: it is requeued (and, the only
    # worker being this one, assigned to it again under a new attempt).
    register(fake, "second-life")
    (again,) = fake.recv(p.Assign).tasks
    assert again.task_id == tid and again.attempt == spec.attempt + 1
    assert coord.sched.task(tid).lost == 1


def test_an_unknown_peer_is_asked_to_register_at_most_once_a_second(
        coordinator: Callable[..., Coordinator], fakes: Callable[..., FakeAgent]) -> None:
    coord = coordinator()
    fake = fakes(coord.endpoint("agents"), "stranger")
    for _ in range(50):  # what an agent queued while the coordinator was away
        fake.send(p.Heartbeat())
    register(fake, "i1")  # frames are handled in order: every answer to the 50 came before the Welcome
    refusals = [m for m in fake.inbox if isinstance(m, p.Refused)]
    assert len(refusals) == 1 and refusals[0].reregister


# ----------------------------------------------------------------------------------- bounds


def test_an_oversize_register_is_refused_with_the_limit_named(coordinator: Callable[..., Coordinator],
                                                                fakes: Callable[..., FakeAgent]) -> None:
    coord = coordinator()
    fake = fakes(coord.endpoint("agents"), "big")
    caps = {f"k{i}": "x" * 4000 for i in range(200)}  # ~800 KB of capabilities
    fake.send(p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="big", hostname="h", capabilities=caps))
    refused = fake.recv(p.Refused)
    assert refused.fatal and f"over the limit of {p.MAX_REGISTER_BYTES}" in refused.reason
    assert "big" not in coord.workers


def raw_request(endpoint: str, frame: bytes, timeout_ms: int = 10_000) -> p.Reply:
    ctx = zmq.Context()
    creds = find_credentials()  # the home's admin key: a raw socket, but a known client
    sock = make_socket(ctx, zmq.DEALER, max_message_size=0, curve=creds.curve() if creds else None)
    sock.connect(endpoint)
    try:
        sock.send(frame)
        assert sock.poll(timeout_ms), "no answer: the client would only have timed out"
        reply = p.decode(sock.recv())
        assert isinstance(reply, p.Reply)
        return reply
    finally:
        sock.close()
        ctx.term()


def test_an_oversize_request_and_an_oversize_reply_get_an_error_naming_the_limit(
        coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator(server={"max_message_size": 64 * 1024})
    big = p.encode(p.Request(req_id=7, op="create_task", args={"command": "echo " + "x" * 100_000}))
    reply = raw_request(coord.endpoint("clients"), big)
    assert reply.req_id == 7 and not reply.ok and "over the coordinator's limit of 65536 bytes" in reply.error
    coord.request("create_tasks", {"tasks": [{"command": "echo " + "y" * 500} for _ in range(300)]})
    listing = raw_request(coord.endpoint("clients"), p.encode(p.Request(req_id=8, op="list_tasks",
                                                                         args={"limit": 1000})))
    assert not listing.ok and "ask for fewer rows" in listing.error
    page = raw_request(coord.endpoint("clients"), p.encode(p.Request(req_id=9, op="list_tasks",
                                                                      args={"limit": 50, "offset": 50})))
    assert page.ok and len(page.data) == 50


@pytest.mark.parametrize(("args", "field"), [
    ({"command": "true", "priority": 2**63}, "$.priority"),
    ({"command": "true", "timeout": float("nan")}, "$.timeout"),
    ({"command": "true", "timeout": float("inf")}, "$.timeout"),
    ({"command": "true", "cpu_slots": 10**9}, "$.cpu_slots"),
    ({"command": "x" * (2 * 1024 * 1024)}, "$.command"),
])
def test_numbers_and_sizes_out_of_range_are_refused_naming_the_field(coordinator: Callable[..., Coordinator],
                                                                      args: dict[str, Any], field: str) -> None:
    coord = coordinator()
    with pytest.raises(ApiError, match=f"at `\\{field}`"):
        coord.request("create_task", args)
    assert sum(coord.request("get_status")["tasks"].values()) == 0


# ----------------------------------------------------------------------------------- wait


def test_wait_answers_when_the_tasks_end_and_at_its_timeout(coordinator: Callable[..., Coordinator],
                                                           fakes: Callable[..., FakeAgent]) -> None:
    coord = coordinator()
    fake = fakes(coord.endpoint("agents"), "w1")
    register(fake, "i1", slots=4)
    ids = coord.request("create_tasks", {"tasks": [{"command": "true"} for _ in range(3)]})["task_ids"]
    specs = fake.recv(p.Assign).tasks
    while len(specs) < 3:
        specs += fake.recv(p.Assign).tasks
    with ThreadPoolExecutor(1) as pool:
        waiting: Future[Any] = pool.submit(coord.request, "wait", {"task_ids": ids, "timeout": 30})
        short = coord.request("wait", {"task_ids": ids[:1], "timeout": 0.1})
        assert short["timed_out"] and short["pending"] == ids[:1]
        assert not waiting.done()
        fake.send(p.Results(results=[success(s.task_id, s.attempt, f"r-{s.task_id}") for s in specs]))
        done = waiting.result(10)
    assert not done["timed_out"] and done["finished"] == dict.fromkeys(ids, p.COMPLETED)
    assert done["counts"] == {p.COMPLETED: 3}
    with pytest.raises(ApiError, match="wait: no task nope"):
        coord.request("wait", {"task_ids": ["nope"]})


# ----------------------------------------------------------------------------------- bad disks


def test_a_disk_that_refuses_writes_acknowledges_nothing_refuses_submissions_and_recovers(
        coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    coord.request("create_task", {"type": "noop", "requirements": {"tags": ["nobody"]}})
    store = coord.store
    (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
    # SQLite's own "database or disk is full", as a full disk would give it.
    store.conn.execute(f"PRAGMA max_page_count={pages}")
    with ThreadPoolExecutor(1) as pool:
        big = [{"type": "noop", "parameters": {"pad": "z" * 2000}, "requirements": {"tags": ["nobody"]}}
               for _ in range(200)]
        first: Future[Any] = pool.submit(coord.request, "create_tasks", {"tasks": big}, 30.0)
        wait_until(lambda: store.failing, 10)
        assert not first.done()  # not stored, so not acknowledged
        with pytest.raises(ApiError, match="database cannot be written right now .*full"):
            coord.request("create_task", {"type": "noop"})
        assert coord.request("get_status")["db"]["last_write_error"]  # reads go on, and say why
        store.conn.execute("PRAGMA max_page_count=1073741823")
        ids = first.result(20)["task_ids"]
    db = sqlite3.connect(f"file:{coord.s.db_path}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(ids))
        assert db.execute(f"SELECT count(*) FROM tasks WHERE task_id IN ({marks})", ids).fetchone()[0] == 200
    finally:
        db.close()
    assert not store.failing
    coord.request("create_task", {"type": "noop"})


def test_concurrent_clients_all_get_their_replies_after_commit(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    errors: list[ApiError] = []
    got: list[str] = []

    def client() -> None:
        try:
            for _ in range(20):
                got.extend(coord.request("create_tasks", {"tasks": [{"type": "noop",
                                                                     "requirements": {"tags": ["n"]}}] * 5})
                           ["task_ids"])
        except ApiError as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    db = connect_readonly(coord.s.db_path)
    try:
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == len(got) == 400
    finally:
        db.close()


def test_ctrl_c_while_waiting_leaves_the_tasks_running_and_says_how_to_cancel(
        serve: Callable[..., Serve], dtf_env: dict[str, str]) -> None:
    import subprocess

    from tests.helpers import dtf_command

    s = serve()
    s.start_agent("sleeper", slots=1)
    s.wait_workers_online("sleeper")
    # SIGINT back to its default in the child: a test run started in the background (as CI may be)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([*dtf_command("dtf"), "submit", "--command", "sleep 60", "--wait"], env=dtf_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        running = wait_until(lambda: [t for t in s.call("list_tasks") if t["status"] == p.RUNNING], 20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err
    assert "1 task(s) go on running" in err and running[0]["task_id"] in err
    assert s.task(running[0]["task_id"])["status"] == p.RUNNING
    s.call("cancel_task", {"task_id": running[0]["task_id"]})


def test_a_recovered_task_waits_for_its_worker_but_not_once_it_came_back_without_it(
        coordinator: Callable[..., Coordinator], fakes: Callable[..., FakeAgent]) -> None:
    hm = {"heartbeat_timeout": 120.0}
    coord = coordinator(health_monitor=hm)
    second: Coordinator | None = None
    try:
        fake = fakes(coord.endpoint("agents"), "w1")
        register(fake, "life-1")
        tid = coord.request("create_task", {"command": "true"})["task_id"]
        (spec,) = fake.recv(p.Assign).tasks
        second = restart(coord, health_monitor=hm)
        other = fakes(second.endpoint("agents"), "w2")
        register(other, "other")
        # Held for w1 (up to the heartbeat timeout): w2 does not get it meanwhile...
        assert "for w1, which was running it" in second.request("get_task", {"task_id": tid})["why"]
        assert second.request("get_task", {"task_id": tid})["status"] == p.PENDING
        # The hold ends with this coordinator's life: it is not stored as a backoff deadline.
        assert second.store.query("SELECT retry_at FROM tasks WHERE task_id=?", (tid,)) == [(None,)]
        # ... and when w1 comes back as a new process that does not hold it, it waits no longer
        # (far sooner than the 120 s hold), under a new attempt, on whichever worker is free.
        register(fake, "life-2")
        task = wait_until(lambda: (t := second.request("get_task", {"task_id": tid}))["status"] == p.ASSIGNED and t,
                          10)
        assert task["attempt"] == spec.attempt + 1
    finally:
        if second is not None:
            second.stop()


def test_a_task_its_worker_stopped_listing_goes_back_to_the_queue(
        coordinator: Callable[..., Coordinator], fakes: Callable[..., FakeAgent]) -> None:
    coord = coordinator(health_monitor={"heartbeat_interval": 0.2, "heartbeat_timeout": 60.0})
    fake = fakes(coord.endpoint("agents"), "w1")
    register(fake, "i1", slots=2)
    tid = coord.request("create_task", {"command": "true"})["task_id"]
    (spec,) = fake.recv(p.Assign).tasks  # say the agent never got it: its heartbeats do not list it

    def reassigned() -> p.Assign | None:
        fake.send(p.Heartbeat(running=[]))
        try:
            return fake.recv(p.Assign, timeout=0.3)
        except AssertionError:
            return None

    again = wait_until(reassigned, 20)
    assert again.tasks[0].task_id == tid and again.tasks[0].attempt == spec.attempt + 1
    assert coord.sched.task(tid).lost == 0  # not the worker's fault: not counted against lost_limit


def test_an_assignment_not_stored_before_a_crash_is_claimed_with_its_attempt(
        coordinator: Callable[..., Coordinator], fakes: Callable[..., FakeAgent]) -> None:
    coord = coordinator()
    second: Coordinator | None = None
    try:
        fake = fakes(coord.endpoint("agents"), "w1")
        register(fake, "life-1")
        tid = coord.request("create_task", {"command": "true"})["task_id"]
        (spec,) = fake.recv(p.Assign).tasks
        coord.stop()
        # As after a kill -9 between sending the assignment and committing it: the row still
        # says pending, attempt 0.
        db = sqlite3.connect(coord.s.db_path)
        db.execute("UPDATE tasks SET status='pending', attempt=0, worker_id=NULL WHERE task_id=?", (tid,))
        db.commit()
        db.close()
        second = restart(coord)
        register(fake, "life-1", running=(tid,), attempts={tid: spec.attempt})
        task = wait_until(lambda: (t := second.request("get_task", {"task_id": tid}))["status"] == p.RUNNING and t,
                          10)
        assert (task["worker_id"], task["attempt"]) == ("w1", spec.attempt)
        fake.send(p.Results(results=[success(tid, spec.attempt, "r-claimed")]))
        fake.recv(p.ResultAck)
        wait_until(lambda: second.request("get_task", {"task_id": tid})["status"] == p.COMPLETED, 10)
        # The next attempt (a retry) would be spec.attempt + 1: the scheduler took the claim.
        assert second.sched.task(tid).attempt == spec.attempt
    finally:
        if second is not None:
            second.stop()
