"""Result analysis: statistics by dimension, anomalies, change points, trends, comparisons."""

from dtf_gui.coordinator.aggregator.anomalies import find_anomalies, robust_z
from dtf_gui.coordinator.aggregator.changepoints import (
    ChangePoint,
    GateResult,
    detect_change_points,
    gate_new_value,
    spike_mask,
    update_change_points,
)
from dtf_gui.coordinator.aggregator.compare import compare_samples, higher_is_better
from dtf_gui.coordinator.aggregator.pipeline import ResultAggregator, summarize
from dtf_gui.coordinator.aggregator.stats import group_stats
from dtf_gui.coordinator.aggregator.trends import mann_kendall, trend

__all__ = [
    "ChangePoint",
    "GateResult",
    "ResultAggregator",
    "compare_samples",
    "detect_change_points",
    "find_anomalies",
    "gate_new_value",
    "group_stats",
    "higher_is_better",
    "mann_kendall",
    "robust_z",
    "spike_mask",
    "summarize",
    "trend",
    "update_change_points",
]
