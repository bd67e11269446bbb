"""CLI start-up benchmark: how long `dtf status` takes against a running coordinator.

Starts `dtf serve` on free ports in a temporary $DTF_HOME (found through coordinator.json), then
times --runs runs of the installed console script `dtf status` (subprocess wall time, from spawn to
exit) and, as the floor, the same number of `python -c pass` runs of the same interpreter. Stops the
server with SIGTERM and waits for it.

  .venv/bin/python tests/bench/cli_start.py [--runs 10] [--warmup 2]

The goal is `dtf status` in <= 150 ms median. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def dtf_script() -> list[str]:
    """The installed console script (what an engineer runs), else the module."""
    script = BIN / "dtf"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dtf_gui.cli"]


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dtf serve exited with {proc.returncode}")
        try:
            info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            if info.get("pid") == proc.pid:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.02)  # polling a file another process writes
    raise SystemExit(f"{path} not written within {timeout:g} s")


def time_runs(argv: Sequence[str], env: dict[str, str], runs: int, warmup: int) -> list[float]:
    """Wall milliseconds of each run of ``argv``; each must exit 0."""
    out: list[float] = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        done = subprocess.run(list(argv), env=env, capture_output=True, check=False)
        ms = (time.perf_counter() - t0) * 1000.0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
        if i >= warmup:
            out.append(ms)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1),
            "min_ms": round(min(ms), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (page cache, .pyc files)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="dtf-bench-cli-"))
    env = dict(os.environ, DTF_HOME=str(home))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    log = open(home / "serve.log", "wb")  # closed below
    serve = subprocess.Popen(dtf_script() + ["--log-level", "WARNING", "serve", "--port", "0", "--agent-port", "0",
                                             "--events-port", "0", "--insecure", "--no-mdns"],
                             env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=ROOT)
    try:
        wait_file(home / "coordinator.json", serve)
        status = time_runs(dtf_script() + ["status"], env, args.runs, args.warmup)
        floor = time_runs([sys.executable, "-c", "pass"], env, args.runs, args.warmup)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            code = serve.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
    st, fl = summary(status), summary(floor)
    print(f"dtf status: median {st['median_ms']} ms, max {st['max_ms']} ms over {args.runs} runs; "
          f"python -c pass: median {fl['median_ms']} ms, max {fl['max_ms']} ms; serve exited {code}",
          file=sys.stderr)
    print(json.dumps({
        "dtf_status_median_ms": st["median_ms"], "dtf_status_max_ms": st["max_ms"],
        "python_pass_median_ms": fl["median_ms"], "python_pass_max_ms": fl["max_ms"],
        "dtf_status_ms": [round(x, 1) for x in status], "runs": args.runs, "goal_ms": 150,
        "serve_exit": code, "command": " ".join(Path(a).name for a in dtf_script()) + " status",
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
