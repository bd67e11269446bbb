"""Dispatch benchmark: no-op and `true` tasks through the whole stack, results stored.

Runs `dtf serve` and N `dtf-agent` processes on 127.0.0.1 (ports chosen free), submits tasks
through the client API and waits until the coordinator has stored every result.

  .venv/bin/python tests/bench/dispatch.py [--tasks 100000] [--agents 4] [--window 64] [--runs 3]

Reports, as the medians of --runs runs:
- tasks_per_s: no-op tasks, from the first submit until every result is stored (SQLite, WAL);
- p50/p99_latency_us: at a window of 1 in-flight task per agent, the coordinator's round trip
  from sending a task to holding its result, measured in the coordinator over the last 20,000
  of --latency-tasks (25,000: the first ones share the machine with the submission burst being
  written to SQLite, which is a throughput matter, not dispatch latency);
- command tasks running `true` against a bare loop of subprocess.run(["true"]) measured in the
  same run, and their ratio;
- submit_wait p50/p99: what a client sees, one no-op task at a time: create_task, then `wait`
  until it is completed (both replies leave the coordinator only after their commit).
--durability power-loss runs the coordinator with database.durability: power-loss (an fsync
per commit) instead of the default process-crash.
--curve measures every figure twice in each run, on a coordinator started with --insecure and
on one with CURVE on every socket (the default), in alternating order, and reports both and
their ratio (curve / insecure) next to each other. Without it, the stack runs --insecure.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dtf_gui.client import Client, find_credentials  # noqa: E402


class Stack:
    """`dtf serve` plus agents, on loopback; stops everything it started."""

    def __init__(self, agents: int, window: int, log_level: str = "WARNING", durability: str = "",
                 curve: bool = False) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="dtf-bench-"))
        self.env = dict(os.environ, DTF_HOME=str(self.home))
        yaml = "health_monitor:\n  heartbeat_interval: 2\n"
        if durability:
            yaml += f"database:\n  durability: {durability}\n"
        (self.home / "coordinator.yaml").write_text(yaml, encoding="utf-8")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(self.home / "bench.log", "wb")  # closed in stop()
        self.procs.append(self._spawn([sys.executable, "-m", "dtf_gui.cli", "--log-level", log_level, "serve",
                                       "--port", "0", "--agent-port", "0", "--events-port", "0",
                                       *([] if curve else ["--insecure"])]))
        info = self._wait_file(self.home / "coordinator.json")
        # Secure: the home's admin key; the agents (same home) enroll with the home's local secret.
        self.client = Client(info["client_endpoint"], timeout=60,
                             credentials=find_credentials(home=self.home) if curve else None)
        for i in range(agents):
            self.procs.append(self._spawn([sys.executable, "-m", "dtf_agent.cli", "--log-level", log_level,
                                           "--coordinator", info["agent_endpoint"], "--worker-id", f"bench-{i}",
                                           "--slots", str(window)]))
        self._until(lambda: self.client.call("get_status")["workers_online"] == agents, 30, "agents online")

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)

    @staticmethod
    def _wait_file(path: Path) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"{path} did not appear")

    @staticmethod
    def _until(pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def completed(self) -> int:
        return self.client.call("get_status")["tasks"]["completed"]

    def run_batch(self, tasks: list[dict[str, Any]], timeout: float = 600) -> float:
        """Submit all, wait for all results; returns seconds."""
        base = self.completed()
        t0 = time.perf_counter()
        for i in range(0, len(tasks), 5000):
            self.client.call("create_tasks", {"tasks": tasks[i:i + 5000]})
        target = base + len(tasks)
        self._until(lambda: self.completed() >= target, timeout, f"{len(tasks)} tasks")
        return time.perf_counter() - t0

    def submit_wait(self, n: int) -> list[float]:
        """Seconds from create_task to the `wait` reply saying it completed, one task at a time."""
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            tid = self.client.call("create_task", {"type": "noop"})["task_id"]
            done = self.client.call("wait", {"task_ids": [tid], "timeout": 30})
            out.append(time.perf_counter() - t0)
            if done["finished"].get(tid) != "completed":
                raise RuntimeError(f"task {tid} did not complete: {done}")
        return out

    def stop(self) -> None:
        self.client.close()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.log.close()


def bare_true_rate(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["true"], check=True)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--window", type=int, default=64, help="in-flight tasks per agent (agent slots)")
    ap.add_argument("--latency-tasks", type=int, default=25_000)
    ap.add_argument("--true-tasks", type=int, default=1000)
    ap.add_argument("--wait-tasks", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--durability", choices=["process-crash", "power-loss"], default="process-crash")
    ap.add_argument("--curve", action="store_true", help="measure with CURVE too, side by side with --insecure")
    args = ap.parse_args()

    modes = ["insecure", "curve"] if args.curve else ["insecure"]
    figures: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    bare_rates: list[float] = []
    for run in range(args.runs):
        # Alternate which goes first: the machine's noise drifts, and neither mode should always
        # get the quieter first half.
        for mode in (modes if run % 2 == 0 else modes[::-1]):
            got = one_run(args, curve=mode == "curve")
            for k, v in got.items():
                figures[mode].setdefault(k, []).append(v)
            print(f"run {run + 1} {mode}: {got['tasks_per_s']:,.0f} no-op tasks/s (window {args.window}); window 1 "
                  f"latency p50 {got['p50_latency_us']:.0f} us p99 {got['p99_latency_us']:.0f} us; submit->wait p50 "
                  f"{got['submit_wait_p50_us']:.0f} us; `true` {got['true_tasks_per_s']:,.0f}/s", file=sys.stderr)
        bare_rates.append(bare_true_rate(args.true_tasks))

    def medians(mode: str) -> dict[str, Any]:
        f = figures[mode]
        out: dict[str, Any] = {k: round(statistics.median(v)) for k, v in f.items()}
        out["true_vs_bare_ratio"] = round(statistics.median(
            [t / b for t, b in zip(f["true_tasks_per_s"], bare_rates, strict=True)]), 3)
        out["all_tasks_per_s"] = [round(r) for r in f["tasks_per_s"]]
        return out

    report: dict[str, Any] = {**medians("insecure"), "bare_true_per_s": round(statistics.median(bare_rates))}
    if args.curve:
        cur = medians("curve")
        report["curve"] = cur
        # Per run, side by side (same minute of the machine's noise), then the median of those.
        report["curve_vs_insecure_tasks_ratio"] = round(statistics.median(
            [c / i for c, i in zip(figures["curve"]["tasks_per_s"], figures["insecure"]["tasks_per_s"],
                                   strict=True)]), 3)
        report["curve_vs_insecure_p50_ratio"] = round(statistics.median(
            [c / i for c, i in zip(figures["curve"]["p50_latency_us"], figures["insecure"]["p50_latency_us"],
                                   strict=True)]), 3)
    report.update({"durability": args.durability, "runs": args.runs, "agents": args.agents, "window": args.window,
                   "tasks": args.tasks, "cpus": os.cpu_count()})
    print(json.dumps(report))


def one_run(args: argparse.Namespace, *, curve: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    stack = Stack(args.agents, args.window, durability=args.durability, curve=curve)
    try:
        secs = stack.run_batch([{"type": "noop"}] * args.tasks)
        out["tasks_per_s"] = args.tasks / secs
        true_secs = stack.run_batch([{"type": "command", "command": "true"}] * args.true_tasks)
        out["true_tasks_per_s"] = args.true_tasks / true_secs
    finally:
        stack.stop()
    lat = Stack(args.agents, 1, durability=args.durability, curve=curve)
    try:
        lat.run_batch([{"type": "noop"}] * args.latency_tasks)
        st = lat.client.call("get_status", timeout=60)["dispatch_latency_us"]
        out["p50_latency_us"] = st["p50"]
        out["p99_latency_us"] = st["p99"]
        waits = sorted(lat.submit_wait(args.wait_tasks))
        out["submit_wait_p50_us"] = waits[len(waits) // 2] * 1e6
        out["submit_wait_p99_us"] = waits[int(len(waits) * 0.99)] * 1e6
    finally:
        lat.stop()
    return out


if __name__ == "__main__":
    main()
