"""How the coordinator stores each state of a live finding (analysis.record_finding, issue 13):
a suspected change stands as "change_suspected" until it is confirmed ("change_point" under the
result the windowed test located) or retracted; anomalies a change explains are withdrawn for its
metric only; trends are stored as they are. And a restart keeps the live detector's series."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from dtf_gui.coordinator.aggregator.findings import Anomaly, ChangePointFound, Finding, TrendFound
from dtf_gui.coordinator.analysis import SUSPECTED_KIND, record_finding
from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.store import Store, connect_readonly
from tests.helpers import wait_until

SERIES = {"test_id": "perf", "worker_id": "w1", "metric": "throughput"}


def _change(state: str, result_id: str, change_id: str = "r10", supersedes: list[str] | None = None,
            metric: str = "throughput") -> ChangePointFound:
    return ChangePointFound(index=int(result_id[1:]), mean_before=100.0, std_before=3.0, mean_after=105.0,
                            std_after=3.0, rel_change=0.05, p_value=1e-6, direction="improvement",
                            series={**SERIES, "metric": metric}, metric=metric, result_id=result_id,
                            timestamp=1.0, state=state, change_id=change_id, supersedes=supersedes or [])


def _anomaly(result_id: str, metric: str) -> Anomaly:
    return Anomaly(series={**SERIES, "metric": metric}, metric=metric, index=int(result_id[1:]), result_id=result_id,
                   timestamp=1.0, value=120.0, score=4.0, median=100.0, expected_low=92.0, expected_high=108.0,
                   reference_size=100, direction="improvement")


def _events(db: Path) -> list[tuple[str, str, str | None]]:
    conn = connect_readonly(db)
    try:
        return [tuple(r) for r in conn.execute(
            "SELECT kind, subject, json_extract(data, '$.state') FROM events ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("one_flush", [False, True])
def test_a_suspected_change_is_replaced_by_its_confirmation(tmp_path: Path, one_flush: bool) -> None:
    store = Store(tmp_path / "f.sqlite")
    try:
        record_finding(store, _anomaly("r10", "throughput"))
        record_finding(store, _anomaly("r10", "latency_ms"))
        record_finding(store, _change("suspected", "r10", supersedes=["r10"]))
        if not one_flush:
            store.flush()
        # The windowed test places it one result later than the online stage did.
        data = record_finding(store, _change("confirmed", "r11"))
        store.flush()
        assert data["state"] == "confirmed" and data["change_id"] == "r10"
        assert msgspec.convert(data, Finding) == _change("confirmed", "r11")
        assert _events(tmp_path / "f.sqlite") == [
            ("anomaly_retracted", "r10", None),  # explained by the change, for its metric
            ("anomaly", "r10", None),  # the latency anomaly of the same result stays
            (SUSPECTED_KIND + "_retracted", "r10", "suspected"),
            ("change_point", "r11", "confirmed"),
        ]
    finally:
        store.close()


def test_a_retracted_suspicion_leaves_nothing_standing(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.sqlite")
    try:
        record_finding(store, _change("suspected", "r10"))
        record_finding(store, _change("suspected", "r40", change_id="r40", metric="latency_ms"))
        store.flush()
        record_finding(store, _change("retracted", "r10"))
        store.flush()
        assert _events(tmp_path / "f.sqlite") == [(SUSPECTED_KIND + "_retracted", "r10", "suspected"),
                                                  (SUSPECTED_KIND, "r40", "suspected")]
    finally:
        store.close()


def test_a_trend_is_stored_under_its_result(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.sqlite")
    try:
        t = TrendFound(series=SERIES, metric="throughput", index=500, result_id="r500", timestamp=5.0,
                       start_index=100, start_result_id="r100", n=400, slope=0.005, rel_slope_per_100=0.005,
                       level=100.0, p_value=1e-6, mk_z=5.0, direction="improvement")
        data = record_finding(store, t)
        store.flush()
        assert data["kind"] == "trend" and _events(tmp_path / "f.sqlite") == [("trend", "r500", None)]
        assert msgspec.convert(data, Finding) == t
    finally:
        store.close()


@contextmanager
def _live(db: Path) -> Iterator[tuple[Any, Store, Any]]:
    """The inbox, store and Analysis as the coordinator wires them; closed in the coordinator's order."""
    from dtf_agent.inbox import Inbox
    from dtf_gui.coordinator.analysis import Analysis
    from dtf_gui.coordinator.config import ResultAggregatorSection
    from dtf_gui.coordinator.events import EventHub
    from dtf_gui.coordinator.telemetry import Counters

    inbox: Inbox[Any] = Inbox()
    store = Store(db)
    analysis = Analysis(db, ResultAggregatorSection(), inbox=inbox, store=store, hub=EventHub(), counters=Counters())
    try:
        yield inbox, store, analysis
    finally:
        analysis.close()
        store.close()
        inbox.close()


