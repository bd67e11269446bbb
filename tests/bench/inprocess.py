"""The coordinator in this process, 4 real agent processes: no-op tasks/s, the coordinator-side
round trip and how many commits carried them, plus a create_task round trip next to a ping.

A quicker, steadier probe than dispatch.py (no `dtf serve` process, no submission over TCP for
the flood) for A/B checks of the loop itself, e.g. the commit window:

  .venv/bin/python tests/bench/inprocess.py [--slots 1] [--tasks 8000] [--commit-window 0.002]

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dtf_gui.cli import tune_interpreter  # noqa: E402
from dtf_gui.client import Client  # noqa: E402
from dtf_gui.coordinator import server  # noqa: E402
from dtf_gui.coordinator.config import ephemeral_settings  # noqa: E402


def until(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--tasks", type=int, default=8000)
    ap.add_argument("--commit-window", type=float, default=None, help="seconds (default: the coordinator's)")
    args = ap.parse_args()
    tune_interpreter()
    if args.commit_window is not None:
        server._COMMIT_WINDOW = args.commit_window
    home = tempfile.mkdtemp(prefix="dtf-inprocess-")
    # The agents and the client find the coordinator's keys in this home, as on one machine.
    os.environ["DTF_HOME"] = home
    coord = server.Coordinator(ephemeral_settings(os.path.join(home, "dtf.sqlite"), home=Path(home))).start()
    env = dict(os.environ, DTF_HOME=home)
    agents = [subprocess.Popen([sys.executable, "-m", "dtf_agent.cli", "--log-level", "WARNING", "--coordinator",
                                coord.endpoint("agents"), "--worker-id", f"a{i}", "--slots", str(args.slots)],
                               env=env, cwd=ROOT) for i in range(args.agents)]
    try:
        until(lambda: coord.request("get_status")["workers_online"] == args.agents, 30)
        with Client(coord.endpoint("clients")) as client:
            pings = []
            for _ in range(300):
                t0 = time.perf_counter()
                client.call("ping")
                pings.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(0, args.tasks, 5000):
                coord.request("create_tasks", {"tasks": [{"type": "noop"}] * min(5000, args.tasks - i)})
            until(lambda: coord.request("get_status")["tasks"]["completed"] >= args.tasks, 600)
            secs = time.perf_counter() - t0
            creates = []
            for _ in range(300):  # tasks no agent can take: the round trip of a submission alone
                t1 = time.perf_counter()
                client.call("create_task", {"type": "noop", "requirements": {"tags": ["nobody-has-this"]}})
                creates.append(time.perf_counter() - t1)
        st = coord.request("get_status")
        pings.sort()
        creates.sort()
        print(json.dumps({
            "tasks_per_s": round(args.tasks / secs), "p50_latency_us": round(st["dispatch_latency_us"]["p50"]),
            "p99_latency_us": round(st["dispatch_latency_us"]["p99"]), "batches": coord.store.taken,
            "create_task_p50_us": round(creates[150] * 1e6), "ping_p50_us": round(pings[150] * 1e6),
            "commit_window_s": server._COMMIT_WINDOW, "slots": args.slots, "agents": args.agents,
            "tasks": args.tasks, "cpus": os.cpu_count(),
        }))
    finally:
        for a in agents:
            a.terminate()
        for a in agents:
            a.wait(15)
        coord.stop()


if __name__ == "__main__":
    main()
