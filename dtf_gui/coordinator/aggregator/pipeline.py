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
from dtf_gui.coordinator.aggregator.anomalies import find_anomalies
from dtf_gui.coordinator.aggregator.anomalies import window_stats_unchecked as window_stats
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
# Fewest values of a level that anomalies are judged against (median and MAD of fewer are noise).
_MIN_REFERENCE = 5
_HALF_PI = 0.5 * np.pi
_NO_CHANGE_POINTS = np.empty(0, dtype=np.int64)


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
                 polarity: Callable[[str], bool] = higher_is_better, anomaly_window: int = 100) -> None:
        self.db_path = Path(db_path)
        self.anomaly_threshold = float(anomaly_threshold)
        self.cache_ttl = float(cache_ttl)
        self.comparative_lookback_days = float(comparative_lookback_days)
        self.clock = clock
        self.series_dims = tuple(series_dims)
        self.max_history = int(max_history)
        self.cp_options = dict(change_point_options or {})
        self.polarity = polarity
        if anomaly_window < _MIN_REFERENCE:
            raise ValueError(f"ResultAggregator: anomaly_window must be at least {_MIN_REFERENCE}, "
                             f"not {anomaly_window}")
        # How many of a level's latest values a new value is judged against.
        self.anomaly_window = int(anomaly_window)
        self._conn: Any = None
        self._lock = threading.RLock()
        self._cache: dict[Any, tuple[float, Any, frozenset[str] | None]] = {}
        self._processors: dict[str, list[Processor]] = {"preprocess": [], "postprocess": []}
        # Per series: values, result ids and timestamps (bounded), plus the change points already reported.
        self._hist: dict[tuple[str, ...], tuple[list[float], list[Any], list[float | None]]] = {}
        self._offset: dict[tuple[str, ...], int] = {}
        self._reported: dict[tuple[str, ...], list[int]] = {}
        # Per series: the latest anomalies reported, (absolute index, result id), so that a
        # change point found later can name those that were really the start of its new level.
        self._flagged: dict[tuple[str, ...], list[tuple[int, Any]]] = {}
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
        """Findings for the ``n_new`` newest values of one series.

        Change points first (detection over the tail, each absolute index reported once), then
        anomalies, each new value judged by :meth:`_judge` against the values before it (earlier
        values of the same batch included) within its own level. A series therefore gives the same
        anomalies whether it arrives one value at a time or in batches. One exception is
        unavoidable: fed one value at a time, the first values of a new level look exactly like
        spikes until the change point can be seen (``min_size`` values later), so they are reported
        as anomalies then; the change point, when found, names in ``supersedes`` the result ids of
        those that a judgement knowing it would not flag, for the window to retract."""
        vals, ids, stamps = self._hist[key]
        metric = key[-1]
        hib = self.polarity(metric)
        n = len(vals)
        offset = self._offset.get(key, 0)
        window = int(self.cp_options.get("window", CP_DEFAULTS["window"]))
        min_size = int(self.cp_options.get("min_size", CP_DEFAULTS["min_size"]))
        span = 2 * window + n_new
        # Enough context for the change-point tail and for the reference window of every new value.
        ctx = min(n, max(span, self.anomaly_window + _MIN_REFERENCE + n_new))
        x = np.asarray(vals[n - ctx:], dtype=np.float64)
        base = offset + n - ctx  # absolute index of x[0]
        reported = self._reported.setdefault(key, [])
        new_cps: list[tuple[int, Any]] = []
        tail_at = max(ctx - span, 0)
        if ctx - tail_at >= 2 * min_size:
            for cp in detect_change_points(x[tail_at:], higher_is_better=hib, **self.cp_options):
                absolute = base + tail_at + cp.index
                if any(abs(absolute - r) <= min_size for r in reported):
                    continue
                reported.append(absolute)
                new_cps.append((absolute, cp))
            del reported[:-50]
        known = np.array(sorted(reported), dtype=np.int64) if reported else _NO_CHANGE_POINTS
        flagged = self._flagged.setdefault(key, [])
        supersedes = self._superseded(flagged, x, base, [c for c, _cp in new_cps], known)
        out = self._anomalies(key, x, base, n_new, known, hib)
        for absolute, cp in new_cps:
            i = absolute - offset
            d = cp.to_dict()
            d.update(kind="change_point", series=self._series_dict(key), metric=metric, index=absolute,
                     result_id=ids[i], timestamp=stamps[i], supersedes=supersedes.get(absolute, []))
            out.append(d)
        flagged.extend((f["index"], f["result_id"]) for f in out if f["kind"] == "anomaly")
        del flagged[:-100]
        return out

    def _judge(self, x: NDArray[np.float64], base: int, p: NDArray[np.intp], known: NDArray[np.int64],
               ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
        """(score, reference median, reference sigma, reference size) of the values ``x[p]``, where
        x[0] has absolute index ``base`` and ``known`` are the series' change points (absolute,
        sorted); vectorised over ``p``. A value is an anomaly where |score| > the threshold.

        A value's reference is its own level: the values since the last change point at or before
        it, at most ``anomaly_window`` of them, and at least ``_MIN_REFERENCE`` (fewer: score 0).
        The first value of a new level is the change point, never an anomaly. While the new level
        has fewer than ``_MIN_REFERENCE`` values its noise cannot be estimated, so a value there is
        an anomaly only when it is extreme against both levels: beyond the threshold from the old
        level's median and from the new level's median so far, both in the old level's robust sigma
        (the noise is assumed to carry over the step); its score is then against the new level.

        Sigma is widened by sqrt(1 + pi / 2k) for a reference of k values: a new value's distance
        from the median of k values has that much more spread than from the true level (the
        sample median's variance is about pi/2 sigma^2 / k), which keeps young series and new
        levels from flagging ordinary noise; with 100 values it is under 1 %."""
        thr = self.anomaly_threshold
        a = base + p
        if known.size:
            where = np.searchsorted(known, a, side="right") - 1
            seg = np.where(where >= 0, known[np.maximum(where, 0)], -1)
            prev = np.where(where >= 1, known[np.maximum(where - 1, 0)], -1)
            lo = np.maximum(np.maximum(seg, a - self.anomaly_window), base)
        else:
            lo = np.maximum(a - self.anomaly_window, base)
        med, sigma, count = window_stats(x, lo - base, p)
        sigma *= np.sqrt(1.0 + _HALF_PI / np.maximum(count, 1))
        level = count >= _MIN_REFERENCE
        forming = (~level & (seg > base) & (a > seg)) if known.size else level[:0]
        if forming.any():
            f = np.flatnonzero(forming)
            olo = np.maximum(np.maximum(prev[f], seg[f] - self.anomaly_window), base)
            omed, osig, ocount = window_stats(x, olo - base, seg[f] - base)
            with np.errstate(divide="ignore", invalid="ignore"):
                s_old = osig * np.sqrt(1.0 + _HALF_PI / ocount)
                s_new = osig * np.sqrt(1.0 + _HALF_PI / count[f])
                v = x[p[f]]
                both = (ocount >= _MIN_REFERENCE) & (np.abs(v - omed) > thr * s_old) & (
                    np.abs(v - med[f]) > thr * s_new)
            sigma[f] = s_new
            level[f] = both
        ok = level & (sigma > 0)
        score = np.where(ok, (x[p] - med) / np.where(ok, sigma, 1.0), 0.0)
        return score, med, sigma, count

    def _anomalies(self, key: tuple[str, ...], x: NDArray[np.float64], base: int, n_new: int,
                   known: NDArray[np.int64], hib: bool) -> list[dict[str, Any]]:
        """Anomaly findings among the last ``n_new`` values of ``x`` (see :meth:`_judge`)."""
        thr = self.anomaly_threshold
        p = np.arange(x.size - n_new, x.size)
        score, med, sigma, count = self._judge(x, base, p, known)
        _vals, ids, stamps = self._hist[key]
        offset = self._offset.get(key, 0)
        metric = key[-1]
        out: list[dict[str, Any]] = []
        for j in np.flatnonzero(np.abs(score) > thr).tolist():
            a = base + int(p[j])
            i = a - offset
            m, s, v = float(med[j]), float(sigma[j]), float(x[p[j]])
            out.append({
                "kind": "anomaly", "series": self._series_dict(key), "metric": metric, "index": a,
                "result_id": ids[i], "timestamp": stamps[i], "value": v, "score": float(score[j]),
                "median": m, "expected_range": [m - thr * s, m + thr * s], "reference_size": int(count[j]),
                "direction": "improvement" if (v > m) == hib else "regression",
            })
        return out

    def _superseded(self, flagged: list[tuple[int, Any]], x: NDArray[np.float64], base: int,
                    new_cps: list[int], known: NDArray[np.int64]) -> dict[int, list[Any]]:
        """{change point: result ids} of anomalies reported earlier that a judgement knowing the new
        change points does not flag (they were the new level's first values, seen before the
        change could be); they leave ``flagged``."""
        if not new_cps or not flagged:
            return {}
        first = min(new_cps)
        cand = [f for f in flagged if f[0] >= first and f[0] >= base]
        if not cand:
            return {}
        p = np.array([f[0] - base for f in cand], dtype=np.intp)
        score, _m, _s, _c = self._judge(x, base, p, known)
        cps = sorted(new_cps)
        out: dict[int, list[Any]] = {}
        for f, sc in zip(cand, score.tolist(), strict=True):
            if abs(sc) <= self.anomaly_threshold:
                owner = max(c for c in cps if c <= f[0])
                out.setdefault(owner, []).append(f[1])
                flagged.remove(f)
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
