"""LiveDetector: anomalies, changes and trends in results as they are stored.

It keeps a bounded in-memory history per series (by default a series is a test on a worker, one
metric) and judges each new value in order: the per-value stage (:mod:`.online`: the level, its
anomalies, a suspected change) on every value, the windowed test (:func:`detect_change_points`)
only to settle a suspicion or while a level is young, and a trend test every ``trend_every``
values. So a value costs microseconds in the common case (issue 13). Findings are Structs
(:mod:`~dtf_gui.coordinator.aggregator.findings`). The database is read only to learn a worker's
hardware id, and only when ``series_dims`` names "hardware_id". It caches nothing that the query
service serves: whoever stores results invalidates that service's cache itself.
"""

from __future__ import annotations

import inspect
import logging
import math
import sqlite3
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np

from dtf_gui.coordinator import store
from dtf_gui.coordinator.aggregator.changepoints import DEFAULTS as CP_DEFAULTS
from dtf_gui.coordinator.aggregator.changepoints import ChangePoint, detect_change_points
from dtf_gui.coordinator.aggregator.compare import higher_is_better
from dtf_gui.coordinator.aggregator.findings import Anomaly, ChangePointFound, Finding, TrendFound
from dtf_gui.coordinator.aggregator.metricmeta import MetricCatalog, MetricInfo, metric_info_for
from dtf_gui.coordinator.aggregator.online import MIN_REFERENCE, LevelMonitor, Suspicion, Verdict, widen
from dtf_gui.coordinator.aggregator.trends import mann_kendall, trend
from dtf_gui.coordinator.records import Result

__all__ = ["CONFIRM_DEFAULTS", "LiveDetector", "Postprocessor", "Preprocessor"]

log = logging.getLogger(__name__)

Preprocessor = Callable[[Result], Result | None]
Postprocessor = Callable[[list[Finding]], list[Finding]]
SeriesKey = tuple[str, ...]

# What change_point_options may set: detect_change_points' keyword options, less the polarity
# (which comes from ``polarity``, per metric).
_CP_OPTIONS = frozenset(inspect.signature(detect_change_points).parameters) - {"values", "higher_is_better"}
_SERIES_DIMS = frozenset(Result.__struct_fields__) | {"hardware_id"}
# The windowed test that confirms a suspicion, as the live detector calls it (change_point_options
# go over these). It sees the suspected level from its first values on, so it may not wait for a
# long after-segment (min_size 3), and it is asked again and again about one place, so it must be
# stricter than the offline default about the step itself (p 1e-4, not 1e-3) and may be looser
# about a trend (1e-4, not 1e-6: offline, that gate rejects 5 % steps whose t-test p is 1e-8;
# here the online stage has already said "abrupt"). Tuned on tests/bench/live_detection.py (false
# confirmations on flat series and on drifts against confirmation delay). No cycle search: a tail
# of a hundred results is too short to tell a cycle, and results are not evenly spaced in time.
CONFIRM_DEFAULTS: dict[str, Any] = {"min_size": 3, "max_pvalue": 1e-4, "max_trend_pvalue": 1e-4,
                                    "season_min_corr": 0.0}
# A suspicion whose new level stands less than this many standard errors from the old one (in the
# suspected direction) once it has _RETRACT_AFTER values is retracted: the level fell back.
_RETRACT_AFTER = 24
_RETRACT_EVIDENCE = 1.0
# Past confirm_within values, a suspicion stays only while the new level stands this many standard
# errors apart (a small shift the windowed test needs more values for), and never past
# _KEEP_FACTOR times confirm_within.
_KEEP_EVIDENCE = 3.0
_KEEP_FACTOR = 2
# The windowed test is asked after every value of a young suspected level, then every 4th.
_CONFIRM_EVERY_AFTER = 24
_CONFIRM_EVERY = 4
# Trends: tested over at most the latest _TREND_SPAN values of a level (thinned to _TREND_POINTS:
# both tests are O(n^2)), and only once it has _TREND_MIN.
_TREND_SPAN = 600
_TREND_POINTS = 300
_TREND_MIN = 100
_TREND_STEADY_P = 0.1
# Result ids remembered to judge each result once.
_SEEN = 200_000


