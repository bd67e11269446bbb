"""A pytest plugin that reports a shard's tests to the agent, one JSON line per event.

Loaded into the shard's own pytest process (``-p``), which may be another interpreter in another
virtual environment: it imports nothing but the standard library and pytest, and keeps to syntax
and hooks that pytest 7 already has.

``--dtf-tests=FILE`` keeps exactly the node ids listed in FILE (one a line), in that order, and
reports the listed ids that were not collected. ``--dtf-report=FILE`` receives the events::

    {"e": "start", "nodeid": ..., "time": epoch seconds}
    {"e": "done", "nodeid": ..., "outcome": ..., "duration": ..., "longrepr": ..., "output": ...}
        outcome: passed | failed | skipped | error | xfailed | xpassed, or crashed (an xdist
        worker died while running the test)
    {"e": "missing", "nodeid": ...}
    {"e": "collect_error", "nodeid": ..., "longrepr": ...}
    {"e": "collect_skip", "nodeid": ..., "longrepr": ...}
    {"e": "finish", "exitstatus": N}

Each line goes to the file in one ``write`` on an O_APPEND descriptor, unbuffered: a test that
kills the process loses nothing already reported, and xdist workers appending to the same file
never interleave inside a line.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

# Bound on a longrepr or an output, in UTF-8 bytes; the runner bounds the whole list again.
MAX_FIELD = 16 * 1024
_PHASES = ("setup", "call", "teardown")


def bound(text: str, limit: int = MAX_FIELD) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, keeping its head and its tail (where a
    traceback says what went wrong). Lone surrogates (undecodable output) become '?', so the text
    always encodes."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    marker = f"\n[... cut in the middle: {len(data)} bytes in all ...]\n".encode()
    if limit <= 2 * len(marker):
        return data[:limit].decode("utf-8", "ignore")
    keep = limit - len(marker)
    head, tail = data[: keep // 2], data[len(data) - (keep - keep // 2):]
    # errors="ignore" drops a character split at either cut, never more.
    return head.decode("utf-8", "ignore") + marker.decode() + tail.decode("utf-8", "ignore")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dtf", "DTF shard reporting")
    group.addoption("--dtf-report", dest="dtf_report", default=None, metavar="FILE",
                    help="write one JSON line per test event to FILE")
    group.addoption("--dtf-tests", dest="dtf_tests", default=None, metavar="FILE",
                    help="run exactly the node ids listed in FILE, in that order")
    group.addoption("--dtf-collect", dest="dtf_collect", default=None, metavar="FILE",
                    help="write what was collected to FILE as JSON: rootdir, args, node ids (for `dtf pytest`)")


def pytest_configure(config: pytest.Config) -> None:
    report = config.getoption("dtf_report")
    tests = config.getoption("dtf_tests")
    if report or tests:
        config.pluginmanager.register(_Reporter(config, report, tests), "dtf_reporter")
    collect = config.getoption("dtf_collect")
    if collect:
        config.pluginmanager.register(_Collected(collect), "dtf_collected")


class _Collected:
    """What `dtf pytest` needs to know of a collection, whatever -q/-v or addopts do to pytest's output:
    the node ids, the rootdir they are relative to, and the arguments that chose them."""

    def __init__(self, path: str) -> None:
        self.path = path

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        config = session.config
        data = {"rootdir": str(config.rootpath), "args": [str(a) for a in config.args],
                "invocation_dir": str(config.invocation_params.dir),
                "nodeids": [item.nodeid for item in session.items],
                "errors": int(getattr(session, "testsfailed", 0) or 0)}
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)


class _Reporter:
    def __init__(self, config: pytest.Config, report: str | None, tests: str | None) -> None:
        # An xdist worker collects (so it filters), but the controller sees every test's start and
        # reports (forwarded by xdist): only the controller writes those, or each would appear twice.
        self.worker = hasattr(config, "workerinput")
        self.config = config
        self.benchmarks_sent = 0
        self.fd: int | None = None
        if report:
            self.fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.wanted: list[str] | None = None
        if tests:
            with open(tests, encoding="utf-8") as fh:
                # dict: the first of a repeated id keeps its place.
                self.wanted = list(dict.fromkeys(line.rstrip("\r\n") for line in fh if line.strip()))
        self.phases: dict[str, dict[str, Any]] = {}
        self.done: set[str] = set()

    def _emit(self, event: dict[str, Any]) -> None:
        if self.fd is None:
            return
        data = (json.dumps(event) + "\n").encode("utf-8")
        while data:
            written = os.write(self.fd, data)
            data = data[written:]

    # -- collection ---------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        # First: the listed ids are picked from everything collected, so "missing" means "not
        # collected"; -k, -m or a reordering plugin given in the shard's args still act after.
        if self.wanted is None:
            return
        by_id: dict[str, pytest.Item] = {}
        for item in items:
            by_id.setdefault(item.nodeid, item)
        kept = [by_id[nid] for nid in self.wanted if nid in by_id]
        kept_ids = {id(item) for item in kept}
        deselected = [item for item in items if id(item) not in kept_ids]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = kept
        for nid in self.wanted:
            if nid not in by_id:
                self._emit({"e": "missing", "nodeid": nid})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if self.worker:
            return
        if report.failed:
            self._emit({"e": "collect_error", "nodeid": report.nodeid, "longrepr": bound(str(report.longrepr))})
        elif report.skipped:
            # A module-level skip (pytest.importorskip, skip(allow_module_level=True)): its tests
            # are skipped, not missing.
            self._emit({"e": "collect_skip", "nodeid": report.nodeid, "longrepr": bound(_skip_reason(report))})

    # -- running ------------------------------------------------------------------------------

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if self.worker:
            return
        self.phases.pop(nodeid, None)
        self.done.discard(nodeid)
        # The time lets the runner give a test that killed the process a duration.
        self._emit({"e": "start", "nodeid": nodeid, "time": time.time()})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.worker:
            return
        # pytest-rerunfailures marks a failed attempt that will be retried; it does not count.
        if getattr(report, "outcome", "") == "rerun":
            self.phases.pop(report.nodeid, None)
            return
        self.phases.setdefault(report.nodeid, {})[report.when or "?"] = report
        if report.when not in _PHASES:
            # xdist's report for a test whose worker crashed ("???"): no logfinish follows it.
            self._finish(report.nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        if not self.worker:
            self._finish(nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.worker:
            return
        for nodeid in list(self.phases):  # reported but never finished: say what is known
            self._finish(nodeid)
        self._benchmarks()
        self._emit({"e": "finish", "exitstatus": int(exitstatus)})

    def _benchmarks(self) -> None:
        """pytest-benchmark's measurements, when it is installed and measured: its stats become the
        metrics of each benchmark's test. Sent as each test finishes (a later test may kill the
        session). Read from its session object, whose shape may change between its releases:
        anything unexpected is skipped, never fatal to the report."""
        bench = getattr(self.config, "_benchmarksession", None)
        new = (getattr(bench, "benchmarks", None) or [])[self.benchmarks_sent:]
        self.benchmarks_sent += len(new)
        for b in new:
            try:
                d = b.as_dict(include_data=False)
                self._emit({"e": "bench", "nodeid": str(d.get("fullname") or b.fullname), "stats": d.get("stats"),
                            "extra_info": d.get("extra_info") or {}})
            except Exception:  # noqa: BLE001 - a benchmark we cannot read is left out, the rest go on
                continue

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _finish(self, nodeid: str) -> None:
        phases = self.phases.pop(nodeid, None)
        if not phases or nodeid in self.done:
            return
        self._benchmarks()
        self.done.add(nodeid)
        self._emit(dict(e="done", nodeid=nodeid, **summarise(phases)))


# How a report says that a test's teardown errored besides its own outcome: pytest counts such a test
# twice in its summary line (1 failed, 1 error; 1 passed, 1 error), and `dtf pytest` does the same.
# pytest_run.py holds the same two strings (this file is copied alone into the shard's environment).
TEARDOWN_AFTER_FAILURE = "\n\n--- error in teardown ---\n"
TEARDOWN_AFTER_PASS = "--- error in teardown; the test itself passed ---\n"


def summarise(phases: dict[str, Any]) -> dict[str, Any]:
    """One test's outcome from the reports of its phases, as pytest's terminal would count it."""
    setup, call, teardown = (phases.get(when) for when in _PHASES)
    others = [r for when, r in phases.items() if when not in _PHASES]
    duration = sum(float(getattr(r, "duration", 0.0) or 0.0) for r in phases.values())
    longrepr = ""
    if others and any(r.failed for r in others):
        # Only xdist makes such a report, for a test whose worker process died under it.
        outcome = "crashed"
        longrepr = "\n\n".join(str(r.longrepr) for r in others if r.failed)
    elif setup is not None and setup.failed:
        outcome, longrepr = "error", str(setup.longrepr)
    elif call is not None and call.failed:
        # A strict xfail that passed is a failed call too ("[XPASS(strict)] ..."), as pytest has it.
        outcome, longrepr = "failed", str(call.longrepr)
        if teardown is not None and teardown.failed:
            longrepr += TEARDOWN_AFTER_FAILURE + str(teardown.longrepr)
    elif teardown is not None and teardown.failed:
        passed = call is not None and call.passed
        outcome, longrepr = "error", (TEARDOWN_AFTER_PASS if passed else "") + str(teardown.longrepr)
    else:
        outcome, longrepr = _passed_or_skipped(call if call is not None else setup)
    output = ""
    if outcome in ("failed", "error"):
        sections: dict[str, str] = {}
        for report in phases.values():
            # Each phase's report repeats the sections of the phases before it: keyed by title
            # ("Captured stdout call"), each appears once.
            for title, content in getattr(report, "sections", ()):
                sections[title] = content
        output = "\n".join(f"----- {title} -----\n{content}" for title, content in sections.items())
    return {"outcome": outcome, "duration": max(0.0, duration), "longrepr": bound(longrepr),
            "output": bound(output)}


def _passed_or_skipped(report: Any) -> tuple[str, str]:
    if report is None:
        return "error", "pytest reported no phase of this test"
    wasxfail = getattr(report, "wasxfail", None)
    if report.skipped:
        if wasxfail is not None:
            reason = str(wasxfail)
            detail = str(report.longrepr) if report.longrepr is not None else ""
            return "xfailed", f"{reason}\n\n{detail}" if reason and detail else reason or detail
        return "skipped", _skip_reason(report)
    if wasxfail is not None:
        return "xpassed", str(wasxfail)
    return "passed", ""


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])  # (path, line, "Skipped: reason")
    return "" if longrepr is None else str(longrepr)
