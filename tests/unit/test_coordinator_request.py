"""In-process requests (the window's path to the coordinator): same operations, same errors, no socket."""

from __future__ import annotations

import queue
import threading

import pytest

from dtf_agent import protocol as p
from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.server import Coordinator
from tests.helpers import wait_until


def test_request_runs_operations_in_the_loop(coordinator):
    coord = coordinator()
    task = coord.request("create_task", {"type": "noop"})
    assert coord.request("get_task", {"task_id": task["task_id"]})["status"] == "pending"
    assert coord.request("get_status")["tasks"]["pending"] == 1


def test_request_errors_carry_the_reason(coordinator):
    coord = coordinator()
    with pytest.raises(ApiError, match="unknown operation 'nope'"):
        coord.request("nope")
    with pytest.raises(ApiError, match="invalid arguments"):
        coord.request("create_task", {"priorty": 3})
    with pytest.raises(ApiError, match="needs a command"):
        coord.request("create_task", {"type": "command"})


def test_deferred_analysis_answers_through_request(coordinator):
    coord = coordinator()
    data = coord.request("aggregate_results", {"aggregation_level": "test_id"})
    assert data["basic_statistics"] == {}


def test_many_threads_may_ask_at_once(coordinator):
    coord = coordinator()
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            for _ in range(20):
                coord.request("create_task", {"type": "noop"})
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert coord.request("get_status")["tasks"]["pending"] == 80


def test_request_to_a_stopped_coordinator_says_so(tmp_path):
    coord = Coordinator(ephemeral_settings(tmp_path / "x.sqlite"))
    with pytest.raises(ApiError, match="not running"):
        coord.request("get_status")


def test_a_refused_task_never_enters_the_table(coordinator):
    coord = coordinator()
    # Out of range is refused at the door with the field named; the scheduler validates the rest.
    with pytest.raises(ApiError, match=r"Expected `int` >= 1 - at `\$.cpu_slots`"):
        coord.request("create_task", {"type": "noop", "task_id": "bad-1", "cpu_slots": 0})
    with pytest.raises(ApiError, match="no task 'bad-1'"):
        coord.request("get_task", {"task_id": "bad-1"})
    with pytest.raises(ApiError, match="submission refused.*unknown dependency nowhere"):
        coord.request("create_tasks", {"tasks": [{"type": "noop", "task_id": "ok-1"},
                                                 {"type": "noop", "dependencies": ["nowhere"]}]})
    with pytest.raises(ApiError, match="no task 'ok-1'"):
        coord.request("get_task", {"task_id": "ok-1"})
    assert sum(coord.request("get_status")["tasks"].values()) == 0


def test_a_priority_change_reaches_listeners_at_once(tmp_path):
    seen: queue.SimpleQueue[p.Event] = queue.SimpleQueue()

    def sink(events: list[p.Event]) -> None:
        for e in events:
            seen.put(e)

    coord = Coordinator(ephemeral_settings(tmp_path / "p.sqlite"), event_sinks=[sink]).start()
    try:
        tid = coord.request("create_task", {"type": "noop", "priority": 2})["task_id"]  # no worker: it waits
        priorities: list[int] = []

        def task_event_with(priority: int) -> bool:
            while not seen.empty():
                e = seen.get()
                if e.kind == "task" and e.data["task_id"] == tid:
                    priorities.append(e.data["priority"])
            return priority in priorities

        # The submission's own event has gone out; nothing else will happen to the task...
        wait_until(lambda: task_event_with(2), 5, message=lambda: f"task events seen: priorities {priorities}")
        coord.request("set_priority", {"task_id": tid, "priority": 9})
        # ...so only the change itself can bring the next one.
        wait_until(lambda: task_event_with(9), 5, message=lambda: f"task events seen: priorities {priorities}")
        assert coord.request("get_task", {"task_id": tid})["priority"] == 9
    finally:
        coord.stop()
