"""Worker choice strategies for the scheduler, and the duration predictor they share.

The protocol a strategy implements is small (see :class:`Strategy`):

``choose(task, candidates, sched) -> worker | None``  (required)
    ``task`` is the highest-ranked ready task of one requirement class; ``candidates`` maps
    ``worker_id -> worker`` for the online, approved workers that can run it and have room for it
    *now* (free CPU slots and GPUs, under ``task_cap_per_worker``, and not reserved for a pinned
    task). It is never empty. Return one of its values, or ``None`` to hold the task back this
    round (the scheduler then tries other requirement classes; it asks again on the next event).
``queue_key(task, sched) -> float``  (optional, default 0.0)
    Secondary order of the queue inside one priority level: smaller runs first.
``on_dispatch(task, worker, sched) -> None``  (optional)
    Called after the scheduler placed ``task`` on ``worker``.

What a strategy may read (everything else is private to the scheduler):

- ``task``: ``task_id``, ``spec`` (:class:`~dtf_gui.coordinator.scheduler.TaskSpec`), ``priority``,
  ``attempt``, ``hw`` (the hardware key used for duration history), ``predicted`` (base seconds,
  ``None`` until a duration-aware strategy set it), ``expected_end`` (writable), ``cls`` (its
  requirement class: ``cls.online`` maps worker_id -> worker for every online capable worker,
  busy or not, and ``cls.version`` changes whenever that map does).
- ``worker``: ``worker_id``, ``spec`` (:class:`~dtf_gui.coordinator.scheduler.WorkerSpec`),
  ``speed``, ``score`` (static scarcity: larger means rarer hardware), ``used_slots``,
  ``used_gpus``, ``tasks`` (task_id -> task in flight), ``last_dispatch`` (a counter, larger is
  more recent).
- ``sched``: ``now`` (seconds, from the last event), ``predictor`` (:class:`DurationPredictor`).

A custom strategy is named by import path, ``"package.module:ClassName"``; the class is
instantiated without arguments. The attributes above are spelled out as Protocols
(:class:`TaskView`, :class:`WorkerView`, :class:`SchedulerView`), which is all this module knows
of the scheduler. Strategies do no I/O and read no clock: the scheduler calls them
inside ``handle()``.

Speed: ``choose`` runs once per scheduling decision. While work is queued the candidate map only
holds workers that just got a free slot, so it is small; the built-in strategies avoid any scan of
all workers on that path.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from dtf_gui.coordinator.plugins import load_object

# What a strategy sees of the scheduler, as Protocols: the balancer needs only these attributes,
# so it does not import the scheduler (which imports the balancer) and cannot reach its internals.


class TaskSpecView(Protocol):
    @property
    def test_id(self) -> str: ...
    @property
    def expected_duration(self) -> float | None: ...


class WorkerSpecView(Protocol):
    @property
    def slots(self) -> int: ...


class TaskClassView(Protocol):
    """A task's requirement class: every online capable worker, busy or not."""

    @property
    def online(self) -> Mapping[str, WorkerView]: ...
    @property
    def version(self) -> int: ...


class TaskView(Protocol):
    task_id: str
    attempt: int
    hw: str
    predicted: float | None
    expected_end: float

    @property
    def spec(self) -> TaskSpecView: ...
    @property
    def cls(self) -> TaskClassView | None: ...


class WorkerView(Protocol):
    worker_id: str
    speed: float
    score: float
    used_slots: int
    used_gpus: int
    last_dispatch: int

    @property
    def spec(self) -> WorkerSpecView: ...
    @property
    def tasks(self) -> Mapping[str, TaskView]: ...


class SchedulerView(Protocol):
    now: float

    @property
    def predictor(self) -> DurationPredictor: ...


__all__ = [
    "BUILTIN_STRATEGIES",
    "SchedulerView",
    "TaskView",
    "WorkerView",
    "BaseStrategy",
    "BestFit",
    "DurationAware",
    "DurationPredictor",
    "FairShare",
    "LeastLoaded",
    "RoundRobin",
    "Strategy",
    "load_strategy",
]


