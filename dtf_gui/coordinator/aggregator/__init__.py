"""Result analysis: statistics by dimension, anomalies, change points, trends, comparisons.

Two rooms use the building blocks below: :class:`LiveDetector` (``live.py``) judges results as they
are stored and returns :data:`Finding` Structs; :class:`ResultQueries` (``queries.py``) answers the
client API's read-only queries over the store (statistics, trends, anomalies, comparisons of time
windows and of named runs). Both judge improvement and regression by :class:`MetricCatalog`
(``metricmeta.py``): declared directions, the name guess only as the labelled fallback.
"""

from dtf_gui.coordinator.aggregator.anomalies import find_anomalies, robust_z
from dtf_gui.coordinator.aggregator.changepoints import ChangePoint, detect_change_points, spike_mask
from dtf_gui.coordinator.aggregator.compare import compare_samples, higher_is_better
from dtf_gui.coordinator.aggregator.findings import Anomaly, AnomalyRow, ChangePointFound, Finding
from dtf_gui.coordinator.aggregator.live import LiveDetector, Postprocessor, Preprocessor
from dtf_gui.coordinator.aggregator.metricmeta import MetricCatalog, MetricInfo
from dtf_gui.coordinator.aggregator.queries import ResultQueries, summarize
from dtf_gui.coordinator.aggregator.stats import group_stats
from dtf_gui.coordinator.aggregator.trends import Trend, mann_kendall, trend

__all__ = [
    "Anomaly",
    "AnomalyRow",
    "ChangePoint",
    "ChangePointFound",
    "Finding",
    "LiveDetector",
    "MetricCatalog",
    "MetricInfo",
    "Postprocessor",
    "Preprocessor",
    "ResultQueries",
    "Trend",
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
