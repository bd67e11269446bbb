"""Scheduling rules through the whole stack: `dtf serve`, real `dtf-agent` processes, real tasks.

The rules themselves are unit-tested on the state machine (tests/unit/test_scheduler*.py); here
we check that the coordinator carries them out with real agents: priorities, dependencies,
requirements (tags), retries with backoff, pinning with `dtf assign`.
"""

from __future__ import annotations

from typing import Any

import pytest

from dtf_gui.client import ClientError
from tests.helpers import cli, wait_until

FAST_RETRIES = """\
task_scheduler:
  retry_backoff_base: 0.05
  retry_backoff_max: 0.2
health_monitor:
  heartbeat_interval: 0.5
  heartbeat_timeout: 5
"""


def submit(s: Any, **fields: Any) -> str:
    return s.call("create_task", fields)["task_id"]


def test_higher_priority_runs_first_and_dependencies_wait(serve):
    s = serve(FAST_RETRIES)
    s.start_agent("solo", slots=1)
    s.wait_workers_online("solo")
    blocker = submit(s, command="sleep 30")
    s.wait_task_status(blocker, "running")
    # Queued while the only slot is busy: the order they run in is the scheduler's choice.
    low = [submit(s, command="echo low", priority=1) for _ in range(3)]
    first = submit(s, command="echo first", priority=9)
    after = submit(s, command="echo after", priority=9, dependencies=[low[-1]])
    assert "waiting for dependencies" in s.task(after)["why"]
    s.call("cancel_task", {"task_id": blocker})
    for tid in [*low, first, after]:
        s.wait_task_status(tid, "completed")
    tasks = {tid: s.task(tid) for tid in [*low, first, after]}
    assert tasks[first]["start_time"] < min(tasks[t]["start_time"] for t in low), "priority 9 must run first"
    assert tasks[after]["start_time"] >= tasks[low[-1]]["end_time"], "a dependent started before its dependency"


def test_failed_dependency_fails_its_dependents_with_the_reason(serve):
    s = serve(FAST_RETRIES)
    s.start_agent("a", slots=2)
    s.wait_workers_online("a")
    root = submit(s, command="exit 3", retry_limit=0)
    child = submit(s, command="echo never", dependencies=[root])
    s.wait_task_status(root, "failed")
    t = s.wait_task_status(child, "failed")
    assert f"dependency {root} failed" in (t["error"] or t["why"])
    assert t["result_list"] == [], "a dependent of a failed task must not run"


def test_cycle_and_unknown_dependency_are_refused_at_submit(serve, dtf_env):
    s = serve()
    out = cli(dtf_env, "submit", "--command", "true", "--depends-on", "no-such-task")
    assert out.returncode != 0
    assert "unknown dependency no-such-task" in out.stderr
    with pytest.raises(ClientError, match="cycle"):
        s.call("create_tasks", {"tasks": [
            {"task_id": "c1", "command": "true", "dependencies": ["c2"]},
            {"task_id": "c2", "command": "true", "dependencies": ["c1"]},
        ]})
    assert s.call("get_status")["tasks"]["pending"] == 0, "a refused submission must add nothing"


def test_tags_place_tasks_and_an_impossible_task_says_why(serve):
    s = serve(FAST_RETRIES)
    s.start_agent("plain", slots=2)
    s.start_agent("gpu-box", 2, None, "--tags", "gpu,lab-3")
    s.wait_workers_online("plain", "gpu-box")
    gpu_tasks = [submit(s, command="echo gpu", requirements={"tags": ["gpu"]}) for _ in range(6)]
    impossible = submit(s, command="echo fpga", requirements={"tags": ["fpga"]})
    for tid in gpu_tasks:
        assert s.wait_task_status(tid, "completed")["worker_id"] == "gpu-box"
    t = s.task(impossible)
    assert t["status"] == "pending"
    assert "unschedulable" in t["why"] and "fpga" in t["why"]
    listed = cli(s.env, "tasks", "--status", "pending")
    assert impossible in listed.stdout and "unschedulable" in listed.stdout


def test_failed_attempts_retry_up_to_the_limit_then_stay_failed(serve):
    s = serve(FAST_RETRIES)
    s.start_agent("a", slots=1)
    s.wait_workers_online("a")
    tid = submit(s, command="echo attempt $DTF_ATTEMPT; exit 1", retry_limit=2)
    t = s.wait_task_status(tid, "failed")
    results = sorted(t["result_list"], key=lambda r: r["attempt"])
    assert [r["attempt"] for r in results] == [1, 2, 3]
    assert [r["raw_data"]["stdout_tail"].strip() for r in results] == ["attempt 1", "attempt 2", "attempt 3"]
    assert "exit code 1" in t["error"]
    # An engineer can send it round once more: a new round, with its retry budget, numbered on.
    again = s.call("retry_task", {"task_id": tid})
    assert again["status"] in ("pending", "assigned", "running")
    wait_until(lambda: len(s.task(tid)["result_list"]) == 6, 20)
    t = s.wait_task_status(tid, "failed")
    assert sorted(r["attempt"] for r in t["result_list"]) == [1, 2, 3, 4, 5, 6]


