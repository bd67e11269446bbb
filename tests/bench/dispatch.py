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

from dtf_gui.client import Client  # noqa: E402


class Stack:
    """`dtf serve` plus agents, on loopback; stops everything it started."""

    def __init__(self, agents: int, window: int, log_level: str = "WARNING", durability: str = "") -> None:
        self.home = Path(tempfile.mkdtemp(prefix="dtf-bench-"))
        self.env = dict(os.environ, DTF_HOME=str(self.home))
        yaml = "health_monitor:\n  heartbeat_interval: 2\n"
        if durability:
            yaml += f"database:\n  durability: {durability}\n"
        (self.home / "coordinator.yaml").write_text(yaml, encoding="utf-8")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(self.home / "bench.log", "wb")  # closed in stop()
        self.procs.append(self._spawn([sys.executable, "-m", "dtf_gui.cli", "--log-level", log_level, "serve",
                                       "--port", "0", "--agent-port", "0", "--events-port", "0", "--insecure"]))
        info = self._wait_file(self.home / "coordinator.json")
        self.client = Client(info["client_endpoint"], timeout=60)
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
    args = ap.parse_args()

    rates, p50s, p99s, true_rates, bare_rates, w50s, w99s = [], [], [], [], [], [], []
    for run in range(args.runs):
        stack = Stack(args.agents, args.window, durability=args.durability)
        try:
            secs = stack.run_batch([{"type": "noop"}] * args.tasks)
            rates.append(args.tasks / secs)
            true_secs = stack.run_batch([{"type": "command", "command": "true"}] * args.true_tasks)
            true_rates.append(args.true_tasks / true_secs)
        finally:
            stack.stop()
        bare_rates.append(bare_true_rate(args.true_tasks))
        lat = Stack(args.agents, 1, durability=args.durability)
        try:
            lat.run_batch([{"type": "noop"}] * args.latency_tasks)
            st = lat.client.call("get_status", timeout=60)["dispatch_latency_us"]
            p50s.append(st["p50"])
            p99s.append(st["p99"])
            waits = sorted(lat.submit_wait(args.wait_tasks))
            w50s.append(waits[len(waits) // 2] * 1e6)
            w99s.append(waits[int(len(waits) * 0.99)] * 1e6)
        finally:
            lat.stop()
        print(f"run {run + 1}: {rates[-1]:,.0f} no-op tasks/s (window {args.window}); window 1 latency p50 "
              f"{p50s[-1]:.0f} us p99 {p99s[-1]:.0f} us; submit->wait p50 {w50s[-1]:.0f} us; `true` "
              f"{true_rates[-1]:,.0f}/s vs bare {bare_rates[-1]:,.0f}/s", file=sys.stderr)
    ratios = [t / b for t, b in zip(true_rates, bare_rates, strict=True)]
    print(json.dumps({
        "tasks_per_s": round(statistics.median(rates)),
        "p50_latency_us": round(statistics.median(p50s)),
        "p99_latency_us": round(statistics.median(p99s)),
        "true_tasks_per_s": round(statistics.median(true_rates)),
        "bare_true_per_s": round(statistics.median(bare_rates)),
        "true_vs_bare_ratio": round(statistics.median(ratios), 3),
        "submit_wait_p50_us": round(statistics.median(w50s)), "submit_wait_p99_us": round(statistics.median(w99s)),
        "durability": args.durability,
        "runs": args.runs, "agents": args.agents, "window": args.window, "tasks": args.tasks,
        "all_tasks_per_s": [round(r) for r in rates], "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
