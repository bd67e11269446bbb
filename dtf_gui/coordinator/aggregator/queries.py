"""ResultQueries: the read-only query service over the store's results (statistics, trends,
anomalies, comparisons), behind a TTL cache.

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

from dtf_gui.coordinator import store
from dtf_gui.coordinator.aggregator.anomalies import find_anomalies
from dtf_gui.coordinator.aggregator.compare import compare_samples, higher_is_better
from dtf_gui.coordinator.aggregator.findings import AnomalyRow
from dtf_gui.coordinator.aggregator.stats import group_stats, stats_to_dicts
from dtf_gui.coordinator.aggregator.trends import Trend, trend

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
                 polarity: Callable[[str], bool] = higher_is_better) -> None:
        self.db_path = Path(db_path)
        self.anomaly_threshold = float(anomaly_threshold)
        self.cache_ttl = float(cache_ttl)
        self.comparative_lookback_days = float(comparative_lookback_days)
        self.clock = clock
        self.polarity = polarity
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

        With ``include_trends``, also "trends": {group: {metric: :class:`Trend`}}, each series'
        Theil-Sen slope per result (in time order) with its Mann-Kendall test and a "direction"
        by the metric's polarity when it is significant. Every value is a plain int, float, str,
        bool or None, so the report travels as JSON or msgpack as it is."""
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
                trends: dict[str, dict[str, Trend]] = {}
                for k, n, arr in zip(keys, names, arrays, strict=True):
                    trends.setdefault(k, {})[n] = trend(arr, higher_is_better=self.polarity(n))
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
        (e.g. {"task_id": [...]} for one run); the baseline is the ``lookback_days`` before its start."""
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
                r = compare_samples(base.get((k, n), np.empty(0)), cur.get((k, n), np.empty(0)),
                                    higher_is_better=self.polarity(n), alpha=alpha, min_change=min_change)
                report.setdefault(k, {})[n] = r
                counts[r["verdict"]] += 1
            return {"result_type": result_type, "aggregation_level": ",".join(dims),
                    "current_range": [lo, hi], "baseline_range": list(base_range), "lookback_days": days,
                    "summary": counts, "comparisons": report, "generated_at": now}

        return self._cached(cache_key, _cover(filter_params), compute)
