"""Rules of the scheduler state machine, one at a time (no sockets, no threads, no clock)."""

from __future__ import annotations

import random

import pytest

from dtf_gui.coordinator.scheduler import (
    HIGHER_PRIORITY_FIRST,
    Adopt,
    CancelOnWorker,
    CancelRequested,
    Dispatch,
    DrainWorker,
    FinishReported,
    Pin,
    Rejected,
    Requirements,
    ResumeWorker,
    Retry,
    Scheduler,
    SchedulerConfig,
    SetPriority,
    StartReported,
    StatusChanged,
    Submit,
    SubmitBatch,
    TaskSpec,
    Tick,
    Unpin,
    WorkerLost,
    WorkerSpec,
    WorkerUp,
    mismatch,
)


def make(**cfg) -> Scheduler:
    cfg.setdefault("strategy", "least_loaded")
    cfg.setdefault("aging_interval", 0.0)
    return Scheduler(SchedulerConfig(**cfg), rng=random.Random(1))


def dispatches(out: list) -> list[tuple[str, str]]:
    return [(i.task_id, i.worker_id) for i in out if isinstance(i, Dispatch)]


def rejected(out: list) -> dict[str, str]:
    return {i.task_id: i.reason for i in out if isinstance(i, Rejected)}


def statuses(out: list, task_id: str) -> list[tuple[str, str]]:
    return [(i.status, i.reason) for i in out if isinstance(i, StatusChanged) and i.task_id == task_id]


def up(wid: str, slots: int = 1, **kw) -> WorkerUp:
    return WorkerUp(0.0, WorkerSpec(worker_id=wid, slots=slots, **kw))


def sub(tid: str, now: float = 0.0, **kw) -> Submit:
    return Submit(now, TaskSpec(task_id=tid, **kw))


def run_ok(s: Scheduler, tid: str, now: float = 1.0) -> list:
    wid = s.task(tid).worker.worker_id
    return s.handle([StartReported(now, tid, wid), FinishReported(now, tid, wid, True)])


# ----------------------------------------------------------------------------- queue and priority


def test_priority_direction_is_documented_and_honoured():
    assert HIGHER_PRIORITY_FIRST is True
    s = make()
    s.handle([sub("low", priority=1), sub("mid", priority=5), sub("high", priority=9)])
    out = s.handle([up("w")])
    assert dispatches(out) == [("high", "w")]
    assert dispatches(run_ok(s, "high")) == [("mid", "w")]
    assert dispatches(run_ok(s, "mid")) == [("low", "w")]


def test_same_priority_runs_in_submit_order():
    s = make()
    s.handle([sub(f"t{i}", now=float(i)) for i in range(5)])
    order = [dispatches(s.handle([up("w")]))[0][0]]
    for _ in range(4):
        order.append(dispatches(run_ok(s, order[-1]))[0][0])
    assert order == ["t0", "t1", "t2", "t3", "t4"]


def test_aging_lets_an_old_low_priority_task_pass_newer_high_ones():
    s = make(aging_interval=10.0)
    s.handle([sub("old_low", now=0.0, priority=1)])
    # Submitted 50 s later with 3 more priority steps: aging gave old_low 5 steps, so it still wins.
    s.handle([sub("new_high", now=50.0, priority=4)])
    assert dispatches(s.handle([up("w")])) == [("old_low", "w")]


def test_without_aging_high_priority_always_wins():
    s = make(aging_interval=0.0)
    s.handle([sub("old_low", now=0.0, priority=1), sub("new_high", now=5000.0, priority=2)])
    assert dispatches(s.handle([up("w")])) == [("new_high", "w")]


def test_set_priority_reorders_the_queue():
    s = make()
    s.handle([sub("a", priority=5), sub("b", priority=5)])
    s.handle([SetPriority(1.0, "b", 7)])
    assert dispatches(s.handle([up("w")])) == [("b", "w")]
    assert "unknown task" in rejected(s.handle([SetPriority(2.0, "zz", 1)]))["zz"]


def test_max_queue_size_refuses_with_a_clear_error():
    s = make(max_queue_size=2)
    out = s.handle([sub("a"), sub("b"), sub("c")])
    assert rejected(out) == {"c": "queue full: 2 tasks pending, max_queue_size is 2"}
    assert s.pending_count() == 2 and s.task_state("c") is None