class DurationPredictor:
    """Predicts a task's duration from history per (test_id, hardware).

    Durations are stored normalised to a speed-1.0 worker (``measured * worker.speed``), so one
    history serves workers of different speeds. The prediction is the median of the last
    ``window`` runs: test durations are skewed (log-normal) and a single stuck run must not drag an
    EWMA for many runs after it.
    """

    __slots__ = ("_hist", "_median", "_by_test", "default", "window")

    def __init__(self, window: int = 9, default: float = 60.0) -> None:
        if window < 1:
            raise ValueError(f"DurationPredictor window must be >= 1, got {window}")
        if not default > 0:
            raise ValueError(f"DurationPredictor default must be > 0 seconds, got {default}")
        self.window = window
        self.default = default
        self._hist: dict[tuple[str, str], deque[float]] = {}
        self._median: dict[tuple[str, str], float] = {}
        # Fallback when a test has never run on this hardware: its median on any hardware.
        self._by_test: dict[str, float] = {}

    def record(self, test_id: str, hardware: str, duration: float) -> None:
        """Add one run's duration (seconds, normalised to speed 1.0)."""
        if not test_id or not (duration >= 0) or math.isinf(duration):
            return
        key = (test_id, hardware)
        h = self._hist.get(key)
        if h is None:
            h = self._hist[key] = deque(maxlen=self.window)
        h.append(float(duration))
        s = sorted(h)
        n = len(s)
        med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        self._median[key] = med
        self._by_test[test_id] = med

    def predict(self, test_id: str, hardware: str, hint: float | None = None) -> float:
        """Seconds on a speed-1.0 worker: history, else the test on other hardware, else hint, else default."""
        m = self._median.get((test_id, hardware))
        if m is not None:
            return m
        if hint is not None and hint > 0:
            return float(hint)
        m = self._by_test.get(test_id)
        if m is not None:
            return m
        return self.default

    def samples(self, test_id: str, hardware: str) -> int:
        """How many runs the prediction for (test_id, hardware) rests on."""
        h = self._hist.get((test_id, hardware))
        return len(h) if h else 0


@runtime_checkable
class Strategy(Protocol):
    """What the scheduler calls; see the module docstring."""

    name: str

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None: ...

    def queue_key(self, task: TaskView, sched: SchedulerView) -> float: ...

    def on_dispatch(self, task: TaskView, worker: WorkerView, sched: SchedulerView) -> None: ...


class BaseStrategy:
    """Defaults for the optional hooks; subclass it and write ``choose``."""

    name = "base"

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None:
        raise NotImplementedError(f"strategy {type(self).__name__} must implement choose()")

    def queue_key(self, task: TaskView, sched: SchedulerView) -> float:
        return 0.0

    def on_dispatch(self, task: TaskView, worker: WorkerView, sched: SchedulerView) -> None:
        return None


class LeastLoaded(BaseStrategy):
    """The candidate with the smallest fraction of its slots in use; among equals the one idle longest."""

    name = "least_loaded"

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None:
        best = None
        bk: tuple[float, int] = (2.0, 0)
        for w in candidates.values():
            if w.used_slots == 0:
                # An idle worker cannot be beaten on load; keeps the common idle-pool case O(1).
                return w
            k = (w.used_slots / w.spec.slots, w.last_dispatch)
            if k < bk:
                best, bk = w, k
        return best


class FairShare(BaseStrategy):
    """Round robin weighted by free slots: most free slots first, ties to the one served longest ago.

    A worker with 8 free slots takes turns as if it were 8 one-slot workers, so work spreads in
    proportion to what each machine can take.
    """

    name = "fair_share"

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None:
        best = None
        bk: tuple[int, int] = (1, 0)
        for w in candidates.values():
            k = (w.used_slots - w.spec.slots, w.last_dispatch)
            if best is None or k < bk:
                best, bk = w, k
        return best


class RoundRobin(BaseStrategy):
    """Plain rotation: the candidate served longest ago, whatever its load (the seed's round_robin)."""

    name = "round_robin"

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None:
        return min(candidates.values(), key=_last_dispatch)


def _last_dispatch(w: WorkerView) -> int:
    return w.last_dispatch


class BestFit(BaseStrategy):
    """Keeps scarce hardware free: the least capable candidate (lowest scarcity score), then the fullest.

    Every candidate already meets the task's needs, so the candidate with the smallest static score
    is the one whose surplus (GPUs, special hardware, tags, memory) is smallest; packing onto the
    fullest of those leaves whole machines free for big tasks.
    """

    name = "best_fit"

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None:
        best = None
        bk: tuple[float, int, int] = (0.0, 0, 0)
        for w in candidates.values():
            k = (w.score, w.spec.slots - w.used_slots, w.last_dispatch)
            if best is None or k < bk:
                best, bk = w, k
        return best


