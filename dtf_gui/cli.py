"""`dtf` (the headless face of the coordinator) and `dtf-gui` (the window).

Qt is imported only by `dtf-gui`, so `dtf serve` runs on a server without a display.

The client commands (everything but `serve`) start fast: this module imports only what they need
(the client: ZeroMQ and the wire protocol). The coordinator (numpy, scipy, SQLite), its config
(YAML), logging and the window are imported inside the functions that use them, and the argument
parser is built for the one command named (see :func:`dtf_parser`).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dtf_agent import __version__

# Importing the client (ZeroMQ, msgspec) makes thousands of objects that all live until the process
# ends; they set off some twenty cyclic collections, one of them a full one, that find nothing to
# free (about a tenth of a client command's time). The collector is back as it was once they are in.
_gc_was_enabled = gc.isenabled()
gc.disable()
try:
    from dtf_agent import protocol as p
    from dtf_gui.cli_common import client_for, print_table
    from dtf_gui.client import Client, ClientError, EndpointError
finally:
    if _gc_was_enabled:
        gc.enable()

if TYPE_CHECKING:
    from types import FrameType

    from dtf_gui.coordinator.config import ServerSettings

EXIT_USAGE = 2  # argparse's status for a usage error
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE


def add_server_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", metavar="FILE", help="coordinator.yaml (default: $DTF_HOME/coordinator.yaml)")
    ap.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for agents on the LAN)")
    ap.add_argument("--port", type=int, help="client API port (default 8080; 0 = any free port)")
    ap.add_argument("--agent-port", type=int, help="agent port (default 8081; 0 = any free port)")
    ap.add_argument("--events-port", type=int, help="live events port (default 8082; 0 = any free port)")
    ap.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default: server.metrics_port, "
                                                     "off; 0 = any free port, named in coordinator.json)")
    ap.add_argument("--db", metavar="PATH", help="SQLite database (default: $DTF_HOME/dtf.sqlite)")
    ap.add_argument("--no-mdns", action="store_true", help="do not advertise this coordinator on the LAN")
    ap.add_argument("--insecure", action="store_true",
                    help="plain-text sockets, every agent accepted, every client an admin: for a quick local "
                         "try only (security.insecure)")


def load_server(args: argparse.Namespace) -> tuple[ServerSettings, Path]:
    """coordinator.yaml (or --config) with the command-line flags on top."""
    import msgspec

    from dtf_agent.paths import dtf_home
    from dtf_gui.coordinator.config import load_coordinator_config, server_settings

    home = dtf_home()
    cfg = load_coordinator_config(args.config, default_path=home / "coordinator.yaml")
    if args.insecure:
        cfg = msgspec.structs.replace(cfg, security=msgspec.structs.replace(cfg.security, insecure=True))
    settings = server_settings(cfg, home, db=args.db, host=args.host, port=args.port, agent_port=args.agent_port,
                               events_port=args.events_port, mdns=not args.no_mdns,
                               metrics_port=args.metrics_port)
    return settings, home


# -- dtf serve ------------------------------------------------------------------------------------


def tune_interpreter() -> None:
    """Interpreter settings for a process that hosts the coordinator loop.

    - The loop shares the GIL with the SQLite writer and analysis threads. At the default 5 ms
      switch interval a waiting loop can stall for a whole interval, which is the p99 of a no-op
      task's round trip; 0.5 ms keeps dispatch latency low at a small throughput cost.
    - The coordinator holds every active task as a record; with the default GC thresholds a burst
      of submissions triggers collections that walk all of them again and again (tens of ms each).
      Those records hold no reference cycles, so rarer young-generation collections lose nothing.
    """
    import gc

    sys.setswitchinterval(0.0005)
    gc.set_threshold(50_000, 20, 20)


def configure_logging(args: argparse.Namespace, program: str) -> None:
    """stderr in --log-format (text or JSON lines), and a rotated copy in $DTF_HOME/logs/PROGRAM.log
    unless stderr is the journal (see dtf_agent/logsetup.py for why)."""
    from dtf_agent import logsetup
    from dtf_agent.paths import dtf_home

    logsetup.configure(program, logsetup.options_from_args(args))
    logsetup.open_log_file(dtf_home())


def cmd_install_service(args: argparse.Namespace) -> int:
    from dtf_agent import service  # systemd: only for this command
    from dtf_agent.paths import dtf_home

    def check_flags(flags: list[str]) -> None:
        dtf_parser("serve").parse_args(["serve", *flags])  # a bad flag exits 2 now, not at the first start

    return service.main("serve", args, home_for_user=str(dtf_home()) if args.user else "", check_flags=check_flags)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    configure_logging(args, "dtf-serve")  # only here: the client commands log nothing
    from dtf_agent.paths import remove_coordinator_file, write_coordinator_file
    from dtf_gui.coordinator.backup import BACKUP_DIR, Backups
    from dtf_gui.coordinator.homelock import HomeLock

    tune_interpreter()
    settings, home = load_server(args)
    # Before the database is opened: a second coordinator on this home stops here, naming the first,
    # and at once (before the seconds spent importing numpy and scipy below).
    lock = HomeLock(home, "dtf serve").acquire()
    try:
        from dtf_gui.coordinator.server import Coordinator  # numpy, scipy, sqlite: only the server needs them

        problem = _database_problem(settings.db_path, home)
        if problem:
            _serve_says(args, problem)
            return 1
        try:
            coord = Coordinator(settings).start()
        except RuntimeError as exc:
            # A file that passed the check but fails when opened (damaged past what quick_check reads).
            problem = _database_problem(settings.db_path, home, exc.__cause__)
            if problem:
                _serve_says(args, problem)
                return 1
            raise
        info = coord.info()
        # Absolute: `dtf backup` reads it from another working directory.
        info["db"] = str(Path(info["db"]).resolve())
        lock.write_info(info)
        write_coordinator_file(info, home)  # only the lock's owner writes it
        db = settings.config.database
        backups = Backups(settings.db_path, home / BACKUP_DIR, db.backup_interval, db.backups_kept).start()
        if args.log_format != "json":
            # With JSON lines the coordinator's own log says the same, and a plain banner would break
            # the stream a collector reads (journald mixes stdout into it).
            print(f"DTF coordinator {settings.coordinator_id}")
            print(f"  clients: {info['client_endpoint']}")
            print(f"  agents:  {info['agent_endpoint']}")
            print(f"  events:  {info['events_endpoint']}")
            if info.get("metrics_endpoint"):
                print(f"  metrics: {info['metrics_endpoint']}")
            print(f"  db:      {info['db']}")
            if info["insecure"]:
                print("  INSECURE: plain-text sockets, every agent accepted, every client an admin", flush=True)
            else:
                print(f"  key:     {info['fingerprint']}", flush=True)
        done = threading.Event()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            done.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            while not done.wait(1.0):
                if not coord.is_running:
                    _serve_says(args, "the coordinator loop stopped unexpectedly; see the log")
                    return 1
        finally:
            backups.stop()  # before the coordinator: no copy is left reading a closing database
            coord.stop()
            remove_coordinator_file(os.getpid(), home)  # only if it is still ours
    finally:
        lock.release()  # last: the home is ours until everything above has let go of it
    return 0


def _serve_says(args: argparse.Namespace, problem: str) -> None:
    """Why `dtf serve` stops: a log record when the log is JSON lines (one stream for a collector),
    else a plain line on stderr."""
    if args.log_format == "json":
        import logging

        logging.getLogger("dtf_gui.cli").error("dtf serve: %s", problem)
    else:
        print(f"dtf serve: {problem}", file=sys.stderr)


def _database_problem(db_path: str, home: Path, exc: BaseException | None = None) -> str | None:
    """What is wrong with the database, with the backup to restore: from ``exc`` when opening it
    failed with a "damaged file" error, else from a quick check before opening it."""
    from dtf_gui.coordinator.backup import BACKUP_DIR, check_database, corruption_message, is_corruption

    if exc is None:
        return check_database(db_path, home / BACKUP_DIR)
    if is_corruption(exc):
        return corruption_message(Path(db_path), [str(exc)], home / BACKUP_DIR)
    return None


def cmd_backup(args: argparse.Namespace) -> int:
    """An online copy of the database; works while the coordinator runs (it only reads the file)."""
    from dtf_agent.paths import dtf_home, read_coordinator_file
    from dtf_gui.coordinator.backup import BACKUP_DIR, BackupError, backup_database, default_backup_name
    from dtf_gui.coordinator.config import load_coordinator_config, server_settings

    home = dtf_home()
    db_path = args.db
    if db_path is None:
        # The running (or last) coordinator's database, as it published it; else what `serve` would open.
        info = read_coordinator_file(home) or {}
        db_path = info.get("db")
    if db_path is None:
        cfg = load_coordinator_config(args.config, default_path=home / "coordinator.yaml")
        db_path = server_settings(cfg, home).db_path
    dest = Path(args.path) if args.path else home / BACKUP_DIR / default_backup_name()
    if dest.is_dir():
        dest = dest / default_backup_name()
    show = sys.stderr.isatty()
    started = time.monotonic()
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        # Only for a copy that takes a while, at most ten lines a second, on one line.
        now = time.monotonic()
        if show and now - started > 0.5 and (now - shown[0] > 0.1 or done == total):
            shown[0] = now
            print(f"\r  {100 * done // max(total, 1):3d}% ({done}/{total} pages)", end="", file=sys.stderr,
                  flush=True)

    try:
        result = backup_database(db_path, dest, progress=progress)
    except BackupError as exc:
        print(f"dtf backup: {exc}", file=sys.stderr)
        return 1
    finally:
        if show and shown[0]:
            print(file=sys.stderr)
    print(f"{result.path}  {result.size / 1e6:.1f} MB  {result.seconds:.2f} s")
    return 0


# -- client commands ------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        fields: dict[str, Any] = {"type": args.type}
        if args.command is not None:
            fields["command"] = args.command
        if args.priority is not None:
            fields["priority"] = args.priority
        if args.timeout is not None:
            fields["timeout"] = args.timeout
        if args.test_id:
            fields["test_id"] = args.test_id
        if args.depends_on:
            fields["dependencies"] = args.depends_on
        if args.retries is not None:
            fields["retry_limit"] = args.retries
        req: dict[str, Any] = {}
        if args.tag:
            req["tags"] = args.tag
        for key in ("hardware", "min_memory_gb", "gpu_count", "os", "worker", "group"):
            value = getattr(args, key)
            if value is not None:
                req[key] = value
        if req:
            fields["requirements"] = req
        if args.bundle:
            from dtf_agent.runners.bundles import BundleError
            from dtf_gui.cli_bundles import upload_bundle

            try:
                params = {"bundle": upload_bundle(c, args.bundle)}
            except BundleError as exc:
                print(f"dtf submit: {exc}", file=sys.stderr)
                return EXIT_USAGE
            if args.requirements:
                params["requirements"] = args.requirements
            fields["parameters"] = params
        # Every submission is a run (`dtf runs`; the previous run of its name is its baseline).
        fields["run_id"] = c.call("create_run", {"name": _run_name(args), "kind": "submit"})["run_id"]
        if args.count > 1:
            ids = c.call("create_tasks", {"tasks": [fields] * args.count})["task_ids"]
        else:
            ids = [c.call("create_task", fields)["task_id"]]
        if not args.wait:
            print("\n".join(ids))
            return 0
        started = time.monotonic()
        try:
            final = _wait_for(c, ids, args.wait_timeout, progress=not args.json and sys.stderr.isatty())
        except KeyboardInterrupt:
            return _interrupted(c, ids)
    failed = [t for t in final if t["status"] != p.COMPLETED]
    if args.json:
        print(json.dumps(final, indent=2, default=str))
        return 1 if failed else 0
    # Every task when there are few; with many, the failures only (the summary counts the rest).
    for t in final if len(final) <= 20 else failed[:50]:
        res = (t.get("result_list") or [{}])[-1]
        raw = res.get("raw_data") or {}
        print(f"{t['task_id']}: {t['status']}" + (f" ({t['error']})" if t.get("error") else ""))
        if t["status"] == p.COMPLETED:
            if raw.get("stdout_tail"):
                print(raw["stdout_tail"].rstrip())
            continue
        # A failure: the end of both streams, labelled; the whole of them is one command away.
        for stream, lines in (("stdout", 10), ("stderr", 20)):
            tail = (raw.get(f"{stream}_tail") or "").rstrip().splitlines()[-lines:]
            if tail:
                print(f"--- {stream} (last {len(tail)} lines) ---")
                print("\n".join(tail))
        print(f"--- `dtf logs {t['task_id']} --stderr` shows the whole stderr ---")
    counts: dict[str, int] = {}
    for t in final:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{summary} in {time.monotonic() - started:.1f} s")
    return 1 if failed else 0


def _run_name(args: argparse.Namespace) -> str:
    """--run, else the test id, else the program the command runs (``python bench.py`` -> python)."""
    if args.run:
        return str(args.run)
    if args.test_id:
        return str(args.test_id)
    command = args.command or args.type
    word = command.split()[0] if command.split() else args.type
    return os.path.basename(word)[:100] or "submit"


def _wait_for(c: Client, ids: list[str], timeout: float, progress: bool = False) -> list[dict[str, Any]]:
    """Until every task is final: the coordinator answers a ``wait`` the moment they are (no
    polling); on a terminal it is asked once a second, to show how far along they are."""
    deadline = time.monotonic() + timeout
    pending = list(dict.fromkeys(ids))
    total = len(pending)
    finished: dict[str, str] = {}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClientError(f"{len(pending)} task(s) not finished after {timeout:g} s: {', '.join(pending[:5])}")
        step = min(left, 1.0 if progress else 60.0)
        answer = c.call("wait", {"task_ids": pending, "timeout": step}, timeout=step + 30.0)
        finished.update(answer["finished"])
        pending = answer["pending"]
        if progress:
            bad = sum(1 for status in finished.values() if status != p.COMPLETED)
            print(f"\r{len(finished)}/{total} finished, {bad} failed or cancelled", end="", file=sys.stderr,
                  flush=True)
    if progress:
        print(file=sys.stderr)
    return [c.call("get_task", {"task_id": tid}) for tid in ids]


def _interrupted(c: Client, ids: list[str]) -> int:
    """Ctrl-C while waiting: the tasks go on running unless the engineer says to cancel them."""
    try:
        pending = c.call("wait", {"task_ids": ids, "timeout": 0})["pending"]
    except ClientError:
        pending = list(ids)
    print(file=sys.stderr)
    if not pending:
        print("interrupted; every task had finished already", file=sys.stderr)
        return 130
    if sys.stdin.isatty():
        try:
            answer = input(f"interrupted: cancel the {len(pending)} unfinished task(s)? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer.strip().lower() in ("y", "yes"):
            for tid in pending:
                try:
                    c.call("cancel_task", {"task_id": tid})
                except ClientError as exc:
                    print(f"{tid}: {exc}", file=sys.stderr)
            print(f"cancelled {len(pending)} task(s)", file=sys.stderr)
            return 130
    print(f"interrupted; {len(pending)} task(s) go on running (`dtf cancel ID` stops one): "
          f"{', '.join(pending[:5])}{' ...' if len(pending) > 5 else ''}", file=sys.stderr)
    return 130


def cmd_status(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        st = c.call("get_status")
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"coordinator {st['coordinator_id']} up {st['uptime_s']:.0f} s")
    print(f"workers: {st['workers_online']} online of {st['workers_known']} known")
    print("tasks:   " + ", ".join(f"{k} {v}" for k, v in st["tasks"].items()))
    sec = st.get("security") or {}
    if sec.get("insecure"):
        print("security: INSECURE (plain-text sockets, every agent accepted)")
    elif sec:
        waiting = sec.get("pending_agents") or 0
        print(f"security: CURVE, coordinator key {sec.get('fingerprint')}"
              + (f"; {waiting} agent(s) wait for acceptance (`dtf agents`)" if waiting else ""))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        rows = c.call("list_tasks", {"status": args.status, "limit": args.limit})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            r["command"] = (r.get("parameters") or {}).get("command")
        print_table(rows, ["task_id", "type", "status", "priority", "worker_id", "create_time", "command",
                            "why"])
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        rows = c.call("list_workers")
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            caps = r.get("capabilities") or {}
            r["cpus"] = caps.get("cpu_count")
            r["memory_gb"] = caps.get("memory_gb")
            r["gpus"] = caps.get("gpu_count")
        print_table(rows, ["worker_id", "hostname", "status", "slots", "cpus", "memory_gb", "gpus", "last_seen"])
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from dtf_gui.exports import LEGACY_RESULT_COLUMNS, write_results_csv

    with client_for(args) as c:
        rows = c.call("list_results", {"task_id": args.task, "limit": args.limit})
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "json":
            json.dump(rows, out, indent=2, default=str)
            out.write("\n")
        else:
            # The columns and Unix times `dtf results` has always written (scripts read them);
            # `dtf report --format csv` writes the fuller table with ISO 8601 times.
            write_results_csv(rows, out, iso_times=False, columns=LEGACY_RESULT_COLUMNS)
    finally:
        if args.output:
            out.close()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel each task named; one that cannot be cancelled is reported and the others still are."""
    failed = 0
    with client_for(args) as c:
        for tid in args.task_ids:
            try:
                r = c.call("cancel_task", {"task_id": tid})
                print(f"{tid}: {r['status']}")
            except ClientError as exc:
                failed += 1
                print(f"{tid}: not cancelled: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _task_command(op: str, extra: Callable[[argparse.Namespace], dict[str, Any]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client_for(args) as c:
            r = c.call(op, {"task_id": args.task_id, **extra(args)})
        print(f"{r['task_id']}: {r['status']}" + (f" - {r['why']}" if r.get("why") else ""))
        return 0

    return run


ANALYSES = {
    "stats": "aggregate_results",
    "anomalies": "get_result_anomalies",
    "trends": "aggregate_results",
    "compare": "get_comparison_report",
}
# What each analysis table shows: the fields its query returns, in reading order.
STATS_COLUMNS = ("group", "metric", "count", "mean", "median", "std", "p95", "min", "max", "cv")
ANOMALY_COLUMNS = ("group", "metric", "value", "score", "median", "expected_low", "expected_high", "result_id")
TREND_COLUMNS = ("group", "metric", "n", "slope", "rel_change", "p_value", "direction", "significant")
COMPARE_COLUMNS = ("group", "metric", "verdict", "pct_change", "p_value", "baseline_n", "baseline_mean",
                   "baseline_median", "current_n", "current_mean", "current_median")


def _per_group(section: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """{group: {metric: {field: value}}} as one row per group and metric."""
    return [{"group": g, "metric": m, **v} for g, ms in section.items() for m, v in ms.items()]


def cmd_analyze(args: argparse.Namespace) -> int:
    """The aggregator's queries: statistics by group, trends, anomalies, and a comparison report."""
    query: dict[str, Any] = {"result_type": args.result_type, "aggregation_level": args.by}
    if args.metric:
        query["filter_params"] = {"metric": args.metric}
    if args.since_hours:
        now = time.time()
        query["time_range"] = [now - args.since_hours * 3600, now]
    if args.what == "trends":
        query["include_trends"] = True
    with client_for(args) as c:
        if args.run or args.baseline:
            if args.what != "compare" or not args.run:
                print("dtf analyze: --run and --baseline go with `compare`: dtf analyze compare --run R "
                      "[--baseline B]", file=sys.stderr)
                return EXIT_USAGE
            return _mod("cli_runs").compare_runs(c, args)  # type: ignore[no-any-return]
        data = c.call(ANALYSES[args.what], query, timeout=max(args.timeout_s, 120))
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    if args.what == "stats":
        print_table(_per_group(data["basic_statistics"]), STATS_COLUMNS)
    elif args.what == "trends":
        print_table(_per_group(data.get("trends") or {}), TREND_COLUMNS)
    elif args.what == "anomalies":
        print_table(data, ANOMALY_COLUMNS)
    else:
        comparisons = data.get("comparisons")
        rows = _per_group(comparisons) if isinstance(comparisons, dict) else data.get("rows", [])
        if rows:
            print_table(rows, COMPARE_COLUMNS)
        else:
            print(json.dumps(data, indent=2, default=str))
    return 0


# -- the parser -----------------------------------------------------------------------------------


def _serve_args(sp: argparse.ArgumentParser) -> None:
    from dtf_agent import logsetup

    add_server_flags(sp)
    # Also after the command (`dtf serve --log-level DEBUG`, as a unit's ExecStart reads best); SUPPRESS
    # keeps the value given before it (`dtf --log-level DEBUG serve`) when this one is absent.
    sp.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    logsetup.add_log_args(sp, level=False)


def _install_service_args(sp: argparse.ArgumentParser) -> None:
    from dtf_agent import service

    sp.description = ("Write a hardened systemd unit that runs `dtf serve` (dtf-serve.service), then enable and "
                      "start it. Run as root for a system unit (user dtf, DTF_HOME /var/lib/dtf), or with --user.")
    service.add_install_args(sp, "serve")


def _backup_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("path", nargs="?", metavar="PATH",
                    help="file or folder to write (default: $DTF_HOME/backups/dtf-YYYYmmdd-HHMMSS.sqlite)")
    sp.add_argument("--db", metavar="PATH",
                    help="database to copy (default: the running coordinator's, else $DTF_HOME/dtf.sqlite)")
    sp.add_argument("--config", metavar="FILE", help="coordinator.yaml naming the database")


def _submit_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--command", help="shell command to run on a worker")
    sp.add_argument("--type", default="command", choices=["command", "noop"])
    sp.add_argument("--priority", type=int, help="higher runs first (default 5)")
    sp.add_argument("--timeout", type=float, help="seconds before the task is killed")
    sp.add_argument("--test-id", help="groups results of the same test across runs")
    sp.add_argument("--count", type=int, default=1, help="submit this many copies")
    sp.add_argument("--depends-on", action="append", metavar="TASK_ID", help="run only after this task completed")
    sp.add_argument("--retries", type=int, help="retry limit for this task (0 = never retry)")
    sp.add_argument("--tag", action="append", help="required worker tag (repeat for several)")
    sp.add_argument("--hardware", help="required hardware kind: cpu, cuda, rocm ...")
    sp.add_argument("--min-memory-gb", type=float)
    sp.add_argument("--gpu-count", type=int, help="GPUs the task reserves")
    sp.add_argument("--os", help="required OS (linux, windows, darwin)")
    sp.add_argument("--worker", help="only this worker")
    sp.add_argument("--group", help="only workers of this group")
    sp.add_argument("--bundle", metavar="DIR", help="ship this directory (content-addressed; sent only when the "
                                                    "coordinator lacks it): the command runs inside it")
    sp.add_argument("--requirements", metavar="FILE", help="with --bundle: a requirements file inside it; the "
                                                           "command runs in a virtual environment made from it")
    sp.add_argument("--run", metavar="NAME", help="the name of the run this submission is (`dtf runs`; default: the "
                                                  "test id, else the command's program)")
    sp.add_argument("--wait", action="store_true", help="wait until the task(s) finish; exit 1 if any failed")
    sp.add_argument("--wait-timeout", type=float, default=3600.0)
    sp.add_argument("--json", action="store_true")


def _json_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true")


def _tasks_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--status")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--json", action="store_true")


def _results_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--format", choices=["csv", "json"], default="csv")
    sp.add_argument("--task", help="only this task's results")
    sp.add_argument("--limit", type=int, default=10_000)
    sp.add_argument("--output", "-o", help="file to write (default: stdout)")


def _analyze_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("what", nargs="?", default="stats", choices=list(ANALYSES))
    sp.add_argument("--by", default="test_id",
                    help="group by: test_id, worker_id, hardware_id, type, or a parameter/metadata key; a,b for several")
    sp.add_argument("--metric", help="only this metric")
    sp.add_argument("--result-type", default="performance", choices=["performance", "execution", "all"])
    sp.add_argument("--since-hours", type=float, help="only results of the last N hours")
    sp.add_argument("--run", metavar="RUN", help="compare: this run (see `dtf runs`) ...")
    sp.add_argument("--baseline", metavar="RUN", help="compare: ... against this run (default: the previous run "
                                                      "of the same name)")
    sp.add_argument("--json", action="store_true")


def _cancel_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("task_ids", nargs="+")


def _task_args(*names: str, types: dict[str, type] | None = None) -> Callable[[argparse.ArgumentParser], None]:
    def add(sp: argparse.ArgumentParser) -> None:
        for name in names:
            sp.add_argument(name, type=(types or {}).get(name, str))

    return add


class Command(NamedTuple):
    help: str
    fn: Callable[[argparse.Namespace], int]
    add_args: Callable[[argparse.ArgumentParser], None]
    client: bool = True  # talks to a running coordinator: gets --coordinator and --timeout-s


COMMANDS: dict[str, Command] = {
    "serve": Command("run the coordinator without a window", cmd_serve, _serve_args, client=False),
    "install-service": Command("run `dtf serve` as a systemd service (hardened, restarted on failure; --user "
                               "for your own)", cmd_install_service, _install_service_args, client=False),
    "backup": Command("copy the database while the coordinator runs", cmd_backup, _backup_args, client=False),
    "submit": Command("submit a task", cmd_submit, _submit_args),
    "status": Command("coordinator summary", cmd_status, _json_args),
    "tasks": Command("list tasks", cmd_tasks, _tasks_args),
    "workers": Command("list workers", cmd_workers, _json_args),
    "results": Command("export results", cmd_results, _results_args),
    "analyze": Command("statistics, trends, anomalies and comparisons of results", cmd_analyze, _analyze_args),
    "cancel": Command("cancel tasks", cmd_cancel, _cancel_args),
    "assign": Command("pin a pending task to a worker (or move an assigned one)",
                      _task_command("assign_task", lambda a: {"worker_id": a.worker_id}),
                      _task_args("task_id", "worker_id")),
    "unassign": Command("drop a pin; back to the queue", _task_command("unassign_task", lambda a: {}),
                        _task_args("task_id")),
    "retry": Command("run a failed or cancelled task again", _task_command("retry_task", lambda a: {}),
                     _task_args("task_id")),
    "priority": Command("change a task's priority (higher runs first)",
                        _task_command("set_priority", lambda a: {"priority": a.priority}),
                        _task_args("task_id", "priority", types={"priority": int})),
    "logs": Command("a task's whole output (--stderr, --follow while it runs)",
                    lambda a: _mod("cli_runs").cmd_logs(a), lambda sp: _mod("cli_runs").logs_args(sp)),
    "runs": Command("runs (plans, pytest runs, submissions) with their counts; one run's failures and flaky tests",
                    lambda a: _mod("cli_runs").cmd_runs(a), lambda sp: _mod("cli_runs").runs_args(sp)),
    "pytest": Command("run this directory's pytest suite spread over the agents, by duration history",
                      lambda a: _mod("cli_pytest").cmd_pytest(a), lambda sp: _mod("cli_pytest").pytest_args(sp)),
    "plan": Command("check or run a YAML test plan (a matrix of tasks with dependencies)",
                    lambda a: _mod("cli_plans").cmd_plan(a), lambda sp: _mod("cli_plans").plan_args(sp),
                    client=False),
    "report": Command("a run's report as PDF, CSV or JUnit XML (--run R --format pdf|csv|junit -o FILE)",
                      lambda a: _mod("cli_report").cmd_report(a), lambda sp: _mod("cli_report").report_args(sp)),
    "agents": Command("list agents by enrollment state; accept, reject or revoke them",
                      lambda a: _security().cmd_agents(a), lambda sp: _security().agents_args(sp)),
    "token": Command("create a join token for new agents (`dtf-agent --join TOKEN`)",
                     lambda a: _security().cmd_token(a), lambda sp: _security().token_args(sp)),
    "clients": Command("client keys and their roles: list, add NAME --role ROLE, remove NAME",
                       lambda a: _security().cmd_clients(a), lambda sp: _security().clients_args(sp)),
}


def _security() -> Any:
    from dtf_gui import cli_security  # only for these commands

    return cli_security


def _mod(name: str) -> Any:
    """A command's own module, imported only when that command runs."""
    return importlib.import_module(f"dtf_gui.{name}")


def dtf_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `dtf` parser; with ``only``, just that command's subparser (each subparser costs about
    a millisecond to build, a fifth of a client command's own work)."""
    ap = argparse.ArgumentParser(prog="dtf", description="DTF coordinator, headless.")
    ap.add_argument("--version", action="version", version=f"dtf {__version__}")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--key", metavar="FILE",
                    help="client key file (from `dtf clients add`; default: $DTF_CLIENT_KEY, else this home's admin key)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, command in COMMANDS.items():
        if only is not None and name != only:
            continue
        # `dtf pytest` passes on what it does not know: --timeout is pytest-timeout's, not --timeout-s.
        sp = sub.add_parser(name, help=command.help, allow_abbrev=name != "pytest")
        if command.client:
            sp.add_argument("--coordinator", metavar="tcp://HOST:PORT",
                            help="client endpoint (default: the local coordinator from $DTF_HOME/coordinator.json)")
            sp.add_argument("--timeout-s", type=float, default=30.0, help="seconds to wait for an answer")
        command.add_args(sp)
        sp.set_defaults(fn=command.fn)
    return ap


def _named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names when nothing but --log-level comes before it, else None (then
    the whole parser is built, for --help, --version, an unknown or abbreviated word ...)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("--log-level", "--key"):
            i += 2
        elif word.startswith(("--log-level=", "--key=")):
            i += 1
        else:
            return word if word in COMMANDS else None
    return None


def _config_error(exc: Exception) -> bool:
    """A ConfigError, without importing the config module (and YAML) for commands that never read it:
    one raised was necessarily imported by then."""
    config = sys.modules.get("dtf_agent.config")
    return config is not None and isinstance(exc, config.ConfigError)


def _silence_stdout() -> None:
    """Whoever read our stdout has gone: point it at /dev/null, so that the interpreter's last flush
    at exit does not fail again and print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (redirected in-process)
        pass


def dtf_main(argv: list[str] | None = None) -> int:
    program = argv is None  # run as the `dtf` program, not called with an argv by a script or a test
    argv = sys.argv[1:] if argv is None else argv
    named = _named_command(argv)
    parser = dtf_parser(named)
    if named == "pytest":
        # Every option `dtf pytest` does not know is pytest's (-k, -x, -m ...): passed on.
        args, rest = parser.parse_known_args(argv)
        args.pytest_args = rest
    else:
        args = parser.parse_args(argv)
    if program and args.fn is not cmd_serve:
        # A client command ends the process: what is imported by now lives until then, so the
        # collector need not walk it again, during the command or in the interpreter's last
        # collection at exit (another tenth of the command's time).
        gc.freeze()
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `dtf tasks | head -1`: the reader had what it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except EndpointError as exc:
        print(f"dtf: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"dtf: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the coordinator could not start: a port in use, a bad processor path ...
        print(f"dtf: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _config_error(exc):
            raise
        print(f"dtf: {exc}", file=sys.stderr)
        return EXIT_USAGE


def gui_main(argv: list[str] | None = None) -> int:
    from dtf_agent import logsetup
    from dtf_agent.config import ConfigError

    ap = argparse.ArgumentParser(prog="dtf-gui", description="DTF window with an embedded coordinator.")
    add_server_flags(ap)
    ap.add_argument("--no-local-agent", action="store_true", help="do not start an agent on this machine")
    ap.add_argument("--local-slots", type=int, default=None, help="slots of the local agent")
    logsetup.add_log_args(ap)
    ap.add_argument("--connect", metavar="tcp://HOST:PORT",
                    help="open the window on a coordinator elsewhere (`dtf serve`); nothing is embedded")
    ap.add_argument("--key", metavar="FILE",
                    help="client key file for --connect (default: $DTF_CLIENT_KEY, else this home's admin key)")
    args = ap.parse_args(argv)
    # Before Qt is imported: without a display Qt aborts with a plugin message that does not say so.
    # And before the log file: nothing is written to the home of a window that cannot open.
    problem = _mod("display").display_problem()
    if problem:
        print(f"dtf-gui: {problem}", file=sys.stderr)
        return 2
    configure_logging(args, "dtf-gui")
    if args.connect or args.key:
        embedded = [f for f in ("config", "host", "port", "agent_port", "events_port", "metrics_port", "db")
                    if getattr(args, f) is not None] + [f for f in ("no_mdns", "insecure", "no_local_agent")
                                                        if getattr(args, f)]
        if embedded:
            ap.error(f"--connect opens a window on a coordinator elsewhere: --{embedded[0].replace('_', '-')} "
                     "is for the embedded one")
        from dtf_gui.ui.app import run_remote  # Qt only from here on

        return run_remote(args.connect, args.key)
    try:
        settings, home = load_server(args)
    except ConfigError as exc:
        print(f"dtf-gui: {exc}", file=sys.stderr)
        return 2
    from dtf_gui.ui.app import run_app  # Qt only from here on

    tune_interpreter()
    return run_app(settings, home, local_agent=not args.no_local_agent, local_slots=args.local_slots)


if __name__ == "__main__":
    sys.exit(dtf_main())
