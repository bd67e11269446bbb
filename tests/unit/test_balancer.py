"""Worker choice strategies, the duration predictor and loading a custom strategy."""

from __future__ import annotations

import random
import sys
import types

import pytest

from dtf_gui.coordinator.balancer import BaseStrategy, DurationAware, DurationPredictor, load_strategy
from dtf_gui.coordinator.scheduler import (
    Dispatch,
    FinishReported,
    Requirements,
    Scheduler,
    SchedulerConfig,
    StartReported,
    Submit,
    TaskSpec,
    WorkerSpec,
    WorkerUp,
)


def sched(strategy: str, **cfg) -> Scheduler:
    return Scheduler(SchedulerConfig(strategy=strategy, aging_interval=0.0, **cfg), rng=random.Random(0))


def placed(out: list) -> list[tuple[str, str]]:
    return [(i.task_id, i.worker_id) for i in out if isinstance(i, Dispatch)]


def test_predictor_median_of_last_n_and_fallbacks():
    p = DurationPredictor(window=3, default=42.0)
    assert p.predict("T", "cpu") == 42.0
    assert p.predict("T", "cpu", hint=7.0) == 7.0
    for d in (10.0, 1000.0, 12.0, 11.0):  # the 10.0 falls out of the window; 1000 is an outlier
        p.record("T", "cpu", d)
    assert p.predict("T", "cpu") == 12.0 and p.samples("T", "cpu") == 3
    assert p.predict("T", "cuda") == 12.0  # the same test on other hardware beats the default
    assert p.predict("T", "cuda", hint=3.0) == 3.0  # ... but an explicit hint beats a guess from other hardware
    with pytest.raises(ValueError, match="window"):
        DurationPredictor(window=0)


def test_least_loaded_prefers_the_emptier_worker():
    s = sched("least_loaded")
    s.handle([WorkerUp(0, WorkerSpec(worker_id="a", slots=4)), WorkerUp(0, WorkerSpec(worker_id="b", slots=4))])
    out = s.handle([Submit(0, TaskSpec(task_id=f"t{i}")) for i in range(4)])
    per = {w: sum(1 for _, x in placed(out) if x == w) for w in "ab"}
    assert per == {"a": 2, "b": 2}


def test_fair_share_spreads_in_proportion_to_free_slots():
    s = sched("fair_share")
    s.handle([WorkerUp(0, WorkerSpec(worker_id="big", slots=6)), WorkerUp(0, WorkerSpec(worker_id="small", slots=2))])
    out = s.handle([Submit(0, TaskSpec(task_id=f"t{i}")) for i in range(4)])
    # Most free slots first: big takes tasks until its free slots fall to small's.
    assert [w for _, w in placed(out)] == ["big", "big", "big", "big"]
    out = s.handle([Submit(0, TaskSpec(task_id=f"u{i}")) for i in range(4)])
    assert len(s.running_on("big")) == 6 and len(s.running_on("small")) == 2


def test_best_fit_keeps_the_gpu_worker_free_for_gpu_tasks():
    s = sched("best_fit")
    s.handle([WorkerUp(0, WorkerSpec(worker_id="gpu", slots=2, hardware=frozenset({"cpu", "cuda"}), gpus=1)),
              WorkerUp(0, WorkerSpec(worker_id="cpu", slots=2))])
    out = s.handle([Submit(0, TaskSpec(task_id="c1")), Submit(0, TaskSpec(task_id="c2"))])
    assert {w for _, w in placed(out)} == {"cpu"}
    out = s.handle([Submit(0, TaskSpec(task_id="g", requirements=Requirements(hardware="cuda", gpu_count=1)))])
    assert placed(out) == [("g", "gpu")]


def test_least_loaded_would_have_used_the_gpu_worker():
    s = sched("least_loaded")
    s.handle([WorkerUp(0, WorkerSpec(worker_id="gpu", slots=2, hardware=frozenset({"cpu", "cuda"}), gpus=1)),
              WorkerUp(0, WorkerSpec(worker_id="cpu", slots=2))])
    out = s.handle([Submit(0, TaskSpec(task_id="c1")), Submit(0, TaskSpec(task_id="c2"))])
    assert {w for _, w in placed(out)} == {"gpu", "cpu"}


