"""cancel_tasks / retry_tasks / assign_tasks on a real in-process coordinator: each task through the
single-task path, a refusal recorded with the single-task op's own reason, the others acted on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dtf_agent import protocol as p
from dtf_gui.coordinator.api import MAX_BATCH, ApiError
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.server import Coordinator
from dtf_gui.coordinator.trust import role_needed
from tests.helpers import FakeAgent

NOWHERE = {"worker": "nowhere"}  # pinned to a worker that never comes: stays pending


def _reason(coord: Coordinator, op: str, args: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as err:
        coord.request(op, args)
    return str(err.value)


def _submit(coord: Coordinator, n: int) -> list[str]:
    tasks = [{"type": "noop", "requirements": NOWHERE} for _ in range(n)]
    return coord.request("create_tasks", {"tasks": tasks})["task_ids"]


@pytest.fixture
def coord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    c = Coordinator(ephemeral_settings(tmp_path / "db.sqlite", security={"insecure": True})).start()
    try:
        yield c
    finally:
        c.stop()


def test_cancel_tasks_acts_on_each_and_records_refusals(coord: Coordinator) -> None:
    ids = _submit(coord, 5)
    assert coord.request("cancel_task", {"task_id": ids[0]})["status"] == p.CANCELLED
    already = _reason(coord, "cancel_task", {"task_id": ids[0]})
    unknown = _reason(coord, "cancel_task", {"task_id": "nope"})
    out = coord.request("cancel_tasks", {"task_ids": [ids[0], *ids[1:], "nope"]})
    assert out == {"done": ids[1:], "refused": {ids[0]: already, "nope": unknown}}
    assert all(coord.request("get_task", {"task_id": t})["status"] == p.CANCELLED for t in ids)
    # Again: every one refused now, with the single op's reason, and nothing raised.
    again = coord.request("cancel_tasks", {"task_ids": ids[1:3]})
    assert again["done"] == [] and again["refused"][ids[1]] == already.replace(ids[0], ids[1])


def test_retry_tasks_retries_the_ended_and_refuses_the_waiting(coord: Coordinator) -> None:
    ids = _submit(coord, 4)
    coord.request("cancel_tasks", {"task_ids": ids[:2]})
    waiting = _reason(coord, "retry_task", {"task_id": ids[3]})
    out = coord.request("retry_tasks", {"task_ids": ids})
    assert out["done"] == ids[:2]
    assert set(out["refused"]) == {ids[2], ids[3]}
    assert out["refused"][ids[3]] == waiting
    assert out["refused"][ids[2]] == waiting.replace(ids[3], ids[2])
    assert all(coord.request("get_task", {"task_id": t})["status"] == p.PENDING for t in ids)


def test_assign_tasks_pins_to_a_worker_and_refuses_an_unknown_one(coord: Coordinator) -> None:
    agent = FakeAgent(coord.endpoint("agents"), "w1")
    try:
        agent.register(slots=1)
        agent.recv(p.Welcome)
        # w1's one slot is taken by a task it never finishes: what follows waits, and may be pinned.
        coord.request("create_task", {"type": "noop"})
        agent.recv(p.Assign)
        ids = coord.request("create_tasks", {"tasks": [{"type": "noop"} for _ in range(3)]})["task_ids"]
        ghost = _reason(coord, "assign_task", {"task_id": ids[0], "worker_id": "ghost"})
        out = coord.request("assign_tasks", {"task_ids": ids, "worker_id": "ghost"})
        assert out["done"] == [] and out["refused"][ids[0]] == ghost and len(out["refused"]) == 3
        coord.request("cancel_task", {"task_id": ids[2]})
        refused = _reason(coord, "assign_task", {"task_id": ids[2], "worker_id": "w1"})
        out = coord.request("assign_tasks", {"task_ids": ids, "worker_id": "w1"})
        assert out == {"done": ids[:2], "refused": {ids[2]: refused}}
        assert all("w1" in coord.request("get_task", {"task_id": t})["why"] for t in ids[:2])
    finally:
        agent.close()


def test_batch_bounds_and_roles(coord: Coordinator) -> None:
    with pytest.raises(ApiError, match="invalid arguments"):
        coord.request("cancel_tasks", {"task_ids": []})
    with pytest.raises(ApiError, match="invalid arguments"):
        coord.request("retry_tasks", {"task_ids": ["a"] * (MAX_BATCH + 1)})
    with pytest.raises(ApiError, match="invalid arguments"):
        coord.request("assign_tasks", {"task_ids": ["a"]})  # no worker
    with pytest.raises(ApiError, match="invalid arguments"):
        coord.request("cancel_tasks", {"task_ids": ["a"], "force": True})
    for op in ("cancel_tasks", "retry_tasks", "assign_tasks"):
        assert role_needed(op) == "operator"
