"""The results explorer's reads: which test x metric series exist, and one series with its findings.

Both run on the analysis thread through its read-only connection (views_api). The database may
hold millions of results, so every query is bounded by an index or a window:

* ``series_catalog`` groups only the newest :data:`CATALOG_WINDOW` results (by rowid, i.e. the
  order they were stored): a GROUP BY over the whole results x metrics join costs seconds on a
  million results, the window a fraction of that. A series whose last result is older than the
  window is not listed (its ``count`` is the count inside the window); ``metric_series`` still
  reads it by name.
* ``metric_series`` walks the results index (test_id, timestamp) newest first and probes the
  metrics table by result id, so its cost is the series' length, not the table's.
* Findings are the ``events`` rows (kind "anomaly" / "change_point" / "change_suspected") stored
  since the series' first point, found through the events' (kind, id) index and kept when their result is one of
  the series' points. Retracted findings have another kind already (``store.retract_events``).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from dtf_agent import protocol as p
from dtf_gui.coordinator.aggregator.compare import higher_is_better

# Results (newest first) the catalog groups; see the module docstring.
CATALOG_WINDOW = 200_000
MAX_POINTS = 200_000
# A finding is stored after its result arrives; its result's timestamp is the agent's clock,
# which may run ahead of the coordinator's. Findings are looked for from this long before the
# series' first point.
CLOCK_SLACK = 86_400.0
# Findings read per series at most (a series of 200,000 points with an anomaly in every tenth).
MAX_FINDINGS = 20_000
# A remote client's reply must fit server.max_message_size (16 MiB by default): the oldest points
# are left out beyond this estimate of the encoded size.
REPLY_BYTES = 12 * 1024 * 1024
_POINT_OVERHEAD = 40  # two floats and the framing of five strings, in msgpack
# analysis.SUSPECTED_KIND (a room above this one): the events kind of a change only suspected.
SUSPECTED_KIND = "change_suspected"
# The events kinds of findings still standing: a suspected change (the online stage's, not yet
# settled; its data's "state" says "suspected") is drawn apart from a confirmed one.
STANDING_FINDING_KINDS = ("anomaly", SUSPECTED_KIND, "change_point", "trend")
FINDING_KINDS = ("anomaly", "change_point", SUSPECTED_KIND)

OpTable = dict[str, tuple[type[Any], Callable[[Any], Any]]]


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SeriesCatalog(_Args):
    # Case-insensitive substring of the test id or the metric name; "" lists everything.
    text: Annotated[str, msgspec.Meta(max_length=200)] = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 1000


class MetricSeries(_Args):
    test_id: Annotated[str, msgspec.Meta(max_length=p.MAX_NODEID)]
    metric: p.Name
    worker_id: p.Id | None = None
    hardware_id: p.Name | None = None
    since: Annotated[float, msgspec.Meta(ge=0, le=1e11)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_POINTS)] = 100_000


def series_catalog(conn: sqlite3.Connection, a: SeriesCatalog) -> list[dict[str, Any]]:
    """[{"test_id", "metric", "count", "last"}], the series whose last result is newest first,
    over the newest CATALOG_WINDOW results."""
    text = a.text.strip().lower()
    rows = conn.execute(
        "SELECT r.test_id, m.name, count(*), max(r.timestamp) "
        "FROM (SELECT result_id, test_id, timestamp FROM results ORDER BY rowid DESC LIMIT ?) r "
        "JOIN metrics m ON m.result_id = r.result_id "
        "WHERE ?2 = '' OR instr(lower(r.test_id), ?2) > 0 OR instr(lower(m.name), ?2) > 0 "
        "GROUP BY r.test_id, m.name ORDER BY 4 DESC, 1, 2 LIMIT ?3",
        (CATALOG_WINDOW, text, a.limit)).fetchall()
    return [{"test_id": r[0] or "", "metric": r[1], "count": int(r[2]), "last": r[3]} for r in rows]


def metric_meta(conn: sqlite3.Connection, metric: str) -> tuple[str, str | None]:
    """(unit, direction) of a metric: the stored declaration, else no unit and the name guess
    that the aggregator uses (compare.higher_is_better)."""
    row = conn.execute("SELECT unit, direction FROM metric_meta WHERE name = ?", (metric,)).fetchone()
    unit = str(row[0] or "") if row else ""
    direction = row[1] if row and row[1] in ("higher", "lower") else None
    if direction is None:
        direction = "higher" if higher_is_better(metric) else "lower"
    return unit, direction


def _points(conn: sqlite3.Connection, a: MetricSeries) -> list[tuple[Any, ...]]:
    """(t, v, worker, hardware, result_id, task_id, run_id) newest first, at most a.limit.

    CROSS JOIN fixes the loop order (results by their (test_id, timestamp) index, then metrics by
    result id) and ``+m.name`` keeps SQLite from choosing the name index instead, which would
    walk every value of a metric that many tests share."""
    where = ["r.test_id = ?"]
    params: list[Any] = [a.test_id]
    if a.since is not None:
        where.append("r.timestamp >= ?")
        params.append(a.since)
    if a.worker_id is not None:
        where.append("r.worker_id = ?")
        params.append(a.worker_id)
    if a.hardware_id is not None:
        where.append("w.hardware_id = ?")
        params.append(a.hardware_id)
    sql = ("SELECT r.timestamp, m.value, r.worker_id, w.hardware_id, r.result_id, r.task_id, r.run_id "
           "FROM results r CROSS JOIN metrics m ON m.result_id = r.result_id AND +m.name = ? "
           "LEFT JOIN workers w ON w.worker_id = r.worker_id "
           f"WHERE {' AND '.join(where)} ORDER BY r.timestamp DESC LIMIT ?")
    return conn.execute(sql, [a.metric, *params, a.limit]).fetchall()


def _fit(rows: list[tuple[Any, ...]]) -> int:
    """How many of ``rows`` (newest first) fit the reply's size budget."""
    size = 0
    for i, r in enumerate(rows):
        size += _POINT_OVERHEAD + sum(len(x) for x in r[2:] if isinstance(x, str))
        if size > REPLY_BYTES:
            return i
    return len(rows)


