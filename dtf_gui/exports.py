"""The file formats of what ran, decided in one place: JUnit XML of a run's tests, CSV of tasks,
results and findings. `dtf results`, `dtf report`, `dtf pytest --junitxml` and the window's
File > Export all write through these, so their files agree.

JUnit is what CI servers (Jenkins, GitLab, GitHub actions) read for test trends; one file holds the
whole run, however many agents ran it, in the shape pytest's own ``--junitxml`` writes.

Client commands import this (and nothing of the coordinator): the standard library and the wire
protocol only.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

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


def first_line(text: str) -> str:
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
            ET.SubElement(tc, "failure", message=kind + first_line(longrepr)).text = longrepr
        elif outcome == "error":
            counts["errors"] += 1
            ET.SubElement(tc, "error", message=first_line(longrepr)).text = longrepr
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


# ---------------------------------------------------------------------------------------------
# CSV: one writer per table, shared by `dtf results`, `dtf report --format csv` and the window.

# The result columns before the metric.<name> columns; `dtf results` has always written the first nine.
RESULT_CSV_COLUMNS: tuple[str, ...] = ("result_id", "task_id", "worker_id", "test_id", "timestamp", "status",
                                       "execution_time", "exit_code", "error", "run_id", "outcome", "attempt")
LEGACY_RESULT_COLUMNS = RESULT_CSV_COLUMNS[:9]
TASK_CSV_COLUMNS: tuple[str, ...] = ("task_id", "type", "status", "priority", "test_id", "run_id", "worker_id",
                                     "create_time", "start_time", "end_time", "duration_s", "attempt", "failures",
                                     "status_reason", "error", "command")
FINDING_CSV_COLUMNS: tuple[str, ...] = ("time", "kind", "metric", "test_id", "worker_id", "direction", "unit",
                                        "value", "score", "expected_low", "expected_high", "mean_before",
                                        "mean_after", "rel_change", "p_value", "detail", "result_id")
_TIME_FIELDS = frozenset({"timestamp", "create_time", "start_time", "end_time", "time"})


def iso_utc(t: Any) -> str:
    """A Unix time as ISO 8601 UTC (``2024-05-01T12:00:00.250Z``); "" for none."""
    if t is None or t == "":
        return ""
    try:
        return datetime.fromtimestamp(float(t), tz=timezone.utc).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return str(t)  # a clock far off the calendar: the raw number rather than nothing


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _write(rows: Iterable[Mapping[str, Any]], out: TextIO, columns: Sequence[str], header: bool,
           iso: bool, extra: Callable[[Mapping[str, Any]], list[Any]] | None = None,
           extra_names: Sequence[str] = ()) -> int:
    w = csv.writer(out)
    if header:
        w.writerow([*columns, *extra_names])
    n = 0
    for r in rows:
        cells = [iso_utc(r.get(c)) if iso and c in _TIME_FIELDS else _cell(r.get(c)) for c in columns]
        w.writerow(cells + (extra(r) if extra else []))
        n += 1
    return n


def write_results_csv(rows: Iterable[Mapping[str, Any]], out: TextIO, *, metric_names: Sequence[str] | None = None,
                      header: bool = True, iso_times: bool = True,
                      columns: Sequence[str] = RESULT_CSV_COLUMNS) -> int:
    """Result rows (list_results / export_rows shape: a ``metrics`` dict) as CSV: ``columns``, then a
    ``metric.<name>`` column per metric (sorted; ``metric_names`` fixes them when rows come in pages).
    Returns the number of rows written."""
    if metric_names is None:
        rows = list(rows)
        metric_names = sorted({k for r in rows for k in (r.get("metrics") or {})})
    names = list(metric_names)

    def metrics(r: Mapping[str, Any]) -> list[Any]:
        m = r.get("metrics") or {}
        return [_cell(m.get(k)) for k in names]

    return _write(rows, out, columns, header, iso_times, metrics, [f"metric.{m}" for m in names])


def write_tasks_csv(rows: Iterable[Mapping[str, Any]], out: TextIO, *, header: bool = True,
                    iso_times: bool = True) -> int:
    """Task rows (export_rows shape) as CSV in TASK_CSV_COLUMNS order."""
    return _write(rows, out, TASK_CSV_COLUMNS, header, iso_times)


def write_findings_csv(rows: Iterable[Mapping[str, Any]], out: TextIO, *, header: bool = True,
                       iso_times: bool = True) -> int:
    """Findings (anomalies and change points, :func:`finding_row` shape) as CSV."""
    return _write(rows, out, FINDING_CSV_COLUMNS, header, iso_times)


CSV_WRITERS: dict[str, Callable[..., int]] = {"tasks": write_tasks_csv, "results": write_results_csv,
                                              "findings": write_findings_csv}


def finding_row(f: Mapping[str, Any]) -> dict[str, Any]:
    """An anomaly, change point or trend (an event's data) flattened for a table: its numbers in columns of
    their own, and a one-line ``detail`` for a reader."""
    series = f.get("series") or {}
    kind = str(f.get("kind") or "")
    if kind == "anomaly":
        detail = f"value {_num(f.get('value'))}, robust z {float(f.get('score') or 0):+.1f}"
        lo, hi = f.get("expected_low"), f.get("expected_high")
        if lo is not None and hi is not None:
            detail += f" (expected {_num(lo)} .. {_num(hi)})"
    elif kind == "trend":
        # A drift has a slope, not two levels.
        rel, n, pv = f.get("rel_slope_per_100"), f.get("n"), f.get("p_value")
        detail = (f"{float(rel) * 100 if isinstance(rel, (int, float)) else 0.0:+.2f}% per 100 results"
                  + (f" over {n} results" if isinstance(n, int) else "")
                  + (f" (Mann-Kendall p={pv:.2g})" if isinstance(pv, (int, float)) else ""))
    else:
        detail = (f"{float(f.get('rel_change') or 0) * 100:+.1f}% ({_num(f.get('mean_before'))} -> "
                  f"{_num(f.get('mean_after'))}), p={float(f.get('p_value') or 0):.2g}")
    return {"time": f.get("timestamp"), "kind": kind, "metric": f.get("metric"),
            "test_id": series.get("test_id"), "worker_id": series.get("worker_id"),
            "direction": f.get("direction"), "unit": f.get("unit") or "",
            **{k: f.get(k) for k in ("value", "score", "expected_low", "expected_high", "mean_before",
                                     "mean_after", "rel_change", "p_value")},
            "detail": detail, "result_id": f.get("result_id")}


def _num(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return "?"
