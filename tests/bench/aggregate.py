"""Aggregator speed: 1,000,000 results in 200 groups.

Goals: summary statistics <= 300 ms once loaded; loading from SQLite <= 1.5 s; change-point scan of
1,000 series x 500 points <= 5 s; one incremental update (ingest of one result) <= 20 ms. Also
reported, without a goal: one ingest of 2,000 results over 200 series (a flush at a high rate).

    .venv/bin/python tests/bench/aggregate.py [--results 1000000] [--groups 200] [--repeat 5] [--ddl SQL]

--ddl runs extra schema statements (e.g. an index) on the benchmark's own temporary database after it
is built, to measure what a schema change would do to the load before the store adopts it.

Last line of output: one JSON object (medians of --repeat runs; the *_runs_s lists hold every run).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dtf_gui.coordinator.aggregator import LiveDetector, ResultQueries, detect_change_points, summarize
from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.store import Store

T = TypeVar("T")


def build_db(path: Path, n: int, groups: int) -> None:
    st = Store(path)
    rng = np.random.default_rng(0)
    g = rng.integers(0, groups, n)
    v = 100.0 + g + rng.standard_normal(n)
    ts = np.sort(rng.uniform(0, 86400 * 30, n))
    conn = st.conn
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO results (result_id, task_id, worker_id, test_id, timestamp, status) VALUES (?,?,?,?,?,?)",
        ((f"r{i}", f"t{i}", "w1", f"test{gi}", t, "completed") for i, (gi, t) in enumerate(zip(g.tolist(), ts.tolist(), strict=True))),
    )
    conn.executemany("INSERT INTO metrics (result_id, name, value) VALUES (?,?,?)",
                     ((f"r{i}", "throughput", x) for i, x in enumerate(v.tolist())))
    conn.execute("COMMIT")
    st.close()


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, T, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ddl", action="append", default=[], help="extra schema SQL for the temporary database")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        t0 = time.perf_counter()
        build_db(db, args.results, args.groups)
        build_s = time.perf_counter() - t0
        if args.ddl:
            conn = sqlite3.connect(db)
            for ddl in args.ddl:
                conn.execute(ddl)
            conn.commit()
            conn.close()
        queries = ResultQueries(db, cache_ttl=0.0)
        load_s, loaded, load_runs = timed(lambda: queries.load_groups(), args.repeat)
        keys, names, arrays = loaded
        assert sum(a.size for a in arrays) == args.results, "load lost rows"
        stats_s, basic, _ = timed(lambda: summarize(keys, names, arrays), args.repeat)
        assert len(basic) == args.groups
        queries.close()

    rng = np.random.default_rng(1)
    series = 100 * (1 + 0.03 * rng.standard_normal((1000, 500)))
    series[::3, 250:] *= 1.05
    scan_s, found, scan_runs = timed(lambda: sum(len(detect_change_points(s)) for s in series),
                                     max(3, args.repeat // 2))

    inc = LiveDetector()
    hist = 100 * (1 + 0.03 * rng.standard_normal(1000))
    inc.ingest([Result(result_id=f"h{i}", task_id=f"h{i}", test_id="t", worker_id="w", metrics={"throughput": float(x)})
                for i, x in enumerate(hist)])
    times = []
    for i in range(50):
        r = Result(result_id=f"n{i}", task_id=f"n{i}", test_id="t", worker_id="w", metrics={"throughput": 100.0})
        t0 = time.perf_counter()
        inc.ingest([r])
        times.append(time.perf_counter() - t0)
    inc_s = statistics.median(times)
    # A busy flush: 2,000 results over 200 series in one ingest (the analysis thread's batch at
    # high rates), every value judged against the values before it, its own batch's included.
    flush = []
    for k in range(max(3, args.repeat)):
        vals = 100 * (1 + 0.03 * rng.standard_normal(2000))
        batch = [Result(result_id=f"f{k}-{i}", task_id=f"f{k}-{i}", test_id=f"t{i % 200}", worker_id="w",
                        metrics={"throughput": float(x)}) for i, x in enumerate(vals)]
        t0 = time.perf_counter()
        inc.ingest(batch)
        flush.append(time.perf_counter() - t0)
    flush_s = statistics.median(flush[1:])  # the first flush creates the 200 series

    print(json.dumps({
        "results": args.results, "groups": args.groups, "build_db_s": round(build_s, 2),
        "load_s": round(load_s, 3), "load_goal_s": 1.5, "load_runs_s": [round(t, 3) for t in load_runs],
        "ddl": args.ddl,
        "stats_ms": round(stats_s * 1000, 1), "stats_goal_ms": 300,
        "changepoint_scan_s": round(scan_s, 3), "changepoint_scan_goal_s": 5.0,
        "changepoint_scan_runs_s": [round(t, 3) for t in scan_runs], "change_points_found": found,
        "incremental_ms": round(inc_s * 1000, 2), "incremental_goal_ms": 20,
        "ingest_flush_2000_results_200_series_ms": round(flush_s * 1000, 1),
    }))


if __name__ == "__main__":
    main()
