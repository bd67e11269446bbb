"""A change's states and trends as the window reads them from the database (issue 13): list_findings
gives every standing finding (a suspected change, a confirmed one, a trend, anomalies), the
explorer draws a suspected change apart and never next to its confirmation, and a run's report
lists trends with their slope. Real Store, real record_finding (what the analysis stores), a
read-only connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dtf_gui.coordinator import analysis, explore, reports
from dtf_gui.coordinator.aggregator.findings import ChangePointFound, TrendFound
from dtf_gui.coordinator.analysis import record_finding
from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.runs import Runs
from dtf_gui.coordinator.store import Store, connect_readonly
from dtf_gui.coordinator.views_api import ListFindings, ViewsApi

T0 = 1_700_000_000.0
SERIES = {"test_id": "bench", "worker_id": "w1"}


def change(state: str, result_id: str, change_id: str, *, after: float = 105.0, n_after: int = 6,
           metric: str = "throughput") -> ChangePointFound:
    return ChangePointFound(series=SERIES, metric=metric, result_id=result_id, timestamp=T0 + int(result_id[1:]),
                            index=int(result_id[1:]), mean_before=100.0, std_before=3.0, mean_after=after,
                            std_after=3.0, rel_change=(after - 100.0) / 100.0, p_value=1e-6, direction="improvement",
                            n_before=50, n_after=n_after, state=state, change_id=change_id)


def trend(result_id: str, metric: str = "throughput") -> TrendFound:
    return TrendFound(series=SERIES, metric=metric, index=int(result_id[1:]), result_id=result_id,
                      timestamp=T0 + int(result_id[1:]), start_index=0, start_result_id="r0", n=400, slope=0.005,
                      rel_slope_per_100=0.005, level=100.0, p_value=2e-5, mk_z=4.3, direction="improvement")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    path = tmp_path / "dtf.sqlite"
    store = Store(path)
    for i in range(20):
        store.put_result(Result(result_id=f"r{i}", task_id=f"t{i}", worker_id="w1", test_id="bench",
                                timestamp=T0 + i, metrics={"throughput": 100.0 if i < 10 else 105.0}))
    store.flush(wait=True)
    try:
        yield store, path
    finally:
        store.close()


def list_findings(path: Path) -> list[dict[str, Any]]:
    api = ViewsApi(path)
    try:
        return api.list_findings(ListFindings(limit=100))
    finally:
        api.close()


def series(path: Path) -> dict[str, Any]:
    conn: sqlite3.Connection = connect_readonly(path)
    try:
        return explore.metric_series(conn, msgspec.convert({"test_id": "bench", "metric": "throughput"},
                                                           explore.MetricSeries))
    finally:
        conn.close()


def test_explore_names_the_analysis_kind_of_a_suspected_change() -> None:
    # explore sits below analysis in the layers, so it spells the kind out: the two must agree.
    assert explore.SUSPECTED_KIND == analysis.SUSPECTED_KIND
    assert explore.SUSPECTED_KIND in explore.STANDING_FINDING_KINDS


def test_list_findings_gives_a_standing_suspected_change_and_a_trend(db) -> None:
    store, path = db
    record_finding(store, change("suspected", "r10", "r10"))
    record_finding(store, trend("r15"))
    store.flush(wait=True)
    found = list_findings(path)
    by_kind = {(f["kind"], f.get("state")): f for f in found}
    assert set(by_kind) == {("change_point", "suspected"), ("trend", None)}
    suspected = by_kind[("change_point", "suspected")]
    assert suspected["change_id"] == "r10" and suspected["n_after"] == 6
    assert by_kind[("trend", None)]["rel_slope_per_100"] == 0.005

    # Confirmed: the suspicion is withdrawn, the confirmed change stands (located two results later).
    record_finding(store, change("confirmed", "r12", "r10", n_after=8))
    store.flush(wait=True)
    states = sorted((f["kind"], f.get("state") or "", f["result_id"]) for f in list_findings(path))
    assert states == [("change_point", "confirmed", "r12"), ("trend", "", "r15")]


def test_a_retracted_suspicion_is_listed_no_more(db) -> None:
    store, path = db
    record_finding(store, change("suspected", "r10", "r10"))
    store.flush(wait=True)
    assert [f["state"] for f in list_findings(path)] == ["suspected"]
    record_finding(store, change("retracted", "r16", "r10", after=100.5, n_after=30))
    store.flush(wait=True)
    assert list_findings(path) == []


def test_the_explorer_draws_a_suspected_change_then_only_its_confirmation(db) -> None:
    store, path = db
    record_finding(store, change("suspected", "r10", "r10"))
    store.flush(wait=True)
    [cp] = series(path)["change_points"]
    assert (cp["state"], cp["change_id"], cp["result_id"], cp["after"]) == ("suspected", "r10", "r10", 105.0)

    record_finding(store, change("confirmed", "r11", "r10", after=105.2))
    store.flush(wait=True)
    [cp] = series(path)["change_points"]  # one step, not two
    assert (cp["state"], cp["change_id"], cp["result_id"], cp["after"]) == ("confirmed", "r10", "r11", 105.2)


def test_a_suspected_change_left_behind_its_confirmation_is_not_drawn_twice(db) -> None:
    # A suspected row the store did not withdraw (written by hand, or before withdrawals existed)
    # next to the confirmed one of the same change: the confirmed one alone is drawn.
    store, path = db
    store.put_event(analysis.SUSPECTED_KIND, "r10", msgspec.to_builtins(change("suspected", "r10", "r10")))
    store.put_event("change_point", "r11", msgspec.to_builtins(change("confirmed", "r11", "r10")))
    store.flush(wait=True)
    assert [(c["state"], c["result_id"]) for c in series(path)["change_points"]] == [("confirmed", "r11")]


def test_a_run_report_lists_a_trend_with_its_slope(tmp_path: Path) -> None:
    path = tmp_path / "dtf.sqlite"
    store = Store(path)
    runs = Runs(store)
    run_id = runs.create("nightly", "pytest")["run_id"]
    for i in range(20):
        store.put_result(Result(result_id=f"r{i}", task_id=f"t{i}", worker_id="w1", test_id="bench",
                                timestamp=T0 + i, metrics={"throughput": 100.0 + i}, run_id=run_id))
    store.flush(wait=True)
    record_finding(store, trend("r15"), when=T0 + 16)
    record_finding(store, change("suspected", "r12", "r12"), when=T0 + 13)  # not settled: not in a report
    runs.finish(run_id, "passed", {})
    store.close()
    conn = connect_readonly(path)
    try:
        rep = reports.run_report(conn, run_id, now=T0 + 100)
        page = reports.export_rows(conn, msgspec.convert({"what": "findings", "run_id": run_id},
                                                         reports.ExportRowsArgs))
    finally:
        conn.close()
    [f] = rep["findings"]
    assert (f["kind"], f["result_id"]) == ("trend", "r15")
    assert f["detail"] == "+0.50% per 100 results over 400 results (Mann-Kendall p=2e-05)"
    [row] = page["rows"]
    assert row["kind"] == "trend" and row["detail"].startswith("+0.50% per 100 results")