def test_duplicate_id_and_bad_fields_are_refused():
    s = make()
    s.handle([sub("a")])
    out = s.handle([sub("a"), sub("b", cpu_slots=0), sub("c", retry_limit=-1),
                    sub("d", requirements=Requirements(gpu_count=-1)), sub("e", dependencies=("e",))])
    r = rejected(out)
    assert "duplicate task id a" in r["a"]
    assert "cpu_slots" in r["b"] and "retry_limit" in r["c"] and "gpu_count" in r["d"]
    assert "itself" in r["e"]


# ----------------------------------------------------------------------------- dependencies


def test_task_waits_for_all_dependencies_and_says_so():
    s = make()
    s.handle([up("w", slots=4), sub("a"), sub("b"), sub("c", dependencies=("a", "b"))])
    assert s.why_waiting("c") == "waiting for dependencies: a, b"
    out = run_ok(s, "a")
    assert s.why_waiting("c") == "waiting for dependencies: b"
    assert not any(t == "c" for t, _ in dispatches(out))
    out = run_ok(s, "b")
    assert ("c", "w") in dispatches(out)


def test_unknown_dependency_is_refused():
    s = make()
    assert rejected(s.handle([sub("b", dependencies=("nope",))])) == {"b": "unknown dependency nope"}


def test_batch_accepts_any_order_and_refuses_cycles():
    s = make()
    out = s.handle([SubmitBatch(0.0, (TaskSpec(task_id="c", dependencies=("b",)),
                                      TaskSpec(task_id="b", dependencies=("a",)), TaskSpec(task_id="a")))])
    assert not rejected(out) and s.task_state("c") == "pending"
    out = s.handle([SubmitBatch(0.0, (TaskSpec(task_id="x", dependencies=("y",)),
                                      TaskSpec(task_id="y", dependencies=("x",)), TaskSpec(task_id="z")))])
    r = rejected(out)
    assert set(r) == {"x", "y", "z"}
    assert r["x"].startswith("dependency cycle among x, y")
    assert "batch refused" in r["z"]
    assert s.task_state("z") is None


def test_failed_dependency_fails_dependents_transitively():
    s = make(retry_limit=0)
    s.handle([up("w"), sub("a"), sub("b", dependencies=("a",)), sub("c", dependencies=("b",))])
    out = s.handle([FinishReported(1.0, "a", "w", False, "boom")])
    assert statuses(out, "b")[-1] == ("failed", "dependency a failed")
    assert statuses(out, "c")[-1] == ("failed", "dependency b failed")
    # Retrying the root revives what it took down.
    out = s.handle([Retry(2.0, "a")])
    assert s.task_state("b") == "pending" and s.task_state("c") == "pending"
    assert ("a", "w") in dispatches(out)


def test_dependency_failure_run_policy_runs_dependents_anyway():
    s = make(retry_limit=0, dependency_failure="run")
    s.handle([up("w"), sub("a"), sub("b", dependencies=("a",))])
    out = s.handle([FinishReported(1.0, "a", "w", False, "boom")])
    assert ("b", "w") in dispatches(out)


def test_cancelled_dependency_counts_as_failure():
    s = make()
    s.handle([sub("a"), sub("b", dependencies=("a",))])
    out = s.handle([CancelRequested(1.0, "a")])
    assert statuses(out, "b")[-1] == ("failed", "dependency a was cancelled")


# ----------------------------------------------------------------------------- requirements


def test_mismatch_names_the_missing_capability():
    w = WorkerSpec(worker_id="w", slots=2, tags=frozenset({"a"}), hardware=frozenset({"cpu", "CUDA"}),
                   memory_gb=16, gpus=1, gpu_memory_gb=24, os="Linux", groups=frozenset({"lab1"}))
    assert mismatch(Requirements(tags=frozenset({"a"}), hardware="cuda", os="linux", group="lab1"), 2, w) is None
    assert mismatch(Requirements(tags=frozenset({"a", "b"})), 1, w) == "needs tag b"
    assert mismatch(Requirements(hardware="rocm"), 1, w) == "needs hardware rocm"
    assert mismatch(Requirements(min_memory_gb=32), 1, w) == "needs 32 GB memory"
    assert mismatch(Requirements(gpu_count=2), 1, w) == "needs 2 GPUs"
    assert mismatch(Requirements(gpu_memory_gb=40), 1, w) == "needs 40 GB GPU memory"
    assert mismatch(Requirements(os="windows"), 1, w) == "needs OS windows"
    assert mismatch(Requirements(worker="other"), 1, w) == "needs worker other"
    assert mismatch(Requirements(group="lab2"), 1, w) == "needs group lab2"
    assert mismatch(Requirements(), 3, w) == "needs 3 CPU slots"


