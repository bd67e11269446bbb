"""`dtf report --run R --format pdf|csv|junit -o FILE`: a run's report, headless.

The data comes from the coordinator (run_report, run_tests, export_rows); the files are written
here by the same code the window's File > Export uses: reports' CSV writers and JUnit XML, and for
the PDF dtf_gui.ui.report_pdf (Qt, offscreen when there is no display, so it runs on a server).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtf_gui.cli_common import client_for
from dtf_gui.client import ClientError

FORMATS = ("pdf", "csv", "junit")
WHAT = ("tasks", "results", "findings")


def report_args(sp: argparse.ArgumentParser) -> None:
    sp.description = ("A run's report: PDF (summary, pass/fail table, metric trends with change points, findings, "
                      "workers), CSV of its tasks, results or findings, or JUnit XML of its tests.")
    sp.add_argument("--run", required=True, metavar="RUN", help="the run's id or name (a name means its latest run)")
    sp.add_argument("--format", choices=FORMATS, default="pdf")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    sp.add_argument("--what", choices=WHAT, default="results", help="csv: which table (default: results)")
    sp.add_argument("--limit", type=int, default=1_000_000, help="csv: at most this many rows")


def resolve_run(c: Any, ref: str) -> dict[str, Any]:
    """The run ``ref`` names: its id, else the latest run of that name. Unknown: the error names it
    and lists the latest runs."""
    try:
        return dict(c.call("get_run", {"run_id": ref}))
    except ClientError as exc:
        if "no run" not in str(exc):
            raise
    named = c.call("list_runs", {"name": ref, "limit": 1}) if len(ref) <= 255 else []
    if named:
        return dict(named[0])
    recent = c.call("list_runs", {"limit": 10})
    lines = [f"  {r['run_id']}  ({r['name']}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['created']))})"
             for r in recent]
    raise ClientError(f"no run {ref!r} (neither a run id nor a run name)"
                      + (";  the latest runs:\n" + "\n".join(lines) if lines else "; there are no runs yet")
                      + "\nSee `dtf runs`.")


def fetch_rows(c: Any, what: str, run_id: str | None, limit: int,
               page: Callable[[list[dict[str, Any]], list[str] | None], None]) -> int:
    """Every export_rows page of a selection, handed to ``page(rows, metric_names)`` (names on the
    first page only); returns the number of rows."""
    done = 0
    after = ""
    while done < limit:
        args: dict[str, Any] = {"what": what, "limit": limit - done, "after": after}
        if run_id:
            args["run_id"] = run_id
        got = c.call("export_rows", args, timeout=300.0)
        page(got["rows"], got.get("metric_names"))
        done += len(got["rows"])
        if not got.get("next"):
            break
        after = got["next"]
    return done


def write_csv(c: Any, what: str, run_id: str | None, path: Path, limit: int) -> int:
    from dtf_gui.exports import CSV_WRITERS

    writer = CSV_WRITERS[what]
    with open(path, "w", newline="", encoding="utf-8") as out:
        state: dict[str, Any] = {"header": True, "names": None}

        def page(rows: list[dict[str, Any]], names: list[str] | None) -> None:
            if state["header"] and names is not None:
                state["names"] = names
            extra = {"metric_names": state["names"] or []} if what == "results" else {}
            if rows or state["header"]:
                writer(rows, out, header=state["header"], **extra)
                state["header"] = False

        return fetch_rows(c, what, run_id, limit, page)


def run_junit(c: Any, run: dict[str, Any]) -> bytes:
    """JUnit XML of the final row of each test of the run, as `dtf pytest --junitxml` writes it."""
    from dtf_gui.cli_runs import fetch_tests
    from dtf_gui.exports import junit_xml

    final: dict[str, dict[str, Any]] = {}
    for t in fetch_tests(c, run["run_id"]):
        final[t["test_id"]] = t  # stored order: a rerun's row comes after the first run's
    took = (run["finished"] - run["created"]) if run.get("finished") and run.get("created") else sum(
        float(t.get("duration") or 0) for t in final.values())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run["created"])) if run.get("created") else ""
    return junit_xml(run["run_id"], final.values(), duration=took, timestamp=stamp)


def ensure_gui_platform() -> None:
    """Qt draws the PDF; without a display it draws offscreen. Must run before Qt is imported."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def write_pdf(report: dict[str, Any], path: Path) -> int:
    ensure_gui_platform()
    try:
        from PySide6.QtGui import QGuiApplication

        from dtf_gui.ui.report_pdf import render_run_pdf
    except ImportError as exc:
        raise ClientError(f"a PDF needs Qt (PySide6), which is not installed here ({exc}); install dtf[gui], "
                          "or write --format csv or junit") from None
    app = QGuiApplication.instance() or QGuiApplication([sys.argv[0] if sys.argv else "dtf"])
    pages = render_run_pdf(report, path)
    del app
    return pages


def _writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ClientError(f"{path} is a directory; name a file to write")
    if not parent.is_dir():
        raise ClientError(f"cannot write {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ClientError(f"cannot write {path}: permission denied")


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.output)
    _writable(path)
    with client_for(args) as c:
        run = resolve_run(c, args.run)
        rid = run["run_id"]
        try:
            if args.format == "csv":
                n = write_csv(c, args.what, rid, path, max(1, min(args.limit, 1_000_000)))
                print(f"{n} {args.what} rows of run {rid} written to {path.resolve()}")
            elif args.format == "junit":
                path.write_bytes(run_junit(c, run))
                print(f"JUnit XML of run {rid} written to {path.resolve()}")
            else:
                report = c.call("run_report", {"run_id": rid}, timeout=max(args.timeout_s, 120.0))
                pages = write_pdf(report, path)
                print(f"report of run {rid} ({pages} pages) written to {path.resolve()}")
        except OSError as exc:
            raise ClientError(f"cannot write {path}: {exc.strerror or exc}") from None
    return 0
