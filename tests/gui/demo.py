"""A realistic DTF home for screenshots, manual tries and the GUI benchmark.

:func:`build_demo` writes what a lab's coordinator would have stored after a few days: six workers of
varied hardware, a few thousand tasks (mostly completed, some failed with their errors and retries, some
cancelled, a few pending), nightly pytest runs with a row per test, benchmark runs whose metrics carry a
+8 % step two days ago, a one-off +30 % spike and a latency regression on one worker, the metric
declarations, and the findings the live detector reports on those series. Rows go through the real
:class:`~dtf_gui.coordinator.store.Store` and the findings come from the real
:class:`~dtf_gui.coordinator.aggregator.LiveDetector`, fed run by run as the coordinator feeds it after
each flush, and stored the way ``Analysis._on_findings`` stores them (retractions included).

No task is left assigned or running: a coordinator opening the database would hold such a task for its
worker and then requeue it, so the demo would change under the screenshots. The pending tasks ask for a
tag no demo worker has ("fpga"), so they wait, with a reason, whichever agents connect.

:func:`build_big_tasks` appends a million finished tasks (one transaction, ``executemany``) for the
benchmark of the task table.

    python tests/gui/demo.py HOME [--tasks 3000] [--big 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dtf_agent.hardware import hardware_id  # noqa: E402
from dtf_gui.coordinator.aggregator import LiveDetector, MetricCatalog  # noqa: E402
from dtf_gui.coordinator.analysis import record_finding  # noqa: E402
from dtf_gui.coordinator.config import ResultAggregatorSection  # noqa: E402
from dtf_gui.coordinator.records import Result, TaskRecord, WorkerRecord  # noqa: E402
from dtf_gui.coordinator.scheduler import Requirements, TaskSpec  # noqa: E402
from dtf_gui.coordinator.store import TASK_COLUMNS, Store, json_or_none  # noqa: E402

DAY = 86400.0
BENCH_TEST = "bench/io_throughput"
METRICS = {"throughput_mb_s": ("MB/s", "higher"), "latency_ms": ("ms", "lower")}

_GPU = {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "memory_gb": 79.15}
_XEON = {"cpu_model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", "cpu_count": 40, "cpu_physical": 20,
         "memory_gb": 187.56, "disk_gb": 1788.5, "os": "linux", "os_release": "6.1.0-18-amd64", "arch": "x86_64"}
# (worker id, capabilities, tags, slots, relative speed): two identical Xeons share a hardware id, so a
# plot colored by hardware has fewer colors than one colored by worker.
_WORKERS: list[tuple[str, dict[str, Any], list[str], int, float]] = [
    ("lab2-gpu-01", {"cpu_model": "AMD EPYC 7543 32-Core Processor", "cpu_count": 64, "cpu_physical": 32,
                     "memory_gb": 503.7, "disk_gb": 3576.0, "os": "linux", "os_release": "5.15.0-105-generic",
                     "arch": "x86_64", "gpus": [_GPU, {**_GPU, "index": 1}]}, ["gpu", "cuda", "lab-2"], 8, 1.00),
    ("lab2-xeon-01", dict(_XEON), ["x86", "lab-2"], 4, 0.91),
    ("lab2-xeon-02", dict(_XEON), ["x86", "lab-2"], 4, 0.91),
    ("lab1-arm-01", {"cpu_model": "Neoverse-N1", "cpu_count": 16, "cpu_physical": 16, "memory_gb": 31.2,
                     "disk_gb": 468.0, "os": "linux", "os_release": "6.1.0-18-arm64", "arch": "aarch64"},
     ["arm", "lab-1"], 4, 0.62),
    ("lab1-mac-01", {"cpu_model": "Apple M2 Pro", "cpu_count": 12, "cpu_physical": 12, "memory_gb": 32.0,
                     "disk_gb": 926.4, "os": "darwin", "os_release": "23.4.0", "arch": "arm64"},
     ["arm", "macos", "lab-1"], 4, 0.78),
    ("build-win-01", {"cpu_model": "AMD Ryzen 9 5950X 16-Core Processor", "cpu_count": 32, "cpu_physical": 16,
                      "memory_gb": 63.9, "disk_gb": 1863.0, "os": "windows", "os_release": "10", "arch": "AMD64"},
     ["windows", "build"], 2, 0.70),
]

_COMMANDS = [
    ("fw/flash", "./scripts/flash.sh --board rev-c --image build/fw.bin"),
    ("fw/unit", "make -C firmware test"),
    ("codec/encode", "python -m bench.codec --codec zstd --level 9 --input corpus/large"),
    ("net/iperf", "iperf3 -c 10.2.0.15 -t 30 --json"),
    ("db/migrate", "./ci/check_migrations.sh"),
    ("ui/lint", "npm run lint --prefix ui"),
    ("sensor/calibrate", "python tools/calibrate.py --sensor imu --samples 5000"),
    ("kernel/build", "make -j16 ARCH=arm64 defconfig all"),
]
_ERRORS = [
    ("exit code 1", "AssertionError: expected checksum 0x5a3c, got 0x5a3d"),
    ("exit code 2", "make: *** [Makefile:41: test] Error 2"),
    ("timed out after 600 s", ""),
    ("exit code 137", "Killed (out of memory?)"),
    ("exit code 1", "ConnectionRefusedError: [Errno 111] Connection refused (10.2.0.15:5201)"),
    ("exit code 1", "FileNotFoundError: [Errno 2] No such file or directory: 'build/fw.bin'"),
]
_TEST_MODULES = ["tests/test_io.py", "tests/test_codec.py", "tests/test_net.py", "tests/test_sensor.py",
                 "tests/drivers/test_uart.py", "tests/drivers/test_spi.py", "tests/test_scheduler.py"]


def _worker_specs(n: int) -> list[tuple[str, dict[str, Any], list[str], int, float]]:
    specs = list(_WORKERS[:n])
    for i in range(len(specs), n):  # more than the six: further Xeons of a third lab
        specs.append((f"lab3-xeon-{i - len(_WORKERS) + 1:02d}", dict(_XEON), ["x86", "lab-3"], 4, 0.91))
    out = []
    for wid, caps, tags, slots, speed in specs:
        caps = {**caps, "gpus": caps.get("gpus", []), "python": "3.11.9"}
        caps["gpu_count"] = len(caps["gpus"])
        caps["gpu_memory_gb"] = max((g["memory_gb"] for g in caps["gpus"]), default=0.0)
        caps["hardware"] = ["cpu", "cuda"] if caps["gpus"] else ["cpu"]
        caps["hardware_id"] = hardware_id(caps)
        out.append((wid, caps, tags, slots, speed))
    return out


class _Ids:
    """Task ids shaped like the coordinator's (microseconds in hex, then a suffix): time-ordered, with
    the long shared prefix that real ids have."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.used: set[int] = set()

    def __call__(self, when: float) -> str:
        us = int(when * 1e6)
        while us in self.used:
            us += 1
        self.used.add(us)
        return f"{us:x}{self.suffix}"