def _line_beats_step(values: Sequence[float]) -> bool:
    """Whether ``values`` drift rather than step: a straight line fits them about as well as the
    best single step (two flat levels split anywhere), by BIC. The step has one parameter more
    (its location), so it wins only where it takes more than ln(n) noise variances off the line's
    residual sum of squares. Mann-Kendall alone calls a step a trend just as readily, and a
    small step the windowed test has not confirmed would otherwise be reported as a drift."""
    y = np.asarray(values, dtype=np.float64)
    n = y.size
    t = np.arange(n, dtype=np.float64)
    tc = t - t.mean()
    yc = y - y.mean()
    rss_line = float(yc @ yc - (tc @ yc) ** 2 / (tc @ tc))
    c1 = np.cumsum(y)[:-1]
    c2 = np.cumsum(y * y)[:-1]
    k = np.arange(1, n, dtype=np.float64)
    total1, total2 = float(c1[-1] + y[-1]), float(c2[-1] + y[-1] ** 2)
    rss_step = float(((c2 - c1**2 / k) + ((total2 - c2) - (total1 - c1) ** 2 / (n - k))).min())
    noise = min(rss_line, rss_step) / max(n - 3, 1)
    return rss_line - rss_step <= math.log(n) * noise


def _direction(delta: float, higher_is_better: bool) -> str:
    return "improvement" if (delta > 0) == higher_is_better else "regression"