def test_task_goes_only_to_a_capable_worker():
    s = make()
    s.handle([up("cpu", slots=4), up("gpu", slots=4, hardware=frozenset({"cpu", "cuda"}), gpus=1)])
    out = s.handle([sub("g", requirements=Requirements(hardware="cuda", gpu_count=1)),
                    sub("g2", requirements=Requirements(hardware="cuda", gpu_count=1))])
    assert dispatches(out) == [("g", "gpu")]  # one GPU: the second waits although slots are free
    assert "waiting for 1 slot and 1 GPUs" in s.why_waiting("g2")
    out = s.handle([FinishReported(1.0, "g", "gpu", True)])
    assert dispatches(out) == [("g2", "gpu")]


def test_unschedulable_task_says_why_and_starts_when_a_capable_worker_joins():
    s = make()
    s.handle([up("w", slots=2)])
    out = s.handle([sub("t", requirements=Requirements(tags=frozenset({"fpga"})))])
    st = statuses(out, "t")[-1]
    assert st[0] == "pending" and st[1].startswith("unschedulable: no known worker can run it: needs tag fpga")
    out = s.handle([up("f", tags=frozenset({"fpga"}))])
    assert dispatches(out) == [("t", "f")]


def test_capable_worker_offline_is_a_different_reason():
    s = make()
    s.handle([up("f", tags=frozenset({"fpga"})), WorkerLost(1.0, "f")])
    s.handle([sub("t", requirements=Requirements(tags=frozenset({"fpga"})))])
    assert s.why_waiting("t").startswith("no capable worker online: f could run it")


def test_cpu_slots_are_reserved():
    s = make()
    s.handle([up("w", slots=4)])
    out = s.handle([sub("big", cpu_slots=3), sub("big2", cpu_slots=3), sub("small")])
    assert dispatches(out) == [("big", "w"), ("small", "w")]
    assert s.worker("w").used_slots == 4


def test_unapproved_worker_gets_nothing():
    s = make()
    s.handle([up("w", approved=False), sub("t")])
    assert s.task_state("t") == "pending"
    assert "not approved" in s.why_waiting("t")
    assert dispatches(s.handle([up("w", approved=True)])) == [("t", "w")]


# ----------------------------------------------------------------------------- retries and lost workers


def test_retry_with_exponential_backoff_up_to_the_limit():
    s = make(retry_limit=2, retry_backoff_base=10.0, retry_backoff_max=15.0, retry_jitter=0.0)
    s.handle([up("w"), sub("t")])
    out = s.handle([FinishReported(100.0, "t", "w", False, "e1")])
    assert statuses(out, "t")[-1][1].startswith("backoff until t=110.0s (attempt 1 failed: e1; retry 1 of 2)")
    assert dispatches(s.handle([Tick(109.9)])) == []
    out = s.handle([Tick(110.0)])
    assert [(i.task_id, i.attempt) for i in out if isinstance(i, Dispatch)] == [("t", 2)]
    out = s.handle([FinishReported(111.0, "t", "w", False, "e2")])
    assert "until t=126.0s" in statuses(out, "t")[-1][1]  # 20 s capped at 15
    s.handle([Tick(126.0)])
    out = s.handle([FinishReported(127.0, "t", "w", False, "e3")])
    assert statuses(out, "t")[-1] == ("failed", "failed after 3 attempts: e3")


def test_jitter_shortens_the_delay_within_bounds():
    s = make(retry_backoff_base=10.0, retry_backoff_max=100.0, retry_jitter=0.5)
    s.handle([up("w"), sub("t")])
    s.handle([FinishReported(0.0, "t", "w", False)])
    assert 5.0 <= s.task("t").until <= 10.0


def test_per_task_retry_limit_zero_fails_at_once():
    s = make(retry_limit=5)
    s.handle([up("w"), sub("t", retry_limit=0)])
    out = s.handle([FinishReported(1.0, "t", "w", False, "x")])
    assert s.task_state("t") == "failed" and statuses(out, "t")[-1][1] == "failed after 1 attempt: x"


def test_lost_worker_requeues_without_counting_a_failure_up_to_lost_limit():
    s = make(lost_limit=1, retry_limit=0)
    s.handle([up("a"), up("b"), sub("t")])
    first = s.task("t").worker.worker_id
    other = "b" if first == "a" else "a"
    out = s.handle([WorkerLost(1.0, first)])
    assert dispatches(out) == [("t", other)]
    assert s.task("t").failures == 0
    out = s.handle([WorkerLost(2.0, other)])
    assert s.task_state("t") == "failed"
    assert "lost" in statuses(out, "t")[-1][1]


