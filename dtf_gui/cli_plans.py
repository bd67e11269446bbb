"""`dtf plan check PLAN.yaml` and `dtf plan run PLAN.yaml`: a YAML test plan from the command line.

`check` reads the plan only (no coordinator): what it expands to, or the first error as
``file:line: message``. `run` creates a run on the coordinator, submits the plan's tasks into it
and, with ``--wait``, follows it to the end and records the run's outcome.

Registered by cli.py through :func:`add_plan_parser` (or :func:`plan_args` on a parser of its
own); both give the `run` action its own --coordinator and --timeout-s, so register `plan` as a
command that does not get them a second time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

from dtf_gui import cli_common
from dtf_gui.coordinator.plans import Plan, PlanError, count, describe, expand, load_plan

EXIT_FAILED = 1
EXIT_PLAN_ERROR = 2
EXIT_INTERRUPTED = 130
COMPLETED = "completed"  # protocol.COMPLETED, the one final status that is a pass


class PlanClient(Protocol):
    """What `plan run` needs of a client (dtf_gui.client.Client; a fake one in tests)."""

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any: ...


class Submitted(NamedTuple):
    run_id: str
    baseline: str | None
    task_ids: list[str]


# -- the parser -----------------------------------------------------------------------------------


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    """Add `plan` (with `check` and `run`) to the `dtf` subcommands."""
    sp = sub.add_parser("plan", help="check or run a YAML test plan")
    plan_args(sp)
    sp.set_defaults(fn=cmd_plan)


def plan_args(sp: argparse.ArgumentParser) -> None:
    actions = sp.add_subparsers(dest="plan_action", required=True, metavar="{check,run}")
    check = actions.add_parser("check", help="validate a plan and show what it expands to (no coordinator)")
    check.add_argument("plan", metavar="PLAN.yaml")
    run = actions.add_parser("run", help="submit a plan's tasks as one run")
    run.add_argument("plan", metavar="PLAN.yaml")
    run.add_argument("--name", help="the run's name (default: the plan's); runs of one name are each "
                                    "other's baselines")
    run.add_argument("--wait", action="store_true", help="follow the run to its end; exit 1 if a task failed")
    run.add_argument("--wait-timeout", type=float, metavar="S",
                     help="with --wait: give up after S seconds (the tasks go on; default: no limit)")
    run.add_argument("--json", action="store_true", help="print the outcome as JSON")
    run.add_argument("--coordinator", metavar="tcp://HOST:PORT",
                     help="client endpoint (default: the local coordinator from $DTF_HOME/coordinator.json)")
    run.add_argument("--timeout-s", type=float, default=30.0, help="seconds to wait for an answer")


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.plan)
    except PlanError as exc:
        print(str(exc), file=sys.stderr)  # already `file:line: message`
        return EXIT_PLAN_ERROR
    if args.plan_action == "check":
        for line in describe(plan):
            print(line)
        print(f"plan OK: {_tasks(count(plan))} in {len(plan.steps)} step{'s' if len(plan.steps) != 1 else ''}")
        return 0
    with cli_common.client_for(args) as client:
        return run_plan(client, plan, path=args.plan, name=args.name, wait=args.wait,
                        wait_timeout=args.wait_timeout, as_json=args.json)


def _tasks(n: int) -> str:
    return f"{n} task{'s' if n != 1 else ''}"


# -- talking to the coordinator -------------------------------------------------------------------


def submit_plan(client: PlanClient, plan: Plan, *, path: str, name: str | None = None) -> Submitted:
    """Upload the bundle, create the run, declare the metrics, submit the tasks."""
    digest = None
    if plan.bundle is not None:
        # Imported here: `plan check` and plans without a bundle need none of it (and through
        # importlib, so that this file type-checks in a tree without it).
        bundles = importlib.import_module("dtf_gui.cli_bundles")
        # First: a bundle that cannot be uploaded leaves no empty run behind.
        digest = str(bundles.upload_bundle(client, Path(plan.bundle)))
    metrics = {m: {"unit": spec.unit, "direction": spec.direction} for m, spec in plan.metrics.items()}
    run = client.call("create_run", {"name": name or plan.name, "kind": "plan",
                                     "meta": {"plan": str(Path(path).resolve()), "metrics": metrics}})
    run_id = str(run["run_id"])
    try:
        if metrics:
            client.call("declare_metrics", {"metrics": metrics})
        tasks = expand(plan, run_id=run_id, bundle=digest)
        ids = client.call("create_tasks", {"tasks": tasks, "run_id": run_id})["task_ids"]
    except BaseException:
        # The run would stay open for ever with nothing in it; close it, and report the first error.
        try:
            client.call("finish_run", {"run_id": run_id, "status": "error",
                                       "summary": {"tasks": 0, "failed": 0, "status": "error"}})
        except Exception:  # noqa: BLE001 (the first error is the one to report)
            pass
        raise
    return Submitted(run_id, run.get("baseline"), list(ids))


def wait_run(client: PlanClient, task_ids: list[str], *, timeout: float | None = None,
             progress: TextIO | None = None, tty: bool = False) -> tuple[dict[str, str], list[str]]:
    """Until every task is final (or ``timeout`` seconds): ({task_id: final status}, still pending).

    The coordinator answers a ``wait`` the moment every task is final; until then each call
    returns after a step, to show how far along the run is (each second on a terminal).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(dict.fromkeys(task_ids))
    total = len(pending)
    finished: dict[str, str] = {}
    shown = ""
    while pending:
        step = 1.0 if tty else 30.0
        if deadline is not None:
            step = min(step, deadline - time.monotonic())
            if step <= 0:
                break
        answer = client.call("wait", {"task_ids": pending, "timeout": step}, timeout=step + 30.0)
        finished.update(answer["finished"])
        pending = list(answer["pending"])
        if progress is not None:
            failed = sum(1 for s in finished.values() if s != COMPLETED)
            line = f"{len(finished)}/{total} done, {failed} failed"
            if line != shown:  # a log gets a line when something changed, not every step
                print(f"\r{line}" if tty else line, end="" if tty else "\n", file=progress, flush=True)
                shown = line
    if progress is not None and tty and shown:
        print(file=progress)
    return finished, pending


