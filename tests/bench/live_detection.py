"""Live regression detection, measured through the coordinator's ingest path (issue 13's Goals).

    .venv/bin/python tests/bench/live_detection.py [--series 30] [--drift-series 10] [--seed 1] [--quick]

Last line of output: one JSON object. Every figure is printed beside the issue's target.

What is real and what is not
----------------------------
Real, in this process, built as ``Coordinator.__init__`` builds them (server.py): the
:class:`~dtf_gui.coordinator.store.Store` (background writer thread, ``on_commit`` waking the
inbox, a SQLite file in a temporary directory: a fresh one, with a fresh Analysis, per group of
8 series, because the store's commit of one result slows as its database grows (about 0.3 ms at
2,000 results, 2 ms at 10,000, on the 2-core dev machine: a store matter, kept out of these figures
and out of the run time), the :class:`~dtf_agent.inbox.Inbox`, the
:class:`~dtf_gui.coordinator.events.EventHub` (with one sink: this script, where the window would
be), :class:`~dtf_gui.coordinator.telemetry.Counters` and
:class:`~dtf_gui.coordinator.analysis.Analysis` at the default ``[result_aggregator]`` settings,
which builds the live detector, its thread, the query service and the metric catalog itself.

Simulated: the agents, the sockets and the loop. For each result this script does, in order, what
the coordinator's loop does for a result frame and the turns after it (``_on_results``,
``_flush_store``, ``_timers``, ``_run_inbox``): ``store.put_result``,
``analysis.result_stored``, ``store.flush()`` (committed), ``analysis.after_flush()``, then it runs
the inbox's hand-overs until the analysis thread has answered (``_on_findings`` stores the
findings as events and retracts what they supersede), ``store.flush()`` again (those events
committed, as the loop's next flush would) and ``hub.emit`` (what the window receives). So every
result reaches the detector alone, right after its commit: the "one result at a time" of the issue,
which is the fastest the real loop can hand results over (it batches what arrived within
``_ANALYSIS_EVERY``). The loop's timers and the agents' protocol are not exercised.
A full run takes about 4 minutes on the 2-core dev machine, ``--quick`` under one.

Series: level 100, Gaussian noise of 3 % of the level, 1 % of values spikes of +15..40 %; each
series is deterministic from ``--seed``, its case and its number. Each case feeds its series 8 at
a time, interleaved (one result of each of the 8 in turn). A series is one test on one worker,
one metric ("throughput": higher is better by the name guess).

Cases (``--series`` series each): steps of +5 %, -5 %, +10 %, +2 % at result 200 of 400; flat
series (10,000 results or more in all); and ``--drift-series`` series with a +5 % drift over 1,000
results (100 flat, the ramp, 100 at the new level). Then the
per-result cost: a second Analysis' detector with 1,000 live series (200 results each, warmed
up in one batch per series), timed around ``detector.ingest([result])`` alone, one result at a time.

How findings are read, so that a later detector is measured unchanged: a change finding is any
event whose kind contains "change" (not "trend"); its state is ``data["state"]`` when present, else
"suspected" when the kind says so, else "confirmed" (today's ``change_point`` has no state: it is
reported as both suspected and confirmed, and the output says ``suspected_states: false``). A
kind ending in "_retracted" in the events table, a hub "retracted" event naming it, or a state
"retracted" withdraws it. A trend finding is any event whose kind contains "trend".

Figures: a step is detected when a change finding arrives within 100 results of the onset
(inclusive of the onset result) locating the change no earlier than 10 results before it; the
delay is the number of results after the onset at whose arrival it came (the onset result
itself: 0). Delays are over the detected series only, beside the detected count. False alarms
count the change findings left in the events table at the end (not retracted), per 10,000 flat
results. "Anomalies inside the new level" are anomaly rows left in ``events`` for results among
the 20 from the onset that are no spike and lie within +-2 sd (sd = 3 % of the new level) of the
new level.
"""

