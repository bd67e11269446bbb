"""Property tests: random interleavings of everything that can happen to the scheduler.

After every ``handle()`` call the instructions are replayed into a model of what the agents were
told, and the invariants are checked: no dispatch before the dependencies completed, no worker over
its slots, GPUs, caps or capabilities, no task on two workers at once, the scheduler's own books
agree with the instruction stream. At the end every worker comes back and every task is driven to
an end: each one ends in exactly one terminal state per life (a Retry starts a new life).
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtf_gui.coordinator.scheduler import (
    CancelOnWorker,
    CancelRequested,
    Dispatch,
    FinishReported,
    Pin,
    Rejected,
    Requirements,
    Retry,
    Scheduler,
    SchedulerConfig,
    SetPriority,
    StartReported,
    StatusChanged,
    Submit,
    TaskSpec,
    Tick,
    Unpin,
    WorkerLost,
    WorkerSpec,
    WorkerUp,
    mismatch,
)

settings.register_profile("dtf", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dtf-long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("DTF_HYPOTHESIS_PROFILE", "dtf"))

TERMINAL = {"completed", "failed", "cancelled"}

REQS = [
    Requirements(),
    Requirements(),
    Requirements(tags=frozenset({"fast"})),
    Requirements(hardware="cuda", gpu_count=1),
    Requirements(hardware="cuda", gpu_count=2, gpu_memory_gb=16),
    Requirements(min_memory_gb=32),
    Requirements(worker="w1"),
    Requirements(group="lab"),
]

WORKERS = [
    WorkerSpec(worker_id="w0", slots=2),
    WorkerSpec(worker_id="w1", slots=3, tags=frozenset({"fast"}), memory_gb=64),
    WorkerSpec(worker_id="w2", slots=2, hardware=frozenset({"cpu", "cuda"}), gpus=2, gpu_memory_gb=24,
               groups=frozenset({"lab"}), memory_gb=16),
    WorkerSpec(worker_id="w3", slots=1, hardware=frozenset({"cpu", "cuda"}), gpus=1, gpu_memory_gb=8),
]
OMNI = WorkerSpec(worker_id="omni", slots=4, tags=frozenset({"fast"}), hardware=frozenset({"cpu", "cuda"}),
                  gpus=4, gpu_memory_gb=80, memory_gb=256, groups=frozenset({"lab"}))


class Harness:
    def __init__(self, cfg: SchedulerConfig, seed: int) -> None:
        self.s = Scheduler(cfg, rng=random.Random(seed))
        self.cfg = cfg
        self.now = 0.0
        self.specs: dict[str, TaskSpec] = {}
        self.wspecs: dict[str, WorkerSpec] = {}
        self.online: set[str] = set()
        self.status: dict[str, str] = {}
        self.history: dict[str, list[str]] = {}
        self.agent: dict[str, dict[str, int]] = {}      # worker -> task -> attempt, as the agents were told
        self.where: dict[str, str] = {}                  # task -> worker it was dispatched to
        self.n = 0

    # ---------------------------------------------------------------- feed and check

    def feed(self, events: list) -> list:
        for ev in events:
            # An agent forgets a task when it reports it finished, when told to cancel it, or when it dies.
            if isinstance(ev, FinishReported) and self.where.get(ev.task_id) == ev.worker_id:
                del self.where[ev.task_id]
                del self.agent[ev.worker_id][ev.task_id]
        out = self.s.handle(events)
        for ev in events:
            if isinstance(ev, WorkerUp):
                self.online.add(ev.worker.worker_id)
                self.wspecs[ev.worker.worker_id] = ev.worker
            elif isinstance(ev, WorkerLost) and ev.worker_id in self.online:
                self.online.discard(ev.worker_id)
                # The agent is gone: whatever it ran is gone with it.
                for tid in self.agent.pop(ev.worker_id, {}):
                    self.where.pop(tid, None)
        for ins in out:
            self.apply(ins)
        self.check_books()
        return out

    def apply(self, ins: object) -> None:
        if isinstance(ins, StatusChanged):
            self.status[ins.task_id] = ins.status
            self.history.setdefault(ins.task_id, []).append(ins.status)
        elif isinstance(ins, CancelOnWorker):
            if self.where.get(ins.task_id) == ins.worker_id:
                del self.where[ins.task_id]
                self.agent[ins.worker_id].pop(ins.task_id, None)
        elif isinstance(ins, Dispatch):
            tid, wid = ins.task_id, ins.worker_id
            spec = self.specs[tid]
            assert tid not in self.where, f"{tid} dispatched to {wid} while still on {self.where[tid]}"
            assert wid in self.online, f"{tid} dispatched to offline worker {wid}"
            ws = self.wspecs[wid]
            assert ws.approved, f"{tid} dispatched to unapproved worker {wid}"
            assert mismatch(spec.requirements, spec.cpu_slots, ws) is None, f"{tid} on incapable {wid}"
            if self.cfg.dependency_failure == "fail":
                for d in spec.dependencies:
                    assert self.status.get(d) == "completed", f"{tid} dispatched before dependency {d} completed"
            on = self.agent.setdefault(wid, {})
            on[tid] = ins.attempt
            self.where[tid] = wid
            slots = sum(self.specs[t].cpu_slots for t in on)
            gpus = sum(self.specs[t].requirements.gpu_count for t in on)
            assert slots <= ws.slots, f"worker {wid} over its slots: {slots} > {ws.slots}"
            assert gpus <= ws.gpus, f"worker {wid} over its GPUs: {gpus} > {ws.gpus}"
            cap = self.cfg.task_cap_per_worker
            assert cap is None or len(on) <= cap, f"worker {wid} over task_cap_per_worker"
            if self.cfg.worker_cap is not None and spec.submission:
                occupied = {w for t, w in self.where.items() if self.specs[t].submission == spec.submission}
                assert len(occupied) <= self.cfg.worker_cap, f"submission {spec.submission} over worker_cap"

    def check_books(self) -> None:
        s = self.s
        for tid, st_ in self.status.items():
            assert s.task_state(tid) == st_, f"{tid}: scheduler says {s.task_state(tid)}, stream said {st_}"
        assert s.pending_count() == sum(1 for v in self.status.values() if v == "pending")
        for wid in self.online:
            assert set(s.running_on(wid)) == set(self.agent.get(wid, {})), f"books differ on {wid}"
        for tid, wid in self.where.items():
            assert self.status[tid] in ("assigned", "running"), f"{tid} on {wid} but {self.status[tid]}"

    # ---------------------------------------------------------------- operations

    def on_worker(self, i: int) -> list[tuple[str, str]]:
        pairs = sorted((t, w) for w, ts in self.agent.items() for t in ts)
        return [pairs[i % len(pairs)]] if pairs else []

    def task_id(self, i: int) -> str | None:
        """Mostly an unfinished task (where the interesting moves are), sometimes any task."""
        ids = sorted(self.specs)
        live = [t for t in ids if self.status.get(t) not in TERMINAL]
        pool = live if live and i % 4 else ids
        return pool[i % len(pool)] if pool else None

    def worker_id(self, i: int) -> str:
        online = sorted(self.online - {"omni"})
        pool = online if online and i % 3 else [w.worker_id for w in WORKERS]
        return pool[i % len(pool)]

    def op(self, kind: int, a: int, b: int, c: int) -> None:
        self.now += 0.5
        now = self.now
        if kind == 0:
            self.n += 1
            tid = f"t{self.n}"
            known = sorted(self.specs)
            deps = tuple(sorted({known[(a * (k + 3)) % len(known)] for k in range(b % 3)})) if known else ()
            spec = TaskSpec(task_id=tid, priority=c % 10, dependencies=deps, requirements=REQS[a % len(REQS)],
                            cpu_slots=1 + (b % 2), retry_limit=(None if c % 3 == 0 else c % 2),
                            test_id=f"T{a % 3}", submission=("S" if c % 2 else ""))
            self.specs[tid] = spec  # before feeding: the same call may dispatch it
            out = self.feed([Submit(now, spec)])
            if any(isinstance(i, Rejected) for i in out):
                del self.specs[tid]
        elif kind == 1:
            w = WORKERS[a % len(WORKERS)]
            if b % 5 == 0:
                w = WorkerSpec(**{**{f: getattr(w, f) for f in w.__struct_fields__}, "approved": False})
            self.feed([WorkerUp(now, w)])
        elif kind == 2:
            self.feed([WorkerLost(now, WORKERS[a % len(WORKERS)].worker_id)])
        elif kind in (3, 4, 5):
            for tid, wid in self.on_worker(a):
                if kind == 3:
                    self.feed([StartReported(now, tid, wid)])
                else:
                    self.feed([FinishReported(now, tid, wid, kind == 4, "boom" if kind == 5 else "")])
        elif kind == 6:
            if (tid := self.task_id(a)) is not None:
                self.feed([CancelRequested(now, tid)])
        elif kind == 7:
            if (tid := self.task_id(a)) is not None:
                self.feed([Pin(now, tid, self.worker_id(b))])
        elif kind == 8:
            if (tid := self.task_id(a)) is not None:
                self.feed([Unpin(now, tid)])
        elif kind == 9:
            if (tid := self.task_id(a)) is not None:
                self.feed([Retry(now, tid)])
        elif kind == 10:
            self.now += a % 30
            self.feed([Tick(self.now)])
        elif kind == 11:
            if (tid := self.task_id(a)) is not None:
                self.feed([SetPriority(now, tid, b % 10)])
        elif kind == 12:
            if (tid := self.task_id(a)) is not None:
                w = WORKERS[b % len(WORKERS)].worker_id
                self.feed([FinishReported(now, tid, w, bool(c % 2)) if c % 3 else StartReported(now, tid, w)])

    def drain(self) -> None:
        """Every worker back (approved), one that can run anything, and finish all work."""
        self.feed([WorkerUp(self.now, WorkerSpec(**{**{f: getattr(w, f) for f in w.__struct_fields__},
                                                      "approved": True})) for w in WORKERS]
                  + [WorkerUp(self.now, OMNI)])
        for _ in range(10_000):
            self.now += 100.0
            pairs = sorted((t, w) for w, ts in self.agent.items() for t in ts)
            evs: list = [Tick(self.now)]
            for tid, wid in pairs:
                evs += [StartReported(self.now, tid, wid), FinishReported(self.now, tid, wid, True)]
            self.feed(evs)
            if all(v in TERMINAL for v in self.status.values()) and not self.agent_busy():
                break
        for tid in self.specs:
            assert self.s.task_state(tid) in TERMINAL, f"{tid} never ended: {self.s.why_waiting(tid)}"
            hist = self.history[tid]
            for i, st_ in enumerate(hist):
                if st_ in TERMINAL and i + 1 < len(hist):
                    assert hist[i + 1] == "pending", f"{tid} moved on from {st_} without a retry: {hist}"
            assert hist[-1] in TERMINAL

    def agent_busy(self) -> bool:
        return any(self.agent.values())


# Submits, worker arrivals and finishes are drawn more often than the rest, so that workers fill up.
KINDS = [0] * 6 + [1] * 3 + [2] + [3] * 2 + [4] * 3 + [5] * 2 + [6] + [7] * 2 + [8] + [9] + [10] * 2 + [11] + [12]
ops = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
               min_size=10, max_size=100)


@given(ops=ops, seed=st.integers(0, 3),
       strategy=st.sampled_from(["fair_share", "least_loaded", "best_fit", "duration_aware", "round_robin"]))
def test_random_interleavings_keep_every_invariant(ops, seed, strategy):
    h = Harness(SchedulerConfig(strategy=strategy, retry_backoff_base=1.0, retry_backoff_max=5.0), seed)
    for kind, a, b, c in ops:
        h.op(kind, a, b, c)
    h.drain()


@given(ops=ops)
def test_invariants_hold_with_caps_and_run_anyway_policy(ops):
    cfg = SchedulerConfig(strategy="least_loaded", task_cap_per_worker=1, worker_cap=1, lost_limit=1,
                          dependency_failure="run", aging_interval=0.0, retry_backoff_base=0.5,
                          retry_backoff_max=2.0)
    h = Harness(cfg, 7)
    for kind, a, b, c in ops:
        h.op(kind, a, b, c)
    h.drain()
