"""ResultAggregator: the coordinator's analysis service over the SQLite store.

Reads go through the aggregator's own read-only connection (WAL: never blocks the writer). Bulk
loads ask SQLite for two ``group_concat`` strings per (group, metric), timestamps and values, and
parse them with numpy, so a million values never become a million Python tuples; numpy restores
the time order per group, which costs far less than a second SQLite sort over every row.
``ingest`` keeps a bounded in-memory history per series and examines only the tails of the series
a batch touched.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dtf_gui.coordinator import store
from dtf_gui.coordinator.aggregator.anomalies import find_anomalies, robust_z
from dtf_gui.coordinator.aggregator.changepoints import DEFAULTS as CP_DEFAULTS
from dtf_gui.coordinator.aggregator.changepoints import detect_change_points
from dtf_gui.coordinator.aggregator.compare import compare_samples, higher_is_better
from dtf_gui.coordinator.aggregator.stats import group_stats, stats_to_dicts
from dtf_gui.coordinator.aggregator.trends import trend

Processor = Callable[[Any], Any]

# Dimensions with a column of their own; any other name is looked up in the task's parameters,
# then the task's metadata, then the result's metadata, then the worker's capabilities (JSON).
_COLUMN_DIMS: dict[str, str] = {
    "hardware_id": "w.hardware_id",
    "worker_id": "r.worker_id",
    "hostname": "w.hostname",
    "test_id": "r.test_id",
    "task_id": "r.task_id",
    "task_type": "t.type",
    "type": "t.type",
    "status": "r.status",
}
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_RESULT_TYPES = ("performance", "execution", "all")
_SEP = "|"


def _json_expr(key: str) -> str:
    path = f"'$.\"{key}\"'"
    return (f"COALESCE(json_extract(t.parameters, {path}), json_extract(t.metadata, {path}), "
            f"json_extract(r.metadata, {path}), json_extract(w.capabilities, {path}))")


def _dim_expr(dim: str) -> str:
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


# Each value's timestamp in whole microseconds: SQLite prints integers much faster than floats, and
# numpy parses them faster too. COALESCE keeps timestamps and values aligned (group_concat skips
# NULLs); a missing timestamp sorts first, as NULL did under ORDER BY.
_TIME_US = "COALESCE(CAST(r.timestamp * 1000000 AS INTEGER), -9223372036854775807)"
# SQLite's sorter may use helper threads for the GROUP BY of a bulk load (0 = none, its default).
_SORT_THREADS = min(4, os.cpu_count() or 1)


def _parse_numbers(text: str | None, dtype: type = np.float64) -> NDArray[Any]:
    if not text:
        return np.empty(0, dtype=dtype)
    try:
        return np.fromstring(text, dtype=dtype, sep=",")
    except ValueError:
        # fromstring is the fast path; anything it refuses gets Python's parser and its error.
        return np.array(text.split(","), dtype=dtype)


class ResultAggregator:
    """Statistics, anomalies, change points, trends and comparisons over the store's results."""

    def __init__(self, db_path: str | Path, *, anomaly_threshold: float = 2.5, cache_ttl: float = 60.0,
                 comparative_lookback_days: float = 7.0, clock: Callable[[], float] = time.time,
                 series_dims: Sequence[str] = ("test_id", "worker_id"), max_history: int = 1000,
                 change_point_options: dict[str, Any] | None = None,
                 polarity: Callable[[str], bool] = higher_is_better) -> None:
        self.db_path = Path(db_path)
        self.anomaly_threshold = float(anomaly_threshold)
        self.cache_ttl = float(cache_ttl)
        self.comparative_lookback_days = float(comparative_lookback_days)
        self.clock = clock
        self.series_dims = tuple(series_dims)
        self.max_history = int(max_history)
        self.cp_options = dict(change_point_options or {})
        self.polarity = polarity
        self._conn: Any = None
        self._lock = threading.RLock()
        self._cache: dict[Any, tuple[float, Any, frozenset[str] | None]] = {}
        self._processors: dict[str, list[Processor]] = {"preprocess": [], "postprocess": []}
        # Per series: values, result ids and timestamps (bounded), plus the change points already reported.
        self._hist: dict[tuple[str, ...], tuple[list[float], list[Any], list[float | None]]] = {}
        self._offset: dict[tuple[str, ...], int] = {}
        self._reported: dict[tuple[str, ...], list[int]] = {}
        self._hardware: dict[str, str | None] = {}

    # -- plumbing ------------------------------------------------------------------------------

    def _db(self) -> Any:
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

    def add_processor(self, stage: str, fn: Processor) -> None:
        """Register a custom result processor. "preprocess": fn(result dict) -> result dict, or None
        to drop it, before analysis; "postprocess": fn(findings list) -> findings list."""
        if stage not in self._processors:
            raise ValueError(f"add_processor: stage must be 'preprocess' or 'postprocess', not {stage!r}")
        if not callable(fn):
            raise TypeError(f"add_processor: {fn!r} is not callable")
        self._processors[stage].append(fn)

    def _cached(self, key: Any, test_ids: frozenset[str] | None, compute: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.cache_ttl:
                return hit[1]
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

    def _where(self, filter_params: dict[str, Any] | None, time_range: tuple[float, float] | None,
               ) -> tuple[list[str], list[Any], list[str]]:
        clauses: list[str] = []
        params: list[Any] = []
        metric_names: list[str] = []
        for key, value in (filter_params or {}).items():
            if key in ("metric", "metrics"):
                metric_names = [value] if isinstance(value, str) else list(value)
                continue
            expr = _dim_expr(key)
            values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
            if not values:
                raise ValueError(f"aggregator: filter {key!r} has an empty list of values")
            clauses.append(f"CAST({expr} AS TEXT) IN ({','.join('?' * len(values))})")
            params.extend(str(v) for v in values)
        if time_range is not None:
            lo, hi = time_range
            clauses.append("r.timestamp >= ? AND r.timestamp < ?")
            params.extend([float(lo), float(hi)])
        return clauses, params, metric_names

    def _source(self, result_type: str, metric_names: list[str]) -> tuple[str, str, str, list[Any]]:
        """(FROM clause, metric-name expression, value expression, params) for a result type."""
        if result_type not in _RESULT_TYPES:
            raise ValueError(f"aggregator: result_type must be one of {_RESULT_TYPES}, not {result_type!r}")
        joins = ("LEFT JOIN workers w ON w.worker_id = r.worker_id "
                 "LEFT JOIN tasks t ON t.task_id = r.task_id")
        if result_type == "execution":
            src = f"FROM results r {joins} WHERE r.execution_time IS NOT NULL"
            return src, "'execution_time'", "r.execution_time", []
        src = f"FROM metrics m JOIN results r ON r.result_id = m.result_id {joins} WHERE 1=1"
        params: list[Any] = []
        if metric_names:
            src += f" AND m.name IN ({','.join('?' * len(metric_names))})"
            params.extend(metric_names)
        return src, "m.name", "m.value", params

    def _slim(self, sql: str, needed: str) -> str:
        # Joins to workers and tasks cost a lookup per row; drop the ones the query does not use.
        if "w." not in needed:
            sql = sql.replace("LEFT JOIN workers w ON w.worker_id = r.worker_id ", "")
        if "t." not in needed:
            sql = sql.replace("LEFT JOIN tasks t ON t.task_id = r.task_id", "")
        return sql

    def load_groups(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                    filter_params: dict[str, Any] | None = None, time_range: tuple[float, float] | None = None,
                    ) -> tuple[list[str], list[str], list[NDArray[np.float64]]]:
        """(group keys, metric names, values) per (group, metric), values in time order (ties in the
        order SQLite scanned them)."""
        dims = _dims(aggregation_level)
        key_expr = f" || '{_SEP}' || ".join(f"COALESCE(CAST({_dim_expr(d)} AS TEXT), '(none)')" for d in dims)
        clauses, wparams, metric_names = self._where(filter_params, time_range)
        parts: list[tuple[str, list[Any]]] = []
        kinds = ("performance", "execution") if result_type == "all" else (result_type,)
        for kind in kinds:
            src, name_expr, value_expr, sparams = self._source(kind, metric_names)
            where = "".join(f" AND {c}" for c in clauses)
            # One sort (the GROUP BY's), not two: ordering by time first made SQLite sort every row
            # twice, which was most of the load's time. Timestamps come along and numpy orders them.
            sql = (f"SELECT {key_expr} AS k, {name_expr} AS n, "
                   f"group_concat({_TIME_US}), group_concat({value_expr}) "
                   f"{src}{where} AND {value_expr} IS NOT NULL GROUP BY k, n")
            parts.append((self._slim(sql, key_expr + where), sparams + wparams))
        keys: list[str] = []
        names: list[str] = []
        arrays: list[NDArray[np.float64]] = []
        with self._lock:
            conn = self._db()
            for sql, params in parts:
                for k, n, stamps, text in conn.execute(sql, params):
                    keys.append(k)
                    names.append(n)
                    arrays.append(_time_ordered(_parse_numbers(stamps, np.int64), _parse_numbers(text), k, n))
        return keys, names, arrays

    # -- the seed's queries ----------------------------------------------------------------------

    def aggregate_results(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                          filter_params: dict[str, Any] | None = None,
                          time_range: tuple[float, float] | None = None, *, include_trends: bool = False,
                          ) -> dict[str, Any]:
        """{"basic_statistics": {group: {metric: {count, mean, median, std, min, max, p5..p99,
        ci95_low, ci95_high, cv}}}, "trends": ... (when asked), plus the query echoed back}."""
        dims = _dims(aggregation_level)
        cache_key = ("aggregate", result_type, tuple(dims), _freeze(filter_params), time_range, include_trends)

        def compute() -> dict[str, Any]:
            keys, names, arrays = self.load_groups(result_type, dims, filter_params, time_range)
            basic = summarize(keys, names, arrays)
            out: dict[str, Any] = {
                "result_type": result_type, "aggregation_level": ",".join(dims),
                "filter_params": filter_params or {}, "time_range": list(time_range) if time_range else None,
                "generated_at": self.clock(), "basic_statistics": basic,
            }
            if include_trends:
                tr: dict[str, dict[str, Any]] = {}
                for k, n, arr in zip(keys, names, arrays, strict=False):
                    tr.setdefault(k, {})[n] = trend(arr, higher_is_better=self.polarity(n))
                out["trends"] = tr
            return out

        return self._cached(cache_key, _cover(filter_params), compute)

    def get_result_anomalies(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                             filter_params: dict[str, Any] | None = None,
                             time_range: tuple[float, float] | None = None, *, threshold: float | None = None,
                             limit: int = 1000) -> list[dict[str, Any]]:
        """Results whose metric lies more than ``threshold`` robust z from its series' median."""
        dims = _dims(aggregation_level)
        thr = self.anomaly_threshold if threshold is None else float(threshold)
        cache_key = ("anomalies", result_type, tuple(dims), _freeze(filter_params), time_range, thr, limit)

        def compute() -> list[dict[str, Any]]:
            key_expr = f" || '{_SEP}' || ".join(f"COALESCE(CAST({_dim_expr(d)} AS TEXT), '(none)')" for d in dims)
            clauses, wparams, metric_names = self._where(filter_params, time_range)
            kinds = ("performance", "execution") if result_type == "all" else (result_type,)
            rows: list[tuple[Any, ...]] = []
            with self._lock:
                conn = self._db()
                for kind in kinds:
                    src, name_expr, value_expr, sparams = self._source(kind, metric_names)
                    where = "".join(f" AND {c}" for c in clauses)
                    sql = (f"SELECT {key_expr} || '{_SEP}' || {name_expr}, {value_expr}, r.result_id, r.timestamp "
                           f"{src}{where}")
                    rows.extend(conn.execute(self._slim(sql, key_expr + where), sparams + wparams).fetchall())
            if not rows:
                return []
            series, values, rids, stamps = zip(*rows, strict=False)
            uniq, codes = np.unique(np.array(series, dtype=str), return_inverse=True)
            found = find_anomalies(codes, np.array(values, dtype=np.float64), threshold=thr,
                                   result_ids=rids, series_names=uniq.tolist())
            by_id = dict(zip(rids, stamps, strict=False))
            for f in found[:limit]:
                parts = str(f["series"]).split(_SEP)
                f["group"] = _SEP.join(parts[:-1])
                f["metric"] = parts[-1]
                f["timestamp"] = by_id.get(f["result_id"])
                f["kind"] = "anomaly"
            return found[:limit]

        return self._cached(cache_key, _cover(filter_params), compute)

    def get_comparison_report(self, result_type: str = "performance", aggregation_level: str | Sequence[str] = "test_id",
                              filter_params: dict[str, Any] | None = None,
                              time_range: tuple[float, float] | None = None, *,
                              current_filter: dict[str, Any] | None = None,
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
            base = {(k, n): a for k, n, a in zip(bk, bn, ba, strict=False)}
            cur = {(k, n): a for k, n, a in zip(ck, cn, ca, strict=False)}
            report: dict[str, dict[str, Any]] = {}
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

    # -- live ingestion --------------------------------------------------------------------------

    def _series_key(self, result: dict[str, Any], metric: str) -> tuple[str, ...]:
        parts = []
        for d in self.series_dims:
            if d == "hardware_id":
                parts.append(str(self._hardware_of(result.get("worker_id"))))
            else:
                parts.append(str(result.get(d)))
        return (*parts, metric)

    def _hardware_of(self, worker_id: Any) -> str | None:
        wid = str(worker_id)
        if wid not in self._hardware:
            try:
                row = self._db().execute("SELECT hardware_id FROM workers WHERE worker_id = ?", (wid,)).fetchone()
            except FileNotFoundError:
                row = None
            self._hardware[wid] = row[0] if row else None
        return self._hardware[wid]

    def ingest(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Feed newly stored results; returns new findings (dicts with "kind": "anomaly" or
        "change_point"). Only the touched series' tails are examined."""
        for fn in self._processors["preprocess"]:
            results = [r2 for r2 in (fn(r) for r in results) if r2 is not None]
        touched: dict[tuple[str, ...], int] = {}
        test_ids: set[str] = set()
        with self._lock:
            for res in results:
                test_ids.add(str(res.get("test_id")))
                metrics = res.get("metrics") or {}
                for name, value in metrics.items():
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                        continue
                    key = self._series_key(res, name)
                    vals, ids, stamps = self._hist.setdefault(key, ([], [], []))
                    vals.append(float(value))
                    ids.append(res.get("result_id"))
                    stamps.append(res.get("timestamp"))
                    touched[key] = touched.get(key, 0) + 1
            findings: list[dict[str, Any]] = []
            for key, n_new in touched.items():
                findings.extend(self._examine(key, n_new))
            self._trim(touched)
        self.invalidate(test_ids)
        for fn in self._processors["postprocess"]:
            findings = fn(findings)
        return findings

    def _trim(self, touched: dict[tuple[str, ...], int]) -> None:
        for key in touched:
            vals, ids, stamps = self._hist[key]
            extra = len(vals) - self.max_history
            if extra > 0:
                del vals[:extra], ids[:extra], stamps[:extra]
                self._offset[key] = self._offset.get(key, 0) + extra

    def _series_dict(self, key: tuple[str, ...]) -> dict[str, str]:
        return {**dict(zip(self.series_dims, key[:-1], strict=False)), "metric": key[-1]}

    def _examine(self, key: tuple[str, ...], n_new: int) -> list[dict[str, Any]]:
        vals, ids, stamps = self._hist[key]
        metric = key[-1]
        hib = self.polarity(metric)
        out: list[dict[str, Any]] = []
        window = int(self.cp_options.get("window", CP_DEFAULTS["window"]))
        tail = np.asarray(vals[-(2 * window + n_new):], dtype=np.float64)
        start = len(vals) - tail.size
        # Anomalies: each new value against the history before the batch (robust z).
        hist = tail[:-n_new][-200:]
        if hist.size >= 5:
            new = tail[-n_new:]
            codes = np.concatenate((np.zeros(hist.size, dtype=np.intp), np.ones(new.size, dtype=np.intp)))
            _s, med, sigma = robust_z(codes[: hist.size], hist, 1)
            m, s = float(med[0]), float(sigma[0])
            if s > 0:
                scores = (new - m) / s
                for j in np.flatnonzero(np.abs(scores) > self.anomaly_threshold).tolist():
                    i = len(vals) - n_new + j
                    out.append({
                        "kind": "anomaly", "series": self._series_dict(key), "metric": metric,
                        "result_id": ids[i], "timestamp": stamps[i], "value": float(new[j]),
                        "score": float(scores[j]), "median": m,
                        "expected_range": [m - self.anomaly_threshold * s, m + self.anomaly_threshold * s],
                        "direction": "improvement" if (new[j] > m) == hib else "regression",
                    })
        # Change points in the tail; report each absolute index once.
        if tail.size >= 2 * int(self.cp_options.get("min_size", CP_DEFAULTS["min_size"])):
            cps = detect_change_points(tail, higher_is_better=hib, **self.cp_options)
            offset = self._offset.get(key, 0)
            reported = self._reported.setdefault(key, [])
            tol = int(self.cp_options.get("min_size", CP_DEFAULTS["min_size"]))
            for cp in cps:
                absolute = offset + start + cp.index
                if any(abs(absolute - r) <= tol for r in reported):
                    continue
                reported.append(absolute)
                i = start + cp.index
                d = cp.to_dict()
                d.update(kind="change_point", series=self._series_dict(key), metric=metric, index=absolute,
                         result_id=ids[i], timestamp=stamps[i])
                out.append(d)
            del reported[:-50]
        return out

    def series_history(self, key: tuple[str, ...]) -> list[float]:
        """The in-memory history of one series (for tests and the window's sparklines)."""
        with self._lock:
            return list(self._hist.get(key, ([], [], []))[0])


def _time_ordered(stamps: NDArray[np.int64], values: NDArray[np.float64], key: str, name: str,
                  ) -> NDArray[np.float64]:
    if stamps.size != values.size:
        raise RuntimeError(f"aggregator: group {key!r} metric {name!r} came back with {stamps.size} "
                           f"timestamps for {values.size} values")
    if stamps.size < 2 or bool(np.all(stamps[1:] >= stamps[:-1])):
        return values
    return values[np.argsort(stamps, kind="stable")]


def summarize(keys: Sequence[str], names: Sequence[str], arrays: Sequence[NDArray[np.float64]],
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """{group: {metric: stats}} from per-(group, metric) arrays, all statistics in one vectorised pass."""
    if not arrays:
        return {}
    lengths = np.fromiter((a.size for a in arrays), dtype=np.intp, count=len(arrays))
    codes = np.repeat(np.arange(len(arrays)), lengths)
    values = np.concatenate(arrays) if arrays else np.empty(0)
    rows = stats_to_dicts(group_stats(codes, values, len(arrays)))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for k, n, row in zip(keys, names, rows, strict=False):
        out.setdefault(k, {})[n] = row
    return out


def _freeze(obj: Any) -> Any:
    if isinstance(obj, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple, set, frozenset)):
        return tuple(sorted((_freeze(v) for v in obj), key=repr))
    return obj


def _cover(filter_params: dict[str, Any] | None) -> frozenset[str] | None:
    """The test ids a query is limited to (None: any test), for cache invalidation."""
    if not filter_params or "test_id" not in filter_params:
        return None
    v = filter_params["test_id"]
    return frozenset(str(x) for x in (v if isinstance(v, (list, tuple, set, frozenset)) else [v]))
