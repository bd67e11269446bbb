"""Result analysis: statistics by dimension, anomalies, change points, trends, comparisons."""

from dtf_gui.coordinator.aggregator.anomalies import find_anomalies, robust_z
from dtf_gui.coordinator.aggregator.changepoints import (
    ChangePoint,
    detect_change_points,
    spike_mask,
)
from dtf_gui.coordinator.aggregator.compare import compare_samples, higher_is_better
from dtf_gui.coordinator.aggregator.pipeline import ResultAggregator, summarize
from dtf_gui.coordinator.aggregator.stats import group_stats
from dtf_gui.coordinator.aggregator.trends import mann_kendall, trend

__all__ = [
    "ChangePoint",
    "ResultAggregator",
    "compare_samples",
    "detect_change_points",
    "find_anomalies",
    "group_stats",
    "higher_is_better",
    "mann_kendall",
    "robust_z",
    "spike_mask",
    "summarize",
    "trend",
]
