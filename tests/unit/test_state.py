"""What comes back from SQLite after a restart (state.recover), on a real store, no sockets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dtf_agent import protocol as p
from dtf_gui.coordinator.records import Result, TaskRecord
from dtf_gui.coordinator.scheduler import Requirements, Scheduler, SchedulerConfig, StatusChanged, TaskSpec
from dtf_gui.coordinator.state import TaskTable, recover
from dtf_gui.coordinator.store import Store


def task(task_id: str, status: str, test_id: str = "", **spec: Any) -> TaskRecord:
    return TaskRecord(TaskSpec(task_id=task_id, test_id=test_id, **spec), type="command",
                      parameters={"command": "true"}, timeout=None, metadata=None, create_time=time.time(),
                      status=status)


def test_duration_history_is_seeded_so_placement_remembers_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "d.sqlite")
    runs = {"cpu-test": [10.0, 12.0, 11.0, 50.0], "gpu-test": [3.0, 4.0]}
    n = 0
    for test_id, durations in runs.items():
        req = Requirements(hardware="CUDA") if test_id == "gpu-test" else Requirements()
        for d in durations:
            n += 1
            store.put_task(task(f"t{n}", p.COMPLETED, test_id, requirements=req))
            store.put_result(Result(result_id=f"r{n}", task_id=f"t{n}", worker_id="w", test_id=test_id,
                                    timestamp=float(n), execution_time=d))
    n += 1  # a failed run says nothing about how long the test takes
    store.put_task(task(f"t{n}", p.FAILED, "cpu-test"))
    store.put_result(Result(result_id=f"r{n}", task_id=f"t{n}", worker_id="w", test_id="cpu-test",
                            timestamp=float(n), status="failure", execution_time=999.0))
    store.flush()
    sched = Scheduler(SchedulerConfig(history_window=3))
    recover(store, sched, TaskTable(), hold=10.0)
    store.close()
    # The last three successful runs, by time: 12, 11, 50 -> median 12.
    assert sched.predictor.predict("cpu-test", "cpu") == 12.0
    assert sched.predictor.samples("cpu-test", "cpu") == 3
    assert sched.predictor.predict("gpu-test", "cuda") == 3.5  # keyed as the scheduler keys it: lower case


def test_unfinished_tasks_come_back_pending_and_finished_ones_stay_in_sqlite(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.sqlite")
    store.put_task(task("waiting", p.PENDING))
    running = task("was-running", p.RUNNING)
    running.worker_id = "gone"
    running.attempt = 1
    store.put_task(running)
    store.put_task(task("done", p.COMPLETED))
    store.put_task(task("orphan", p.PENDING, dependencies=("never-stored",)))
    store.flush()
    table = TaskTable()
    sched = Scheduler()
    ins, held = recover(store, sched, table, hold=30.0)
    assert sorted(table.active) == ["waiting", "was-running"]
    # The running one waits for its worker to come back and claim it, rather than run twice.
    assert held == {"was-running": "gone"}
    assert "for gone, which was running it before the coordinator restarted" in sched.why_waiting("was-running")
    assert {i.task_id for i in ins if isinstance(i, StatusChanged) and i.status == p.PENDING} == \
        {"waiting", "was-running"}
    assert sched.task_state("done") is None and table.get("done") is None
    # Nothing is left pending forever: a task that cannot come back ends failed, saying why.
    store.flush()
    (orphan,) = store.load_tasks("WHERE task_id='orphan'")
    counts = table.status_counts()
    store.close()
    assert orphan["status"] == p.FAILED
    assert orphan["status_reason"] == "not recovered after a coordinator restart: unknown dependency never-stored"
    # Status counts the whole database, not only what happened since the start.
    assert counts[p.COMPLETED] == 1 and counts[p.FAILED] == 1 and counts[p.PENDING] == 2


def test_a_restart_resumes_counts_backoff_pins_and_attempts_and_honours_old_dependencies(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    store.put_task(task("old-done", p.COMPLETED))
    store.put_task(task("old-failed", p.FAILED))
    backing_off = task("backing-off", p.PENDING, retry_limit=2)
    backing_off.attempt, backing_off.failures, backing_off.lost = 2, 1, 1
    backing_off.retry_at = time.time() + 3600
    backing_off.error = "exit 1"
    store.put_task(backing_off)
    pinned = task("pinned", p.PENDING)
    pinned.pinned_to = "w-later"
    store.put_task(pinned)
    store.put_task(task("after-done", p.PENDING, dependencies=("old-done",)))
    store.put_task(task("after-failed", p.PENDING, dependencies=("old-failed",)))
    store.flush()
    sched = Scheduler(SchedulerConfig(retry_limit=5))
    recover(store, sched, TaskTable(), hold=30.0)
    store.close()
    t = sched.task("backing-off")
    assert t is not None and (t.attempt, t.failures, t.lost, t.error) == (2, 1, 1, "exit 1")
    assert "backoff until" in sched.why_waiting("backing-off") and "retry 1 of 2" in sched.why_waiting("backing-off")
    assert sched.why_waiting("pinned") == "pinned to w-later, which is offline"
    # A dependency that completed before the restart is satisfied; one that failed fails its dependents.
    assert sched.task_state("after-done") == p.PENDING and "dependenc" not in sched.why_waiting("after-done")
    assert sched.task_state("after-failed") == p.FAILED
