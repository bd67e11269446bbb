"""ResultQueries: the read-only query service over the store's results (statistics, trends,
anomalies, comparisons of time windows and of named runs), behind a TTL cache.

Improvement or regression depends on each metric's direction: from the metric catalog (declared
in the config, by the API or by tasks) where there is one, else guessed from the name; every
verdict says which (``direction_source``) and what the metric's unit is.

Reads go through the service's own read-only connection (WAL: never blocks the writer). Bulk loads
ask SQLite for two ``group_concat`` strings per (group, metric), timestamps and values, and parse
them with numpy, so a million values never become a million Python tuples; numpy restores the time
order per group, which costs far less than a second SQLite sort over every row.

Every statement is built from what the query reads: each dimension and filter expression names the
tables it needs besides ``results``, and the FROM clause joins ``workers`` and ``tasks`` only when
one of them does (a join costs a lookup per row).

Answers are cached for ``cache_ttl`` seconds. The cache does not watch the store: whoever stores
results calls :meth:`ResultQueries.invalidate` with their test ids, which drops every cached answer
that could cover them.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from dtf_agent.protocol import FAILING_OUTCOMES
from dtf_gui.coordinator import store
from dtf_gui.coordinator.aggregator.anomalies import find_anomalies
from dtf_gui.coordinator.aggregator.compare import compare_samples, higher_is_better, welch_p_from_stats
from dtf_gui.coordinator.aggregator.findings import AnomalyRow
from dtf_gui.coordinator.aggregator.metricmeta import (
    DECLARED,
    MetricCatalog,
    MetricInfo,
    direction_hint,
    metric_info_for,
)
from dtf_gui.coordinator.aggregator.stats import group_stats, stats_to_dicts
from dtf_gui.coordinator.aggregator.trends import JudgedTrend, trend

__all__ = ["ResultQueries", "summarize"]

_V = TypeVar("_V")
Filter = Mapping[str, object]
SqlParam = str | float


class _Expr(NamedTuple):
    """A SQL expression over ``results r`` (and ``metrics m``), and the other tables it reads:
    "w" (``workers w``), "t" (``tasks t``)."""

    sql: str
    tables: frozenset[str] = frozenset()


_WORKERS = frozenset({"w"})
_TASKS = frozenset({"t"})
# The joins a statement may need, by table alias, in the order they are written.
_JOINS: tuple[tuple[str, str], ...] = (
    ("w", "LEFT JOIN workers w ON w.worker_id = r.worker_id"),
    ("t", "LEFT JOIN tasks t ON t.task_id = r.task_id"),
)

# Dimensions with a column of their own; any other name is looked up in the task's parameters,
# then the task's metadata, then the result's metadata, then the worker's capabilities (JSON).
_COLUMN_DIMS: dict[str, _Expr] = {
    "hardware_id": _Expr("w.hardware_id", _WORKERS),
    "worker_id": _Expr("r.worker_id"),
    "hostname": _Expr("w.hostname", _WORKERS),
    "test_id": _Expr("r.test_id"),
    "task_id": _Expr("r.task_id"),
    "task_type": _Expr("t.type", _TASKS),
    "type": _Expr("t.type", _TASKS),
    "status": _Expr("r.status"),
}
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_RESULT_TYPES = ("performance", "execution", "all")
_SEP = "|"
# Each value's timestamp in whole microseconds: SQLite prints integers much faster than floats, and
# numpy parses them faster too. COALESCE keeps timestamps and values aligned (group_concat skips
# NULLs); a missing timestamp sorts first, as NULL did under ORDER BY.
_TIME_US = "COALESCE(CAST(r.timestamp * 1000000 AS INTEGER), -9223372036854775807)"
# SQLite's sorter may use helper threads for the GROUP BY of a bulk load (0 = none, its default).
_SORT_THREADS = min(4, os.cpu_count() or 1)


def _json_expr(key: str) -> _Expr:
    path = f"'$.\"{key}\"'"
    return _Expr(f"COALESCE(json_extract(t.parameters, {path}), json_extract(t.metadata, {path}), "
                 f"json_extract(r.metadata, {path}), json_extract(w.capabilities, {path}))", _WORKERS | _TASKS)


def _dim_expr(dim: str) -> _Expr:
    if dim in _COLUMN_DIMS:
        return _COLUMN_DIMS[dim]
    if not _KEY_RE.match(dim):
        raise ValueError(f"aggregator: dimension {dim!r} is not a column nor a plain JSON key "
                         "(letters, digits, _ . - only)")
    return _json_expr(dim)


def _dims(level: str | Sequence[str]) -> list[str]:
    dims = [d.strip() for d in level.split(",")] if isinstance(level, str) else [str(d) for d in level]
    dims = [d for d in dims if d]
    if not dims:
        raise ValueError("aggregator: aggregation_level names no dimension")
    return dims


def _values(value: object) -> list[object]:
    """A filter's value as a list: one value, or the members of a list, tuple or set."""
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


