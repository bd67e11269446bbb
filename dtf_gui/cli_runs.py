"""`dtf logs`, `dtf runs` and `dtf analyze compare --run`: what a run left behind."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
import time
from typing import Any

from dtf_agent import protocol as p
from dtf_gui.cli_common import client_for, fmt, print_table

RUN_COLUMNS = ("run_id", "name", "kind", "status", "created", "took", "tests", "passed", "failed", "skipped",
               "flaky", "tasks")


def logs_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("task_id", help="the task whose output to show")
    sp.add_argument("--stderr", action="store_true", help="standard error instead of standard output")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing while the task runs")
    sp.add_argument("--attempt", type=int, help="this attempt (default: the latest)")
    sp.add_argument("--tail", type=int, metavar="BYTES", help="only the last BYTES bytes")


def cmd_logs(args: argparse.Namespace) -> int:
    stream = "stderr" if args.stderr else "stdout"
    out = sys.stdout.buffer
    # Chunks end anywhere, also inside a UTF-8 character: decode across them.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with client_for(args) as c:
        req: dict[str, Any] = {"task_id": args.task_id, "stream": stream}
        if args.attempt:
            req["attempt"] = args.attempt
        if args.tail:
            got = c.call("get_log", {**req, "tail": min(args.tail, p.MAX_LOG_CHUNK)})
            out.write(decoder.decode(got["data"], final=True).encode())
            out.flush()
            return 0
        offset = 0
        # A task that has ended may still have its last output on the way to the disk: its log is
        # whole once "complete" (the coordinator closes it after the last chunk).
        settle = time.monotonic() + 10.0
        while True:
            got = c.call("get_log", {**req, "offset": offset})
            if got["data"]:
                out.write(decoder.decode(got["data"]).encode())
                out.flush()
            offset = got["next_offset"]
            if got["data"] and offset < got["size"]:
                continue  # more is stored already: no pause
            if got["complete"]:
                break
            ended = got["status"] in p.TERMINAL_STATUSES
            if ended and (got["attempt"] == 0 or time.monotonic() > settle):
                break  # never wrote anything, or the rest is not coming
            if not ended and not args.follow:
                break  # a running task without --follow: what there is so far
            if "attempt" not in req and got["attempt"]:
                req["attempt"] = got["attempt"]  # follow this attempt, even when a new one starts
            time.sleep(0.5)  # the agent sends output every half second
        out.write(decoder.decode(b"", final=True).encode())
        if got["size"] == 0:
            print(f"(no {stream} stored for task {args.task_id}"
                  f"{'' if got['status'] in p.TERMINAL_STATUSES else '; it has not written any yet'})",
                  file=sys.stderr)
    return 0


def runs_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("run_id", nargs="?", help="show this run: its counts, failures and flaky tests")
    sp.add_argument("--name", help="only runs of this name")
    sp.add_argument("--limit", type=int, default=30)
    sp.add_argument("--json", action="store_true")


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(d.items(), key=lambda kv: -kv[1])) or "-"


def cmd_runs(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        if args.run_id:
            run = c.call("get_run", {"run_id": args.run_id})
            tests = fetch_tests(c, args.run_id)
            if args.json:
                print(json.dumps({"run": run, "tests": tests}, indent=2, default=str))
                return 0
            print(f"run {run['run_id']} ({run['kind']} {run['name']!r}): {run['status']}, "
                  f"created {fmt(run['created'], True)}")
            print(f"  tests:   {_counts(run['tests'])}")
            print(f"  results: {_counts(run['results'])}")
            # A test's outcome is its last row's (a rerun's row comes after the first run's).
            final: dict[str, dict[str, Any]] = {}
            for t in tests:
                final[t["test_id"]] = {**t, "runs": final.get(t["test_id"], {}).get("runs", 0) + 1}
            bad = [t for t in final.values() if t["outcome"] in p.FAILING_OUTCOMES]
            flaky = [t for t in final.values() if t["outcome"] == "flaky"]
            if bad:
                print("failures:")
                print_table(bad[:100], ("test_id", "outcome", "worker_id", "runs", "duration"))
                if len(bad) > 100:
                    print(f"... and {len(bad) - 100} more (--json lists them all)")
            if flaky:
                print("flaky (failed, then passed when run again):")
                print_table(flaky, ("test_id", "worker_id", "runs", "duration"))
            return 0
        runs = c.call("list_runs", {"limit": args.limit, **({"name": args.name} if args.name else {})})
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    rows = []
    for r in runs:
        t = r["tests"]
        rows.append({**r, "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])),
                     "took": f"{r['finished'] - r['created']:.0f} s" if r.get("finished") else None,
                     "tests": sum(t.values()) or None, "passed": t.get("passed", 0) + t.get("flaky", 0) or None,
                     "failed": sum(t.get(k, 0) for k in p.FAILING_OUTCOMES) or None,
                     "skipped": t.get("skipped", 0) + t.get("xfailed", 0) or None, "flaky": t.get("flaky") or None,
                     "tasks": _counts(r["results"])})
    print_table(rows, RUN_COLUMNS)
    return 0


COMPARE_RUN_COLUMNS = ("verdict", "test_id", "metric", "baseline_mean", "current_mean", "change_pct", "confidence",
                       "direction", "unit")


def compare_runs(c: Any, args: argparse.Namespace) -> int:
    """`dtf analyze compare --run R [--baseline B]`."""
    req: dict[str, Any] = {"run_id": args.run}
    if args.baseline:
        req["baseline"] = args.baseline
    data = c.call("compare_runs", req, timeout=max(args.timeout_s, 120))
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    base = data.get("baseline") or {}
    print(f"run {data['run']['run_id']} against {base.get('run_id', '?')}")
    rows = []
    for r in data.get("metrics", []):
        rows.append({**r, "change_pct": None if r.get("pct_change") is None else round(r["pct_change"], 2),
                     "test_id": r.get("test_id") or "(tasks without a test id)",
                     "direction": f"{r.get('direction', '')} ({r.get('direction_source', '')})"})
    print_table(rows, COMPARE_RUN_COLUMNS)
    tests = data.get("tests") or {}
    for key, title in (("newly_failing", "newly failing"), ("fixed", "fixed"), ("flaky", "flaky")):
        if tests.get(key):
            print(f"{title}: {', '.join(map(str, tests[key][:50]))}")
    summary = data.get("summary") or {}
    print(", ".join(f"{n} {k}" for k, n in summary.items()))
    return 0


def fetch_tests(c: Any, run_id: str) -> list[dict[str, Any]]:
    """Every test row of a run, in the order they were stored, a page at a time."""
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.call("run_tests", {"run_id": run_id, "after": after}, timeout=120.0)
        if not page:
            return rows
        rows += page
        after = page[-1]["seq"]
