"""resources/grafana/dtf-dashboard.json: a dashboard over the names a coordinator really exports.

Every PromQL expression in it (panel targets and the instance variable) may name only metrics that
a scrape of a real coordinator shows; the data source is a variable, so it imports into any
Grafana whatever its Prometheus data source is called."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtf_gui.coordinator.server import Coordinator

DASHBOARD = Path(__file__).resolve().parents[2] / "resources" / "grafana" / "dtf-dashboard.json"
# PromQL words that are not metric names (functions are told apart by the "(" that follows them).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, legend text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors ([$__rate_interval], [1h])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_names_reads_what_promql_reads() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, status) (rate(dtf_task_latency_seconds_bucket{instance=~"$i",'
            'state="running"}[$__rate_interval]))) / on (instance) sum(up offset 5m) or vector(0)')
    assert metric_names(expr) == {"dtf_task_latency_seconds_bucket", "up"}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def exported_names(url: str) -> set[str]:
    """Every series name a scrape shows, with those of families that have no sample yet (a
    histogram's _bucket, _sum and _count; the heartbeat age before any worker is online)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_query_names_only_metrics_the_coordinator_exports(
        dashboard: dict[str, Any], coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(server={"metrics_port": 0})
    exported = exported_names(c.info()["metrics_endpoint"])
    assert "dtf_dispatch_latency_seconds_bucket" in exported and "dtf_tasks" in exported
    exprs = [t["expr"] for node in walk(dashboard.get("panels")) for t in node.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["query"]["query"])
            assert m, var["query"]
            exprs.append(m.group(1))
    assert len(exprs) > 30
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} reads {sorted(names - exported)}, which the coordinator does not export"
        used |= names
    dtf = {n for n in exported if n.startswith("dtf_")}
    # The dashboard shows each family the coordinator exports (at least one of a histogram's series).
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {n for n in dtf if re.sub(r"_(bucket|sum|count)$", "", n) not in bases | used}
    assert not missing - {"dtf_coordinator_start_time_seconds", "dtf_duplicate_results_total",
                          "dtf_frames_total", "dtf_oversize_frames_total", "dtf_reregister_asked_total",
                          "dtf_db_refused_rows_total", "dtf_submissions_total"}, sorted(missing)


def test_the_data_source_is_a_variable_every_query_uses(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in walk(dashboard["panels"]) if "targets" in p]
    assert panels
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    ids = [p["id"] for p in walk(dashboard["panels"]) if "gridPos" in p]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert dashboard["uid"] and dashboard["title"]
