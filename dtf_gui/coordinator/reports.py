"""The data of reports: a run's report (what the PDF of the window and `dtf report` draws) and the
pages of tasks, results and findings an export writes. Both read through a read-only connection on
a reader thread (see views_api) and are bounded, whatever the size of the run or the database.

The file formats themselves (CSV, JUnit) are dtf_gui/exports.py, which client commands import
without the coordinator.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec

from dtf_agent import protocol as p
from dtf_agent.protocol import FAILING_OUTCOMES
from dtf_gui.exports import finding_row, first_line

# ---------------------------------------------------------------------------------------------
# A run's report: everything the PDF shows, bounded, JSON-able.

# Caps: a run of 100,000 tests makes a report of a few hundred kilobytes, not a gigabyte.
MAX_REPORT_TESTS = 1000       # rows of the pass/fail table (failures first)
MAX_SERIES = 12               # test x metric trend plots
HISTORY_POINTS = 200          # points of each plot, the run's and those before it
MAX_FINDINGS = 300
MAX_WORKERS = 200
RUN_HISTORY = 20              # earlier runs of the same name in the run trend
MAX_ERROR_LINE = 300
# Findings a report and an export list: anomalies, confirmed changes, trends (a change only
# suspected is not a finding a report stands by).
_FINDING_KINDS = ("anomaly", "change_point", "trend")
_KINDS_SQL = "kind IN (" + ", ".join(f"'{k}'" for k in _FINDING_KINDS) + ")"
# Findings come from the analysis a little after their results land: a run's findings are looked
# for up to this long after it finished.
_FINDING_LAG_S = 3600.0
MAX_SERIES_CHANGES = 50       # change points drawn on one plot (the newest)


def _failing(outcome: str | None) -> bool:
    return outcome in FAILING_OUTCOMES or outcome == "failure"


# Order of the pass/fail table: what needs reading first.
_OUTCOME_RANK = {"crashed": 0, "failed": 1, "error": 2, "failure": 3, "flaky": 4, "xpassed": 5, "partial": 6,
                 "skipped": 7, "xfailed": 8, "passed": 9, "success": 10}


def counts_line(counts: Mapping[str, int]) -> str:
    """``13 passed, 1 failed, 2 skipped``: pytest's order, then the rest by size."""
    order = ["failed", "passed", "error", "crashed", "flaky", "skipped", "xfailed", "xpassed", "success", "failure"]
    keys = [k for k in order if counts.get(k)] + sorted((k for k in counts if k not in order and counts[k]),
                                                        key=lambda k: -counts[k])
    return ", ".join(f"{counts[k]} {k}" for k in keys) or "no tests"


def pass_rate(counts: Mapping[str, int]) -> float | None:
    """Passing over passing + failing (skips and expected failures count for neither); None if none ran."""
    good = sum(counts.get(k, 0) for k in ("passed", "flaky", "xpassed", "success"))
    bad = sum(n for k, n in counts.items() if _failing(k))
    return good / (good + bad) if good + bad else None


