"""`dtf pytest`: a pytest suite spread over the lab's agents by each test's duration history.

Run from the suite's directory, as plain ``pytest`` would be: the suite is collected here, shipped
as a bundle (nothing is sent when the coordinator has it already), split into shards by history
(:mod:`dtf_gui.shards`), and each shard runs as a ``pytest`` task on an agent. Per-test outcomes
come back as rows of the run; failures may be rerun on another worker (``--reruns``), and a
test that fails and then passes is reported, and stored, as flaky. The output and the exit code
are pytest's own (0 passed, 1 failed, 2 interrupted or collection errors, 4 usage, 5 no tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtf_agent import protocol as p
from dtf_agent.runners.bundles import Bundle, BundleError, build_bundle
from dtf_agent.runners.pytest_run import (
    PLUGIN_MODULE,
    PLUGIN_SOURCE,
    TEARDOWN_AFTER_FAILURE,
    TEARDOWN_AFTER_PASS,
)
from dtf_gui.cli_bundles import send as send_bundle
from dtf_gui.cli_common import client_for
from dtf_gui.cli_runs import fetch_tests
from dtf_gui.client import ClientError
from dtf_gui.shards import auto_shards, plan_shards

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 3, 4, 5
# The order pytest's summary line names outcomes in.
SUMMARY_ORDER = ("failed", "passed", "skipped", "xfailed", "xpassed", "error", "crashed")
# pytest options whose value is the next word: that word is not a path to drop from a shard's args.
_VALUE_OPTIONS = frozenset({"-k", "-m", "-p", "-c", "-o", "-W", "--rootdir", "--confcutdir", "--basetemp",
                            "--ignore", "--ignore-glob", "--deselect", "--log-file", "--log-level", "--import-mode",
                            "--tb", "--maxfail", "--durations", "--override-ini", "--config-file", "-r",
                            "--capture", "--junit-prefix", "--cov", "--cov-report", "--timeout", "--reruns"})
# Our own options: taken from the command line, never passed to pytest.
_OWN = ("--junitxml", "--tag", "--shards", "--reruns", "--name", "--python", "--shard-timeout", "--requirements",
        "--coordinator", "--timeout-s", "--worker")


def pytest_args(sp: argparse.ArgumentParser) -> None:
    sp.description = ("Run a pytest suite spread over the agents, from the suite's directory. Options not listed "
                      "here go to pytest (on this machine to collect, and on the agents).")
    sp.add_argument("--junitxml", metavar="FILE", help="write one JUnit XML report of the whole run")
    sp.add_argument("--tag", action="append", default=[], help="only agents with this tag (repeat for several)")
    sp.add_argument("--worker", help="only this agent")
    sp.add_argument("--shards", default="auto", help="number of shards, or auto (one per slot of the matching "
                                                     "agents online)")
    sp.add_argument("--reruns", type=int, default=0, help="run failed tests again, on another worker, up to N times; "
                                                         "a test that then passes is reported as flaky")
    sp.add_argument("--name", help="the run's name (default: pytest:<directory name>); runs of one name are "
                                   "each other's baselines")
    sp.add_argument("--python", default=sys.executable, help="the interpreter that collects the suite here")
    sp.add_argument("--requirements", metavar="FILE", help="a requirements file in the suite: agents run it in a "
                                                           "virtual environment made from it (cached)")
    sp.add_argument("--shard-timeout", type=float, help="seconds before a shard is killed")
    sp.add_argument("--recollect", action="store_true", help="collect the suite here even when it is unchanged "
                                                            "since the last run (its node ids are reused otherwise)")


@dataclass
class Run:
    """What `dtf pytest` knows of its run while it goes."""

    run_id: str = ""
    collected: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    # Shard task id -> its tests (to say which tests a shard that failed as a whole leaves without a row).
    shard_tests: dict[str, list[str]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


@dataclass
class Collection:
    rootdir: Path
    nodeids: list[str]
    args: list[str]  # the arguments pytest took as what to collect (paths, node ids)


def collect(python: str, args: Sequence[str], cwd: Path) -> tuple[int, Collection | None, str]:
    """pytest --collect-only here, with DTF's plugin writing what it collected to a file (pytest's own
    output changes with -q, -v and addopts): (exit code, the collection, pytest's output)."""
    with tempfile.TemporaryDirectory(prefix="dtf-collect-") as tmp:
        shim = Path(tmp)
        # A copy under a name of its own: the interpreter may be a venv without DTF in it.
        shutil.copyfile(PLUGIN_SOURCE, shim / f"{PLUGIN_MODULE}.py")
        out = shim / "collected.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", ""))
                                                            if p))
        cmd = [python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", PLUGIN_MODULE,
               f"--dtf-collect={out}", *args]
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            return EXIT_USAGE, None, f"cannot run {python!r}: no such interpreter (see --python)"
        except subprocess.TimeoutExpired:
            return EXIT_INTERNAL, None, "collecting the suite took more than 10 minutes"
        output = proc.stdout + proc.stderr
        try:
            data = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return proc.returncode or EXIT_INTERNAL, None, output
        return proc.returncode, Collection(Path(data["rootdir"]), list(data["nodeids"]), list(data["args"])), output