class LiveDetector:
    """Anomalies and change points in newly stored results, series by series (see :meth:`ingest`).

    Whether a change is an improvement or a regression comes from ``catalog`` (declared
    directions, the name guess as the labelled fallback) or from ``polarity`` (name -> higher is
    better) where one is given; without either, from the name guess."""

    def __init__(self, db_path: str | Path | None = None, *, anomaly_threshold: float = 2.5,
                 series_dims: Sequence[str] = ("test_id", "worker_id"), max_history: int = 1000,
                 change_point_options: Mapping[str, Any] | None = None,
                 polarity: Callable[[str], bool] | None = None, anomaly_window: int = 100,
                 catalog: MetricCatalog | None = None, suspect_threshold: float = 6.0, suspect_drift: float = 0.5,
                 suspect_young: float = 0.3,
                 trend_min_slope: float = 0.002, trend_pvalue: float = 1e-4, trend_every: int = 50,
                 confirm_within: int = 64, confirm_slack: int = 12, confirm_context: int = 96) -> None:
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
        self.cp_options: dict[str, Any] = {**CONFIRM_DEFAULTS, **(change_point_options or {})}
        bad = sorted(set(self.cp_options) - _CP_OPTIONS)
        if bad:
            raise ValueError(f"LiveDetector: change_point_options {bad} are not options of detect_change_points "
                             f"({', '.join(sorted(_CP_OPTIONS))})")
        self.catalog = catalog
        self.polarity: Callable[[str], bool] = polarity or (catalog.polarity if catalog else higher_is_better)
        self._info: Callable[[str], MetricInfo] = metric_info_for(polarity, catalog)
        if anomaly_window < MIN_REFERENCE:
            raise ValueError(f"LiveDetector: anomaly_window must be at least {MIN_REFERENCE}, "
                             f"not {anomaly_window}")
        # How many of a level's latest values a new value is judged against.
        self.anomaly_window = int(anomaly_window)
        # The online stage: a change is suspected when the CUSUM of the standardised values passes
        # suspect_threshold (h), each value adding its z less suspect_drift (k): k = 0.5 is tuned
        # to shifts of about one sigma, h = 5 gives a false suspicion every few hundred steady
        # values on each side, which the windowed test retracts (see tests/bench/live_detection.py).
        self.suspect_threshold = float(suspect_threshold)
        self.suspect_drift = float(suspect_drift)
        self.suspect_young = float(suspect_young)
        # Trends: relative change per 100 results a significant drift must reach (0.002 = 0.2 %).
        self.trend_min_slope = float(trend_min_slope)
        self.trend_pvalue = float(trend_pvalue)
        self.trend_every = int(trend_every)
        # Confirmation: within confirm_within values of the onset, locating it within
        # confirm_slack, looking at confirm_context values before it.
        self.confirm_within = int(confirm_within)
        self.confirm_slack = int(confirm_slack)
        self.confirm_context = int(confirm_context)
        self.confirm_min = 2 * int(self.cp_options["min_size"])
        self.confirm_pvalue = float(self.cp_options.get("max_pvalue", CP_DEFAULTS["max_pvalue"]))
        for name in ("suspect_threshold", "suspect_drift", "trend_every", "confirm_within", "confirm_context"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LiveDetector: {name} must be positive, not {getattr(self, name)}")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._preprocessors: list[Preprocessor] = []
        self._postprocessors: list[Postprocessor] = []
        # Per series: values, result ids and timestamps (bounded; _offset is the absolute index of
        # the first kept), the online stage, the latest confirmed change (absolute index), the id of
        # the change being settled, and the drift last reported (+1, -1, 0).
        self._hist: dict[SeriesKey, tuple[list[float], list[str], list[float]]] = {}
        self._offset: dict[SeriesKey, int] = {}
        self._monitors: dict[SeriesKey, LevelMonitor] = {}
        self._last_change: dict[SeriesKey, int] = {}
        self._change_ids: dict[SeriesKey, str] = {}
        self._trending: dict[SeriesKey, int] = {}
        # Per series: the latest anomalies reported, (absolute index, result id, value), so that a
        # change seen later can name those that were really the start of its new level.
        self._flagged: dict[SeriesKey, deque[tuple[int, str, float]]] = {}
        self._hardware: dict[str, str | None] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._warming = False

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

    def ingest(self, results: Sequence[Result], *, report: bool = True) -> list[Finding]:
        """Feed newly stored results; returns the new findings (anomalies, changes in their states,
        trends), or none with ``report=False`` (see :meth:`warm`)."""
        for pre in self._preprocessors:
            results = [r2 for r2 in (pre(r) for r in results) if r2 is not None]
        touched: dict[SeriesKey, int] = {}
        findings: list[Finding] = []
        with self._lock:
            for res in results:
                # A result handed over twice (resent by an agent, or stored before a restart and
                # replayed) is judged once.
                if res.result_id in self._seen:
                    continue
                self._seen[res.result_id] = None
                if len(self._seen) > _SEEN:
                    self._seen.popitem(last=False)
                for name, value in res.metrics.items():
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
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
        if not report:
            self._flagged.clear()  # what was flagged then is stored already, or was retracted
            return [f for f in findings if isinstance(f, ChangePointFound)]
        for post in self._postprocessors:
            findings = post(findings)
        return findings

    def warm(self, results: Sequence[Result]) -> list[ChangePointFound]:
        """Replay results that were judged before (stored before a restart, oldest first): the
        series' levels, CUSUMs and pending suspicions come back, and nothing is reported. Returns
        the changes' states the replay went through, for the caller to settle what was stored as
        suspected (a suspicion derived again has the same change_id: the result at its onset)."""
        self._warming = True  # the scan of young levels and the trend tests wait for live values
        try:
            return cast(list[ChangePointFound], self.ingest(results, report=False))
        finally:
            self._warming = False

    def pending_changes(self) -> set[str]:
        """The change_ids of the suspicions pending now."""
        with self._lock:
            return {self._change_ids.get(k, "") for k, mon in self._monitors.items() if mon.pending is not None}

    def restore_trends(self, trends: Sequence[Mapping[str, Any]]) -> None:
        """Trend findings stored before a restart (newest first): their series count as drifting
        that way, so a drift still going on is not reported again."""
        with self._lock:
            for t in trends:
                series, rel = t.get("series"), t.get("rel_slope_per_100")
                if not isinstance(series, dict) or not isinstance(rel, (int, float)) or not rel:
                    continue
                key = (*(str(series.get(d)) for d in self.series_dims), str(t.get("metric")))
                self._trending.setdefault(key, 1 if rel > 0 else -1)

    def _trim(self, touched: dict[SeriesKey, int]) -> None:
        for key in touched:
            vals, ids, stamps = self._hist[key]
            extra = len(vals) - self.max_history
            # In slices of a tenth: moving a thousand-item list down by one for every value would
            # be a measurable share of a value's cost.
            if extra > self.max_history // 10:
                del vals[:extra], ids[:extra], stamps[:extra]
                self._offset[key] = self._offset.get(key, 0) + extra

    def _examine(self, key: SeriesKey, n_new: int) -> list[Finding]:
        """Findings for the ``n_new`` newest values of one series, value by value in order, each
        seeing only the values before it: a series gives the same findings whether it arrives one
        value at a time or in batches.

        Each value goes through the series' :class:`~dtf_gui.coordinator.aggregator.online.LevelMonitor`
        (anomaly against its level; a suspected change). While a change is suspected, the windowed
        test (:func:`detect_change_points` over the tail around the onset) is asked whether it
        confirms it, after each of the new level's first 24 values and then every 4th; a suspicion it never confirms, or whose new level falls back to the
        old one, is retracted. Every ``trend_every`` values of a steady level, the level is tested
        for a drift."""
        vals = self._hist[key][0]
        mon = self._monitors.get(key)
        if mon is None:
            mon = self._monitors[key] = LevelMonitor(
                capacity=self.anomaly_window, anomaly_threshold=self.anomaly_threshold,
                threshold=self.suspect_threshold, drift=self.suspect_drift, young=self.suspect_young)
        offset = self._offset.get(key, 0)
        thr = self.anomaly_threshold
        out: list[Finding] = []
        for j in range(len(vals) - n_new, len(vals)):
            verdict = mon.push(vals[j])
            young = mon.warming()
            if mon.pending is None and verdict.suspected is None and (offset + j + 1) % self.trend_every and (
                    -thr <= verdict.score <= thr) and not young:
                continue  # the common case: nothing to report, nothing to settle
            info = self._info(key[-1])
            if verdict.score > thr or verdict.score < -thr:
                out.append(self._anomaly(key, info, offset, j, verdict))
            if verdict.suspected is not None:
                out.append(self._suspected(key, info, offset, j, verdict.suspected, mon))
            try:
                if mon.pending is not None:
                    out.extend(self._settle(key, info, offset, j, mon))
                elif young and not self._warming:
                    out.extend(self._scan(key, info, offset, j, mon))
                elif (offset + j + 1) % self.trend_every == 0 and not self._warming:
                    out.extend(self._trend(key, info, offset, j))
            except Exception:  # this value's windowed tests only: the series and the batch go on
                log.exception("live detector: a windowed test failed on series %s at value %d", key, offset + j)
        return out

    # -- findings ---------------------------------------------------------------------------------

    def _anomaly(self, key: SeriesKey, info: MetricInfo, offset: int, j: int, v: Verdict) -> Anomaly:
        vals, ids, stamps = self._hist[key]
        thr = self.anomaly_threshold
        x = vals[j]
        self._flagged.setdefault(key, deque(maxlen=100)).append((offset + j, ids[j], x))
        return Anomaly(
            series=self._series_dict(key), metric=key[-1], index=offset + j, result_id=ids[j], timestamp=stamps[j],
            value=x, score=v.score, median=v.median, expected_low=v.median - thr * v.sigma,
            expected_high=v.median + thr * v.sigma, reference_size=v.count,
            direction="improvement" if (x > v.median) == info.higher_is_better else "regression",
            unit=info.unit, direction_source=info.direction_source)

    def _change(self, key: SeriesKey, info: MetricInfo, offset: int, cp: ChangePoint, state: str,
                change_id: str, supersedes: list[str]) -> ChangePointFound:
        _vals, ids, stamps = self._hist[key]
        i = cp.index - offset
        if 0 <= i < len(ids):
            rid, when = ids[i], stamps[i]
        else:  # trimmed from the history since (a long suspicion, a short max_history)
            rid, when = change_id or ids[0], stamps[0]
        return ChangePointFound(**msgspec.structs.asdict(cp), series=self._series_dict(key), metric=key[-1],
                                result_id=rid, timestamp=when, state=state, change_id=change_id,
                                supersedes=supersedes, unit=info.unit, direction_source=info.direction_source)

    def _online_stats(self, s: Suspicion, mon: LevelMonitor, higher_is_better: bool) -> ChangePoint:
        """A suspected change's statistics: the old level's median and robust sigma against the new
        level's values so far (medians: the new level may still hold a spike)."""
        new = mon.level.median()
        sig = s.old_sigma
        ev = mon.evidence()
        rel = (new - s.old_median) / abs(s.old_median) if s.old_median else math.inf
        return ChangePoint(index=s.onset, mean_before=s.old_median, std_before=sig, mean_after=new,
                           std_after=mon.sigma(), rel_change=rel, p_value=math.erfc(abs(ev) / math.sqrt(2.0)),
                           direction=_direction(new - s.old_median, higher_is_better), n_before=s.old_count,
                           n_after=len(mon.level), effect=abs(new - s.old_median) / sig if sig > 0 else math.inf)

    def _suspected(self, key: SeriesKey, info: MetricInfo, offset: int, j: int, s: Suspicion,
                   mon: LevelMonitor) -> ChangePointFound:
        ids = self._hist[key][1]
        cid = ids[max(s.onset - offset, 0)]
        self._change_ids[key] = cid
        gone = self._supersede(key, s.onset - 2 * self.confirm_slack, mon)
        return self._change(key, info, offset, self._online_stats(s, mon, info.higher_is_better), "suspected",
                            cid, gone)

    def _supersede(self, key: SeriesKey, since: int, mon: LevelMonitor) -> list[str]:
        """Result ids of anomalies flagged from ``since`` on that the new level does not flag (they
        were its first values, judged against the old level before the change could be seen);
        they leave the flagged list."""
        flagged = self._flagged.get(key)
        if not flagged:
            return []
        med, k = mon.level.median(), len(mon.level)
        w = widen(mon.sigma(), k)
        if not (k and w > 0):
            return []
        keep: list[tuple[int, str, float]] = []
        gone: list[str] = []
        for f in flagged:
            if f[0] >= since and abs(f[2] - med) <= self.anomaly_threshold * w:
                gone.append(f[1])
            else:
                keep.append(f)
        if gone:
            flagged.clear()
            flagged.extend(keep)
        return gone

    def _scan(self, key: SeriesKey, info: MetricInfo, offset: int, j: int, mon: LevelMonitor) -> list[Finding]:
        """While the level is too young for the CUSUM (a new series, or the first values after a
        change), the windowed test looks at the tail after every value: a change it finds there
        is reported confirmed at once, and the level starts again from it."""
        vals = self._hist[key][0]
        a = offset + j
        last = self._last_change.get(key, 0)
        lo = max(last, offset, a + 1 - 2 * self.confirm_context)
        if a + 1 - lo < self.confirm_min:
            return []
        tail = np.asarray(vals[lo - offset:j + 1], dtype=np.float64)
        # A change at or just after the last one is that one again, seen from a shorter tail.
        least = last + int(self.cp_options["min_size"]) if key in self._last_change else 0
        found = [cp for cp in detect_change_points(tail, higher_is_better=info.higher_is_better, **self.cp_options)
                 if lo + cp.index >= least]
        if not found:
            return []
        cp = found[-1]
        at = lo + cp.index
        return [self._restart(key, info, offset, j, mon, cp, at, self._hist[key][1][at - offset], None)]

    def _settle(self, key: SeriesKey, info: MetricInfo, offset: int, j: int, mon: LevelMonitor) -> list[Finding]:
        """Ask the windowed test about the pending suspicion; confirm or retract it when the answer
        is clear (see :meth:`_examine`)."""
        s = mon.pending
        assert s is not None
        vals = self._hist[key][0]
        a = offset + j
        m = a - s.onset + 1  # values of the suspected level so far
        cid = self._change_ids.get(key, "")
        if s.onset < offset:
            # Its onset left the kept history: it can no more be tested.
            return [self._retract(key, info, offset, j, mon, s, cid)]
        if m >= _RETRACT_AFTER:
            # The level fell back; or the windowed test has had its say and the new level is not
            # clearly apart; or a small shift stayed unconfirmed for long: retract.
            ev = mon.evidence()
            if ev < _RETRACT_EVIDENCE or (m > self.confirm_within and ev < _KEEP_EVIDENCE) or m > _KEEP_FACTOR * self.confirm_within:
                return [self._retract(key, info, offset, j, mon, s, cid)]
        if m < self.confirm_min or ((m > _CONFIRM_EVERY_AFTER or self._warming) and m % _CONFIRM_EVERY):
            return []  # (a replay asks less often: it is the start's cost, and no one waits for its verdicts)
        # As much before the onset as after it (at least confirm_context): a small step needs a long
        # after-segment, and one straight line must not be able to absorb it.
        lo = max(s.onset - max(self.confirm_context, m), self._last_change.get(key, 0), offset)
        tail = np.asarray(vals[lo - offset:j + 1], dtype=np.float64)
        least = self._last_change[key] + int(self.cp_options["min_size"]) if key in self._last_change else 0
        for cp in detect_change_points(tail, higher_is_better=info.higher_is_better, **self.cp_options):
            at = lo + cp.index
            if at < max(s.onset - self.confirm_slack, least):
                continue  # an earlier change, not this one
            if cp.n_after < self.confirm_min // 2 or cp.p_value > self.confirm_pvalue:
                continue  # placed at the tail's very end, or weaker than the test's own bar (after refinement)
            same = (cp.mean_after - cp.mean_before) * s.sign > 0
            if same and at <= s.onset + 2 * self.confirm_slack:
                return [self._restart(key, info, offset, j, mon, cp, at, cid, s)]
            if at > s.onset:
                # A step the other way after the onset, or one the same way long after it: the
                # suspicion was wrong (a spike's doing, or noise), and this is the change. Both are said.
                gone = self._retract(key, info, offset, j, mon, s, cid)
                ids = self._hist[key][1]
                return [gone, self._restart(key, info, offset, j, mon, cp, at, ids[at - offset], None)]
        return []

    def _restart(self, key: SeriesKey, info: MetricInfo, offset: int, j: int, mon: LevelMonitor, cp: ChangePoint,
                 at: int, cid: str, s: Suspicion | None) -> ChangePointFound:
        """A confirmed change at absolute index ``at``: the level starts again from it (judged
        young against ``s``, or the windowed test's before-level), and the anomalies it explains
        are withdrawn."""
        vals = self._hist[key][0]
        if s is None:
            s = Suspicion(onset=at, sign=1 if cp.mean_after > cp.mean_before else -1, old_median=cp.mean_before,
                          old_sigma=cp.std_before, old_count=cp.n_before, raised_at=offset + j)
        mon.restart(vals[max(at - offset, 0):j + 1], s)
        self._last_change[key] = at
        self._trending.pop(key, None)  # a drift before the step is over
        gone = self._supersede(key, min(at, s.onset) - 2 * self.confirm_slack, mon)
        return self._change(key, info, offset, msgspec.structs.replace(cp, index=at), "confirmed", cid, gone)

    def _retract(self, key: SeriesKey, info: MetricInfo, offset: int, j: int, mon: LevelMonitor, s: Suspicion,
                 cid: str) -> ChangePointFound:
        stats = self._online_stats(s, mon, info.higher_is_better)
        vals = self._hist[key][0]
        mon.retract(vals[max(j + 1 - self.anomaly_window, 0):j + 1])
        return self._change(key, info, offset, stats, "retracted", cid, [])

    def _trend(self, key: SeriesKey, info: MetricInfo, offset: int, j: int) -> list[Finding]:
        """A drift of the current level (Mann-Kendall and Theil-Sen over its latest values), once
        per drift."""
        vals, ids, stamps = self._hist[key]
        start = max(self._last_change.get(key, 0), offset + j + 1 - _TREND_SPAN, offset)
        n = offset + j + 1 - start
        if n < _TREND_MIN:
            return []
        y = vals[start - offset:j + 1]
        # Mann-Kendall first (cheap); the Theil-Sen slope (a few ms) only for a significant one.
        thin = y if len(y) <= _TREND_POINTS else [y[int(q)] for q in np.linspace(0, len(y) - 1, _TREND_POINTS)]
        _s, _z, p_mk = mann_kendall(thin)
        if p_mk > self.trend_pvalue:
            if p_mk > _TREND_STEADY_P:
                self._trending.pop(key, None)
            return []
        tr = trend(y, alpha=self.trend_pvalue, higher_is_better=info.higher_is_better, max_points=_TREND_POINTS)
        level = tr["intercept"] or 0.0
        rel100 = 100.0 * tr["slope"] / abs(level) if level else 0.0  # a fraction: 0.005 = 0.5 % per 100
        drifting = tr["significant"] and abs(rel100) >= self.trend_min_slope and _line_beats_step(y)
        if not drifting:
            # Only a clearly steady level ends a drift: one near the threshold would otherwise
            # report the same drift again each time it crosses back.
            if tr["p_value"] > _TREND_STEADY_P:
                self._trending.pop(key, None)
            return []
        sign = 1 if rel100 > 0 else -1
        if sign == self._trending.get(key, 0):
            return []
        self._trending[key] = sign
        return [TrendFound(
            series=self._series_dict(key), metric=key[-1], index=offset + j, result_id=ids[j], timestamp=stamps[j],
            start_index=start, start_result_id=ids[start - offset], n=n, slope=tr["slope"], rel_slope_per_100=rel100,
            level=level, p_value=tr["p_value"], mk_z=tr["mk_z"], direction=tr["direction"] or "",
            unit=info.unit, direction_source=info.direction_source)]

    def series_history(self, key: SeriesKey) -> list[float]:
        """The in-memory history of one series (for tests and the window's sparklines)."""
        with self._lock:
            return list(self._hist.get(key, ([], [], []))[0][-self.max_history:])