def test_worker_back_after_loss_takes_work_again_and_stale_reports_are_ignored():
    s = make()
    s.handle([up("a"), sub("t")])
    s.handle([WorkerLost(1.0, "a")])
    assert s.task_state("t") == "pending"
    out = s.handle([FinishReported(1.5, "t", "a", True)])  # from the lost run: not the current assignment
    assert s.task_state("t") == "pending" and s.stats()["stale_reports"] == 1
    out = s.handle([up("a")])
    assert [(i.task_id, i.attempt) for i in out if isinstance(i, Dispatch)] == [("t", 2)]
    s.handle([FinishReported(2.0, "t", "a", True, attempt=1)])  # right worker, old attempt
    assert s.task_state("t") == "assigned"


def test_start_report_from_the_wrong_worker_is_answered_with_a_cancel():
    s = make()
    s.handle([up("a"), up("b"), sub("t")])
    wid = s.task("t").worker.worker_id
    other = "b" if wid == "a" else "a"
    out = s.handle([StartReported(1.0, "t", other)])
    assert CancelOnWorker("t", other) in out and s.task_state("t") == "assigned"


# ----------------------------------------------------------------------------- cancel, retry, assign


def test_cancel_running_task_tells_the_worker_and_frees_the_slot():
    s = make()
    s.handle([up("w"), sub("a"), sub("b")])
    s.handle([StartReported(1.0, "a", "w")])
    out = s.handle([CancelRequested(2.0, "a")])
    assert CancelOnWorker("a", "w") in out and ("b", "w") in dispatches(out)
    assert "already cancelled" in rejected(s.handle([CancelRequested(3.0, "a")]))["a"]


def test_retry_only_for_failed_or_cancelled():
    s = make()
    s.handle([sub("a")])
    assert "not failed or cancelled" in rejected(s.handle([Retry(1.0, "a")]))["a"]
    s.handle([CancelRequested(1.0, "a")])
    s.handle([Retry(2.0, "a")])
    assert s.task_state("a") == "pending"


def test_assign_pins_and_jumps_the_queue():
    s = make()
    s.handle([up("a"), up("b"), sub("x"), sub("y"), sub("z", priority=0)])
    s.handle([FinishReported(1.0, "x", s.task("x").worker.worker_id, True)])
    busy = {s.task("y").worker.worker_id}
    target = busy.pop()
    out = s.handle([Pin(2.0, "z", target)])
    assert s.task("z").pin is not None and s.why_waiting("z").startswith(f"pinned to {target}")
    out = s.handle([FinishReported(3.0, "y", target, True)])
    assert dispatches(out) == [("z", target)]


def test_assign_refusals_name_the_reason():
    s = make()
    s.handle([up("cpu"), up("off"), WorkerLost(0.5, "off"), up("new", approved=False),
              sub("g", requirements=Requirements(hardware="cuda")), sub("r")])
    r = rejected(s.handle([Pin(1.0, "g", "cpu")]))
    assert r["g"] == "cannot assign g to cpu: worker lacks a requirement: needs hardware cuda"
    assert "offline" in rejected(s.handle([Pin(1.0, "r", "off")]))["r"]
    assert "not approved" in rejected(s.handle([Pin(1.0, "r", "new")]))["r"]
    assert "unknown worker" in rejected(s.handle([Pin(1.0, "r", "nobody")]))["r"]
    s.handle([StartReported(1.0, "r", "cpu")])
    assert "already running" in rejected(s.handle([Pin(1.0, "r", "cpu")]))["r"]


def test_assigned_not_started_task_moves_to_another_worker():
    s = make()
    s.handle([up("a"), up("b", slots=2), sub("t")])
    first = s.task("t").worker.worker_id
    other = "b" if first == "a" else "a"
    out = s.handle([Pin(1.0, "t", other)])
    assert CancelOnWorker("t", first) in out and dispatches(out) == [("t", other)]
    assert s.running_on(first) == [] and s.running_on(other) == ["t"]