class _Selection(NamedTuple):
    """What a query selects, whatever the result type: the group key (the dimensions' values joined
    by "|"), the filter clauses with their parameters, and the metric names it is limited to."""

    key: _Expr
    clauses: tuple[_Expr, ...]
    params: tuple[SqlParam, ...]
    metric_names: tuple[str, ...]

    def tables(self) -> frozenset[str]:
        return self.key.tables.union(*(c.tables for c in self.clauses))


def _selection(dims: Sequence[str], filter_params: Filter | None,
               time_range: tuple[float, float] | None) -> _Selection:
    parts = [_dim_expr(d) for d in dims]
    key = _Expr(f" || '{_SEP}' || ".join(f"COALESCE(CAST({p.sql} AS TEXT), '(none)')" for p in parts),
                frozenset().union(*(p.tables for p in parts)))
    clauses: list[_Expr] = []
    params: list[SqlParam] = []
    metric_names: list[str] = []
    for name, value in (filter_params or {}).items():
        if name in ("metric", "metrics"):
            metric_names = [value] if isinstance(value, str) else [str(v) for v in _values(value)]
            continue
        expr = _dim_expr(name)
        values = _values(value)
        if not values:
            raise ValueError(f"aggregator: filter {name!r} has an empty list of values")
        clauses.append(_Expr(f"CAST({expr.sql} AS TEXT) IN ({','.join('?' * len(values))})", expr.tables))
        params.extend(str(v) for v in values)
    if time_range is not None:
        lo, hi = time_range
        clauses.append(_Expr("r.timestamp >= ? AND r.timestamp < ?"))
        params.extend([float(lo), float(hi)])
    return _Selection(key, tuple(clauses), tuple(params), tuple(metric_names))


class _Source(NamedTuple):
    """Where one kind of result's values are: the base tables (``results r`` always among them), the
    metric-name and value expressions, and the conditions (with their parameters) that kind needs."""

    tables: str
    name: str
    value: str
    where: tuple[str, ...] = ()
    params: tuple[SqlParam, ...] = ()


def _sources(result_type: str, metric_names: Sequence[str]) -> list[_Source]:
    """The sources of a result type: performance (the metrics), execution (execution times), or all."""
    if result_type not in _RESULT_TYPES:
        raise ValueError(f"aggregator: result_type must be one of {_RESULT_TYPES}, not {result_type!r}")
    out: list[_Source] = []
    if result_type in ("performance", "all"):
        names = (f"m.name IN ({','.join('?' * len(metric_names))})",) if metric_names else ()
        out.append(_Source("metrics m JOIN results r ON r.result_id = m.result_id", "m.name", "m.value",
                           names, tuple(metric_names)))
    if result_type in ("execution", "all"):
        out.append(_Source("results r", "'execution_time'", "r.execution_time",
                           ("r.execution_time IS NOT NULL",)))
    return out


def _statement(columns: str, src: _Source, sel: _Selection, *, where: Sequence[str] = (), tail: str = "",
               ) -> tuple[str, list[SqlParam]]:
    """(SQL, parameters) of ``SELECT columns`` over ``src`` limited by ``sel`` and ``where``.

    ``columns`` and ``where`` may read the source's tables and the selection's key; the statement
    joins exactly the tables the selection's expressions name."""
    tables = sel.tables()
    parts = [f"SELECT {columns} FROM {src.tables}", *(join for alias, join in _JOINS if alias in tables)]
    conditions = [*src.where, *(c.sql for c in sel.clauses), *where]
    if conditions:
        parts.append("WHERE " + " AND ".join(conditions))
    if tail:
        parts.append(tail)
    return " ".join(parts), [*src.params, *sel.params]


