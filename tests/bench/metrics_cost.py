"""What the Prometheus metrics cost the coordinator: the same in-process run with metrics off,
on (scraped once a second, faster than Prometheus's usual 15 s), and optionally on another
checkout (``--base``, e.g. the commit before metrics existed), in alternating order.

  .venv/bin/python tests/bench/metrics_cost.py [--runs 5] [--tasks 20000] [--waits 400] [--base /tmp/dtf-base]

Each run is a fresh process: a coordinator in it and 4 real agent processes (64 slots each);
- tasks_per_s: a flood of no-op tasks from the first submit until every result is stored;
- loop_cpu_us_per_task, process_cpu_us_per_task: the CPU the coordinator's loop thread (and the
  whole process) spent per task of that flood: steadier than wall time on a shared machine;
- submit_wait_p50_us: one no-op task at a time, create_task then `wait` until it completed, as a
  client sees it (the whole dispatch path, at a window of one task);
- scrapes: how many scrapes answered during the run (on only).
Prints the medians per mode, and one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def process_cpu() -> float:
    """Seconds of CPU this process (the coordinator's threads and the bench's client) used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu(tid: int | None) -> float:
    """Seconds of CPU one thread of this process used so far (Linux: /proc, in clock ticks)."""
    if tid is None:
        return 0.0
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(root: Path, mode: str, tasks: int, waits: int) -> dict[str, float]:
    """One run, in this process, of the checkout at ``root``."""
    sys.path.insert(0, str(root))
    from dtf_gui.client import Client
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.server import Coordinator

    home = Path(tempfile.mkdtemp(prefix="dtf-metrics-bench-"))
    os.environ["DTF_HOME"] = str(home)
    server = {"metrics_port": 0} if mode == "on" else {}
    coord = Coordinator(ephemeral_settings(home / "dtf.sqlite", home=home, server=server)).start()
    agents = [subprocess.Popen([sys.executable, "-m", "dtf_agent.cli", "--log-level", "WARNING", "--coordinator",
                                coord.endpoint("agents"), "--worker-id", f"a{i}", "--slots", "64"],
                               env=dict(os.environ), cwd=root) for i in range(4)]
    stop = threading.Event()
    scrapes = 0

    def scraper() -> None:
        nonlocal scrapes
        url = coord.info()["metrics_endpoint"]
        while not stop.wait(1.0):
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
            scrapes += 1

    thread = threading.Thread(target=scraper, daemon=True) if mode == "on" else None
    try:
        deadline = time.monotonic() + 60
        while coord.request("get_status")["workers_online"] < 4:
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not come online")
            time.sleep(0.05)
        if thread is not None:
            thread.start()
        loop_tid = coord._thread.native_id if coord._thread is not None else None
        cpu0, loop0 = process_cpu(), thread_cpu(loop_tid)
        t0 = time.perf_counter()
        for i in range(0, tasks, 5000):
            coord.request("create_tasks", {"tasks": [{"type": "noop"}] * min(5000, tasks - i)})
        while coord.request("get_status")["tasks"]["completed"] < tasks:
            time.sleep(0.01)
        secs = time.perf_counter() - t0
        cpu, loop_cpu = process_cpu() - cpu0, thread_cpu(loop_tid) - loop0
        rtts = []
        with Client(coord.endpoint("clients")) as client:
            for _ in range(waits):
                t1 = time.perf_counter()
                tid = client.call("create_task", {"type": "noop"})["task_id"]
                client.call("wait", {"task_ids": [tid], "timeout": 30})
                rtts.append(time.perf_counter() - t1)
        rtts.sort()
        return {"tasks_per_s": tasks / secs, "loop_cpu_us_per_task": loop_cpu / tasks * 1e6,
                "process_cpu_us_per_task": cpu / tasks * 1e6, "submit_wait_p50_us": rtts[len(rtts) // 2] * 1e6,
                "submit_wait_p99_us": rtts[int(len(rtts) * 0.99)] * 1e6, "scrapes": scrapes}
    finally:
        stop.set()
        if thread is not None and thread.is_alive():
            thread.join(15)
        for a in agents:
            a.terminate()
        for a in agents:
            a.wait(15)
        coord.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--waits", type=int, default=400)
    ap.add_argument("--base", type=Path, default=None, help="another checkout to run as mode 'base'")
    ap.add_argument("--one", choices=["off", "on", "base"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        root = args.base if args.one == "base" else ROOT
        print(json.dumps(one(root, args.one, args.tasks, args.waits)))
        return
    modes = ["off", "on"] + (["base"] if args.base else [])
    figures: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    for run in range(args.runs):
        order = modes[run % len(modes):] + modes[:run % len(modes)]  # each mode leads in turn
        for mode in order:
            argv = [sys.executable, __file__, "--one", mode, "--tasks", str(args.tasks), "--waits", str(args.waits)]
            if args.base:
                argv += ["--base", str(args.base)]
            out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
            got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
            for k, v in got.items():
                figures[mode].setdefault(k, []).append(v)
            print(f"run {run + 1} {mode}: {got['tasks_per_s']:,.0f} tasks/s, loop CPU {got['loop_cpu_us_per_task']:.0f} "
                  f"us/task, submit->wait p50 "
                  f"{got['submit_wait_p50_us']:.0f} us, p99 {got['submit_wait_p99_us']:.0f} us", file=sys.stderr)
    report: dict[str, Any] = {m: {k: round(statistics.median(v), 1) for k, v in f.items()}
                              for m, f in figures.items()}
    for m in modes:
        report[m]["all_tasks_per_s"] = [round(v) for v in figures[m]["tasks_per_s"]]
    report.update({"runs": args.runs, "tasks": args.tasks, "waits": args.waits, "cpus": os.cpu_count()})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