def _findings(conn: sqlite3.Connection, metric: str, first_t: float,
              points: dict[str, tuple[float, float, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The anomalies and changes stored for ``points`` ({result_id: (t, v, worker)}). A change's
    ``state`` is "confirmed" or "suspected"; a suspected one whose change was confirmed (by its
    ``change_id``) is left out, so that a plot never draws one step twice."""
    # Through the index on (kind, id): the findings alone are read, not every event since then
    # (``+time`` keeps SQLite off the time index, which would walk all of those).
    rows = conn.execute(
        f"SELECT kind, subject, data FROM events WHERE kind IN ({','.join('?' * len(FINDING_KINDS))}) "
        "AND +time >= ? ORDER BY id DESC LIMIT ?",
        (*FINDING_KINDS, first_t - CLOCK_SLACK, MAX_FINDINGS)).fetchall()
    anomalies: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    seen: set[tuple[Any, str]] = set()
    for event_kind, subject, raw in reversed(rows):
        point = points.get(subject)
        if point is None:
            continue
        try:
            f = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(f, dict) or f.get("metric") != metric:
            continue
        # A finding stored twice (a result resent across a restart) is shown once.
        if (event_kind, subject) in seen:
            continue
        seen.add((event_kind, subject))
        t, v, worker = point
        series = f.get("series")
        if not isinstance(series, dict):
            series = {}
        if event_kind == "anomaly":
            anomalies.append({"result_id": subject, "t": t, "v": v, "score": _num(f.get("score"))})
        else:
            changes.append({
                "result_id": subject, "t": t, "before": _num(f.get("mean_before")), "after": _num(f.get("mean_after")),
                "rel_change": _num(f.get("rel_change")), "p_value": _num(f.get("p_value")),
                "direction": f.get("direction"), "worker": series.get("worker_id", worker),
                "n_before": f.get("n_before"), "n_after": f.get("n_after"),
                "state": "suspected" if event_kind == SUSPECTED_KIND else "confirmed",
                "change_id": str(f.get("change_id") or subject)})
    confirmed = {c["change_id"] for c in changes if c["state"] == "confirmed"}
    changes = [c for c in changes if c["state"] == "confirmed" or c["change_id"] not in confirmed]
    anomalies.sort(key=lambda x: x["t"])
    changes.sort(key=lambda x: x["t"])
    return anomalies, changes


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def metric_series(conn: sqlite3.Connection, a: MetricSeries) -> dict[str, Any]:
    """One test x metric series, oldest first, as columns; see the module docstring."""
    rows = _points(conn, a)
    limited = len(rows) >= a.limit
    keep = _fit(rows)
    truncated = limited or keep < len(rows)
    rows = rows[:keep]
    rows.reverse()
    unit, direction = metric_meta(conn, a.metric)
    cols: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(7)]
    t, v, worker, hardware, result_id, task_id, run_id = cols
    out: dict[str, Any] = {
        "test_id": a.test_id, "metric": a.metric, "unit": unit, "direction": direction, "truncated": truncated,
        "t": t, "v": v, "worker": [w or "" for w in worker], "hardware": [h or "" for h in hardware],
        "result_id": result_id, "task_id": task_id, "run_id": [r or "" for r in run_id], "anomalies": [],
        "change_points": [],
    }
    if rows:
        points = dict(zip(result_id, zip(t, v, out["worker"], strict=True), strict=True))
        out["anomalies"], out["change_points"] = _findings(conn, a.metric, float(t[0] or 0.0), points)
    return out


def ops(conn: Callable[[], sqlite3.Connection]) -> OpTable:
    return {
        "series_catalog": (SeriesCatalog, lambda a: series_catalog(conn(), a)),
        "metric_series": (MetricSeries, lambda a: metric_series(conn(), a)),
    }