def test_dtf_assign_pins_a_waiting_task_to_the_chosen_worker(serve):
    s = serve(FAST_RETRIES)
    s.start_agent("left", slots=1)
    s.start_agent("right", slots=1)
    s.wait_workers_online("left", "right")
    blockers = {submit(s, command="sleep 30") for _ in range(2)}
    wait_until(lambda: {s.task(b)["status"] for b in blockers} == {"running"}, 20)
    on = {s.task(b)["worker_id"]: b for b in blockers}
    task = submit(s, command="echo pinned")
    out = cli(s.env, "assign", task, "right")
    assert out.returncode == 0, out.stderr
    assert "pinned to right" in out.stdout
    # The other worker frees up first, yet the pinned task waits for the one it was given.
    s.call("cancel_task", {"task_id": on["left"]})
    wait_until(lambda: s.task(on["left"])["status"] == "cancelled", 10)
    # Give the scheduler a chance to (wrongly) use the free worker: another task goes there at once.
    probe = submit(s, command="echo probe")
    assert s.wait_task_status(probe, "completed")["worker_id"] == "left"
    assert s.task(task)["status"] == "pending"
    s.call("cancel_task", {"task_id": on["right"]})
    t = s.wait_task_status(task, "completed")
    assert t["worker_id"] == "right"
    bad = cli(s.env, "assign", task, "nowhere")
    assert bad.returncode != 0 and "no worker 'nowhere'" in bad.stderr


def test_worker_cap_keeps_one_submission_on_one_worker_at_a_time(coordinator, procs):
    from dtf_gui.client import Client
    from tests.helpers import dtf_command

    coord = coordinator(load_balancer={"worker_cap": 1, "strategy": "fair_share"})
    for name in ("w1", "w2"):
        procs.start(name, dtf_command("dtf-agent") + ["--coordinator", coord.endpoint("agents"), "--worker-id",
                                                      name, "--slots", "2"])
    with Client(coord.endpoint("clients")) as c:
        wait_until(lambda: c.call("get_status")["workers_online"] == 2, 20)
        first = c.call("create_tasks", {"tasks": [{"command": "sleep 0.4"}] * 6})["task_ids"]
        second = c.call("create_tasks", {"tasks": [{"command": "sleep 0.4"}] * 2})["task_ids"]
        seen: list[set[str]] = []

        def all_done() -> bool:
            tasks = [c.call("get_task", {"task_id": t}) for t in first]
            seen.append({t["worker_id"] for t in tasks if t["status"] in ("assigned", "running")})
            return all(t["status"] == "completed" for t in tasks)

        wait_until(all_done, 30)
        # Never two workers at once for one submission, though both had free slots at the start.
        assert all(len(workers) <= 1 for workers in seen), seen
        # The other submission was not kept waiting behind it: it had a worker of its own.
        wait_until(lambda: all(c.call("get_task", {"task_id": t})["status"] == "completed" for t in second), 20)


def test_an_agent_clock_far_ahead_does_not_stall_retry_backoff(coordinator):
    """An agent's clock is display data: its times must not move the scheduler's clock (a day ahead
    used to push the retry's backoff a day into the future)."""
    import time

    from dtf_agent import protocol as p
    from tests.helpers import FakeAgent

    coord = coordinator(task_scheduler={"retry_backoff_base": 0.05, "retry_backoff_max": 0.2})
    fake = FakeAgent(coord.endpoint("agents"), "fast-clock")
    try:
        fake.register()
        fake.recv(p.Welcome)
        tid = coord.request("create_task", {"command": "true", "retry_limit": 1})["task_id"]
        (spec,) = fake.recv(p.Assign).tasks
        ahead = time.time() + 86_400
        fake.send(p.TaskStarted(task_ids=[tid], time=ahead))
        fake.send(p.Results(results=[p.ResultRecord(result_id="r1", task_id=tid, status="failure", error="boom",
                                                     start_time=ahead, end_time=ahead + 1, attempt=spec.attempt)]))
        (again,) = fake.recv(p.Assign, timeout=10).tasks  # the retry, after a backoff of at most 0.2 s
        assert (again.task_id, again.attempt) == (tid, spec.attempt + 1)
        shown = coord.request("get_task", {"task_id": tid})
        assert shown["result_list"][0]["timestamp"] == ahead + 1  # what the agent said is still shown
    finally:
        fake.close()
