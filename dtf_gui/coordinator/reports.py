"""Reports built from a run's rows (no I/O of their own): JUnit XML of per-test outcomes.

JUnit is what CI servers (Jenkins, GitLab, GitHub actions) read for test trends; one file holds the
whole run, however many agents ran it, in the shape pytest's own ``--junitxml`` writes.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# A character XML 1.0 cannot hold (control characters from a test's output) becomes U+FFFD.
_BAD_XML = {c: "\ufffd" for c in [*range(0, 9), 11, 12, *range(14, 32)]}


def _clean(text: str) -> str:
    return text.translate(_BAD_XML)


def split_nodeid(nodeid: str) -> tuple[str, str]:
    """pytest's classname and name for a node id: ``tests/test_a.py::TestB::test_c[x]`` is
    ``("tests.test_a.TestB", "test_c[x]")``."""
    # A parameter id may hold "::" itself (test_p[a::b]): split only what comes before the "[".
    head, bracket, params = nodeid.partition("[")
    parts = head.split("::")
    parts[-1] += bracket + params
    path = parts[0]
    module = path[:-3] if path.endswith(".py") else path
    module = module.replace("/", ".").replace("\\", ".")
    if len(parts) == 1:
        return module, path
    return ".".join([module, *parts[1:-1]]), parts[-1]


def _first_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("E ") or "Error" in line:
            return line.removeprefix("E").strip()[:500]
    lines = text.strip().splitlines()
    return lines[-1][:500] if lines else ""


def junit_xml(suite: str, tests: Iterable[Mapping[str, Any]], *, duration: float, timestamp: str = "",
              hostname: str = "") -> bytes:
    """One <testsuite> of the final outcome of each test (dicts with test_id/nodeid, outcome, duration,
    longrepr, output, worker_id)."""
    cases = list(tests)
    counts = {"failures": 0, "errors": 0, "skipped": 0}
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), time=f"{duration:.3f}")
    if timestamp:
        ts.set("timestamp", timestamp)
    if hostname:
        ts.set("hostname", hostname)
    for t in cases:
        nodeid = str(t.get("test_id") or t.get("nodeid") or "")
        classname, name = split_nodeid(nodeid)
        tc = ET.SubElement(ts, "testcase", classname=classname, name=name, time=f"{float(t.get('duration') or 0):.3f}")
        if t.get("worker_id"):
            props = ET.SubElement(tc, "properties")
            ET.SubElement(props, "property", name="dtf_worker", value=str(t["worker_id"]))
        outcome = t.get("outcome")
        longrepr = _clean(str(t.get("longrepr") or ""))
        if outcome in ("failed", "crashed"):
            counts["failures"] += 1
            kind = "crashed: " if outcome == "crashed" else ""
            ET.SubElement(tc, "failure", message=kind + _first_line(longrepr)).text = longrepr
        elif outcome == "error":
            counts["errors"] += 1
            ET.SubElement(tc, "error", message=_first_line(longrepr)).text = longrepr
        elif outcome in ("skipped", "xfailed"):
            counts["skipped"] += 1
            msg = longrepr.strip().splitlines()[-1][:500] if longrepr.strip() else outcome
            ET.SubElement(tc, "skipped", type="pytest.xfail" if outcome == "xfailed" else "pytest.skip",
                          message=msg).text = longrepr or None
        elif outcome == "flaky":
            found = tc.find("properties")
            props = ET.SubElement(tc, "properties") if found is None else found
            ET.SubElement(props, "property", name="dtf_flaky", value="failed, then passed when run again")
        output = _clean(str(t.get("output") or ""))
        if output:
            ET.SubElement(tc, "system-out").text = output
    for key, n in counts.items():
        ts.set(key, str(n))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def ops(conn: Callable[[], sqlite3.Connection]) -> dict[str, tuple[type[Any], Callable[[Any], Any]]]:
    """The report operations (run_report, export_rows), read through ``conn`` (see views_api)."""
    return {}