def _parse_numbers(text: str | None, dtype: type[np.float64] | type[np.int64] = np.float64,
                   ) -> NDArray[Any]:
    if not text:
        return np.empty(0, dtype=dtype)
    try:
        return np.fromstring(text, dtype=dtype, sep=",")
    except ValueError:
        # fromstring is the fast path; anything it refuses gets Python's parser and its error.
        return np.array(text.split(","), dtype=dtype)


def _time_ordered(stamps: NDArray[np.int64], values: NDArray[np.float64], key: str, name: str,
                  ) -> NDArray[np.float64]:
    if stamps.size != values.size:
        raise RuntimeError(f"aggregator: group {key!r} metric {name!r} came back with {stamps.size} "
                           f"timestamps for {values.size} values")
    if stamps.size < 2 or bool(np.all(stamps[1:] >= stamps[:-1])):
        return values
    return values[np.argsort(stamps, kind="stable")]


def summarize(keys: Sequence[str], names: Sequence[str], arrays: Sequence[NDArray[np.float64]],
              ) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """{group: {metric: stats}} from per-(group, metric) arrays, all statistics in one vectorised pass."""
    if not arrays:
        return {}
    lengths = np.fromiter((a.size for a in arrays), dtype=np.intp, count=len(arrays))
    codes = np.repeat(np.arange(len(arrays)), lengths)
    values = np.concatenate(arrays)
    rows = stats_to_dicts(group_stats(codes, values, len(arrays)))
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for k, n, row in zip(keys, names, rows, strict=False):
        out.setdefault(k, {})[n] = row
    return out


def _freeze(obj: object) -> Hashable:
    if isinstance(obj, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple, set, frozenset)):
        return tuple(sorted((_freeze(v) for v in obj), key=repr))
    return obj


def _cover(filter_params: Filter | None) -> frozenset[str] | None:
    """The test ids a query is limited to (None: any test), for cache invalidation."""
    if not filter_params or "test_id" not in filter_params:
        return None
    return frozenset(str(x) for x in _values(filter_params["test_id"]))


