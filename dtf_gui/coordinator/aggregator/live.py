"""LiveDetector: anomalies and change points in results as they are stored.

It keeps a bounded in-memory history per series (by default a series is a test on a worker, one
metric) and examines only the tails of the series a batch touched. Findings are Structs
(:mod:`~dtf_gui.coordinator.aggregator.findings`). The database is read only to learn a worker's
hardware id, and only when ``series_dims`` names "hardware_id". It caches nothing that the query
service serves: whoever stores results invalidates that service's cache itself.
"""

from __future__ import annotations

import inspect
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np
from numpy.typing import NDArray

from dtf_gui.coordinator import store
from dtf_gui.coordinator.aggregator.anomalies import window_stats_unchecked
from dtf_gui.coordinator.aggregator.changepoints import DEFAULTS as CP_DEFAULTS
from dtf_gui.coordinator.aggregator.changepoints import ChangePoint, detect_change_points
from dtf_gui.coordinator.aggregator.compare import higher_is_better
from dtf_gui.coordinator.aggregator.findings import Anomaly, ChangePointFound, Finding
from dtf_gui.coordinator.aggregator.metricmeta import MetricCatalog, MetricInfo, metric_info_for
from dtf_gui.coordinator.records import Result

__all__ = ["LiveDetector", "Postprocessor", "Preprocessor"]

Preprocessor = Callable[[Result], Result | None]
Postprocessor = Callable[[list[Finding]], list[Finding]]
SeriesKey = tuple[str, ...]

# Fewest values of a level that anomalies are judged against (median and MAD of fewer are noise).
_MIN_REFERENCE = 5
_HALF_PI = 0.5 * np.pi
_NO_CHANGE_POINTS = np.empty(0, dtype=np.int64)
# What change_point_options may set: detect_change_points' keyword options, less the polarity
# (which comes from ``polarity``, per metric).
_CP_OPTIONS = frozenset(inspect.signature(detect_change_points).parameters) - {"values", "higher_is_better"}
_SERIES_DIMS = frozenset(Result.__struct_fields__) | {"hardware_id"}