from __future__ import annotations

import argparse
import json
import math
import select
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dtf_agent import protocol as p
from dtf_agent.inbox import Inbox
from dtf_gui.coordinator.analysis import Analysis
from dtf_gui.coordinator.config import ResultAggregatorSection
from dtf_gui.coordinator.events import EventHub
from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.store import Store
from dtf_gui.coordinator.telemetry import Counters

LEVEL = 100.0
NOISE = 0.03
SPIKE_RATE = 0.01
SPIKE_RANGE = (0.15, 0.40)
METRIC = "throughput"
INTERLEAVE = 8
WITHIN = 100  # a step counts as detected when found within this many results of its onset
LOCATE_SLACK = 10  # a finding locating the change further before the onset is not this step
AFTER_STEP = 20  # results after the onset where anomalies inside the new level are counted
COST_SERIES = 1000
COST_WARM = 200
WORKER = "bench-worker"


# -- the series --------------------------------------------------------------------------------

@dataclass(eq=False)  # compared by identity: a series is one object
class Series:
    case: str
    number: int
    values: NDArray[np.float64]
    levels: NDArray[np.float64]  # the true level at each position
    spikes: NDArray[np.bool_]
    onset: int | None = None  # first result of the new level (steps) or of the ramp (drift)
    # Filled while it streams: (arrival position, state, located position or None) per change finding.
    changes: list[tuple[int, str, int | None]] = field(default_factory=list)
    anomalies: list[tuple[int, int]] = field(default_factory=list)  # (arrival, position)
    trends: int = 0


def make_series(case: str, case_no: int, number: int, levels: NDArray[np.float64], seed: int,
                onset: int | None) -> Series:
    rng = np.random.default_rng([seed, case_no, number])
    n = levels.size
    values = levels * (1.0 + NOISE * rng.standard_normal(n))
    spikes = rng.random(n) < SPIKE_RATE
    values[spikes] *= 1.0 + rng.uniform(*SPIKE_RANGE, int(spikes.sum()))
    return Series(case, number, values, levels, spikes, onset)


def step_levels(n: int, onset: int, rel: float) -> NDArray[np.float64]:
    levels = np.full(n, LEVEL)
    levels[onset:] *= 1.0 + rel
    return levels


def drift_levels(flat: int, ramp: int, after: int, rel: float) -> NDArray[np.float64]:
    return np.concatenate([np.full(flat, LEVEL), LEVEL * (1.0 + rel * np.arange(1, ramp + 1) / ramp),
                           np.full(after, LEVEL * (1.0 + rel))])


# -- the ingest path ---------------------------------------------------------------------------

def change_state(kind: str, data: dict[str, Any]) -> str | None:
    """"suspected", "confirmed" or "retracted" for a change finding's event; None for any other."""
    k = kind.lower()
    if "change" not in k or "trend" in k:
        return None
    state = str(data.get("state") or "").lower()
    if k.endswith("_retracted") or state in ("retracted", "withdrawn", "rejected"):
        return "retracted"
    if state in ("suspected", "confirmed"):
        return state
    return "suspected" if "suspect" in k else "confirmed"