class _Builder:
    def __init__(self, store: Store, rng: random.Random, now: float) -> None:
        self.store = store
        self.rng = rng
        self.now = now
        self.ids = _Ids("3f")
        self.rid = 0
        self.counts: dict[str, int] = {}
        self.results = 0

    def result_id(self, worker: str) -> str:
        self.rid += 1
        return f"{worker}-d3m0{self.rid:05x}-{self.rid}"

    def task(self, *, when: float, status: str, worker: str | None, kind: str = "command",
             params: dict[str, Any] | None = None, test_id: str = "", run: str = "", duration: float = 1.0,
             error: str | None = None, attempt: int = 1, priority: int = 5,
             requirements: Requirements | None = None, metadata: dict[str, Any] | None = None) -> TaskRecord:
        meta = dict(metadata or {})
        if run:
            meta["run"] = run
        spec = TaskSpec(task_id=self.ids(when), priority=priority, test_id=test_id, submit_time=when,
                        **({"requirements": requirements} if requirements is not None else {}))
        t = TaskRecord(spec, type=kind, parameters=params or {}, timeout=600.0, metadata=meta or None,
                       create_time=when, status=status)
        if status != "pending":
            t.worker_id = worker
            t.attempt = attempt
            t.failures = attempt - 1 + (status == "failed")
            t.start_time = when + self.rng.uniform(0.05, 3.0)
            t.end_time = t.start_time + duration
            t.error = error
            if status == "cancelled":
                t.status_reason = "cancelled by operator"
        self.counts[status] = self.counts.get(status, 0) + 1
        return t

    def result(self, t: TaskRecord, *, status: str, metrics: dict[str, float] | None = None, error: str = "",
               exit_code: int | None = 0, attempt: int | None = None, run: str = "",
               stdout: str = "", stderr: str = "") -> Result:
        assert t.worker_id is not None and t.end_time is not None and t.start_time is not None
        r = Result(result_id=self.result_id(t.worker_id), task_id=t.task_id, worker_id=t.worker_id,
                   test_id=t.test_id, timestamp=t.end_time, status=status,
                   execution_time=round(t.end_time - t.start_time, 3), exit_code=exit_code, error=error,
                   metrics=metrics or {}, raw_data={"stdout_tail": stdout, "stderr_tail": stderr} if (
                       stdout or stderr) else None, attempt=attempt or t.attempt, run_id=run)
        t.results = r.result_id
        self.store.put_result(r)
        self.results += 1
        return r


