"""In-process requests (the window's path to the coordinator): same operations, same errors, no socket."""

from __future__ import annotations

import threading

import pytest

from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.server import Coordinator


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
