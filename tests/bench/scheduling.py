"""Scheduling benchmark: placement quality (simulation) and decision cost.

    .venv/bin/python tests/bench/scheduling.py [--quick]

(a) Discrete-event simulation driven through the real Scheduler: 2 GPU and 6 CPU workers of
    different speeds (8 slots each; a GPU worker has 8 GPUs), 5,000 tasks of 100 test types with
    log-normal durations, 20% of them GPU-only. Every task is submitted at t=0. Each strategy's
    makespan is divided by a lower bound:

        LB = max(total work / capacity, longest task / fastest capable speed)
        capacity = sum over workers of slots * speed   (work = seconds on a speed-1.0 slot)

    A tighter bound that also counts GPU work against GPU capacity is printed alongside (the GPU
    work here fits the GPU workers, so the two agree or nearly). duration_aware starts with the
    history of one earlier run (3 samples per test, as the database would provide) and is also
    run cold, with no history at all. Durations of a task vary around its test's median
    (sigma 0.3), so the predictor is never exact.
(b) Decision cost: 200 workers (4 slots each, a quarter with GPUs, some tags), 10,000 pending
    tasks of mixed requirements. Steady state: each handle() call carries one FinishReported and one
    new Submit (so 10,000 stay pending) plus the StartReported of the previous dispatch, and yields
    one dispatch. decisions/s = dispatches / seconds spent inside handle(). Median of 5 runs.

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dtf_gui.coordinator.scheduler import (
    Dispatch,
    FinishReported,
    Requirements,
    Scheduler,
    SchedulerConfig,
    StartReported,
    Submit,
    SubmitBatch,
    TaskSpec,
    WorkerSpec,
    WorkerUp,
)

GPU_REQ = Requirements(hardware="cuda", gpu_count=1)
STRATEGIES = ["fair_share", "round_robin", "least_loaded", "best_fit", "duration_aware"]


def make_workers() -> list[WorkerSpec]:
    gpu = [WorkerSpec(worker_id=f"gpu{i}", slots=8, gpus=8, gpu_memory_gb=24, hardware=frozenset({"cpu", "cuda"}),
                      speed=s) for i, s in enumerate((1.0, 1.5))]
    cpu = [WorkerSpec(worker_id=f"cpu{i}", slots=8, speed=s) for i, s in enumerate((0.5, 0.75, 1.0, 1.0, 1.25, 2.0))]
    return gpu + cpu


def make_tasks(n: int, seed: int) -> tuple[list[TaskSpec], dict[str, float], dict[str, float]]:
    """Tasks, their true work (seconds at speed 1.0), and each test's median."""
    r = random.Random(seed)
    medians = {f"T{k}": math.exp(r.gauss(math.log(30.0), 1.0)) for k in range(100)}
    gpu_tests = {f"T{k}" for k in range(100) if k % 5 == 0}  # 20% of the tests, hence ~20% of the tasks
    tests = sorted(medians)
    specs, work = [], {}
    for i in range(n):
        t = tests[r.randrange(len(tests))]
        tid = f"task{i}"
        work[tid] = medians[t] * math.exp(r.gauss(0.0, 0.3))
        specs.append(TaskSpec(task_id=tid, test_id=t, requirements=GPU_REQ if t in gpu_tests else Requirements()))
    return specs, work, medians


def lower_bounds(specs: list[TaskSpec], work: dict[str, float], workers: list[WorkerSpec]) -> tuple[float, float]:
    cap = sum(w.slots * w.speed for w in workers)
    gpu_workers = [w for w in workers if w.gpus]
    gpu_cap = sum(min(w.slots, w.gpus) * w.speed for w in gpu_workers)
    fastest = max(w.speed for w in workers)
    fastest_gpu = max(w.speed for w in gpu_workers)
    total = sum(work.values())
    gpu_work = sum(work[s.task_id] for s in specs if s.requirements.hardware == "cuda")
    longest = max(work[s.task_id] / (fastest_gpu if s.requirements.hardware == "cuda" else fastest) for s in specs)
    plain = max(total / cap, longest)
    return plain, max(plain, gpu_work / gpu_cap)


def simulate(strategy: str, specs: list[TaskSpec], work: dict[str, float], medians: dict[str, float],
             warm: bool, seed: int) -> float:
    workers = make_workers()
    speed = {w.worker_id: w.speed for w in workers}
    s = Scheduler(SchedulerConfig(strategy=strategy, aging_interval=0.0), rng=random.Random(seed))
    if warm:
        r = random.Random(seed + 1)
        for test, m in medians.items():
            for _ in range(3):
                s.record_duration(test, "cpu", m * math.exp(r.gauss(0.0, 0.3)))
                s.record_duration(test, "cuda", m * math.exp(r.gauss(0.0, 0.3)))
    events: list[tuple[float, int, str, str]] = []
    seq = 0
    now = 0.0
    batch: list = [WorkerUp(0.0, w) for w in workers] + [SubmitBatch(0.0, tuple(specs))]
    done = 0
    makespan = 0.0
    while True:
        out = s.handle(batch)
        batch = []
        for ins in out:
            if type(ins) is Dispatch:
                d = work[ins.task_id] / speed[ins.worker_id]
                seq += 1
                heapq.heappush(events, (now + d, seq, ins.task_id, ins.worker_id))
                batch.append(StartReported(now, ins.task_id, ins.worker_id))
        if batch:
            continue
        if not events:
            break
        now = events[0][0]
        while events and events[0][0] <= now:
            t_end, _, tid, wid = heapq.heappop(events)
            batch.append(FinishReported(t_end, tid, wid, True, duration=t_end - (t_end - work[tid] / speed[wid])))
            done += 1
            makespan = t_end
    assert done == len(specs), f"{strategy}: only {done} of {len(specs)} tasks finished"
    return makespan