def _declare(store: Store) -> MetricCatalog:
    """The metric declarations as the API's declare_metrics stores them (Analysis.declare)."""
    catalog = MetricCatalog(ResultAggregatorSection().metric_declarations())
    catalog.declare_all({k: u for k, (u, _d) in METRICS.items()}, {k: d for k, (_u, d) in METRICS.items()},
                        source="api")
    for row in catalog.changed_rows():
        store.put_row("metric_meta", row)
    return catalog


def _run_row(store: Store, run_id: str, name: str, kind: str, created: float, finished: float, status: str,
             meta: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    store.put_row("runs", (run_id, name, kind, created, finished, status, json_or_none(meta) or "{}",
                           json_or_none(summary) or "{}"))
    return {"run_id": run_id, "name": name, "kind": kind, "created": created, "status": status}


def _workers(b: _Builder, n: int) -> list[tuple[str, dict[str, Any], list[str], int, float]]:
    specs = _worker_specs(n)
    for i, (wid, caps, tags, slots, _speed) in enumerate(specs):
        w = WorkerRecord(wid, b"", hostname=f"{wid}.lab.example.com", slots=slots, capabilities=caps, tags=tags,
                         metadata={"agent_version": "0.1.0"}, running=[], now=b.now - 60 - 45 * i,
                         first_seen=b.now - 30 * DAY + i * 3600, seen_at=0.0)
        w.status = "offline"  # what a coordinator sets at start anyway: none is connected yet
        w.performance_metrics = {"cpu_percent": round(b.rng.uniform(3, 60), 1),
                                 "memory_percent": round(b.rng.uniform(20, 75), 1),
                                 "disk_percent": round(b.rng.uniform(30, 88), 1)}
        if caps["gpus"]:
            w.performance_metrics |= {"gpu_percent": 41.0, "gpu_memory_percent": 63.5}
        b.store.put_worker(w)
    return specs


def _bench(b: _Builder, specs: list[tuple[str, dict[str, Any], list[str], int, float]], points: int,
           catalog: MetricCatalog, days: float) -> dict[str, Any]:
    """Benchmark runs every few tens of minutes: each runs BENCH_TEST on every worker. The series are
    judged by the real live detector, run by run, and its findings stored as the coordinator stores them."""
    rng = b.rng
    step_at = b.now - 2 * DAY  # a faster I/O path landed: +8 % on every worker
    spike_worker = specs[min(2, len(specs) - 1)][0]
    regress_worker = specs[min(3, len(specs) - 1)][0]  # latency +12 % from a day ago, on one worker
    regress_at = b.now - 1 * DAY
    spike_run = int(points * 0.8)
    interval = days * DAY / points
    detector = LiveDetector(anomaly_threshold=ResultAggregatorSection().anomaly_threshold, catalog=catalog)
    findings: list[dict[str, Any]] = []
    retracted = 0
    run_ids: list[str] = []
    for k in range(points):
        when = b.now - days * DAY + k * interval
        run_id = f"bench-io.{k + 1}"
        run_ids.append(run_id)
        batch: list[Result] = []
        failed = 0
        for wid, _caps, _tags, _slots, speed in specs:
            level = 100.0 * speed * (1.08 if when >= step_at else 1.0)
            tput = level * (1 + rng.gauss(0, 0.03))
            if k == spike_run and wid == spike_worker:
                tput = level * 1.30  # one run on a quiet disk: a spike, not a new level
            lat = 2.0 / speed * (1.12 if wid == regress_worker and when >= regress_at else 1.0)
            lat *= 1 + rng.gauss(0, 0.03)
            dur = 40 / speed + rng.uniform(-2, 2)
            t = b.task(when=when + rng.uniform(0, 20), status="completed", worker=wid, test_id=BENCH_TEST,
                       run=run_id, duration=dur, params={"command": "./bench/io_throughput --size 4G --json"})
            metrics = {"throughput_mb_s": round(tput, 3), "latency_ms": round(lat, 4)}
            batch.append(b.result(t, status="success", metrics=metrics, run=run_id,
                                  stdout=json.dumps(metrics) + "\n"))
            b.store.put_task(t)
        # Live: a flush's fresh results go to the detector; what it finds becomes events (Analysis._on_findings).
        for finding in detector.ingest(batch):
            data = record_finding(b.store, finding, when=finding.timestamp + 2.0)
            retracted += len(getattr(finding, "supersedes", None) or ())
            findings.append(data)
        created = when
        finished = max(r.timestamp for r in batch)
        _run_row(b.store, run_id, "bench-io", "plan", created, finished, "failed" if failed else "passed",
                 {"plan": "plans/bench-io.yaml"}, {"tasks": len(batch), "failed_tasks": failed})
        if k % 20 == 19:
            b.store.flush()
    retracted_ids = set()
    for f in findings:
        retracted_ids.update((rid, f["metric"]) for rid in f.get("supersedes") or ())
    # What stays standing in events: anomalies no change explained, confirmed changes, trends.
    live = [f for f in findings if (f["kind"] == "anomaly" and (f["result_id"], f["metric"]) not in retracted_ids)
            or (f["kind"] == "change_point" and f["state"] == "confirmed") or f["kind"] == "trend"]
    return {"runs": run_ids, "findings": findings, "live_findings": live, "retracted": retracted,
            "spike_worker": spike_worker, "regress_worker": regress_worker, "step_at": step_at,
            "series": {BENCH_TEST: {m: [s[0] for s in specs] for m in METRICS}}}


def _nightly(b: _Builder, specs: list[tuple[str, dict[str, Any], list[str], int, float]], nights: int,
             ) -> list[str]:
    """Nightly pytest runs: one shard per worker, a result row per test with its outcome."""
    rng = b.rng
    tests = [f"{m}::test_{name}" for m in _TEST_MODULES
             for name in ("open_close", "read[4k]", "read[1M]", "write[4k]", "write[1M]", "timeout",
                          "reconnect", "checksum", "large_payload", "unicode_names", "concurrent_access",
                          "stress[8]", "stress[64]", "roundtrip", "defaults", "invalid_config",
                          "empty_input", "permissions", "clock_skew", "retry_backoff")]
    run_ids = []
    for night in range(nights):
        when = (b.now - (nights - night) * DAY) // DAY * DAY + 2 * 3600  # 02:00 UTC
        if when > b.now - 600:
            when -= DAY
        run_id = f"nightly.{night + 1}"
        run_ids.append(run_id)
        shards = [tests[i::len(specs)] for i in range(len(specs))]
        counts: dict[str, int] = {}
        failed_tasks = 0
        flaky: list[str] = []
        finished = when
        for (wid, _c, _t, _s, speed), shard in zip(specs, shards, strict=True):
            outcomes = []
            for nodeid in shard:
                outcome = "passed"
                if nodeid.endswith("clock_skew") and "arm" in wid:
                    outcome = "xfailed"
                elif nodeid.endswith("permissions") and "win" in wid:
                    outcome = "skipped"
                elif night == nights - 1 and nodeid.endswith(("checksum", "stress[64]")) and "codec" in nodeid:
                    outcome = "failed"  # last night's regression
                elif night == nights - 2 and nodeid.endswith("reconnect") and "net" in nodeid:
                    outcome = "flaky"
                outcomes.append(outcome)
                counts[outcome] = counts.get(outcome, 0) + 1
            bad = [o for o in outcomes if o == "failed"]
            duration = sum(rng.uniform(0.05, 4.0) for _ in shard) / speed
            t = b.task(when=when + rng.uniform(0, 5), status="failed" if bad else "completed", worker=wid,
                       kind="pytest", run=run_id, duration=duration,
                       error=f"{len(bad)} of {len(shard)} tests failed" if bad else None,
                       params={"tests": shard, "args": ["-q"], "bundle": "sha256:9c1e44d0a7"},
                       metadata={"shard": specs.index((wid, _c, _t, _s, speed)), "tests": len(shard)})
            failed_tasks += bool(bad)
            b.result(t, status="failure" if bad else "success", exit_code=1 if bad else 0, run=run_id,
                     error=t.error or "", stdout=f"{len(shard) - len(bad)} passed in {duration:.1f}s\n")
            assert t.results is not None and t.end_time is not None and t.start_time is not None
            clock = t.start_time
            for i, (nodeid, outcome) in enumerate(zip(shard, outcomes, strict=True)):
                took = rng.uniform(0.02, 3.0) / speed
                clock += took
                longrepr = ""
                if outcome == "failed":
                    longrepr = (f"def test_checksum():\n>       assert crc(block) == 0x5a3c\nE       AssertionError: "
                                f"assert 0x5a3d == 0x5a3c\n\n{nodeid.split('::')[0]}:88: AssertionError")
                status = {"passed": "success", "xfailed": "success", "flaky": "success",
                          "skipped": "partial"}.get(outcome, "failure")
                b.store.put_result(Result(
                    result_id=f"{t.results}/{i}", task_id=t.task_id, worker_id=wid, test_id=nodeid, timestamp=clock,
                    status=status, execution_time=round(took, 3), error=longrepr, run_id=run_id, outcome=outcome,
                    attempt=1))
                b.results += 1
            b.store.put_task(t)
            finished = max(finished, t.end_time)
            flaky += [n for n, o in zip(shard, outcomes, strict=True) if o == "flaky"]
        status = "failed" if failed_tasks else "passed"
        _run_row(b.store, run_id, "nightly", "pytest", when, finished, status,
                 {"args": ["-q", "tests/"], "workers": [s[0] for s in specs]},
                 {"counts": counts, "seconds": round(finished - when, 3), "flaky": flaky, "tasks": len(specs),
                  "failed_tasks": failed_tasks})
    return run_ids


def _adhoc(b: _Builder, specs: list[tuple[str, dict[str, Any], list[str], int, float]], n: int,
           days: float) -> None:
    """Everyday command tasks: mostly completed, some failed (a few after retries), some cancelled."""
    rng = b.rng
    workers = [s[0] for s in specs]
    for i in range(n):
        when = b.now - days * DAY + (i + rng.random()) * (days * DAY - 900) / max(n, 1)
        test_id, command = _COMMANDS[rng.randrange(len(_COMMANDS))]
        worker = rng.choice(workers)
        roll = rng.random()
        priority = rng.choice((5, 5, 5, 5, 1, 10))
        dur = rng.lognormvariate(2.5, 0.8)
        if roll < 0.03:
            t = b.task(when=when, status="cancelled", worker=worker, test_id=test_id, params={"command": command},
                       duration=dur * 0.3, priority=priority)
            b.store.put_task(t)
            continue
        failed = roll < 0.10
        retried = rng.random() < 0.25 if failed else rng.random() < 0.02
        attempts = (3 if failed else 2) if retried else 1
        err, stderr = _ERRORS[rng.randrange(len(_ERRORS))] if failed else ("", "")
        t = b.task(when=when, status="failed" if failed else "completed", worker=worker, test_id=test_id,
                   params={"command": command}, duration=dur, priority=priority, attempt=attempts,
                   error=(f"{err}: {stderr}" if stderr else err) if failed else None)
        for attempt in range(1, attempts):  # the earlier attempts failed, on some worker
            a_err, a_stderr = _ERRORS[rng.randrange(len(_ERRORS))]
            b.result(t, status="failure", exit_code=1, attempt=attempt, error=a_err, stderr=a_stderr + "\n")
        code = 137 if "137" in err else 1
        b.result(t, status="failure" if failed else "success", exit_code=code if failed else 0, error=err,
                 stdout="" if failed else f"{test_id}: ok ({dur:.1f}s)\n", stderr=stderr + "\n" if stderr else "")
        b.store.put_task(t)
        if i % 500 == 499:
            b.store.flush()


def _pending(b: _Builder, n: int) -> list[str]:
    """Tasks that wait for an FPGA board no worker has: pending, with a reason, whoever connects."""
    ids = []
    for i in range(n):
        t = b.task(when=b.now - 1800 + i * 60, status="pending", worker=None, test_id="fpga/bitstream",
                   params={"command": "./fpga/run_bitstream.sh --board zcu104"}, priority=5,
                   requirements=Requirements(tags=frozenset({"fpga"})))
        b.store.put_task(t)
        ids.append(t.task_id)
    return ids


def build_demo(home: Path, *, tasks: int = 3000, workers: int = 6, seed: int = 7) -> dict[str, Any]:
    """Write a demo database at ``home / "dtf.sqlite"`` (which must not exist yet); returns what it made:
    ``db``, ``workers`` (ids), ``tasks`` (count) and ``by_status``, ``results``, ``runs`` (nightly and bench
    run ids), ``series`` ({test: {metric: [worker ids]}}), ``findings`` (all stored finding dicts),
    ``live_findings`` (those not retracted), ``pending`` (task ids) and facts of the planted changes."""
    home = Path(home)
    db = home / "dtf.sqlite"
    if db.exists():
        raise FileExistsError(f"{db} exists: build the demo in an empty home")
    rng = random.Random(seed)
    now = time.time()
    days = 5.0
    nights = 4
    store = Store(db, batch_size=1_000_000, flush_interval=3600.0)
    try:
        b = _Builder(store, rng, now)
        specs = _workers(b, max(1, workers))
        catalog = _declare(store)
        points = max(60, min(180, tasks * 2 // (5 * len(specs))))
        pending_n = 8
        bench = _bench(b, specs, points, catalog, days)
        nightly = _nightly(b, specs, nights)
        _adhoc(b, specs, max(0, tasks - points * len(specs) - nights * len(specs) - pending_n), days)
        pending = _pending(b, pending_n)
        store.flush(wait=True)
    finally:
        store.close()
    kinds: dict[str, int] = {}
    for f in bench["live_findings"]:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    return {
        "db": db, "workers": [s[0] for s in specs], "tasks": sum(b.counts.values()), "by_status": dict(b.counts),
        "results": b.results, "runs": {"nightly": nightly, "bench": bench["runs"]}, "series": bench["series"],
        "metrics": dict(METRICS), "findings": bench["findings"], "live_findings": bench["live_findings"],
        "finding_kinds": kinds, "retracted": bench["retracted"], "pending": pending,
        "spike_worker": bench["spike_worker"], "regress_worker": bench["regress_worker"],
        "step_at": bench["step_at"],
    }


def build_big_tasks(path: Path, n: int = 1_000_000, *, seed: int = 11, before: float | None = None) -> int:
    """Append ``n`` finished tasks to the database at ``path`` (made, at the current schema, when missing),
    all older than ``before`` (default: the oldest task there, else now), in one transaction. Ids are
    time-ordered like the coordinator's, with a suffix of their own, so they never clash with a demo's.
    Returns the number of rows written."""
    path = Path(path)
    Store(path).close()  # the schema (migrations) only
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        if before is None:
            oldest = conn.execute("SELECT min(create_time) FROM tasks").fetchone()[0]
            before = float(oldest) if oldest is not None else time.time()
        rng = random.Random(seed)
        workers = [w for (w,) in conn.execute("SELECT worker_id FROM workers ORDER BY worker_id")] or [
            s[0] for s in _WORKERS]
        span = 60 * DAY
        start = before - span - 1.0
        step = span / max(n, 1)
        params = [json.dumps({"command": c}) for _t, c in _COMMANDS]
        cols = ("task_id", "type", "status", "priority", "create_time", "start_time", "end_time", "worker_id",
                "parameters", "error", "timeout", "attempt", "test_id", "failures", "lost", "cpu_slots")
        assert set(cols) <= set(TASK_COLUMNS)
        errors = [f"{e}: {s}" if s else e for e, s in _ERRORS]
        # A fixed pattern of statuses and durations: random numbers per row would be most of the cost.
        pattern = [(rng.random(), rng.lognormvariate(2.5, 0.8), rng.randrange(len(_COMMANDS)),
                    rng.randrange(len(workers))) for _ in range(997)]

        def rows() -> Any:
            base_us = int(start * 1e6)
            step_us = max(1, int(step * 1e6))
            for i in range(n):
                roll, dur, c, w = pattern[i % 997]
                created = start + i * step
                status = "cancelled" if roll < 0.02 else "failed" if roll < 0.08 else "completed"
                error = errors[i % len(errors)] if status == "failed" else None
                yield (f"{base_us + i * step_us:x}b1", "command", status, 5, created, created + 0.5,
                       created + 0.5 + dur, workers[w], params[c], error, 600.0, 1, _COMMANDS[c][0],
                       int(status == "failed"), 0, 1)

        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO tasks ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", rows())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("home", type=Path)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--big", type=int, default=0, help="also append this many finished tasks")
    args = ap.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    made = build_demo(args.home, tasks=args.tasks, workers=args.workers)
    took = time.perf_counter() - t0
    if args.big:
        t1 = time.perf_counter()
        build_big_tasks(made["db"], args.big)
        print(f"{args.big} more tasks in {time.perf_counter() - t1:.1f} s", file=sys.stderr)
    print(json.dumps({"db": str(made["db"]), "seconds": round(took, 2), "tasks": made["tasks"],
                      "by_status": made["by_status"], "results": made["results"],
                      "findings": made["finding_kinds"], "retracted": made["retracted"],
                      "nightly": made["runs"]["nightly"], "bench_runs": len(made["runs"]["bench"])}))


if __name__ == "__main__":
    main()