def test_unassign_returns_to_queue_and_running_is_refused():
    s = make()
    s.handle([up("a"), sub("t"), sub("u")])
    out = s.handle([Unpin(1.0, "t")])
    assert CancelOnWorker("t", "a") in out
    assert s.task("t").attempt == 1
    s.handle([StartReported(2.0, s.running_on("a")[0], "a")])
    running = s.running_on("a")[0]
    assert "cancel it instead" in rejected(s.handle([Unpin(3.0, running)]))[running]


def test_pinned_task_waits_for_an_offline_worker():
    s = make()
    s.handle([up("a"), sub("busy_a"), up("b"), sub("busy_b"), sub("p")])
    assert s.running_on("a") == ["busy_a"] and s.running_on("b") == ["busy_b"]
    s.handle([Pin(1.0, "p", "b"), WorkerLost(2.0, "b")])
    out = s.handle([FinishReported(3.0, "busy_a", "a", True)])
    assert dispatches(out) == [("busy_b", "a")]  # the pinned task does not go elsewhere
    assert s.why_waiting("p") == "pinned to b, which is offline"
    assert dispatches(s.handle([up("b")])) == [("p", "b")]


# ----------------------------------------------------------------------------- caps


def test_task_cap_per_worker_below_slots():
    s = make(task_cap_per_worker=2)
    s.handle([up("w", slots=8)] + [sub(f"t{i}") for i in range(5)])
    assert len(s.running_on("w")) == 2
    assert "task_cap_per_worker (2)" in s.why_waiting("t4")


def test_worker_cap_limits_workers_per_submission():
    s = make(worker_cap=2)
    s.handle([up(f"w{i}", slots=2) for i in range(4)])
    out = s.handle([sub(f"a{i}", submission="A") for i in range(6)] + [sub("solo")])
    used = {w for t, w in dispatches(out) if t.startswith("a")}
    assert len(used) == 2 and sum(1 for t, _ in dispatches(out) if t.startswith("a")) == 4
    assert ("solo" in {t for t, _ in dispatches(out)})
    assert "worker_cap reached" in s.why_waiting("a5")


# ----------------------------------------------------------------------------- misc


def test_status_stream_covers_a_whole_life():
    s = make()
    out = s.handle([up("w"), sub("t")])
    out += s.handle([StartReported(1.0, "t", "w"), FinishReported(2.0, "t", "w", True)])
    assert [st for st, _ in statuses(out, "t")] == ["pending", "assigned", "running", "completed"]
    done = [i for i in out if isinstance(i, StatusChanged) and i.status == "completed"]
    assert done[0].worker_id == "w"


def test_adopt_after_restart_records_a_running_task():
    s = make()
    s.handle([up("w", slots=2), sub("t", requirements=Requirements(tags=frozenset({"x"})))])
    out = s.handle([Adopt(1.0, "t", "w")])
    assert s.task_state("t") == "running" and s.running_on("w") == ["t"]
    assert ("running", "adopted after coordinator restart") in statuses(out, "t")
    assert CancelOnWorker("zz", "w") in s.handle([Adopt(1.0, "zz", "w")])


def test_finished_tasks_are_forgotten_beyond_keep_finished():
    s = make(keep_finished=2)
    s.handle([up("w")])
    for i in range(4):
        s.handle([sub(f"t{i}")])
        run_ok(s, f"t{i}")
    assert s.task_state("t0") is None and s.task_state("t3") == "completed"
    assert "unknown dependency t0" in rejected(s.handle([sub("n", dependencies=("t0",))]))["n"]


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="retry_limit"):
        SchedulerConfig(retry_limit=-1)
    with pytest.raises(ValueError, match="dependency_failure"):
        SchedulerConfig(dependency_failure="maybe")
    with pytest.raises(ValueError, match="retry_backoff_max"):
        SchedulerConfig(retry_backoff_base=10, retry_backoff_max=1)


def test_unknown_event_type_is_a_clear_error():
    with pytest.raises(TypeError, match="unknown event type"):
        make().handle([object()])


def test_duration_history_feeds_prediction():
    s = make(strategy="duration_aware")
    s.handle([up("w", speed=2.0), sub("a", test_id="T")])
    s.handle([StartReported(0.0, "a", "w"), FinishReported(10.0, "a", "w", True)])
    s.handle([sub("b", test_id="T")])
    assert s.predicted_duration("b") == pytest.approx(20.0)  # 10 s on a speed-2 worker


# ----------------------------------------------------------------------------- draining