def bench_decisions(strategy: str, n_pending: int, n_workers: int, seed: int, steps: int) -> float:
    r = random.Random(seed)
    workers = []
    for i in range(n_workers):
        gpu = i % 4 == 0
        workers.append(WorkerSpec(worker_id=f"w{i}", slots=4, gpus=2 if gpu else 0,
                                  hardware=frozenset({"cpu", "cuda"}) if gpu else frozenset({"cpu"}),
                                  tags=frozenset({"fast"}) if i % 3 == 0 else frozenset(), speed=0.5 + r.random()))
    reqs = [Requirements()] * 8 + [Requirements(hardware="cuda", gpu_count=1), Requirements(tags=frozenset({"fast"}))]
    s = Scheduler(SchedulerConfig(strategy=strategy), rng=random.Random(seed))
    for k in range(20):
        s.record_duration(f"T{k}", "cpu", 1.0 + k)
    counter = 0

    def new_task(now: float) -> TaskSpec:
        nonlocal counter
        counter += 1
        return TaskSpec(task_id=f"x{counter}", test_id=f"T{counter % 20}", requirements=reqs[counter % len(reqs)],
                        priority=counter % 3 + 4)

    # Fill: workers busy, n_pending more waiting.
    total_slots = sum(w.slots for w in workers)
    out = s.handle([WorkerUp(0.0, w) for w in workers]
                   + [Submit(0.0, new_task(0.0)) for _ in range(total_slots + n_pending)])
    running: list[tuple[str, str]] = [(i.task_id, i.worker_id) for i in out if type(i) is Dispatch]
    s.handle([StartReported(0.0, t, w) for t, w in running])
    assert s.pending_count() >= n_pending * 0.9, s.pending_count()
    decisions = 0
    spent = 0.0
    started: list = []
    perf = time.perf_counter
    for step in range(steps):
        now = 1.0 + step * 1e-3
        t, w = running.pop(r.randrange(len(running)))
        evs = started + [FinishReported(now, t, w, True, duration=1.0), Submit(now, new_task(now))]
        t0 = perf()
        out = s.handle(evs)
        spent += perf() - t0
        started = []
        for ins in out:
            if type(ins) is Dispatch:
                decisions += 1
                running.append((ins.task_id, ins.worker_id))
                started.append(StartReported(now, ins.task_id, ins.worker_id))
    return decisions / spent


def main() -> None:
    quick = "--quick" in sys.argv
    n_tasks = 1000 if quick else 5000
    results: dict[str, object] = {"tasks": n_tasks, "gpu_share": 0.2, "workers": "2 GPU (speed 1, 1.5) + 6 CPU "
                                  "(speed 0.5-2), 8 slots each"}
    specs, work, medians = make_tasks(n_tasks, seed=42)
    lb, lb_gpu = lower_bounds(specs, work, make_workers())
    results["lower_bound_s"] = round(lb, 1)
    results["lower_bound_with_gpu_term_s"] = round(lb_gpu, 1)
    results["gpu_task_share"] = round(sum(1 for s in specs if s.requirements.hardware) / len(specs), 3)
    ratios: dict[str, float] = {}
    print(f"(a) simulation: {n_tasks} tasks, lower bound {lb:.1f} s (with GPU term {lb_gpu:.1f} s)")
    for strat in STRATEGIES:
        t0 = time.perf_counter()
        ms = simulate(strat, specs, work, medians, warm=True, seed=1)
        ratios[strat] = ms / lb
        print(f"  {strat:15s} makespan {ms:9.1f} s  ratio {ms / lb:.3f}  ({time.perf_counter() - t0:.1f} s wall)")
    ms_cold = simulate("duration_aware", specs, work, medians, warm=False, seed=1)
    ratios["duration_aware_cold"] = ms_cold / lb
    print(f"  {'duration_aware (no history)':15s} makespan {ms_cold:9.1f} s  ratio {ms_cold / lb:.3f}")
    results["makespan_ratio"] = {k: round(v, 4) for k, v in ratios.items()}
    results["duration_aware_vs_fair_share"] = round(ratios["duration_aware"] / ratios["fair_share"], 4)
    results["goal_duration_aware_le_1_10"] = ratios["duration_aware"] <= 1.10

    runs = 3 if quick else 5
    steps = 5000 if quick else 20000
    rates: dict[str, float] = {}
    print(f"(b) decisions/s, 10,000 pending, 200 workers, median of {runs} runs of {steps} decisions")
    for strat in ("duration_aware", "least_loaded", "fair_share", "best_fit"):
        vals = [bench_decisions(strat, 10_000, 200, seed=k, steps=steps) for k in range(runs)]
        rates[strat] = statistics.median(vals)
        print(f"  {strat:15s} {rates[strat]:10.0f} decisions/s  (runs: {', '.join(f'{v:.0f}' for v in vals)})")
    results["decisions_per_s"] = {k: round(v) for k, v in rates.items()}
    results["goal_decisions_ge_50000"] = min(rates.values()) >= 50_000
    print(json.dumps(results))


if __name__ == "__main__":
    main()