def finish_run(client: PlanClient, run_id: str, finished: dict[str, str]) -> dict[str, Any]:
    failed = sum(1 for s in finished.values() if s != COMPLETED)
    summary = {"tasks": len(finished), "failed": failed, "status": "failed" if failed else "passed"}
    # The run's own status is a field of its own (the coordinator's default is "passed"); the
    # summary repeats it for whoever reads the summary alone.
    client.call("finish_run", {"run_id": run_id, "status": summary["status"], "summary": summary})
    return summary


def run_plan(client: PlanClient, plan: Plan, *, path: str, name: str | None = None, wait: bool = False,
             wait_timeout: float | None = None, as_json: bool = False) -> int:
    """`dtf plan run`: submit, and with ``wait`` follow the run to its end and record its outcome."""
    started = time.monotonic()
    sub = submit_plan(client, plan, path=path, name=name)
    baseline = f"baseline: run {sub.baseline}" if sub.baseline else "no earlier run of this name: no baseline"
    if not wait:
        if as_json:
            print(json.dumps({"run_id": sub.run_id, "baseline": sub.baseline, "task_ids": sub.task_ids}, indent=2))
        else:
            print(f"run {sub.run_id}: {_tasks(len(sub.task_ids))} submitted ({baseline})")
        return 0
    if not as_json:
        print(f"run {sub.run_id}: {_tasks(len(sub.task_ids))} submitted ({baseline})", flush=True)
    try:
        finished, pending = wait_run(client, sub.task_ids, timeout=wait_timeout, progress=sys.stderr,
                                     tty=sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"\ninterrupted; run {sub.run_id} goes on (its tasks keep running; `dtf cancel ID` stops one)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if pending:
        # Left open: its tasks still run, and a run is finished once, with every task's outcome.
        print(f"{len(pending)} of {_tasks(len(sub.task_ids))} not finished after {wait_timeout:g} s; run "
              f"{sub.run_id} stays open", file=sys.stderr)
        return EXIT_FAILED
    summary = finish_run(client, sub.run_id, finished)
    if as_json:
        print(json.dumps({"run_id": sub.run_id, "baseline": sub.baseline, **summary, "statuses": finished},
                         indent=2))
    else:
        counts: dict[str, int] = {}
        for status in finished.values():
            counts[status] = counts.get(status, 0) + 1
        detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"run {sub.run_id} {summary['status']}: {detail} in {time.monotonic() - started:.1f} s")
    return EXIT_FAILED if summary["failed"] else 0