def _run_row(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT run_id, name, kind, created, finished, status, meta, summary FROM runs "
                       "WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise ValueError(f"no run {run_id!r}; see `dtf runs`")
    out = dict(zip(("run_id", "name", "kind", "created", "finished", "status", "meta", "summary"), tuple(row),
                   strict=True))
    for key in ("meta", "summary"):
        out[key] = _json(out[key]) or {}
    return out


def _json(text: Any) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _test_counts(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
    """Each test once, with its last stored row's outcome (a rerun's row comes after the first run's)."""
    return {str(k): int(n) for k, n in conn.execute(
        "SELECT outcome, count(*) FROM (SELECT outcome, max(rowid) FROM results WHERE run_id=? "
        "AND outcome IS NOT NULL GROUP BY test_id) GROUP BY 1", (run_id,))}


def _result_counts(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
    """The run's tasks (rows without a test outcome) by the status of their last result (a retry's
    row comes after the attempt it retried)."""
    return {str(k): int(n) for k, n in conn.execute(
        "SELECT status, count(*) FROM (SELECT status, max(rowid) FROM results WHERE run_id=? "
        "AND outcome IS NULL GROUP BY task_id) GROUP BY 1", (run_id,))}


def _error_line(text: str | None) -> str:
    """What a failure says in one line: pytest's first "E" line (the exception and its message),
    else the last line that names an error."""
    if not text:
        return ""
    for line in text.splitlines():
        if line.startswith("E "):
            return line[1:].strip()[:MAX_ERROR_LINE]
    return first_line(text)[:MAX_ERROR_LINE]


def _test_table(conn: sqlite3.Connection, run_id: str, per_test: bool) -> list[dict[str, Any]]:
    """The last row of each test (of each task, for a run of plain tasks), failures first, capped."""
    rank = " ".join(f"WHEN '{k}' THEN {v}" for k, v in _OUTCOME_RANK.items())
    if per_test:
        inner = ("SELECT test_id AS key, max(rowid) AS last, count(*) AS n FROM results WHERE run_id=? "
                 "AND outcome IS NOT NULL GROUP BY test_id")
        shown = "r.outcome"
    else:
        inner = ("SELECT task_id AS key, max(rowid) AS last, count(*) AS n FROM results WHERE run_id=? "
                 "AND outcome IS NULL GROUP BY task_id")
        shown = "r.status"
    sql = (f"SELECT r.test_id, r.task_id, {shown}, r.execution_time, r.worker_id, r.timestamp, g.n, "
           f"substr(r.error, -4000) FROM ({inner}) g JOIN results r ON r.rowid = g.last "
           f"ORDER BY CASE {shown} {rank} ELSE 99 END, r.test_id, r.task_id LIMIT ?")
    out = []
    for test_id, task_id, outcome, duration, worker, ts, n, error in conn.execute(sql, (run_id, MAX_REPORT_TESTS)):
        out.append({"test_id": test_id or "", "task_id": task_id, "outcome": outcome, "duration": duration,
                    "worker_id": worker, "timestamp": ts, "runs": n, "error": _error_line(error)})
    return out


def _count_tasks(conn: sqlite3.Connection, run_id: str) -> int:
    return int(conn.execute("SELECT count(DISTINCT task_id) FROM results WHERE run_id=? AND outcome IS NULL",
                            (run_id,)).fetchone()[0])


def _metric_meta(conn: sqlite3.Connection, names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Declared (unit, direction) of these metrics ("" where not declared)."""
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        row = conn.execute("SELECT unit, direction FROM metric_meta WHERE name = ?", (name,)).fetchone()
        out[name] = (str(row[0] or ""), str(row[1] or "")) if row else ("", "")
    return out


def _series(conn: sqlite3.Connection, run_id: str, run_end: float,
            flagged: set[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[list[str]], int]:
    """The run's test x metric series (flagged ones first, then the longest), each with its history
    before the run: at most HISTORY_POINTS points, the newest. Also the result ids of each series'
    points (where its change points are looked for), and how many series were left out."""
    pairs = [(str(t or ""), str(m), int(n)) for t, m, n in conn.execute(
        "SELECT r.test_id, m.name, count(*) FROM results r JOIN metrics m ON m.result_id = r.result_id "
        "WHERE r.run_id = ? AND m.value IS NOT NULL GROUP BY 1, 2", (run_id,))]
    pairs.sort(key=lambda p: ((p[0], p[1]) not in flagged, -p[2], p[0], p[1]))
    chosen = pairs[:MAX_SERIES]
    meta = _metric_meta(conn, {m for _, m, _ in chosen})
    out = []
    ids: list[list[str]] = []
    for test_id, metric, n in chosen:
        rows = conn.execute(
            "SELECT r.timestamp, m.value, r.run_id = ?, r.result_id FROM results r "
            "JOIN metrics m ON m.result_id = r.result_id AND m.name = ? "
            "WHERE r.test_id = ? AND r.timestamp <= ? AND m.value IS NOT NULL "
            "ORDER BY r.timestamp DESC LIMIT ?", (run_id, metric, test_id, run_end, HISTORY_POINTS)).fetchall()
        rows.reverse()
        points = [[float(t), float(v)] for t, v, _, _ in rows if t is not None and math.isfinite(v)]
        mine = [float(t) for t, v, own, _ in rows if own and t is not None]
        ids.append([str(rid) for _, _, _, rid in rows])
        unit, direction = meta[metric]
        out.append({"test_id": test_id, "metric": metric, "unit": unit, "direction": direction,
                    "points": points, "run_points": n, "run_span": [min(mine), max(mine)] if mine else None,
                    "change_points": []})
    return out, ids, max(0, len(pairs) - len(chosen))


# Findings of a run: events whose subject (a finding's result id) is one of the run's results. The
# filter is SQL's, so neither the run's result ids nor other runs' findings come into Python.
_RUN_FINDINGS = (f"FROM events WHERE {_KINDS_SQL} AND time BETWEEN ? AND ? "
                 "AND subject IN (SELECT result_id FROM results WHERE run_id = ?)")


def _json_field(path: str) -> str:
    # json_extract fails the whole query on one malformed row; such a row reads as NULL instead.
    return f"CASE WHEN json_valid(data) THEN json_extract(data, '{path}') END"


def _finding(found: float, kind: str, subject: str, data: str | None) -> dict[str, Any] | None:
    d = _json(data)
    if not isinstance(d, dict):
        return None
    return {**d, "kind": kind, "result_id": d.get("result_id") or subject, "found": found}


def _run_findings(conn: sqlite3.Connection, run_id: str, lo: float,
                  hi: float) -> tuple[list[dict[str, Any]], int, set[tuple[str, str]]]:
    """The run's newest MAX_FINDINGS findings (oldest of them first), how many it has in all, and
    the (test_id, metric) series they are about."""
    window = (lo, hi, run_id)
    total = 0
    flagged: set[tuple[str, str]] = set()
    for test_id, metric, n in conn.execute(
            f"SELECT {_json_field('$.series.test_id')}, {_json_field('$.metric')}, count(*) "
            f"{_RUN_FINDINGS} GROUP BY 1, 2", window):
        total += int(n)
        flagged.add((str(test_id or ""), str(metric)))
    rows = conn.execute(f"SELECT time, kind, subject, data {_RUN_FINDINGS} ORDER BY id DESC LIMIT ?",
                        (*window, MAX_FINDINGS)).fetchall()
    found = [f for f in (_finding(*r) for r in reversed(rows)) if f is not None]
    return found, total, flagged


def _change_points(conn: sqlite3.Connection, series: dict[str, Any], result_ids: Sequence[str], lo: float,
                   hi: float) -> None:
    """Fill ``series["change_points"]`` with the newest change points found on ``result_ids`` (its
    plotted points) for its metric, at most MAX_SERIES_CHANGES, oldest first."""
    if not result_ids:
        return
    marks = ",".join("?" * len(result_ids))
    rows = conn.execute(
        "SELECT time, kind, subject, data FROM events WHERE kind = 'change_point' AND time BETWEEN ? AND ? "
        f"AND subject IN ({marks}) AND {_json_field('$.metric')} = ? ORDER BY id DESC LIMIT ?",
        (lo, hi, *result_ids, series["metric"], MAX_SERIES_CHANGES)).fetchall()
    for f in (_finding(*r) for r in reversed(rows)):
        if f is None:
            continue
        series["change_points"].append({k: f.get(k) for k in ("timestamp", "mean_before", "mean_after", "rel_change",
                                                               "p_value", "direction", "result_id")}
                                        | {"worker_id": (f.get("series") or {}).get("worker_id")})
        if not series["unit"] and f.get("unit"):
            series["unit"] = str(f["unit"])
    series["change_points"].sort(key=lambda c: c["timestamp"] if isinstance(c["timestamp"], (int, float)) else 0.0)


def _workers(conn: sqlite3.Connection, run_id: str) -> tuple[list[dict[str, Any]], int]:
    from dtf_gui.coordinator.records import hardware_line  # light, but only the coordinator needs it

    marks = ",".join("?" * len(FAILING_OUTCOMES))
    per = conn.execute(
        f"SELECT worker_id, count(DISTINCT task_id), sum(outcome IS NOT NULL), "
        f"sum(CASE WHEN outcome IS NULL THEN status = 'failure' ELSE outcome IN ({marks}) END), "
        f"sum(execution_time) FROM results WHERE run_id = ? GROUP BY worker_id ORDER BY 2 DESC, 1",
        (*sorted(FAILING_OUTCOMES), run_id)).fetchall()
    out = []
    for worker_id, tasks, tests, failures, busy in per[:MAX_WORKERS]:
        w = conn.execute("SELECT hostname, status, capabilities, tags FROM workers WHERE worker_id = ?",
                         (worker_id,)).fetchone()
        caps = (_json(w[2]) if w else None) or {}
        tags = (_json(w[3]) if w else None) or []
        out.append({"worker_id": worker_id or "", "host": (w[0] if w else "") or "", "status": (w[1] if w else "") or "",
                    "hardware": hardware_line(caps) if isinstance(caps, dict) else "",
                    "tags": [str(t) for t in tags][:20] if isinstance(tags, list) else [],
                    "tasks": int(tasks or 0), "tests": int(tests or 0), "failures": int(failures or 0),
                    "busy_s": float(busy or 0.0)})
    return out, max(0, len(per) - MAX_WORKERS)


def _run_history(conn: sqlite3.Connection, run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """This run and the runs of its name before it (oldest first): the run trend."""
    rows = conn.execute("SELECT run_id, created, finished, status FROM runs WHERE name = ? AND created <= ? "
                        "ORDER BY created DESC LIMIT ?", (run["name"], run["created"] or 0, RUN_HISTORY)).fetchall()
    out = []
    for rid, created, finished, status in reversed(rows):
        counts = _test_counts(conn, rid) or _result_counts(conn, rid)
        out.append({"run_id": rid, "created": created, "finished": finished, "status": status,
                    "counts": counts, "pass_rate": pass_rate(counts),
                    "duration_s": (finished - created) if finished and created else None})
    return out


def run_report(conn: sqlite3.Connection, run_id: str, *, now: float | None = None) -> dict[str, Any]:
    """What a run's report shows (see module doc), from a read-only connection. Every list is capped;
    ``*_more`` says how many were left out. An unknown run raises ValueError."""
    now = time.time() if now is None else now
    run = _run_row(conn, run_id)
    tests = _test_counts(conn, run_id)
    results = _result_counts(conn, run_id)
    per_test = bool(tests)
    counts = tests if per_test else results
    total = sum(counts.values())
    table = _test_table(conn, run_id, per_test)
    first_last = conn.execute("SELECT min(timestamp), max(timestamp) FROM results WHERE run_id = ?",
                              (run_id,)).fetchone()
    run_end = max(x for x in (run["finished"], first_last[1], run["created"], 0.0) if x is not None)
    run_start = min(x for x in (run["created"], first_last[0], run_end) if x is not None)

    # Findings of the run: those about its results, found while it ran or a little after.
    mine, findings_total, flagged = _run_findings(conn, run_id, run_start - 60.0, run_end + _FINDING_LAG_S)
    series, point_ids, series_more = _series(conn, run_id, run_end, flagged)
    for s, ids in zip(series, point_ids, strict=True):
        # Change points of each plot, over its whole history (those found on its points).
        first = s["points"][0][0] if s["points"] else run_start
        _change_points(conn, s, ids, first - 60.0, run_end + _FINDING_LAG_S)
    workers, workers_more = _workers(conn, run_id)
    findings = [finding_row(f) for f in mine]
    return {
        "run": run,
        "counts": counts,
        "counts_line": counts_line(counts),
        "per_test": per_test,
        "tests_total": total,
        "pass_rate": pass_rate(counts),
        "failures": sum(n for k, n in counts.items() if _failing(k)),
        "results": results,
        "span": [run_start, run_end],
        "tests": table,
        "tests_more": max(0, (total if per_test else _count_tasks(conn, run_id)) - len(table)),
        "series": series,
        "series_more": series_more,
        "findings": findings,
        "findings_more": max(0, findings_total - len(findings)),
        "workers": workers,
        "workers_more": workers_more,
        "history": _run_history(conn, run) if run["name"] else [],
        "generated_at": now,
    }


# ---------------------------------------------------------------------------------------------
# Client operations.

PAGE_BYTES = 6 * 1024 * 1024  # of an export_rows page: well inside the server's message size
PAGE_ROWS = 20_000
MAX_EXPORT = 1_000_000
MAX_METRIC_COLUMNS = 1000
_TASK_SQL_COLUMNS = ("task_id", "type", "status", "priority", "test_id", "metadata", "worker_id", "create_time",
                     "start_time", "end_time", "attempt", "failures", "status_reason", "error", "parameters")
_RESULT_SQL_COLUMNS = ("result_id", "task_id", "worker_id", "test_id", "timestamp", "status", "execution_time",
                       "exit_code", "error", "run_id", "outcome", "attempt", "metrics")


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RunReportArgs(_Args):
    run_id: p.Id


class ExportRowsArgs(_Args):
    what: Literal["tasks", "results", "findings"]
    run_id: p.Id | None = None
    # Only rows from this Unix time on (tasks by submit time, results by end time, findings by when found).
    since: Annotated[float, msgspec.Meta(ge=0, le=1e11)] | None = None
    # Rows wanted in all, across pages: a page holds at most PAGE_ROWS of them.
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPORT)] = 100_000
    # Where the previous page ended ("next" of its reply); "" for the first page.
    after: Annotated[str, msgspec.Meta(max_length=p.MAX_ID + 64)] = ""


_MAX_ROWID = 2**63 - 1


def _cursor_error(after: str) -> ValueError:
    return ValueError(f"export_rows: after={after[:40]!r} is not a cursor this coordinator gave; "
                      "pass the \"next\" of the previous page, or \"\" for the first")


def _cursor_json(after: str) -> Any:
    try:
        return json.loads(after)
    except ValueError:
        raise _cursor_error(after) from None


def _id_cursor(after: str) -> int:
    """The rowid / event id a results or findings page ended at (0 for the first page)."""
    if not after:
        return 0
    value = _cursor_json(after)
    # bool is an int to Python, but never a cursor this module wrote.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ROWID:
        raise _cursor_error(after)
    return value


def _task_cursor(after: str) -> tuple[float, str] | None:
    """The (create_time, task_id) a tasks page ended at (None for the first page)."""
    if not after:
        return None
    value = _cursor_json(after)
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)
            and isinstance(value[0], (int, float)) and not isinstance(value[0], bool)
            and math.isfinite(value[0])):
        raise _cursor_error(after)
    return float(value[0]), value[1]


def _task_row(r: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(_TASK_SQL_COLUMNS, r, strict=True))
    meta = _json(d.pop("metadata")) or {}
    params = _json(d.pop("parameters")) or {}
    command = params.get("command") if isinstance(params, dict) else None
    d["run_id"] = meta.get("run") if isinstance(meta, dict) else None
    d["command"] = " ".join(map(str, command)) if isinstance(command, list) else command
    d["duration_s"] = (d["end_time"] - d["start_time"]) if d["end_time"] and d["start_time"] else None
    return d


def export_rows(conn: sqlite3.Connection, a: ExportRowsArgs) -> dict[str, Any]:
    """One page of the rows ``a`` selects, oldest first: ``{"rows", "next", "metric_names", "total"}``.
    ``next`` is the cursor of the following page (None at the end); on the first page,
    ``metric_names`` (results) are the metric columns of the whole selection and ``total`` how many
    rows the export will have (at most ``a.limit``: what a progress bar counts to). A page ends early
    past PAGE_BYTES."""
    want = min(a.limit, PAGE_ROWS)
    where: list[str] = []
    params: list[Any] = []
    out: dict[str, Any] = {"rows": [], "next": None}
    if a.what == "tasks":
        if a.run_id is not None:
            # A run's tasks carry it in their metadata; none is older than the run (the index bounds the scan).
            created = _run_row(conn, a.run_id)["created"] or 0.0
            where += ["create_time >= ?", "json_extract(metadata, '$.run') = ?"]
            params += [created - 1.0, a.run_id]
        if a.since is not None:
            where.append("create_time >= ?")
            params.append(a.since)
        if not a.after:
            out["total"] = _count(conn, "tasks", where, params, a.limit)
        last = _task_cursor(a.after)
        if last is not None:
            where.append("(create_time, task_id) > (?, ?)")
            params += [last[0], last[1]]
        sql = (f"SELECT {','.join(_TASK_SQL_COLUMNS)} FROM tasks {_where(where)} "
               "ORDER BY create_time, task_id LIMIT ?")
        rows = conn.execute(sql, (*params, want)).fetchall()
        convert: Callable[[Sequence[Any]], dict[str, Any]] = _task_row

        def key(r: Sequence[Any]) -> Any:
            return [r[7], r[0]]
    elif a.what == "results":
        if a.run_id is not None:
            _run_row(conn, a.run_id)
            where.append("run_id = ?")
            params.append(a.run_id)
        if a.since is not None:
            where.append("timestamp >= ?")
            params.append(a.since)
        if not a.after:
            names_sql = ("SELECT DISTINCT name FROM metrics ORDER BY 1 LIMIT ?" if not where else
                         f"SELECT DISTINCT m.name FROM results r JOIN metrics m ON m.result_id = r.result_id "
                         f"{_where(['r.' + w for w in where])} ORDER BY 1 LIMIT ?")
            out["metric_names"] = [str(r[0]) for r in conn.execute(names_sql, (*params, MAX_METRIC_COLUMNS))]
            out["total"] = _count(conn, "results", where, params, a.limit)
        where.append("rowid > ?")
        params.append(_id_cursor(a.after))
        sql = (f"SELECT {','.join(_RESULT_SQL_COLUMNS)}, rowid FROM results {_where(where)} ORDER BY rowid LIMIT ?")
        rows = conn.execute(sql, (*params, want)).fetchall()

        def convert(r: Sequence[Any]) -> dict[str, Any]:
            d = dict(zip(_RESULT_SQL_COLUMNS, r[:-1], strict=True))
            d["metrics"] = _json(d["metrics"]) or {}
            return d

        def key(r: Sequence[Any]) -> Any:
            return r[-1]
    else:
        where.append(_KINDS_SQL)
        if a.run_id is not None:
            _run_row(conn, a.run_id)
            where.append("subject IN (SELECT result_id FROM results WHERE run_id = ?)")
            params.append(a.run_id)
        if a.since is not None:
            where.append("time >= ?")
            params.append(a.since)
        if not a.after:
            out["total"] = _count(conn, "events", where, params, a.limit)
        where.append("id > ?")
        params.append(_id_cursor(a.after))
        rows = conn.execute(f"SELECT id, time, kind, subject, data FROM events {_where(where)} ORDER BY id LIMIT ?",
                            (*params, want)).fetchall()

        def convert(r: Sequence[Any]) -> dict[str, Any]:
            d = _json(r[4])
            d = d if isinstance(d, dict) else {}
            row = finding_row({**d, "kind": r[2], "result_id": d.get("result_id") or r[3]})
            row["found"] = r[1]
            return row

        def key(r: Sequence[Any]) -> Any:
            return r[0]
    size = 0
    for r in rows:
        row = convert(r)
        out["rows"].append(row)
        size += sum(len(v) if isinstance(v, str) else 16 for v in row.values()) + 64
        if row.get("metrics"):
            size += len(json.dumps(row["metrics"]))
        if size > PAGE_BYTES:
            break
    n = len(out["rows"])
    if n and (n < len(rows) or len(rows) == want) and n < a.limit:
        out["next"] = json.dumps(key(rows[n - 1]))
    return out


def _count(conn: sqlite3.Connection, table: str, where: Sequence[str], params: Sequence[Any], limit: int) -> int:
    """Rows of the selection, counted up to ``limit`` (the inner LIMIT stops the count there)."""
    sql = f"SELECT count(*) FROM (SELECT 1 FROM {table} {_where(where)} LIMIT ?)"
    return int(conn.execute(sql, (*params, limit)).fetchone()[0])


def _where(parts: Sequence[str]) -> str:
    return ("WHERE " + " AND ".join(parts)) if parts else ""


def ops(conn: Callable[[], sqlite3.Connection]) -> dict[str, tuple[type[Any], Callable[[Any], Any]]]:
    """The report operations (run_report, export_rows), read through ``conn`` (see views_api)."""
    return {
        "run_report": (RunReportArgs, lambda a: run_report(conn(), a.run_id)),
        "export_rows": (ExportRowsArgs, lambda a: export_rows(conn(), a)),
    }
