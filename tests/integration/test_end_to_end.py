"""End to end: `dtf serve` and `dtf-agent` as real subprocesses on loopback, SQLite checked
through a read-only connection of its own.

Each test gets its own $DTF_HOME, its own free ports and its own database; every process it
starts (and every task tree those start) is killed at teardown.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from typing import Any

import pytest

from dtf_agent import protocol as p
from tests.helpers import FakeAgent, alive, cli, find_descendants, results_per_task, wait_until


def completed_count(serve: Any) -> int:
    return serve.call("get_status")["tasks"]["completed"]


def db_rows(serve: Any, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = serve.db()
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# ------------------------------------------------------------------------------ many tasks


def test_200_command_tasks_complete_with_exactly_one_result_each(serve):
    s = serve()
    s.start_agent("agent-a", slots=2)
    s.start_agent("agent-b", slots=2)
    s.wait_workers_online("agent-a", "agent-b")

    ids = s.call("create_tasks", {"tasks": [{"command": "echo $DTF_TASK_ID"} for _ in range(200)]})["task_ids"]
    assert len(set(ids)) == 200

    wait_until(lambda: completed_count(s) == 200, 90,
               message=lambda: f"status {s.call('get_status')['tasks']}\n{s.tracker.logs()}")

    # The database (read through a connection of our own) says the same once the writer has
    # flushed: every task completed, exactly one result row per task.
    def all_completed_in_db() -> bool:
        rows = db_rows(s, "SELECT status, COUNT(*) FROM tasks GROUP BY status")
        return dict(rows) == {"completed": 200}

    wait_until(all_completed_in_db, 10, message=lambda: str(db_rows(s, "SELECT status, COUNT(*) FROM tasks "
                                                                      "GROUP BY status")))
    wait_until(lambda: len(results_per_task(s.db())) == 200, 10)
    conn = s.db()
    try:
        per_task = results_per_task(conn)
        rows = conn.execute("SELECT task_id, worker_id, status, exit_code, raw_data FROM results").fetchall()
    finally:
        conn.close()
    assert set(per_task) == set(ids)
    assert set(per_task.values()) == {1}, {k: v for k, v in per_task.items() if v != 1}
    assert len(rows) == 200
    for r in rows:
        assert (r["status"], r["exit_code"]) == ("success", 0)
        # Each task ran with its own id in the environment and its output came back with it.
        assert json.loads(r["raw_data"])["stdout_tail"] == r["task_id"] + "\n"
    assert {r["worker_id"] for r in rows} == {"agent-a", "agent-b"}, "both agents should have worked"


# ------------------------------------------------------------------------------ timeout and cancel


def test_task_past_its_timeout_fails_and_its_process_tree_is_gone(serve):
    s = serve()
    agent = s.start_agent("agent-t", slots=1)
    s.wait_workers_online("agent-t")
    t = s.call("create_task", {"command": "sleep 3101 & sleep 3101 & wait", "timeout": 2.0, "retry_limit": 0})

    sleepers = wait_until(lambda: (lambda f: f if len(f) == 2 else None)(find_descendants(agent.pid, "sleep 3101")),
                          15, message=s.tracker.logs)
    s.tracker.adopt(sleepers)
    done = s.wait_task_status(t["task_id"], "failed", "completed", "cancelled", timeout=30)
    assert done["status"] == "failed"
    assert "timed out" in (done["error"] or "")
    assert not alive(sleepers), f"task processes outlived the timeout: {sleepers}"
    assert find_descendants(agent.pid, "sleep 3101") == []
    (res,) = done["result_list"]
    assert res["status"] == "failure" and "timed out" in res["error"]


def test_cancel_of_a_running_task_kills_it_and_frees_the_slot(serve, dtf_env):
    s = serve()
    agent = s.start_agent("agent-c", slots=1)
    s.wait_workers_online("agent-c")
    t = s.call("create_task", {"command": "sleep 3102 & sleep 3102 & wait"})
    tid = t["task_id"]
    s.wait_task_status(tid, "running")
    sleepers = wait_until(lambda: (lambda f: f if len(f) == 2 else None)(find_descendants(agent.pid, "sleep 3102")),
                          15, message=s.tracker.logs)
    s.tracker.adopt(sleepers)

    out = cli(dtf_env, "cancel", tid)
    assert out.returncode == 0, out.stderr
    assert f"{tid}: cancelled" in out.stdout

    assert s.wait_task_status(tid, "cancelled")["status"] == "cancelled"
    wait_until(lambda: not alive(sleepers), 15, message=lambda: f"still running after cancel: {alive(sleepers)}")
    # The agent's only slot is free again: the next task runs and completes.
    after = s.call("create_task", {"command": "echo after-cancel"})
    done = s.wait_task_status(after["task_id"], "completed", "failed", timeout=30)
    assert done["status"] == "completed"
    assert done["result_list"][0]["raw_data"]["stdout_tail"] == "after-cancel\n"
    # Cancelling a finished task is refused with a reason, not silently accepted.
    again = cli(dtf_env, "cancel", tid)
    assert again.returncode == 1 and "cancel" in again.stderr and "cancelled" in again.stderr


# ------------------------------------------------------------------------------ duplicates


def test_a_resent_result_is_acknowledged_every_time_and_stored_once(serve):
    s = serve()
    fake = FakeAgent(s.agent_endpoint, "fake-agent")
    try:
        fake.register(slots=1)
        fake.recv(p.Welcome)
        t = s.call("create_task", {"command": "echo never-run", "test_id": "dup-test"})
        assign = fake.recv(p.Assign)
        (spec,) = assign.tasks
        assert spec.task_id == t["task_id"]
        fake.send(p.TaskStarted(task_ids=[spec.task_id], time=1.0))
        rec = p.ResultRecord(result_id="fake-agent-r1", task_id=spec.task_id, status="success", start_time=1.0,
                             end_time=2.0, execution_time=1.0, exit_code=0, metrics={"throughput": 42.0},
                             attempt=spec.attempt)
        # The same result twice in one frame, as an agent resending after a reconnect might.
        fake.send(p.Results(results=[rec, rec]))
        acked: list[str] = []
        while len(acked) < 2:
            acked += fake.recv(p.ResultAck).result_ids
        assert acked == ["fake-agent-r1", "fake-agent-r1"]
        assert s.wait_task_status(spec.task_id, "completed")["status"] == "completed"

        # Resent again after the task finished (the ack got lost, say): acknowledged, not stored.
        fake.send(p.Results(results=[rec]))
        assert fake.recv(p.ResultAck).result_ids == ["fake-agent-r1"]
        # A result for a task the coordinator never heard of: acknowledged so that the agent
        # stops resending, and dropped.
        stray = p.ResultRecord(result_id="fake-agent-r2", task_id="no-such-task", status="success")
        fake.send(p.Results(results=[stray]))
        assert fake.recv(p.ResultAck).result_ids == ["fake-agent-r2"]

        wait_until(lambda: db_rows(s, "SELECT COUNT(*) FROM results WHERE task_id=?", (spec.task_id,))[0][0] == 1, 10)
        # Give the writer a chance to (wrongly) flush a second copy: another round trip through the
        # coordinator's loop, then read again.
        s.call("list_workers")
        rows = db_rows(s, "SELECT result_id, worker_id, test_id, status FROM results")
        assert [tuple(r) for r in rows] == [("fake-agent-r1", "fake-agent", "dup-test", "success")]
        metrics = db_rows(s, "SELECT name, value FROM metrics WHERE result_id='fake-agent-r1'")
        assert [tuple(m) for m in metrics] == [("throughput", 42.0)]
        counters = s.call("get_status")["counters"]
        assert counters["results_stored"] == 1
        assert counters["duplicate_results"] == 3
    finally:
        fake.close()


# ------------------------------------------------------------------------------ a lost agent

FAST_HEALTH = """\
health_monitor:
  heartbeat_interval: 0.5
  heartbeat_timeout: 3