def test_a_drained_worker_gets_no_new_task_while_another_does():
    s = make()
    s.handle([up("a", slots=2), up("b", slots=2), DrainWorker(0.0, "a")])
    out = s.handle([sub(f"t{i}") for i in range(3)])
    assert {w for _, w in dispatches(out)} == {"b"}
    assert s.why_waiting("t2").startswith("waiting for 1 slot on a capable worker: all 1 capable workers")


def test_drain_lets_running_tasks_finish_and_resume_takes_work_again():
    s = make()
    s.handle([up("a")])
    s.handle([sub("running")])
    assert s.task_state("running") == "assigned"
    out = s.handle([DrainWorker(1.0, "a"), sub("next")])
    assert not [i for i in out if isinstance(i, CancelOnWorker)], "draining cancels nothing"
    assert dispatches(run_ok(s, "running", 2.0)) == []
    assert s.task_state("running") == "completed"
    assert s.why_waiting("next") == "waiting: every capable worker online is draining (a)"
    assert dispatches(s.handle([ResumeWorker(3.0, "a")])) == [("next", "a")]


def test_pin_onto_a_draining_worker_is_refused_and_a_drain_after_the_pin_holds_it():
    s = make()
    s.handle([up("a"), up("b")])
    s.handle([sub("x"), sub("y")])  # one each: both busy
    s.handle([sub("pinned")])
    assert s.task_state("pinned") == "pending"
    s.handle([Pin(1.0, "pinned", "a")])
    out = s.handle([DrainWorker(1.0, "a")])
    assert statuses(out, "pinned") == [("pending", "pinned to a (draining)")]
    assert s.why_waiting("pinned") == "pinned to a, which is draining (it takes no new tasks until resumed)"
    on_a = "x" if s.task("x").worker.worker_id == "a" else "y"
    out = run_ok(s, on_a, 2.0)
    assert dispatches(out) == [], "a draining worker takes no pinned task either"
    out = s.handle([ResumeWorker(3.0, "a")])
    assert dispatches(out) == [("pinned", "a")]
    s2 = make()
    s2.handle([up("a"), DrainWorker(0.0, "a"), sub("z")])
    assert rejected(s2.handle([Pin(1.0, "z", "a")])) == {"z": "cannot assign z: worker a is draining (resume it first)"}


def test_drain_outlives_going_offline_and_a_drain_before_registration_is_kept():
    s = make()
    s.handle([up("a"), DrainWorker(0.0, "a"), WorkerLost(1.0, "a")])
    assert dispatches(s.handle([up("a"), sub("t")])) == []
    early = make()
    early.handle([DrainWorker(0.0, "later")])  # restored from the database before the agent registers
    assert dispatches(early.handle([up("later"), sub("t")])) == []
    assert dispatches(early.handle([ResumeWorker(1.0, "later")])) == [("t", "later")]


def test_drain_and_resume_are_idempotent_and_resume_of_an_unknown_worker_is_harmless():
    s = make()
    s.handle([up("a")])
    assert s.handle([DrainWorker(0.0, "a"), DrainWorker(0.0, "a")]) == []
    assert s.handle([ResumeWorker(0.0, "nobody")]) == []
    assert dispatches(s.handle([ResumeWorker(1.0, "a"), ResumeWorker(1.0, "a"), sub("t")])) == [("t", "a")]


GPU_TAG = Requirements(tags=frozenset({"gpu"}))


def test_queued_tasks_restate_why_they_wait_when_their_only_capable_worker_drains_and_resumes():
    s = make()
    s.handle([up("gpu-box", tags=frozenset({"gpu"})), up("plain")])
    s.handle([sub("busy", requirements=GPU_TAG), sub("waits", requirements=GPU_TAG), sub("other")])
    assert s.task_state("busy") == "assigned"
    assert s.task("waits").reason == "queued"
    out = s.handle([DrainWorker(1.0, "gpu-box")])
    drained = "waiting: every capable worker online is draining (gpu-box)"
    assert statuses(out, "waits") == [("pending", drained)], "the stored reason follows the drain"
    assert s.why_waiting("waits") == drained
    assert statuses(out, "other") == [], "tasks the plain worker can run are not about the drain"
    # A task of the same class submitted while drained is told the same.
    assert statuses(s.handle([sub("later", requirements=GPU_TAG)]), "later") == [("pending", drained)]
    out = run_ok(s, "busy", 2.0)
    assert dispatches(out) == []
    out = s.handle([ResumeWorker(3.0, "gpu-box")])
    assert dispatches(out) == [("waits", "gpu-box")]
    assert statuses(out, "later") == [("pending", "queued")], "the drain's reason goes with the resume"