def _hand_over(inbox: Any, store: Store) -> None:
    """What the loop does with the analysis thread's answers: run them (findings become events), then flush."""
    for call in inbox.take():
        call()
    store.flush()


def _results(values: list[float], start: int) -> list[Result]:
    return [Result(result_id=f"r{start + i}", task_id=f"t{start + i}", worker_id="w1", test_id="perf",
                   timestamp=float(start + i), metrics={"throughput": v}) for i, v in enumerate(values)]


def test_a_restart_keeps_the_series_levels(tmp_path: Path) -> None:
    """After a restart the detector replays the newest stored results (reporting nothing again):
    a spike right after the restart is judged against the level, not against an empty history,
    and nothing stored before is replayed twice."""
    db = tmp_path / "w.sqlite"
    rng = np.random.default_rng(3)
    values = (100 * (1 + 0.01 * rng.standard_normal(120))).tolist()
    with _live(db) as (_inbox, store, _analysis):
        for r in _results(values, 0):
            store.put_result(r)
        store.flush()
    with _live(db) as (_inbox, store, analysis):  # the restart
        key = ("perf", "w1", "throughput")
        assert analysis.run_now(lambda: analysis.detector.series_history(key)) == pytest.approx(values)
        found = analysis.run_now(lambda: analysis.detector.ingest(_results([150.0], 120)))
        assert [(type(f).__name__, f.result_id) for f in found] == [("Anomaly", "r120")]


def test_a_suspicion_stored_before_a_restart_is_not_left_standing(tmp_path: Path) -> None:
    """A suspected change whose verdict was lost with the old process (or whose values are no
    longer replayed) is withdrawn at start; one the replay finds pending again stays."""
    db = tmp_path / "s.sqlite"
    with _live(db) as (_inbox, store, _analysis):
        record_finding(store, _change("suspected", "r5", change_id="r5"))  # no such pending change after the replay
        for r in _results([100.0] * 60, 0):
            store.put_result(r)
        store.flush()
    with _live(db) as (inbox, store, analysis):
        analysis.run_now(lambda: None)  # the replay ran first

        def settled() -> bool:
            _hand_over(inbox, store)
            return (SUSPECTED_KIND + "_retracted", "r5", "suspected") in _events(db)

        wait_until(settled, 10)
        assert (SUSPECTED_KIND, "r5", "suspected") not in _events(db)


def test_a_suspicion_the_replay_confirms_is_stored_confirmed(tmp_path: Path) -> None:
    """The old process stored a suspicion and stopped before its verdict: the replay at start
    reaches the verdict and stores it (the suspicion withdrawn, the change point stored)."""
    db = tmp_path / "c.sqlite"
    rng = np.random.default_rng(5)
    values = (np.r_[np.full(100, 100.0), np.full(30, 110.0)] * (1 + 0.01 * rng.standard_normal(130))).tolist()
    store = Store(db)  # what the old process left: the results, and the suspicion it had stored
    try:
        for r in _results(values, 0):
            store.put_result(r)
        record_finding(store, _change("suspected", "r100", change_id="r100"))
        store.flush()
    finally:
        store.close()
    with _live(db) as (inbox, store, _analysis):
        def settled() -> bool:
            _hand_over(inbox, store)
            return any(k == "change_point" and st == "confirmed" for k, _s, st in _events(db))

        wait_until(settled, 10)
        assert (SUSPECTED_KIND + "_retracted", "r100", "suspected") in _events(db)
        assert ("change_point", "r100", "confirmed") in _events(db)


def test_results_handed_over_before_a_stop_are_judged_and_their_findings_kept(tmp_path: Path) -> None:
    """Closing the analysis waits for the batches already handed to it (they used to be dropped,
    their findings lost); the loop then stores what they found."""
    db = tmp_path / "c.sqlite"
    rng = np.random.default_rng(9)
    values = (100 * (1 + 0.01 * rng.standard_normal(120))).tolist() + [150.0]
    gate = threading.Event()
    timer = threading.Timer(0.3, gate.set)  # lets the busy analysis thread go once close() waits on it
    with _live(db) as (inbox, store, analysis):
        try:
            analysis.run(lambda: gate.wait(10), lambda fut: None)
            for r in _results(values, 0):
                store.put_result(r)
            store.flush()  # committed: handed to the analysis thread, queued behind the busy job
            timer.start()
            analysis.close()
            _hand_over(inbox, store)  # what Coordinator._close does after analysis.close()
            assert ("anomaly", "r120", None) in _events(db)
        finally:
            timer.cancel()
            if timer.ident is not None:  # started
                timer.join()
            gate.set()