class DurationAware(BaseStrategy):
    """Longest predicted task first, onto the worker expected to finish it earliest.

    ``queue_key`` orders each priority level by predicted duration, longest first (LPT), so the
    long tasks start early and short ones fill the gaps at the end. ``choose`` picks the candidate
    that finishes the task soonest (``predicted / speed``; ties to the less scarce worker).

    ``hold=True`` (off by default) also looks at the busy capable workers that are faster than that
    candidate: if one of them is expected to free a slot and still finish the task sooner, the task
    waits for it. Holding the head task holds its whole requirement class for that round, so with
    few classes it idles slow workers: in tests/bench/scheduling.py it made the makespan 2.9x the
    lower bound instead of 1.01x. It stays as an option for pools of many small classes.
    """

    name = "duration_aware"

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        # requirement class -> (its version, online capable workers sorted fastest first)
        self._by_speed: dict[Any, tuple[int, list[WorkerView]]] = {}

    def _predict(self, task: TaskView, sched: SchedulerView) -> float:
        d = task.predicted
        if d is None:
            spec = task.spec
            d = task.predicted = sched.predictor.predict(spec.test_id, task.hw, spec.expected_duration)
        return d

    def queue_key(self, task: TaskView, sched: SchedulerView) -> float:
        task.predicted = None  # history may have grown since the task last queued
        return -self._predict(task, sched)

    def on_dispatch(self, task: TaskView, worker: WorkerView, sched: SchedulerView) -> None:
        task.expected_end = sched.now + self._predict(task, sched) / worker.speed

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None:
        d = self._predict(task, sched)
        best = None
        bk: tuple[float, float, int] = (0.0, 0.0, 0)
        for w in candidates.values():
            k = (-w.speed, w.score, w.used_slots)
            if best is None or k < bk:
                best, bk = w, k
        if best is None or not self.hold:
            return best
        cls = task.cls
        if cls is None:
            return best
        cached = self._by_speed.get(cls)
        if cached is None or cached[0] != cls.version:
            fastest = sorted(cls.online.values(), key=_neg_speed)
            self._by_speed[cls] = (cls.version, fastest)
            if len(self._by_speed) > 4096:  # classes come and go; never let the cache grow without bound
                self._by_speed.clear()
        else:
            fastest = cached[1]
        now = sched.now
        finish_here = now + d / best.speed
        for w in fastest:
            if w.speed <= best.speed:
                break
            if w.worker_id in candidates or not w.tasks:
                continue
            free_at = max(now, min(t.expected_end for t in w.tasks.values()))
            if free_at + d / w.speed < finish_here:
                return None
        return best


def _neg_speed(w: WorkerView) -> float:
    return -w.speed


BUILTIN_STRATEGIES: dict[str, type[BaseStrategy]] = {
    "fair_share": FairShare,
    "round_robin": RoundRobin,
    "least_loaded": LeastLoaded,
    "best_fit": BestFit,
    "duration_aware": DurationAware,
}


def load_strategy(name: str) -> Strategy:
    """A strategy by built-in name or by import path ``"package.module:ClassName"``.

    Raises ValueError naming ``load_balancer.strategy`` and what is wrong.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"load_balancer.strategy must be a non-empty string, got {name!r}")
    cls = BUILTIN_STRATEGIES.get(name)
    if cls is not None:
        return cls()
    if ":" not in name:
        raise ValueError(f"load_balancer.strategy {name!r} is unknown: use one of "
                         f"{', '.join(sorted(BUILTIN_STRATEGIES))}, or an import path 'package.module:ClassName'")
    obj = load_object(name, "load_balancer.strategy")
    attr = name.partition(":")[2]
    inst = obj() if isinstance(obj, type) else obj
    if not callable(getattr(inst, "choose", None)):
        raise ValueError(f"load_balancer.strategy {name!r}: {attr} has no choose(task, candidates, sched) method")
    # Optional hooks (and a name) get defaults, so a custom class may define choose() alone.
    if isinstance(inst, Strategy) and inst.name and callable(inst.queue_key) and callable(inst.on_dispatch):
        return inst
    return _Adapted(inst, name)


class _Adapted(BaseStrategy):
    """A custom strategy that implements only some of the optional hooks, or has no name."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self.name = getattr(inner, "name", None) or name
        qk = getattr(inner, "queue_key", None)
        self._queue_key = qk if callable(qk) else None
        od = getattr(inner, "on_dispatch", None)
        self._on_dispatch = od if callable(od) else None

    def choose(self, task: TaskView, candidates: Mapping[str, WorkerView],
               sched: SchedulerView) -> WorkerView | None:
        chosen: WorkerView | None = self._inner.choose(task, candidates, sched)
        return chosen

    def queue_key(self, task: TaskView, sched: SchedulerView) -> float:
        return float(self._queue_key(task, sched)) if self._queue_key is not None else 0.0

    def on_dispatch(self, task: TaskView, worker: WorkerView, sched: SchedulerView) -> None:
        if self._on_dispatch is not None:
            self._on_dispatch(task, worker, sched)