class ResultQueries:
    """Statistics, trends, anomalies and comparisons over the store's results, read-only and cached.

    Thread-safe: the client API's threads share one read-only connection under a lock."""

    def __init__(self, db_path: str | Path, *, anomaly_threshold: float = 2.5, cache_ttl: float = 60.0,
                 comparative_lookback_days: float = 7.0, clock: Callable[[], float] = time.time,
                 polarity: Callable[[str], bool] | None = None, catalog: MetricCatalog | None = None) -> None:
        self.db_path = Path(db_path)
        self.anomaly_threshold = float(anomaly_threshold)
        self.cache_ttl = float(cache_ttl)
        self.comparative_lookback_days = float(comparative_lookback_days)
        self.clock = clock
        self.catalog = catalog
        self.polarity: Callable[[str], bool] = polarity or (catalog.polarity if catalog else higher_is_better)
        self._info: Callable[[str], MetricInfo] = metric_info_for(polarity, catalog)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        # key -> (computed at, answer, the test ids it is limited to or None for any)
        self._cache: dict[Hashable, tuple[float, object, frozenset[str] | None]] = {}

    # -- plumbing ------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.db_path.exists():
                raise FileNotFoundError(f"aggregator: database {self.db_path} does not exist yet")
            self._conn = store.connect_readonly(self.db_path)
            if _SORT_THREADS > 1:
                self._conn.execute(f"PRAGMA threads={_SORT_THREADS}")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _cached(self, key: Hashable, test_ids: frozenset[str] | None, compute: Callable[[], _V]) -> _V:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.cache_ttl:
                return cast(_V, hit[1])
        value = compute()
        with self._lock:
            self._cache[key] = (now, value, test_ids)
        return value

    def invalidate(self, test_ids: Iterable[str] | None = None) -> None:
        """Drop cached answers that cover any of ``test_ids`` (all of them when None)."""
        with self._lock:
            if test_ids is None:
                self._cache.clear()
                return
            touched = {str(t) for t in test_ids}
            for key in [k for k, (_t, _v, cover) in self._cache.items() if cover is None or cover & touched]:
                del self._cache[key]

    def load_groups(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                    filter_params: Filter | None = None, time_range: tuple[float, float] | None = None,
                    ) -> tuple[list[str], list[str], list[NDArray[np.float64]]]:
        """(group keys, metric names, values) per (group, metric), values in time order (ties in the
        order SQLite scanned them)."""
        sel = _selection(_dims(aggregation_level), filter_params, time_range)
        # One sort (the GROUP BY's), not two: ordering by time first made SQLite sort every row
        # twice, which was most of the load's time. Timestamps come along and numpy orders them.
        statements = [
            _statement(f"{sel.key.sql} AS k, {src.name} AS n, group_concat({_TIME_US}), group_concat({src.value})",
                       src, sel, where=[f"{src.value} IS NOT NULL"], tail="GROUP BY k, n")
            for src in _sources(result_type, sel.metric_names)
        ]
        keys: list[str] = []
        names: list[str] = []
        arrays: list[NDArray[np.float64]] = []
        with self._lock:
            conn = self._db()
            for sql, params in statements:
                for k, n, stamps, text in conn.execute(sql, params):
                    keys.append(k)
                    names.append(n)
                    arrays.append(_time_ordered(_parse_numbers(stamps, np.int64), _parse_numbers(text), k, n))
        return keys, names, arrays

    # -- the seed's queries ----------------------------------------------------------------------

    def aggregate_results(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                          filter_params: Filter | None = None,
                          time_range: tuple[float, float] | None = None, *, include_trends: bool = False,
                          ) -> dict[str, Any]:
        """{"basic_statistics": {group: {metric: {count, mean, median, std, min, max, p5..p99,
        ci95_low, ci95_high, cv}}}, plus the query echoed back: result_type, aggregation_level,
        filter_params, time_range, generated_at}.

        With ``include_trends``, also "trends": {group: {metric: :class:`JudgedTrend`}}, each
        series' Theil-Sen slope per result (in time order) with its Mann-Kendall test and a
        "direction" by the metric's polarity when it is significant, the metric's "unit", its
        "direction_source" and a "note" when a significant trend's direction was guessed. Every
        value is a plain int, float, str, bool or None, so the report travels as JSON or msgpack
        as it is."""
        dims = _dims(aggregation_level)
        cache_key = ("aggregate", result_type, tuple(dims), _freeze(filter_params), time_range, include_trends)

        def compute() -> dict[str, Any]:
            keys, names, arrays = self.load_groups(result_type, dims, filter_params, time_range)
            out: dict[str, Any] = {
                "result_type": result_type, "aggregation_level": ",".join(dims),
                "filter_params": dict(filter_params or {}), "time_range": list(time_range) if time_range else None,
                "generated_at": self.clock(), "basic_statistics": summarize(keys, names, arrays),
            }
            if include_trends:
                trends: dict[str, dict[str, JudgedTrend]] = {}
                for k, n, arr in zip(keys, names, arrays, strict=True):
                    info = self._info(n)
                    t = trend(arr, higher_is_better=info.higher_is_better)
                    trends.setdefault(k, {})[n] = {
                        **t, "unit": info.unit, "direction_source": info.direction_source,
                        "note": direction_hint(info.direction_source) if t["significant"] else ""}
                out["trends"] = trends
            return out

        return self._cached(cache_key, _cover(filter_params), compute)

    def get_result_anomalies(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                             filter_params: Filter | None = None,
                             time_range: tuple[float, float] | None = None, *, threshold: float | None = None,
                             limit: int = 1000) -> list[AnomalyRow]:
        """Results whose metric lies more than ``threshold`` robust z from its (group, metric)'s
        median over the selection, strongest first, at most ``limit``."""
        dims = _dims(aggregation_level)
        thr = self.anomaly_threshold if threshold is None else float(threshold)
        cache_key = ("anomalies", result_type, tuple(dims), _freeze(filter_params), time_range, thr, limit)

        def compute() -> list[AnomalyRow]:
            sel = _selection(dims, filter_params, time_range)
            statements = [_statement(f"{sel.key.sql}, {src.name}, {src.value}, r.result_id, r.timestamp", src, sel)
                          for src in _sources(result_type, sel.metric_names)]
            rows: list[sqlite3.Row] = []
            with self._lock:
                conn = self._db()
                for sql, params in statements:
                    rows.extend(conn.execute(sql, params).fetchall())
            if not rows:
                return []
            groups, metrics, values, rids, stamps = zip(*rows, strict=True)
            series: dict[tuple[str, str], int] = {}
            codes = np.fromiter((series.setdefault(s, len(series)) for s in zip(groups, metrics, strict=True)),
                                dtype=np.intp, count=len(rows))
            found = find_anomalies(codes, np.array(values, dtype=np.float64), threshold=thr,
                                   result_ids=rids, series_names=list(series))
            stamp_of = dict(zip(rids, stamps, strict=True))
            return [AnomalyRow(group=f["series"][0], metric=f["series"][1], result_id=f["result_id"],
                               timestamp=stamp_of.get(f["result_id"]), value=f["value"], score=f["score"],
                               median=f["median"], expected_low=f["expected_low"],
                               expected_high=f["expected_high"])
                    for f in found[:limit]]

        return self._cached(cache_key, _cover(filter_params), compute)

    def get_comparison_report(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                              filter_params: Filter | None = None,
                              time_range: tuple[float, float] | None = None, *,
                              current_filter: Filter | None = None,
                              lookback_days: float | None = None, alpha: float = 0.05,
                              min_change: float = 0.02) -> dict[str, Any]:
        """A run or time window against the lookback baseline, per group and metric.

        The current side is ``time_range`` (default: the last day) narrowed by ``current_filter``
        (e.g. {"task_id": [...]} for one run); the baseline is the ``lookback_days`` before its start.
        Each comparison also names the metric's "unit", its "direction" ("higher" or "lower" is
        better), the "direction_source" and, for a verdict that rests on a guessed direction, a
        "note" saying so. For two named runs, see :meth:`compare_runs`."""
        dims = _dims(aggregation_level)
        now = self.clock()
        lo, hi = time_range if time_range is not None else (now - 86400.0, now)
        days = self.comparative_lookback_days if lookback_days is None else float(lookback_days)
        base_range = (lo - days * 86400.0, lo)
        cache_key = ("compare", result_type, tuple(dims), _freeze(filter_params), (lo, hi),
                     _freeze(current_filter), days, alpha, min_change)

        def compute() -> dict[str, Any]:
            cur_filter = {**(filter_params or {}), **(current_filter or {})}
            ck, cn, ca = self.load_groups(result_type, dims, cur_filter, (lo, hi))
            bk, bn, ba = self.load_groups(result_type, dims, filter_params, base_range)
            base = {(k, n): a for k, n, a in zip(bk, bn, ba, strict=True)}
            cur = {(k, n): a for k, n, a in zip(ck, cn, ca, strict=True)}
            report: dict[str, dict[str, dict[str, Any]]] = {}
            counts = {"regressed": 0, "improved": 0, "unchanged": 0, "not enough data": 0}
            for k, n in sorted(set(base) | set(cur)):
                info = self._info(n)
                r = compare_samples(base.get((k, n), np.empty(0)), cur.get((k, n), np.empty(0)),
                                    higher_is_better=info.higher_is_better, alpha=alpha, min_change=min_change)
                judged = r["verdict"] in ("improved", "regressed")
                r.update(unit=info.unit, direction="higher" if info.higher_is_better else "lower",
                         direction_source=info.direction_source,
                         note=direction_hint(info.direction_source) if judged else "")
                report.setdefault(k, {})[n] = r
                counts[r["verdict"]] += 1
            return {"result_type": result_type, "aggregation_level": ",".join(dims),
                    "current_range": [lo, hi], "baseline_range": list(base_range), "lookback_days": days,
                    "summary": counts, "comparisons": report, "generated_at": now}

        return self._cached(cache_key, _cover(filter_params), compute)

    # -- runs ------------------------------------------------------------------------------------

    def _run_row(self, conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
        cols = store.KEYED_COLUMNS["runs"]
        row = conn.execute(f"SELECT {','.join(cols)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id!r}; see `dtf runs`")
        out = dict(zip(cols, tuple(row), strict=True))
        for key in ("meta", "summary"):
            out[key] = _json_or_text(out[key])
        return out

    def _previous(self, conn: sqlite3.Connection, run: Mapping[str, Any]) -> str | None:
        if not run["name"] or run["created"] is None:
            return None
        # Same name, created earlier (a tie broken by id, so two runs never name each other).
        row = conn.execute(
            "SELECT run_id FROM runs WHERE name = ? AND run_id != ? AND (created < ? OR (created = ? AND run_id < ?)) "
            "ORDER BY created DESC, run_id DESC LIMIT 1",
            (run["name"], run["run_id"], run["created"], run["created"], run["run_id"])).fetchone()
        return None if row is None else str(row[0])

    def previous_run(self, run_id: str) -> str | None:
        """The latest run of the same name created before ``run_id``; None when there is none.
        An unknown ``run_id`` raises ValueError."""
        with self._lock:
            conn = self._db()
            return self._previous(conn, self._run_row(conn, run_id))

    def compare_runs(self, run_id: str, baseline: str | None = None, *, alpha: float = 0.05,
                     min_change: float = 0.02) -> dict[str, Any]:
        """Run ``run_id`` against ``baseline`` (default: the previous run of the same name).

        Per test and metric present in either run (the metrics the results carried, plus
        ``duration_s``, the execution time of passed tests and of successful task results), a row:
        each side's n, mean and stddev; the change (``change`` absolute, ``rel_change`` relative,
        ``pct_change`` in %; None where the baseline mean is 0); ``confidence`` and ``p_value``;
        the metric's ``unit``, ``direction`` ("higher"/"lower" is better) and
        ``direction_source``; the ``verdict``; and a ``note`` saying what the verdict rests on
        when that is weaker than a test (a single sample, a guessed direction).

        Verdicts: "new" (only in this run), "missing" (only in the baseline), else "improved" /
        "regressed" / "unchanged". With 2 values or more on each side, Welch's t-test decides
        (``confidence`` "welch": p <= ``alpha`` and a change of at least ``min_change``,
        relative). A pytest-benchmark mean (``bench_mean_s``) has one value per run but carries
        its rounds' stddev and count, so Welch's test runs on those (``confidence``
        "welch (benchmark rounds)"). Otherwise one side has a single value and no test is
        possible: ``confidence`` is "single sample" and the verdict is by the size of the change
        alone (at least ``min_change``).

        Also the pytest outcome changes: "newly_failing" (passed or flaky in the baseline, failed,
        error or crashed now), "fixed" (failing then, passed now) and "flaky" (marked flaky, or
        both failed and passed in this run). Rows are sorted regressions first, then
        improvements, missing, new, unchanged; within each, the largest relative change first.
        An unknown run raises ValueError, as does a run with no earlier run of its name when no
        ``baseline`` is given."""
        key = ("runs", run_id, baseline, float(alpha), float(min_change))

        def compute() -> dict[str, Any]:
            with self._lock:
                conn = self._db()
                run = self._run_row(conn, run_id)
                base_id = baseline
                if base_id is None:
                    base_id = self._previous(conn, run)
                    if base_id is None:
                        name = run["name"]
                        why = (f"no earlier run named {name!r} to compare with" if name
                               else f"run {run_id!r} has no name, so no earlier run to compare with")
                        raise ValueError(f"{why}; pass --baseline RUN")
                if base_id == run_id:
                    raise ValueError(f"run {run_id!r} cannot be its own baseline; pass another --baseline RUN")
                base = self._run_row(conn, base_id)
                cur_values, cur_outcomes = _run_values(conn, run_id)
                base_values, base_outcomes = _run_values(conn, base_id)
            rows = [self._compare_metric(test, metric, base_values.get((test, metric), []),
                                         cur_values.get((test, metric), []), base_values, cur_values,
                                         alpha, min_change)
                    for test, metric in sorted(set(base_values) | set(cur_values))]
            rows.sort(key=_row_order)
            summary = dict.fromkeys(("regressed", "improved", "unchanged", "new", "missing"), 0)
            for r in rows:
                summary[r["verdict"]] += 1
            return {"run": run, "baseline": base, "alpha": alpha, "min_change": min_change, "metrics": rows,
                    "tests": _outcome_changes(base_outcomes, cur_outcomes), "summary": summary,
                    "generated_at": self.clock()}

        return self._cached(key, None, compute)

    def _compare_metric(self, test: str, metric: str, b: list[float], c: list[float],
                        base_values: Mapping[tuple[str, str], list[float]],
                        cur_values: Mapping[tuple[str, str], list[float]], alpha: float,
                        min_change: float) -> dict[str, Any]:
        info = _DURATION_INFO if metric == DURATION_METRIC else self._info(metric)
        bs, cs = _side(b), _side(c)
        # "new" when only this run has values, "missing" when only the baseline has.
        row: dict[str, Any] = {
            "test_id": test, "metric": metric, "unit": info.unit,
            "direction": "higher" if info.higher_is_better else "lower", "direction_source": info.direction_source,
            "baseline_n": bs[0], "baseline_mean": bs[1], "baseline_stddev": bs[2],
            "current_n": cs[0], "current_mean": cs[1], "current_stddev": cs[2],
            "change": None, "rel_change": None, "pct_change": None, "p_value": None, "confidence": None,
            "verdict": "new" if not b else "missing", "note": "",
        }
        if bs[1] is None or cs[1] is None:
            return row
        bm, cm = bs[1], cs[1]
        rel = (cm - bm) / abs(bm) if bm != 0 else (0.0 if cm == bm else math.inf)
        row.update(change=cm - bm, rel_change=rel if math.isfinite(rel) else None,
                   pct_change=rel * 100.0 if math.isfinite(rel) else None)
        big = abs(rel) >= min_change
        better = (cm > bm) == info.higher_is_better
        notes: list[str] = []
        summary = _bench_summary(test, metric, base_values, cur_values) if len(b) == 1 == len(c) else None
        if len(b) >= 2 and len(c) >= 2:
            r = compare_samples(b, c, higher_is_better=info.higher_is_better, alpha=alpha, min_change=min_change,
                                min_baseline=2, min_current=2, method="welch")
            row.update(p_value=r["p_value"], confidence="welch", verdict=r["verdict"])
        elif summary is not None:
            bm_, bsd, bn, cm_, csd, cn = summary
            p = welch_p_from_stats(bm_, bsd * bsd, bn, cm_, csd * csd, cn)
            row.update(p_value=p, confidence="welch (benchmark rounds)",
                       verdict=("improved" if better else "regressed") if p <= alpha and big else "unchanged")
        else:
            row.update(confidence="single sample",
                       verdict=("improved" if better else "regressed") if big else "unchanged")
            notes.append(f"single sample: no significance test, judged by the size of the change alone "
                         f"(at least {min_change * 100:g} %)")
        if row["verdict"] in ("improved", "regressed") and direction_hint(info.direction_source):
            notes.append(direction_hint(info.direction_source))
        row["note"] = "; ".join(notes)
        return row


# The pseudo-metric of a run comparison: how long each passed test (or successful task) took.
DURATION_METRIC = "duration_s"
_DURATION_INFO = MetricInfo(False, "s", DECLARED)
_VERDICT_ORDER = {"regressed": 0, "improved": 1, "missing": 2, "new": 3, "unchanged": 4}
# Outcomes a test ends with when it passed (flaky: failed first, passed when run again).
_PASSING_OUTCOMES = frozenset({"passed", "flaky"})
_ERROR_CHARS = 500


def _json_or_text(value: object) -> object:
    """A runs row's JSON column decoded (text that is not JSON stays as it is)."""
    if not isinstance(value, str):
        return value
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def _side(values: Sequence[float]) -> tuple[int, float | None, float | None]:
    """(n, mean, sample stddev): the mean is None without values, the stddev with fewer than 2."""
    if not values:
        return 0, None, None
    arr = np.asarray(values, dtype=np.float64)
    return int(arr.size), float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else None


def _row_order(row: Mapping[str, Any]) -> tuple[int, float, str, str]:
    rel = row["rel_change"]
    size = math.inf if rel is None and row["change"] else abs(rel or 0.0)
    return _VERDICT_ORDER[row["verdict"]], -size, row["test_id"], row["metric"]


class _TestRow(NamedTuple):
    outcome: str
    attempt: int
    timestamp: float
    error: str
    result_id: str


def _run_values(conn: sqlite3.Connection, run_id: str,
                ) -> tuple[dict[tuple[str, str], list[float]], dict[str, list[_TestRow]]]:
    """A run's values by (test id, metric), duration_s included, and its test rows by test id."""
    values: dict[tuple[str, str], list[float]] = {}
    # From the run's results (its index), then each result's metrics (theirs).
    for test, name, value in conn.execute(
            "SELECT r.test_id, m.name, m.value FROM results r JOIN metrics m ON m.result_id = r.result_id "
            "WHERE r.run_id = ? AND m.value IS NOT NULL", (run_id,)):
        values.setdefault((test or "", name), []).append(float(value))
    durations: dict[tuple[str, str], list[float]] = {}
    outcomes: dict[str, list[_TestRow]] = {}
    for test, outcome, status, seconds, attempt, ts, error, rid in conn.execute(
            "SELECT test_id, outcome, status, execution_time, attempt, timestamp, error, result_id FROM results "
            "WHERE run_id = ? ORDER BY rowid", (run_id,)):
        test = test or ""
        # A failed test's time says how soon it failed, not how fast the code is.
        timed = outcome == "passed" or (not outcome and status == "success")
        # A task without a test id (a pytest shard) is a different mix of tests in every run.
        if timed and test and seconds is not None and math.isfinite(seconds):
            durations.setdefault((test, DURATION_METRIC), []).append(float(seconds))
        if outcome:
            outcomes.setdefault(test, []).append(_TestRow(outcome, int(attempt or 0), float(ts or 0.0),
                                                          error or "", rid))
    for k, v in durations.items():
        # A task's own metric of that name is what it measured; it wins over the pseudo-metric.
        values.setdefault(k, v)
    return values, outcomes


def _final(rows: Sequence[_TestRow]) -> _TestRow:
    """A test's outcome in a run: its last row's, in stored order (a rerun on another worker is stored
    after the first run; the agents' clocks may disagree)."""
    return rows[-1]


def _outcome_changes(base: Mapping[str, Sequence[_TestRow]], cur: Mapping[str, Sequence[_TestRow]],
                     ) -> dict[str, list[dict[str, Any]]]:
    newly_failing: list[dict[str, Any]] = []
    fixed: list[dict[str, Any]] = []
    flaky: list[dict[str, Any]] = []
    for test in sorted(cur):
        rows = cur[test]
        now = _final(rows)
        before = _final(base[test]).outcome if test in base else None
        entry = {"test_id": test, "baseline_outcome": before, "current_outcome": now.outcome,
                 "result_id": now.result_id}
        seen = {r.outcome for r in rows}
        if now.outcome == "flaky" or (seen & FAILING_OUTCOMES and "passed" in seen):
            flaky.append({**entry, "attempts": len(rows)})
        if before in _PASSING_OUTCOMES and now.outcome in FAILING_OUTCOMES:
            newly_failing.append({**entry, "error": now.error[:_ERROR_CHARS]})
        elif before in FAILING_OUTCOMES and now.outcome == "passed":
            fixed.append(entry)
    return {"newly_failing": newly_failing, "fixed": fixed, "flaky": flaky}


def _bench_summary(test: str, metric: str, base_values: Mapping[tuple[str, str], list[float]],
                   cur_values: Mapping[tuple[str, str], list[float]],
                   ) -> tuple[float, float, float, float, float, float] | None:
    """(mean, stddev, rounds) of both sides for a pytest-benchmark mean, when both runs carry them."""
    if metric != "bench_mean_s":
        return None
    out: list[float] = []
    for values in (base_values, cur_values):
        parts = [values.get((test, m), []) for m in ("bench_mean_s", "bench_stddev_s", "bench_rounds")]
        if any(len(p) != 1 for p in parts):
            return None
        out.extend(p[0] for p in parts)
    bm, bsd, bn, cm, csd, cn = out
    if bn < 2 or cn < 2:
        return None
    return bm, bsd, bn, cm, csd, cn