def shard_args(args: Sequence[str], collected_by: Sequence[str]) -> list[str]:
    """The user's pytest arguments for a shard: those that chose what to collect (pytest's own list of
    them) are dropped, since a shard names its own tests; every option stays."""
    chosen = set(collected_by)
    out: list[str] = []
    prev = ""
    for a in args:
        if not (a in chosen and not a.startswith("-") and prev not in _VALUE_OPTIONS):
            out.append(a)
        prev = a
    return out


def _split_own(argv: list[str]) -> list[str]:
    if argv and argv[0] == "--":
        return argv[1:]
    return argv


def _summary(counts: dict[str, int], seconds: float) -> str:
    parts = []
    for k in SUMMARY_ORDER:
        if counts.get(k):
            word = "errors" if k == "error" and counts[k] > 1 else k
            flaky = f" ({counts['flaky']} flaky)" if k == "passed" and counts.get("flaky") else ""
            parts.append(f"{counts[k]} {word}{flaky}")
    return f"{', '.join(parts) or 'no tests ran'} in {seconds:.2f}s"


def _banner(text: str, fill: str = "=") -> str:
    width = 80
    text = f" {text} "
    left = max(3, (width - len(text)) // 2)
    return f"{fill * left}{text}{fill * max(3, width - left - len(text))}"


def _short_message(longrepr: str) -> str:
    """What pytest's short summary shows: the first line of the last block of ``E`` lines (the
    exception and its message), else the last line."""
    lines = longrepr.strip().splitlines()
    first = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("E "):
            first = i
        elif first is not None:
            break
    if first is not None:
        return lines[first][1:].strip()[:200]
    return lines[-1][:200] if lines else ""


class Progress:
    """One line on stderr: rewritten in place on a terminal, every 10 s otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.started = time.monotonic()
        self.failed_final = 0  # failures of the shards already finished
        self.last_failed: dict[str, int] = {}  # of each running shard, as last seen

    def show(self, done: int, failed: int, running: int, pending: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        elapsed = now - self.started
        eta = f", ETA {elapsed * (self.total - done) / done:.0f} s" if 0 < done < self.total else ""
        line = (f"tests {done}/{self.total} done, {failed} failed; shards: {running} running, {pending} waiting"
                f"{eta}")
        if self.tty:
            print(f"\r{line:<100}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _submit(c: Any, run: Run, shards: list[list[str]], *, args: argparse.Namespace, digest: str,
            extra: list[str], worker: str | None = None, expected: Sequence[float] = ()) -> list[str]:
    req: dict[str, Any] = {}
    if args.tag:
        req["tags"] = list(args.tag)
    if worker or args.worker:
        req["worker"] = worker or args.worker
    tasks = []
    for i, tests in enumerate(shards):
        params: dict[str, Any] = {"tests": tests, "args": extra, "bundle": digest}
        if args.requirements:
            params["requirements"] = args.requirements
        task: dict[str, Any] = {"type": "pytest", "parameters": params, "retry_limit": 0,
                                "metadata": {"shard": i, "tests": len(tests)}}
        if req:
            task["requirements"] = req
        if args.shard_timeout:
            task["timeout"] = args.shard_timeout
        if i < len(expected) and expected[i] > 0:
            task["expected_duration"] = max(0.001, expected[i])
        tasks.append(task)
    ids: list[str] = c.call("create_tasks", {"tasks": tasks, "run_id": run.run_id})["task_ids"]
    for tid, tests in zip(ids, shards, strict=True):
        run.shard_tests[tid] = tests
    run.task_ids.extend(ids)
    return ids


def _watch(c: Any, run: Run, ids: list[str], progress: Progress, base_done: int) -> dict[str, dict[str, Any]]:
    """Until every shard is final, showing tests done (a finished shard counts whole), failures so far
    and shards running; returns each shard's last state."""
    pending = list(ids)
    final: dict[str, dict[str, Any]] = {}
    while pending:
        answer = c.call("wait", {"task_ids": pending, "timeout": 1.0}, timeout=60.0)
        states = c.call("task_progress", {"task_ids": ids})
        for tid, status in answer["finished"].items():
            final[tid] = {**states.get(tid, {}), "status": status}
            # Its progress is gone with it: the last failure count seen stands for it.
            progress.failed_final += progress.last_failed.pop(tid, 0)
        pending = answer["pending"]
        for t in pending:
            if "failed" in states.get(t, {}):
                progress.last_failed[t] = int(states[t]["failed"])
        done = base_done + sum(len(run.shard_tests.get(t, [])) for t in final)
        done += sum(int(states.get(t, {}).get("done", 0)) for t in pending)
        failed = progress.failed_final + sum(int(states.get(t, {}).get("failed", 0)) for t in pending)
        running = sum(1 for t in pending if states.get(t, {}).get("status") == p.RUNNING)
        progress.show(min(done, progress.total), failed, running, len(pending) - running)
    return final


def _latest(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last row of each test (a rerun's row supersedes the first run's)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out[r["test_id"]] = r
    return out


# Options that need pytest's cache, which shards do not share with this machine.
_CACHE_OPTIONS = ("--lf", "--last-failed", "--ff", "--failed-first", "--nf", "--new-first", "--sw", "--stepwise")


def cmd_pytest(args: argparse.Namespace) -> int:
    extra = _split_own(list(getattr(args, "pytest_args", None) or []))
    used_cache = [a for a in extra if a in _CACHE_OPTIONS]
    if used_cache:
        print(f"dtf pytest: {used_cache[0]} needs pytest's cache of this machine, which the agents do not share; "
              "`dtf runs RUN` lists the last run's failures (run them with their node ids)", file=sys.stderr)
        return EXIT_USAGE
    cwd = Path.cwd()
    key = _collection_key(args.python, extra, cwd)
    found, bundle = (None, None) if args.recollect else _unchanged(key)
    if found is None:
        code, found, output = collect(args.python, extra, cwd)
        if found is None or code not in (0, 5) or (code == 0 and not found.nodeids):
            sys.stdout.write(output)
            print(f"dtf pytest: collecting the suite failed (pytest exit code {code}); nothing was submitted",
                  file=sys.stderr)
            return code if code in (EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE) else EXIT_INTERRUPTED
        if not found.nodeids:
            print(_banner("no tests ran in 0.00s"))
            return EXIT_NO_TESTS
    else:
        print(f"dtf pytest: {len(found.nodeids)} tests, as collected last time (the suite and its arguments are "
              "unchanged; --recollect collects again)", file=sys.stderr)
    # Node ids are relative to pytest's rootdir, and its conftest.py and ini file live there: that is
    # what is shipped and where shards run, whatever subdirectory this was started from.
    root = found.rootdir
    name = args.name or f"pytest:{root.name}"
    run = Run(collected=found.nodeids)
    try:
        if bundle is None:
            bundle = build_bundle(root)
            _remember(key, found, bundle.digest)
    except BundleError as exc:
        print(f"dtf pytest: cannot ship {root}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client_for(args) as c:
            send_bundle(c, bundle, what=str(root))
            return _run(c, args, run, name, bundle.digest, shard_args(extra, found.args), root)
    except ClientError as exc:
        print(f"dtf pytest: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


# -- the collection of the last run, kept while nothing it depends on changed ------------------------

_KEPT_COLLECTIONS = 100


def _collection_key(python: str, args: Sequence[str], cwd: Path) -> str:
    """What a collection depends on besides the suite's files (the bundle's digest checks those): the
    interpreter and its installed packages, the arguments, where it runs, PYTEST_ADDOPTS."""
    exe = Path(shutil.which(python) or python).resolve()
    stamps = []
    for path in [exe, *sorted(exe.parent.parent.glob("lib/python*/site-packages"))]:
        try:
            stamps.append((str(path), path.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(path), 0))
    raw = json.dumps([stamps, list(args), str(cwd), os.environ.get("PYTEST_ADDOPTS", "")])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _collections_dir() -> Path:
    from dtf_agent.paths import dtf_home

    return dtf_home() / "cache" / "collections"


def _unchanged(key: str) -> tuple[Collection | None, Bundle | None]:
    """The last collection made with the same key, with the bundle of its rootdir, if the rootdir's
    content is still what it was (same digest): collecting again would give the same node ids."""
    try:
        data = json.loads((_collections_dir() / f"{key}.json").read_text(encoding="utf-8"))
        found = Collection(Path(data["rootdir"]), list(data["nodeids"]), list(data["args"]))
        bundle = build_bundle(found.rootdir)
    except (OSError, ValueError, KeyError, TypeError, BundleError):
        return None, None
    return (found, bundle) if bundle.digest == data.get("digest") else (None, None)


def _remember(key: str, found: Collection, digest: str) -> None:
    folder = _collections_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"rootdir": str(found.rootdir), "nodeids": found.nodeids, "args": found.args,
                                   "digest": digest}), encoding="utf-8")
        os.replace(tmp, folder / f"{key}.json")
        kept = sorted(folder.glob("*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in kept[_KEPT_COLLECTIONS:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # only a shortcut for the next run


def _free_slots(c: Any, args: argparse.Namespace) -> int:
    slots = 0
    for w in c.call("list_workers", {}):
        if w.get("status") not in (p.ONLINE, p.BUSY):
            continue
        if args.worker and w.get("worker_id") != args.worker:
            continue
        if args.tag and not set(args.tag) <= set(w.get("tags") or []):
            continue
        slots += int(w.get("slots") or 1)
    return slots


def _run(c: Any, args: argparse.Namespace, run: Run, name: str, digest: str, extra: list[str], root: Path) -> int:
    collected = run.collected
    durations: dict[str, float] = c.call("test_durations", {"test_ids": collected}, timeout=120.0)
    slots = _free_slots(c, args)
    if slots == 0:
        print("dtf pytest: no agent is online that matches (tags: "
              f"{', '.join(args.tag) or 'any'}); the shards wait in the queue until one is", file=sys.stderr)
    if args.shards == "auto":
        n = auto_shards(slots, len(collected))
    else:
        try:
            n = max(1, int(args.shards))
        except ValueError:
            print(f"dtf pytest: --shards takes a number or auto, not {args.shards!r}", file=sys.stderr)
            return EXIT_USAGE
    plan = plan_shards(collected, durations, n)
    created = c.call("create_run", {"name": name, "kind": "pytest",
                                    "meta": {"rootdir": str(root), "args": extra, "bundle": digest,
                                             "collected": len(collected), "shards": len(plan.shards),
                                             "known": plan.known, "expected_makespan": round(plan.makespan, 3),
                                             # The plan itself, for a suite small enough to keep it whole.
                                             **({"plan": [s.tests for s in plan.shards]}
                                                if len(collected) <= 5000 else {})}})
    run.run_id = created["run_id"]
    print(_banner(f"dtf pytest: run {run.run_id}"))
    if plan.known:
        estimate = f"durations known for {plan.known}, expected {plan.makespan:.1f} s"
        if plan.unknown:
            estimate += f" (counting the {plan.unknown} others at the median, {plan.median:.2g} s)"
    else:
        estimate = "no durations known yet: split by file; the next run is balanced by this one's times"
    print(f"{len(collected)} tests in {len(plan.shards)} shards on {slots} slot(s); {estimate}")
    progress = Progress(len(collected))
    interrupted = False
    rows: dict[str, dict[str, Any]] = {}
    flaky: list[str] = []
    try:
        ids = _submit(c, run, [s.tests for s in plan.shards], args=args, digest=digest, extra=extra,
                      expected=[s.expected for s in plan.shards])
        states = _watch(c, run, ids, progress, 0)
        rows = _latest(fetch_tests(c, run.run_id))
        _fill_missing(c, run, ids, states, rows)
        for attempt in range(args.reruns):
            failing = [t for t in collected if rows.get(t, {}).get("outcome") in p.FAILING_OUTCOMES]
            if not failing:
                break
            ids, where = _rerun(c, args, run, failing, rows, digest, extra)
            print(f"\nrerun {attempt + 1} of {args.reruns}: {len(failing)} failed test(s), {where}", file=sys.stderr)
            states = _watch(c, run, ids, progress, len(collected) - len(failing))
            # This rerun's rows: its own tasks', whatever the agents' clocks say.
            mine = set(ids)
            again = _latest([r for r in fetch_tests(c, run.run_id) if r["task_id"] in mine])
            _fill_missing(c, run, ids, states, again)
            for t in failing:
                if t in again and again[t].get("outcome") == "passed":
                    flaky.append(t)
                    again[t] = {**again[t], "outcome": "flaky"}
            rows.update({t: again[t] for t in failing if t in again})
        if flaky:
            c.call("mark_flaky", {"run_id": run.run_id, "test_ids": flaky})
    except KeyboardInterrupt:
        interrupted = True
        _cancel_all(c, run)
    progress.end()
    return _report(c, args, run, rows, interrupted)


def _fill_missing(c: Any, run: Run, ids: list[str], states: dict[str, dict[str, Any]],
                  rows: dict[str, dict[str, Any]]) -> None:
    """A shard that ended without test rows (its agent could not run pytest, its bundle was unusable...):
    each of its tests is an error, with the shard's own reason."""
    for tid in ids:
        tests = [t for t in run.shard_tests.get(tid, []) if t not in rows or rows[t]["task_id"] != tid]
        missing = [t for t in tests if t not in rows]
        if not missing:
            continue
        task = c.call("get_task", {"task_id": tid})
        why = task.get("error") or task.get("why") or task.get("status_reason") or task["status"]
        for t in missing:
            rows[t] = {"test_id": t, "outcome": "error", "duration": 0.0, "worker_id": task.get("worker_id"),
                       "task_id": tid, "longrepr": f"the shard {tid} ran no test: {why}", "output": ""}


def _rerun(c: Any, args: argparse.Namespace, run: Run, failing: list[str], rows: dict[str, dict[str, Any]],
           digest: str, extra: list[str]) -> tuple[list[str], str]:
    """One shard per worker the tests failed on, sent to another worker when there is one (within
    --worker and --tag); returns the shards and where they went, in words."""
    if args.worker:
        return _submit(c, run, [failing], args=args, digest=digest, extra=extra), f"on {args.worker} (--worker)"
    workers = [w["worker_id"] for w in c.call("list_workers", {}) if w.get("status") in (p.ONLINE, p.BUSY)
               and (not args.tag or set(args.tag) <= set(w.get("tags") or []))]
    by_worker: dict[str, list[str]] = {}
    for t in failing:
        by_worker.setdefault(str(rows.get(t, {}).get("worker_id") or ""), []).append(t)
    ids: list[str] = []
    moved = True
    for i, (failed_on, tests) in enumerate(sorted(by_worker.items())):
        others = [w for w in workers if w != failed_on]
        target = others[i % len(others)] if others else None
        moved = moved and target is not None
        ids += _submit(c, run, [tests], args=args, digest=digest, extra=extra, worker=target)
    return ids, "on another worker" if moved else "on any worker (no other one is online)"


def _cancel_all(c: Any, run: Run) -> None:
    try:
        pending = c.call("wait", {"task_ids": run.task_ids, "timeout": 0})["pending"] if run.task_ids else []
        for tid in pending:
            try:
                c.call("cancel_task", {"task_id": tid})
            except ClientError:
                pass
        print(f"\ninterrupted: {len(pending)} shard(s) cancelled", file=sys.stderr)
    except ClientError as exc:
        print(f"\ninterrupted; could not cancel the shards: {exc}", file=sys.stderr)


def count_outcomes(final: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The counts of pytest's summary line for the final row of each test."""
    counts: dict[str, int] = {}
    for r in final:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    # A flaky test passed in the end: pytest-rerunfailures counts it as passed, and so does this.
    if counts.get("flaky"):
        counts["passed"] = counts.get("passed", 0) + counts["flaky"]
    # pytest counts reports, not tests: a teardown error besides a test's own outcome is one more.
    for r in final:
        longrepr = str(r.get("longrepr") or "")
        if r["outcome"] == "failed" and TEARDOWN_AFTER_FAILURE in longrepr:
            counts["error"] = counts.get("error", 0) + 1
        elif r["outcome"] == "error" and longrepr.startswith(TEARDOWN_AFTER_PASS):
            counts["passed"] = counts.get("passed", 0) + 1
    return counts


def _report(c: Any, args: argparse.Namespace, run: Run, rows: dict[str, dict[str, Any]], interrupted: bool) -> int:
    seconds = time.monotonic() - run.started
    final = [rows[t] for t in run.collected if t in rows]
    counts = count_outcomes(final)
    failures = [r for r in final if r["outcome"] in p.FAILING_OUTCOMES]
    if failures:
        print(_banner("FAILURES"))
        for r in failures[:30]:
            print(_banner(r["test_id"], "_"))
            lines = str(r.get("longrepr") or "").rstrip().splitlines()
            print("\n".join(lines[-60:]))
            if r.get("output"):
                print(_banner("Captured output", "-"))
                print("\n".join(str(r["output"]).rstrip().splitlines()[-30:]))
            print(f"(on {r.get('worker_id') or '?'}, task {r.get('task_id')}; `dtf logs {r.get('task_id')}` "
                  "has the shard's whole output)")
        if len(failures) > 30:
            print(f"... and {len(failures) - 30} more failures (`dtf runs {run.run_id}` lists them all)")
    flaky = [r for r in final if r["outcome"] == "flaky"]
    if failures or flaky:
        print(_banner("short test summary info"))
        for r in failures:
            label = {"failed": "FAILED", "error": "ERROR", "crashed": "CRASHED"}[r["outcome"]]
            print(f"{label} {r['test_id']} - {_short_message(str(r.get('longrepr') or ''))}")
        for r in flaky:
            print(f"FLAKY {r['test_id']} - failed, then passed on {r.get('worker_id')}")
    status = "interrupted" if interrupted else ("failed" if failures else "passed")
    summary = {"counts": counts, "seconds": round(seconds, 3), "flaky": [r["test_id"] for r in flaky],
               "collected": len(run.collected)}
    try:
        c.call("finish_run", {"run_id": run.run_id, "status": status, "summary": summary})
    except ClientError as exc:
        print(f"dtf pytest: could not record the end of the run: {exc}", file=sys.stderr)
    if args.junitxml:
        from dtf_gui.exports import junit_xml

        Path(args.junitxml).write_bytes(junit_xml(run.run_id, final, duration=seconds,
                                                  timestamp=time.strftime("%Y-%m-%dT%H:%M:%S")))
        print(f"JUnit XML written to {os.path.abspath(args.junitxml)}")
    print(_banner(_summary(counts, seconds) + (" (interrupted)" if interrupted else "")))
    if interrupted:
        return EXIT_INTERRUPTED
    if failures:
        return EXIT_FAILED
    return EXIT_OK if final else EXIT_NO_TESTS