class LiveDetector:
    """Anomalies and change points in newly stored results, series by series (see :meth:`ingest`).

    Whether a change is an improvement or a regression comes from ``catalog`` (declared
    directions, the name guess as the labelled fallback) or from ``polarity`` (name -> higher is
    better) where one is given; without either, from the name guess."""

    def __init__(self, db_path: str | Path | None = None, *, anomaly_threshold: float = 2.5,
                 series_dims: Sequence[str] = ("test_id", "worker_id"), max_history: int = 1000,
                 change_point_options: Mapping[str, Any] | None = None,
                 polarity: Callable[[str], bool] | None = None, anomaly_window: int = 100,
                 catalog: MetricCatalog | None = None) -> None:
        self.db_path = Path(db_path) if db_path is not None else None
        self.anomaly_threshold = float(anomaly_threshold)
        self.series_dims = tuple(series_dims)
        unknown = sorted(set(self.series_dims) - _SERIES_DIMS)
        if unknown:
            raise ValueError(f"LiveDetector: series_dims {unknown} are neither result fields nor 'hardware_id'")
        if "hardware_id" in self.series_dims and self.db_path is None:
            raise ValueError("LiveDetector: series_dims names 'hardware_id', which needs db_path (the workers table)")
        self.max_history = int(max_history)
        # detect_change_points' keyword options (window, min_size, max_pvalue, ...): ints and floats.
        self.cp_options: dict[str, Any] = dict(change_point_options or {})
        bad = sorted(set(self.cp_options) - _CP_OPTIONS)
        if bad:
            raise ValueError(f"LiveDetector: change_point_options {bad} are not options of detect_change_points "
                             f"({', '.join(sorted(_CP_OPTIONS))})")
        self.catalog = catalog
        self.polarity: Callable[[str], bool] = polarity or (catalog.polarity if catalog else higher_is_better)
        self._info: Callable[[str], MetricInfo] = metric_info_for(polarity, catalog)
        if anomaly_window < _MIN_REFERENCE:
            raise ValueError(f"LiveDetector: anomaly_window must be at least {_MIN_REFERENCE}, "
                             f"not {anomaly_window}")
        # How many of a level's latest values a new value is judged against.
        self.anomaly_window = int(anomaly_window)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._preprocessors: list[Preprocessor] = []
        self._postprocessors: list[Postprocessor] = []
        # Per series: values, result ids and timestamps (bounded), plus the change points already reported.
        self._hist: dict[SeriesKey, tuple[list[float], list[str], list[float]]] = {}
        self._offset: dict[SeriesKey, int] = {}
        self._reported: dict[SeriesKey, list[int]] = {}
        # Per series: the latest anomalies reported, (absolute index, result id), so that a
        # change point found later can name those that were really the start of its new level.
        self._flagged: dict[SeriesKey, list[tuple[int, str]]] = {}
        self._hardware: dict[str, str | None] = {}

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def add_processor(self, stage: str, fn: Preprocessor | Postprocessor) -> None:
        """Register a custom processor. "preprocess": fn(Result) -> Result, or None to drop it, before
        analysis (change one with ``msgspec.structs.replace``); "postprocess": fn(findings) ->
        findings, on each batch's findings (it may annotate a finding's ``notes``)."""
        if stage not in ("preprocess", "postprocess"):
            raise ValueError(f"add_processor: stage must be 'preprocess' or 'postprocess', not {stage!r}")
        if not callable(fn):
            raise TypeError(f"add_processor: {fn!r} is not callable")
        if stage == "preprocess":
            self._preprocessors.append(cast(Preprocessor, fn))
        else:
            self._postprocessors.append(cast(Postprocessor, fn))

    def _hardware_of(self, worker_id: str) -> str | None:
        """A worker's hardware id from the workers table (remembered; None while it is unknown)."""
        if worker_id not in self._hardware:
            row = None
            if self.db_path is not None and self._conn is None and self.db_path.exists():
                self._conn = store.connect_readonly(self.db_path)
            if self._conn is not None:
                row = self._conn.execute("SELECT hardware_id FROM workers WHERE worker_id = ?",
                                         (worker_id,)).fetchone()
            self._hardware[worker_id] = row[0] if row else None
        return self._hardware[worker_id]

    def _series_key(self, result: Result, metric: str) -> SeriesKey:
        parts = []
        for d in self.series_dims:
            if d == "hardware_id":
                parts.append(str(self._hardware_of(result.worker_id)))
            else:
                parts.append(str(getattr(result, d)))
        return (*parts, metric)

    def _series_dict(self, key: SeriesKey) -> dict[str, str]:
        return {**dict(zip(self.series_dims, key[:-1], strict=True)), "metric": key[-1]}

    # -- live ingestion --------------------------------------------------------------------------

    def ingest(self, results: Sequence[Result]) -> list[Finding]:
        """Feed newly stored results; returns the new findings, anomalies and change points. Only
        the touched series' tails are examined."""
        for pre in self._preprocessors:
            results = [r2 for r2 in (pre(r) for r in results) if r2 is not None]
        touched: dict[SeriesKey, int] = {}
        findings: list[Finding] = []
        with self._lock:
            for res in results:
                for name, value in res.metrics.items():
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                        continue
                    key = self._series_key(res, name)
                    vals, ids, stamps = self._hist.setdefault(key, ([], [], []))
                    vals.append(float(value))
                    ids.append(res.result_id)
                    stamps.append(res.timestamp)
                    touched[key] = touched.get(key, 0) + 1
            for key, n_new in touched.items():
                findings.extend(self._examine(key, n_new))
            self._trim(touched)
        for post in self._postprocessors:
            findings = post(findings)
        return findings

    def _trim(self, touched: dict[SeriesKey, int]) -> None:
        for key in touched:
            vals, ids, stamps = self._hist[key]
            extra = len(vals) - self.max_history
            if extra > 0:
                del vals[:extra], ids[:extra], stamps[:extra]
                self._offset[key] = self._offset.get(key, 0) + extra

    def _examine(self, key: SeriesKey, n_new: int) -> list[Finding]:
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
        info = self._info(metric)
        hib = info.higher_is_better
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
        new_cps: list[tuple[int, ChangePoint]] = []
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
        anomalies = self._anomalies(key, x, base, n_new, known, info)
        out: list[Finding] = list(anomalies)
        for absolute, cp in new_cps:
            i = absolute - offset
            stats = {**msgspec.structs.asdict(cp), "index": absolute}
            out.append(ChangePointFound(**stats, series=self._series_dict(key), metric=metric, result_id=ids[i],
                                        timestamp=stamps[i], supersedes=supersedes.get(absolute, []),
                                        unit=info.unit, direction_source=info.direction_source))
        flagged.extend((f.index, f.result_id) for f in anomalies)
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
        med, sigma, count = window_stats_unchecked(x, lo - base, p)
        sigma *= np.sqrt(1.0 + _HALF_PI / np.maximum(count, 1))
        level = count >= _MIN_REFERENCE
        forming = (~level & (seg > base) & (a > seg)) if known.size else level[:0]
        if forming.any():
            f = np.flatnonzero(forming)
            olo = np.maximum(np.maximum(prev[f], seg[f] - self.anomaly_window), base)
            omed, osig, ocount = window_stats_unchecked(x, olo - base, seg[f] - base)
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

    def _anomalies(self, key: SeriesKey, x: NDArray[np.float64], base: int, n_new: int,
                   known: NDArray[np.int64], info: MetricInfo) -> list[Anomaly]:
        """Anomaly findings among the last ``n_new`` values of ``x`` (see :meth:`_judge`)."""
        thr = self.anomaly_threshold
        hib = info.higher_is_better
        p = np.arange(x.size - n_new, x.size)
        score, med, sigma, count = self._judge(x, base, p, known)
        _vals, ids, stamps = self._hist[key]
        offset = self._offset.get(key, 0)
        metric = key[-1]
        out: list[Anomaly] = []
        for j in np.flatnonzero(np.abs(score) > thr).tolist():
            a = base + int(p[j])
            i = a - offset
            m, s, v = float(med[j]), float(sigma[j]), float(x[p[j]])
            out.append(Anomaly(
                series=self._series_dict(key), metric=metric, index=a, result_id=ids[i], timestamp=stamps[i],
                value=v, score=float(score[j]), median=m, expected_low=m - thr * s, expected_high=m + thr * s,
                reference_size=int(count[j]), direction="improvement" if (v > m) == hib else "regression",
                unit=info.unit, direction_source=info.direction_source))
        return out

    def _superseded(self, flagged: list[tuple[int, str]], x: NDArray[np.float64], base: int,
                    new_cps: list[int], known: NDArray[np.int64]) -> dict[int, list[str]]:
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
        out: dict[int, list[str]] = {}
        for f, sc in zip(cand, score.tolist(), strict=True):
            if abs(sc) <= self.anomaly_threshold:
                owner = max(c for c in cps if c <= f[0])
                out.setdefault(owner, []).append(f[1])
                flagged.remove(f)
        return out

    def series_history(self, key: SeriesKey) -> list[float]:
        """The in-memory history of one series (for tests and the window's sparklines)."""
        with self._lock:
            return list(self._hist.get(key, ([], [], []))[0])