"""


def test_killed_agent_goes_offline_and_its_task_finishes_on_the_other(serve):
    s = serve(FAST_HEALTH)
    # Only agent-slow's environment makes the task hang, so where it ran is never in doubt and
    # the test does not depend on how the scheduler numbers attempts.
    doomed = s.start_agent("agent-slow", 1, {"DTF_TEST_HANG": "1"})
    s.wait_workers_online("agent-slow")
    command = 'if [ -n "$DTF_TEST_HANG" ]; then sleep 3103; fi; echo "finished $DTF_TASK_ID"'
    t = s.call("create_task", {"command": command, "retry_limit": 0})
    tid = t["task_id"]
    running = s.wait_task_status(tid, "running")
    assert running["worker_id"] == "agent-slow"
    hang = wait_until(lambda: find_descendants(doomed.pid, "sleep 3103"), 15, message=s.tracker.logs)
    s.tracker.adopt(hang)  # its task outlives a SIGKILLed agent; the tracker cleans it up

    s.start_agent("agent-fast", 1)
    s.wait_workers_online("agent-fast")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(10)

    wait_until(lambda: s.worker_status("agent-slow") == "offline", 15,
               message=lambda: f"agent-slow is {s.worker_status('agent-slow')!r}\n{s.tracker.log('serve')}")
    done = s.wait_task_status(tid, "completed", "failed", "cancelled", timeout=30)
    assert done["status"] == "completed", done
    assert done["worker_id"] == "agent-fast"
    (res,) = done["result_list"]
    assert res["worker_id"] == "agent-fast" and res["raw_data"]["stdout_tail"] == f"finished {tid}\n"
    wait_until(lambda: db_rows(s, "SELECT worker_id FROM results WHERE task_id=?", (tid,)) != [], 10)
    assert [r[0] for r in db_rows(s, "SELECT worker_id FROM results WHERE task_id=?", (tid,))] == ["agent-fast"]
    offline = db_rows(s, "SELECT data FROM events WHERE kind='worker_offline' AND subject='agent-slow'")
    assert offline and "heartbeat" in json.loads(offline[0][0])["reason"]


# ------------------------------------------------------------------------------ the CLI


@pytest.mark.slow  # ~10 s: a dozen CLI processes
def test_cli_submit_wait_and_results_export(serve, dtf_env, tmp_path):
    s = serve("task_scheduler:\n  retry_limit: 0\n")  # the failing task below fails at once
    s.start_agent("agent-x", slots=2)
    s.wait_workers_online("agent-x")

    ok = cli(dtf_env, "submit", "--command", "echo hello-from-cli", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert ": completed" in ok.stdout and "hello-from-cli" in ok.stdout
    bad = cli(dtf_env, "submit", "--command", "exit 7", "--wait", "--json")
    assert bad.returncode == 1  # --wait exits 1 when a task failed
    (failed,) = json.loads(bad.stdout)
    assert failed["status"] == "failed" and "exit code 7" in failed["error"]
    assert len(failed["result_list"]) == 1  # retry_limit 0 from coordinator.yaml: one attempt

    metric_cmd = """echo "{\\"latency_ms\\": 2.5, \\"ops\\": $((3 * 4))}" > "$DTF_RESULT_FILE" """
    made = cli(dtf_env, "submit", "--command", metric_cmd, "--count", "3", "--test-id", "lat", "--wait")
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.splitlines()[-1].startswith("3 completed in ")

    wait_until(lambda: db_rows(s, "SELECT COUNT(*) FROM results WHERE test_id='lat'")[0][0] == 3, 10)
    conn = s.db()
    try:
        stored = {r["result_id"]: dict(r) for r in conn.execute("SELECT * FROM results")}
    finally:
        conn.close()

    out = cli(dtf_env, "results", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {r["result_id"] for r in rows} == set(stored)
    lat = [r for r in rows if r["test_id"] == "lat"]
    assert len(lat) == 3
    for r in lat:
        assert float(r["metric.latency_ms"]) == 2.5 and float(r["metric.ops"]) == 12.0
        assert r["status"] == "success" and r["exit_code"] == "0"
        assert r["task_id"] == stored[r["result_id"]]["task_id"]

    out = cli(dtf_env, "results", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data, list) and {d["result_id"] for d in data} == set(stored)
    for d in data:
        if d["test_id"] == "lat":
            assert d["metrics"] == {"latency_ms": 2.5, "ops": 12.0}

    target = tmp_path / "export.csv"
    out = cli(dtf_env, "results", "--format", "csv", "--output", str(target))
    assert out.returncode == 0 and out.stdout == ""
    assert len(list(csv.DictReader(target.open(encoding="utf-8")))) == len(stored)

    st = json.loads(cli(dtf_env, "status", "--json").stdout)
    assert st["workers_online"] == 1
    assert (st["tasks"]["completed"], st["tasks"]["failed"]) == (4, 1)
    workers = json.loads(cli(dtf_env, "workers", "--json").stdout)
    assert [w["worker_id"] for w in workers] == ["agent-x"]
    assert workers[0]["capabilities"]["cpu_count"] >= 1
    tasks = json.loads(cli(dtf_env, "tasks", "--json", "--limit", "100").stdout)
    assert len(tasks) == 5


def test_serve_stops_cleanly_on_sigterm(serve, dtf_home):
    s = serve()
    s.start_agent("agent-z", slots=1)
    s.wait_workers_online("agent-z")
    t = s.call("create_task", {"command": "echo before-stop"})
    assert s.wait_task_status(t["task_id"], "completed")["status"] == "completed"
    s.close()
    assert s.tracker.stop(s.proc, grace=15) == 0, s.tracker.log("serve")
    assert not (dtf_home / "coordinator.json").exists(), "a stopped coordinator must not be found by the CLI"
    # Everything queued reached the database before the process went, and it says who is gone.
    conn = s.db()
    try:
        assert conn.execute("SELECT status FROM tasks").fetchall()[0][0] == "completed"
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
        assert conn.execute("SELECT status FROM workers WHERE worker_id='agent-z'").fetchone()[0] == "offline"
    finally:
        conn.close()