def test_duration_aware_runs_longest_first_on_the_fastest_worker():
    s = sched("duration_aware")
    for test, d in (("short", 1.0), ("long", 100.0), ("mid", 10.0)):
        s.record_duration(test, "cpu", d)
    s.handle([Submit(0, TaskSpec(task_id=t, test_id=t)) for t in ("short", "long", "mid")])
    out = s.handle([WorkerUp(0, WorkerSpec(worker_id="slow", slots=1, speed=1.0)),
                    WorkerUp(0, WorkerSpec(worker_id="fast", slots=1, speed=4.0))])
    assert placed(out) == [("long", "fast"), ("mid", "slow")]


def test_duration_aware_holds_a_long_task_for_a_much_faster_busy_worker():
    s = Scheduler(SchedulerConfig(aging_interval=0.0), rng=random.Random(0), strategy=DurationAware(hold=True))
    s.record_duration("long", "cpu", 100.0)
    s.record_duration("tiny", "cpu", 1.0)
    s.handle([WorkerUp(0, WorkerSpec(worker_id="fast", slots=1, speed=10.0)),
              Submit(0, TaskSpec(task_id="t0", test_id="tiny"))])
    assert s.running_on("fast") == ["t0"]  # frees at ~0.1 s
    out = s.handle([WorkerUp(0, WorkerSpec(worker_id="slow", slots=1, speed=1.0)),
                    Submit(0, TaskSpec(task_id="L", test_id="long"))])
    assert placed(out) == []  # 0.1 + 10 s on fast beats 100 s on slow
    assert "faster worker" in s.why_waiting("L")
    out = s.handle([StartReported(0.05, "t0", "fast"), FinishReported(0.1, "t0", "fast", True)])
    assert placed(out) == [("L", "fast")]
    s2 = sched("duration_aware")  # the default does not hold
    s2.record_duration("long", "cpu", 100.0)
    s2.handle([WorkerUp(0, WorkerSpec(worker_id="fast", slots=1, speed=10.0)), Submit(0, TaskSpec(task_id="x")),
               WorkerUp(0, WorkerSpec(worker_id="slow", slots=1))])
    assert placed(s2.handle([Submit(0, TaskSpec(task_id="L", test_id="long"))])) == [("L", "slow")]


class PickLast(BaseStrategy):
    name = "pick_last"

    def choose(self, task, candidates, sched):
        return list(candidates.values())[-1]


class ChooseOnly:
    def choose(self, task, candidates, sched):
        return next(iter(candidates.values()))


def test_custom_strategy_by_import_path():
    mod = types.ModuleType("dtf_test_custom_strategy")
    mod.PickLast = PickLast
    mod.ChooseOnly = ChooseOnly
    mod.NotAStrategy = object
    sys.modules[mod.__name__] = mod
    try:
        st = load_strategy("dtf_test_custom_strategy:PickLast")
        assert st.name == "pick_last"
        s = sched("dtf_test_custom_strategy:PickLast")
        s.handle([WorkerUp(0, WorkerSpec(worker_id="a")), WorkerUp(0, WorkerSpec(worker_id="b"))])
        assert placed(s.handle([Submit(0, TaskSpec(task_id="t"))])) == [("t", "b")]
        bare = load_strategy("dtf_test_custom_strategy:ChooseOnly")  # optional hooks filled in
        assert bare.queue_key(None, None) == 0.0
        with pytest.raises(ValueError, match="has no choose"):
            load_strategy("dtf_test_custom_strategy:NotAStrategy")
        with pytest.raises(ValueError, match="has no 'Missing'"):
            load_strategy("dtf_test_custom_strategy:Missing")
    finally:
        del sys.modules[mod.__name__]
    with pytest.raises(ValueError, match="cannot import module"):
        load_strategy("no_such_module_dtf:X")
    with pytest.raises(ValueError, match="is unknown"):
        load_strategy("fastest")


def test_strategy_choosing_a_non_candidate_is_a_clear_error():
    class Bad(BaseStrategy):
        def choose(self, task, candidates, sched):
            return sched.worker("busy")

    s = Scheduler(SchedulerConfig(), rng=random.Random(0), strategy=Bad())
    s.handle([WorkerUp(0, WorkerSpec(worker_id="busy", slots=1)), WorkerUp(0, WorkerSpec(worker_id="free"))])
    s.handle([Submit(0, TaskSpec(task_id="a", requirements=Requirements(worker="busy")))])
    with pytest.raises(RuntimeError, match="not among the candidates"):
        s.handle([Submit(0, TaskSpec(task_id="b"))])
