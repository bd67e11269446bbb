"""What the analysis hands out, as msgspec Structs: a renamed field fails loudly, not silently.

:class:`Anomaly`, :class:`ChangePointFound` and :class:`TrendFound` are the live detector's
findings (``Finding`` is their tagged union); ``msgspec.to_builtins(finding)`` is a plain dict that
names its ``kind`` ("anomaly", "change_point" or "trend"), which is what the coordinator stores
as an event's data and publishes, and ``msgspec.convert(that_dict, Finding)`` gives the Struct back. :class:`AnomalyRow`
is one row of ``ResultQueries.get_result_anomalies``.

All three carry ``notes``, a free dict where a custom postprocessor may annotate one (for
example ``notes["reviewed_by"]``); the detector itself leaves it empty. All also carry the
metric's ``unit`` ("" when none is declared) and ``direction_source``: "declared" when the
improvement/regression rests on a declared direction, "guessed from the name" when it rests on
the name guess (a message should then say so: ``metricmeta.direction_hint``); "" in findings
stored before directions were declared.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dtf_gui.coordinator.aggregator.changepoints import ChangePoint

__all__ = ["Anomaly", "AnomalyRow", "ChangePointFound", "Finding", "TrendFound"]


class Anomaly(msgspec.Struct, kw_only=True, tag_field="kind", tag="anomaly"):
    """A new value far from its own level: |score| > the detector's threshold.

    ``series`` names the series by the detector's ``series_dims`` plus "metric"; ``index`` is the
    value's position in the series since the detector started (absolute, never trimmed); ``median``
    is the reference level and ``expected_low``..``expected_high`` the range (median +- threshold
    robust sigmas) the value left; ``reference_size`` is how many values the reference held;
    ``direction`` is "improvement" or "regression" by the metric's polarity."""

    series: dict[str, str]
    metric: str
    index: int
    result_id: str
    timestamp: float
    value: float
    score: float
    median: float
    expected_low: float
    expected_high: float
    reference_size: int
    direction: str
    unit: str = ""
    direction_source: str = ""
    notes: dict[str, Any] = msgspec.field(default_factory=dict)


class ChangePointFound(ChangePoint, kw_only=True, tag_field="kind", tag="change_point"):
    """A level change in a series, at ``index`` (absolute, as for :class:`Anomaly`): the first
    value of the new level, which is the result ``result_id``.

    The statistics are :class:`~dtf_gui.coordinator.aggregator.changepoints.ChangePoint`'s, over the
    detector's tail of the series: the two levels' means and standard deviations and sizes,
    ``rel_change`` (relative change of the mean), the Welch t-test's ``p_value``, ``effect``
    (|mean difference| / pooled std) and ``direction``. ``supersedes`` lists the result ids of
    anomalies reported earlier that were really this new level's first values (to be retracted).

    ``state`` is where the change stands: "suspected" (the online stage saw it a few values in;
    the statistics are then the old level's median and robust sigma against the median of the
    new level's values so far), "confirmed" (the windowed test agrees: its statistics, and
    ``index`` may have moved a little), or "retracted" (the windowed test never agreed, or the new
    level fell back). ``change_id`` is the same in every state of one change (the result id where
    it was first located), so that a view can update it in place."""

    series: dict[str, str]
    metric: str
    result_id: str
    timestamp: float
    state: str = "confirmed"
    change_id: str = ""
    supersedes: list[str] = msgspec.field(default_factory=list)
    unit: str = ""
    direction_source: str = ""
    notes: dict[str, Any] = msgspec.field(default_factory=dict)


class TrendFound(msgspec.Struct, kw_only=True, tag_field="kind", tag="trend"):
    """A sustained drift in a series' current level: Mann-Kendall significant at ``p_value`` and
    a Theil-Sen slope of ``rel_slope_per_100`` (relative change per 100 results, 0.005 = 0.5 %)
    beyond the detector's minimum. ``slope`` is in the metric's unit per result; ``n`` values
    from ``start_result_id`` (index ``start_index``) to ``result_id`` (index ``index``, the value
    at which it was found) were tested. Reported once per drift: again only after a test found the
    level steady, or drifting the other way."""

    series: dict[str, str]
    metric: str
    index: int
    result_id: str
    timestamp: float
    start_index: int
    start_result_id: str
    n: int
    slope: float
    rel_slope_per_100: float
    level: float
    p_value: float
    mk_z: float
    direction: str
    unit: str = ""
    direction_source: str = ""
    notes: dict[str, Any] = msgspec.field(default_factory=dict)


Finding = Anomaly | ChangePointFound | TrendFound


class AnomalyRow(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="anomaly"):
    """One stored result whose metric lies far from its group's median (the whole selection's
    robust z-score, not the live detector's level-aware judgement).

    ``group`` is the aggregation level's values joined by "|"; ``timestamp`` is None for a result
    stored without one. Frozen: the query service's cache hands the same rows to every caller."""

    group: str
    metric: str
    result_id: str
    timestamp: float | None
    value: float
    score: float
    median: float
    expected_low: float
    expected_high: float