class LivePath:
    """Store, inbox, hub and Analysis wired as the coordinator wires them; :meth:`feed` is one
    result's way through them (see the module docstring)."""

    def __init__(self, db: Path) -> None:
        self.inbox: Inbox[Callable[[], None]] = Inbox()
        self.store = Store(db, background=True, on_commit=self.inbox.wake)
        self._heard: list[p.Event] = []
        self.hub = EventHub([self._heard.extend])
        self.counters = Counters()
        self.analysis = Analysis(db, ResultAggregatorSection(), inbox=self.inbox, store=self.store, hub=self.hub,
                                 counters=self.counters)

    def feed(self, result: Result) -> list[p.Event]:
        """One result through the path; returns the events the window would receive for it."""
        self.store.put_result(result)
        self.analysis.result_stored(result)
        self.store.flush()
        self.analysis.after_flush()
        self._settle()
        self.store.flush()
        self.hub.emit(lambda: {})
        heard = self._heard[:]
        self._heard.clear()  # in place: the hub's sink holds this very list
        return [e for e in heard if e.kind != "stats"]

    def _settle(self) -> None:
        """Run the loop's inbox until the analysis thread has answered everything submitted so far
        (its one worker runs in order, so a no-op submitted last answers last)."""
        done: list[bool] = []
        self.analysis.run(lambda: None, lambda fut: done.append(True))
        deadline = time.monotonic() + 120.0
        while not done:
            ready, _w, _x = select.select([self.inbox.fileno()], [], [], 1.0)
            if ready:
                self.inbox.clear_wake()
            for call in self.inbox.take():
                call()
            if time.monotonic() > deadline:
                raise RuntimeError("the analysis thread did not answer within 120 s")
        if self.counters.loop_errors:
            raise RuntimeError(f"{self.counters.loop_errors} background analysis step(s) failed (see the log)")

    def events(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        rows = self.store.query("SELECT id, kind, subject, data FROM events ORDER BY id")
        return [(int(i), str(k), str(s), json.loads(d) if d else {}) for i, k, s, d in rows]

    def close(self) -> None:
        self.analysis.close()
        self.store.close()
        self.inbox.close()


class Run:
    """The cases' series through LivePaths, one fresh path (database and Analysis) per group of
    INTERLEAVE series: the store's commit slows as its database grows (see the module docstring),
    which is no part of the detector's figures. Result ids name their series and position."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # every path's events table, in order
        self.by_id: dict[str, tuple[Series, int]] = {}
        self.feed_s: list[float] = []
        self.clock = 1.8e9
        self.suspected_seen = False
        self.trend_seen = False

    def stream(self, series: Sequence[Series]) -> None:
        for g in range(0, len(series), INTERLEAVE):
            group = series[g:g + INTERLEAVE]
            path = LivePath(self.tmp / f"{group[0].case}-{g}.db")
            try:
                for i in range(max(s.values.size for s in group)):
                    for s in group:
                        if i < s.values.size:
                            self._one(path, s, i)
                self.events.extend(path.events())
            finally:
                path.close()

    def _one(self, path: LivePath, s: Series, i: int) -> None:
        rid = f"{s.case}:{s.number}:{i}"
        self.by_id[rid] = (s, i)
        self.clock += 1.0
        result = Result(result_id=rid, task_id=rid, worker_id=WORKER, test_id=f"bench/{s.case}/{s.number}",
                        timestamp=self.clock, execution_time=1.0, exit_code=0,
                        metrics={METRIC: float(s.values[i])})
        t0 = time.perf_counter()
        events = path.feed(result)
        self.feed_s.append(time.perf_counter() - t0)
        for ev in events:
            self._heard(s, i, ev)

    def located(self, data: dict[str, Any], s: Series) -> int | None:
        rid = data.get("result_id")
        hit = self.by_id.get(str(rid)) if rid is not None else None
        if hit is not None and hit[0] is s:
            return hit[1]
        return None

    def _heard(self, s: Series, i: int, ev: p.Event) -> None:
        data = ev.data
        kind = ev.kind
        if "trend" in kind.lower():
            self.trend_seen = True
            s.trends += 1
            return
        state = change_state(kind, data)
        if state is not None:
            self.suspected_seen |= state == "suspected"
            s.changes.append((i, state, self.located(data, s)))
        elif kind == "anomaly":
            pos = self.located(data, s)
            if pos is not None:
                s.anomalies.append((i, pos))


# -- figures -----------------------------------------------------------------------------------

def pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def first_detection(s: Series, states: Iterable[str]) -> int | None:
    """Delay (results after the onset at whose arrival it came) of the first change finding in
    ``states`` that is this step, within WITHIN results; None when there is none."""
    assert s.onset is not None
    wanted = set(states)
    for arrival, state, where in s.changes:
        if state not in wanted or arrival < s.onset or arrival > s.onset + WITHIN:
            continue
        if where is not None and where < s.onset - LOCATE_SLACK:
            continue
        return arrival - s.onset
    return None


def final_changes(events: list[tuple[int, str, str, dict[str, Any]]],
                  by_id: dict[str, tuple[Series, int]]) -> dict[str, tuple[Series, int, str]]:
    """{subject: (series, position, final state)} of the change findings in the events table."""
    out: dict[str, tuple[Series, int, str]] = {}
    for _id, kind, subject, data in events:
        state = change_state(kind, data)
        hit = by_id.get(subject)
        if state is None or hit is None:
            continue
        out[subject] = (hit[0], hit[1], state)
    return out


def step_case(series: list[Series], suspected_states: bool) -> dict[str, Any]:
    susp = [first_detection(s, ("suspected", "confirmed")) for s in series]
    conf = [first_detection(s, ("confirmed",)) for s in series]
    ds = [d for d in susp if d is not None]
    dc = [d for d in conf if d is not None]
    pre = sum(1 for s in series for a, st, _w in s.changes if st != "retracted" and s.onset is not None
              and a < s.onset)
    return {
        "n": len(series), "detected_suspected": len(ds), "detected_confirmed": len(dc),
        "median_delay_suspected": pct(ds, 50), "p90_delay_suspected": pct(ds, 90),
        "median_delay_confirmed": pct(dc, 50), "p90_delay_confirmed": pct(dc, 90),
        "change_findings_before_onset": pre,
        "suspected_is_confirmed": not suspected_states,
    }


def after_step(series: list[Series], left: dict[str, tuple[Series, int]],
               first_change: Callable[[Series], int | None]) -> dict[str, float]:
    """Anomaly rows left in events among the AFTER_STEP results from each onset."""
    inside = flagged = after_cp = 0
    for s, pos in left.values():
        if s not in series or s.onset is None or not s.onset <= pos < s.onset + AFTER_STEP:
            continue
        flagged += 1
        new = float(s.levels[pos])
        if not s.spikes[pos] and abs(float(s.values[pos]) - new) <= 2 * NOISE * new:
            inside += 1
            arrival = next((a for a, q in s.anomalies if q == pos), pos)
            cp = first_change(s)
            if cp is not None and arrival > cp:
                after_cp += 1
    window = AFTER_STEP * sum(1 for s in series if s.onset is not None)
    return {"inside_2sd_left": inside, "all_left": flagged, "inside_2sd_raised_after_change": after_cp,
            "all_left_per_10k": 1e4 * flagged / window if window else 0.0}


def cost(quick: bool, seed: int, db: Path) -> dict[str, Any]:
    """The detector's own time per result with COST_SERIES live series (the Analysis' detector,
    called directly: no store, no thread hand-over)."""
    inbox: Inbox[Callable[[], None]] = Inbox()
    store = Store(db, background=True, on_commit=inbox.wake)
    analysis = Analysis(db, ResultAggregatorSection(), inbox=inbox, store=store, hub=EventHub(), counters=Counters())
    det = analysis.detector
    rounds = 2 if quick else 5
    rng = np.random.default_rng([seed, 99])
    n = COST_WARM + rounds
    vals = LEVEL * (1.0 + NOISE * rng.standard_normal((COST_SERIES, n)))
    spikes = rng.random((COST_SERIES, n)) < SPIKE_RATE
    vals[spikes] *= 1.0 + rng.uniform(*SPIKE_RANGE, int(spikes.sum()))

    def result(s: int, i: int) -> Result:
        rid = f"cost:{s}:{i}"
        return Result(result_id=rid, task_id=rid, worker_id=WORKER, test_id=f"bench/cost/{s}",
                      timestamp=1.8e9 + i, metrics={METRIC: float(vals[s, i])})

    try:
        for s in range(COST_SERIES):
            det.ingest([result(s, i) for i in range(COST_WARM)])
        timed = [[result(s, COST_WARM + r) for s in range(COST_SERIES)] for r in range(rounds)]
        took: list[float] = []
        for batch in timed:
            for res in batch:
                t0 = time.perf_counter_ns()
                det.ingest([res])
                took.append((time.perf_counter_ns() - t0) / 1000.0)
    finally:
        analysis.close()
        store.close()
        inbox.close()
    return {"series": COST_SERIES, "timed_results": len(took), "median_us": pct(took, 50),
            "p90_us": pct(took, 90), "mean_us": float(np.mean(took))}


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--series", type=int, default=30, help="series per case (default 30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--drift-series", type=int, default=10, help="drift series of 1,200 results (default 10)")
    ap.add_argument("--quick", action="store_true", help="a smoke run under a minute: 4 series per step case, "
                    "400 flat results per series, 1 drift series, fewer timed results")
    args = ap.parse_args(argv)
    n = 4 if args.quick and args.series == 30 else args.series
    started = time.perf_counter()
    steps = {"step_up5": 0.05, "step_down5": -0.05, "step_up10": 0.10, "step_up2": 0.02}
    cases: dict[str, list[Series]] = {}
    for no, (name, rel) in enumerate(steps.items()):
        cases[name] = [make_series(name, no, s, step_levels(400, 200, rel), args.seed, 200) for s in range(n)]
    # 10,000 flat results or more (--quick: 400 per series, a rough figure only).
    flat_len = 400 if args.quick else max(400, math.ceil(10_000 / n))
    cases["flat"] = [make_series("flat", 10, s, np.full(flat_len, LEVEL), args.seed, None) for s in range(n)]
    ramp = 1000
    n_drift = 1 if args.quick and args.drift_series == 10 else args.drift_series
    cases["drift"] = [make_series("drift", 11, s, drift_levels(100, ramp, 100, 0.05), args.seed, 100)
                      for s in range(n_drift)]

    with tempfile.TemporaryDirectory(prefix="dtf-live-bench-") as tmp:
        run = Run(Path(tmp))
        for name, series in cases.items():
            t0 = time.perf_counter()
            run.stream(series)
            total = sum(s.values.size for s in series)
            print(f"  {name}: {len(series)} series, {total} results streamed in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        events = run.events
        stream_s = time.perf_counter() - started
        cost_fig = cost(args.quick, args.seed, Path(tmp) / "cost.db")

    suspected_states = run.suspected_seen
    changes = final_changes(events, run.by_id)
    anomalies_left = {subj: run.by_id[subj] for _i, kind, subj, _d in events
                      if kind == "anomaly" and subj in run.by_id}

    def first_change(s: Series) -> int | None:
        d = first_detection(s, ("suspected", "confirmed"))
        return None if d is None or s.onset is None else s.onset + d

    out: dict[str, Any] = {"bench": "live_detection", "seed": args.seed, "series_per_case": n, "quick": args.quick,
                           "suspected_states": suspected_states, "trend_findings": run.trend_seen}
    for name in steps:
        fig = step_case(cases[name], suspected_states)
        fig["anomalies_after_onset"] = after_step(cases[name], anomalies_left, first_change)
        out[name] = fig

    flat = cases["flat"]
    flat_total = sum(s.values.size for s in flat)
    left = [st for (s, _pos, st) in changes.values() if s in flat]
    raised = sum(1 for s in flat for _a, st, _w in s.changes if st != "retracted")
    flat_anoms = sum(1 for (s, _pos) in anomalies_left.values() if s in flat)
    out["flat"] = {
        "results": flat_total,
        "false_confirmed_per_10k": 1e4 * sum(st == "confirmed" for st in left) / flat_total,
        "false_suspected_not_retracted_per_10k": 1e4 * sum(st in ("suspected", "confirmed") for st in left) / flat_total,
        "change_findings_raised": raised,
        "anomalies_left_per_10k": 1e4 * flat_anoms / flat_total,
    }
    drift = cases["drift"]
    d_left = [st for (s, _pos, st) in changes.values() if s in drift]
    out["drift"] = {
        "series": len(drift), "results": sum(s.values.size for s in drift),
        "change_points_left": sum(st in ("suspected", "confirmed") for st in d_left),
        "confirmed_change_points_left": sum(st == "confirmed" for st in d_left),
        "change_findings_raised": sum(1 for s in drift for _a, st, _w in s.changes if st != "retracted"),
        "series_with_trend": sum(1 for s in drift if s.trends) if run.trend_seen else "not available",
    }
    feed_us = [1e6 * t for t in run.feed_s]
    out["cost"] = {**cost_fig, "path_median_us": pct(feed_us, 50),
                   "path_note": "whole path per result in the streams: 2 commits, a thread hand-over, the detector"}
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    out["stream_s"] = round(stream_s, 1)

    # -- the table ----------------------------------------------------------------------------
    both = "" if suspected_states else "  (no suspected state yet: the one change finding counts as both)"
    print(f"\nLive detection through Store + Analysis, one result at a time, {INTERLEAVE} series interleaved, "
          f"seed {args.seed}, {n} series per step case{both}")
    for name, label in (("step_up5", "+5% step"), ("step_down5", "-5% step")):
        f = out[name]
        print(f"{label}: detected suspected {f['detected_suspected']}/{f['n']} (goal >= 29/30), "
              f"confirmed {f['detected_confirmed']}/{f['n']}; delay suspected median "
              f"{fmt(f['median_delay_suspected'])} (goal <= 8), p90 {fmt(f['p90_delay_suspected'])} (goal <= 15); "
              f"confirmed median {fmt(f['median_delay_confirmed'])} (goal <= 20)")
    f = out["step_up10"]
    print(f"+10% step: median delay suspected {fmt(f['median_delay_suspected'])} (goal <= 4), "
          f"confirmed {fmt(f['median_delay_confirmed'])}; detected {f['detected_suspected']}/{f['n']}")
    f = out["step_up2"]
    print(f"+2% step: detected within {WITHIN} results {f['detected_suspected']}/{f['n']} (goal >= 25/30), "
          f"confirmed {f['detected_confirmed']}/{f['n']}; median delay {fmt(f['median_delay_suspected'])}")
    f = out["flat"]
    print(f"flat ({f['results']} results): confirmed false change points {f['false_confirmed_per_10k']:.2f} "
          f"per 10,000 (goal <= 0.5); suspected-and-not-retracted {f['false_suspected_not_retracted_per_10k']:.2f} "
          f"per 10,000 (goal <= 1); anomalies left {f['anomalies_left_per_10k']:.1f} per 10,000")
    f = out["drift"]
    print(f"+5% drift over {ramp} results ({f['series']} series): change points left {f['change_points_left']} "
          f"(goal 0), raised {f['change_findings_raised']}; trend finding: {f['series_with_trend']} (goal: every series)")
    inside = sum(out[k]["anomalies_after_onset"]["inside_2sd_left"] for k in steps)
    for k in steps:
        a = out[k]["anomalies_after_onset"]
        print(f"{k}: anomalies left in events within {AFTER_STEP} results of the onset, inside the new level's +-2 sd: "
              f"{a['inside_2sd_left']} (goal 0; {a['inside_2sd_raised_after_change']} raised after the change was "
              f"found); all anomalies left there: {a['all_left']} ({a['all_left_per_10k']:.0f} per 10,000)")
    out["anomalies_inside_new_level_total"] = inside
    c = out["cost"]
    print(f"per-result cost, {c['series']} live series: detector median {fmt(c['median_us'])} us (goal <= 50), "
          f"p90 {fmt(c['p90_us'])} us; whole in-process path median {fmt(c['path_median_us'])} us")
    print(f"elapsed {out['elapsed_s']} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
