"""The results explorer against a real embedded coordinator whose database the Store filled
beforehand (results with metrics, workers with hardware, findings, two runs), offscreen."""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from dtf_gui.coordinator.aggregator.findings import Anomaly, ChangePointFound
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.local_agent import LocalAgent
from dtf_gui.coordinator.records import Result, WorkerRecord
from dtf_gui.coordinator.store import Store
from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.results_view import ComparisonModel, ResultsExplorer, _Series

TEST = "bench/throughput_suite::test_copy"
METRIC = "throughput_mb_s"
WORKERS = {"lab-a": "xeon-6338", "lab-b": "xeon-6338", "lab-c": "epyc-7763"}


def build_db(path: Path, n: int = 300, seed: int = 7) -> dict[str, Any]:
    """A realistic series: level 100 MB/s with 3% noise on three workers, a spike at n/3, a +8%
    step at 2n/3, found by the detector (an anomaly and a change point in events); the first
    half is run "nightly-1", the second "nightly-2", each with a latency metric too. Returns what
    the tests check against."""
    rnd = random.Random(seed)
    t0 = time.time() - n * 600.0
    step_at, spike_at = 2 * n // 3, n // 3
    store = Store(path)
    try:
        for w, hw in WORKERS.items():
            store.put_worker(WorkerRecord(w, w.encode(), hostname=w, slots=4, capabilities={"hardware_id": hw},
                                          tags=[], metadata={}, running=[], now=t0, first_seen=t0, seen_at=0.0))
        store.put_row("runs", ("run-1", "nightly", "submit", t0, t0 + n * 300.0, "passed", "{}", "{}"))
        store.put_row("runs", ("run-2", "nightly", "submit", t0 + n * 300.0, t0 + n * 600.0, "passed", "{}", "{}"))
        store.put_row("metric_meta", (METRIC, "MB/s", "higher", "api", t0))
        points = []
        for i in range(n):
            level = 108.0 if i >= step_at else 100.0
            v = level * (1 + rnd.gauss(0, 0.03)) if i != spike_at else 160.0
            w = list(WORKERS)[i % 3]
            t = t0 + i * 600.0
            rid = f"res-{i:05d}"
            store.put_result(Result(result_id=rid, task_id=f"task-{i:05d}", worker_id=w, test_id=TEST, timestamp=t,
                                    metrics={METRIC: v, "latency_ms": 2.0 * (1 + rnd.gauss(0, 0.03))},
                                    run_id="run-1" if i < n // 2 else "run-2"))
            points.append((t, v, f"task-{i:05d}"))
        spike_t = points[spike_at][0]
        store.put_event("anomaly", f"res-{spike_at:05d}", msgspec.to_builtins(Anomaly(
            series={"test_id": TEST, "worker_id": list(WORKERS)[spike_at % 3]}, metric=METRIC, index=spike_at,
            result_id=f"res-{spike_at:05d}", timestamp=spike_t, value=160.0, score=14.2, median=100.0,
            expected_low=91.0, expected_high=109.0, reference_size=60, direction="improvement")), when=spike_t)
        step_t = points[step_at][0]
        store.put_event("change_point", f"res-{step_at:05d}", msgspec.to_builtins(ChangePointFound(
            series={"test_id": TEST}, metric=METRIC, result_id=f"res-{step_at:05d}", timestamp=step_t,
            index=step_at, mean_before=100.0, std_before=3.0, mean_after=108.0, std_after=3.2, rel_change=0.08,
            p_value=1e-9, direction="improvement", n_before=step_at, n_after=n - step_at)), when=step_t)
        store.flush(wait=True)
    finally:
        store.close()
    return {"points": points, "step_t": step_t, "spike_t": spike_t, "t0": t0}


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Any]:
    return build_db(tmp_path / "db.sqlite")


@pytest.fixture
def bridge(tmp_path: Path, lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[CoordinatorBridge]:
    # The coordinator's keys live in this home, where the live test's agent looks for them.
    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    b = CoordinatorBridge.embedded(ephemeral_settings(tmp_path / "db.sqlite"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def explorer(qtbot, bridge: CoordinatorBridge) -> ResultsExplorer:
    view = ResultsExplorer(bridge)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    return view


def shown(view: ResultsExplorer) -> bool:
    return view.series is not None and view.point_count() > 0


def test_the_catalog_offers_the_tests_and_the_first_series_is_drawn(qtbot, explorer, lab):
    qtbot.waitUntil(lambda: TEST in explorer.catalog, timeout=10_000)
    assert set(explorer.catalog[TEST]) == {METRIC, "latency_ms"}
    assert explorer.test_box.findText(TEST) >= 0
    qtbot.waitUntil(lambda: shown(explorer), timeout=10_000)


def test_select_draws_every_point_coloured_by_worker_then_by_hardware(qtbot, explorer, lab):
    explorer.select(TEST, METRIC)
    qtbot.waitUntil(lambda: shown(explorer) and explorer.series.data["metric"] == METRIC, timeout=10_000)
    assert explorer.point_count() == 300
    assert sorted(explorer.group_items) == sorted(WORKERS)
    assert all(len(item.xData) == 100 for item in explorer.group_items.values())
    # The points are the series' own: time on x, value on y.
    t, v, _ = lab["points"][4]
    item = explorer.group_items["lab-b"]
    assert t in item.xData and v in item.yData
    assert explorer.plot.getPlotItem().getAxis("left").labelText == f"{METRIC} [MB/s] — higher is better"
    explorer.colour_box.setCurrentText("hardware")
    assert sorted(explorer.group_items) == ["epyc-7763", "xeon-6338"]
    assert len(explorer.group_items["xeon-6338"].xData) == 200
    assert explorer.point_count() == 300


def test_change_point_is_a_step_at_its_levels_and_the_spike_is_ringed(qtbot, explorer, lab):
    explorer.select(TEST, METRIC)
    qtbot.waitUntil(lambda: shown(explorer), timeout=10_000)
    [step] = explorer.change_items
    assert step.levels == (100.0, 108.0)
    x, y = step.xData, step.yData
    assert list(y) == [100.0, 100.0, 108.0, 108.0]
    assert x[1] == x[2] == lab["step_t"]
    assert x[0] == lab["points"][0][0] and x[3] == lab["points"][-1][0]
    [label] = explorer.change_labels
    assert label.textItem.toPlainText() == "+8.0% (100 → 108)"
    xs, ys = explorer.anomaly_item.getData()
    assert list(xs) == [lab["spike_t"]] and list(ys) == [160.0]


def test_a_click_near_a_point_requests_its_task(qtbot, explorer, lab):
    explorer.select(TEST, METRIC)
    qtbot.waitUntil(lambda: shown(explorer), timeout=10_000)
    t, v, task = lab["points"][100]  # the spike: no other point near it
    with qtbot.waitSignal(explorer.taskRequested, timeout=2000) as sig:
        assert explorer.click_at(t + 30.0, v - 0.5) == task
    assert sig.args == [task]
    # Far from every point (above the spike, at the top of the view): nothing.
    (_, _), (_, y1) = explorer.plot.getPlotItem().vb.viewRange()
    assert explorer.click_at(lab["points"][10][0], y1) is None


def test_a_mouse_click_in_the_plot_goes_through_the_same_pick(qtbot, explorer, lab):
    explorer.select(TEST, METRIC)
    qtbot.waitUntil(lambda: shown(explorer), timeout=10_000)
    t, v, task = lab["points"][100]
    vb = explorer.plot.getPlotItem().vb
    scene_pos = vb.mapViewToScene(QPointF(t, v))
    view_pos = explorer.plot.mapFromScene(scene_pos)
    with qtbot.waitSignal(explorer.taskRequested, timeout=2000) as sig:
        qtbot.mouseClick(explorer.plot.viewport(), Qt.MouseButton.LeftButton, pos=view_pos)
    assert sig.args == [task]


def test_worker_filter_refetches_that_worker_s_points_only(qtbot, explorer, lab):
    explorer.select(TEST, METRIC)
    qtbot.waitUntil(lambda: shown(explorer), timeout=10_000)
    explorer.worker_box.setCurrentText("lab-c")
    explorer.worker_box.activated.emit(explorer.worker_box.currentIndex())
    qtbot.waitUntil(lambda: list(explorer.group_items) == ["lab-c"], timeout=10_000)
    assert explorer.point_count() == 100


def test_two_runs_selected_fill_the_comparison_table(qtbot, explorer, lab, qtmodeltester):
    qtbot.waitUntil(lambda: explorer.runs_list.count() == 2, timeout=10_000)
    for i in range(2):
        explorer.runs_list.item(i).setSelected(True)
    model = explorer.compare_model
    qtbot.waitUntil(lambda: model.rowCount() > 0, timeout=10_000)
    qtmodeltester.check(model)
    rows = {(r["test_id"], r["metric"]): i for i, r in enumerate(model.rows)}
    row = rows[(TEST, METRIC)]
    # run-2 holds the second half: 50 points at 100, 100 at 108, against 150 at 100 (spike aside).
    assert model.rows[row]["baseline_mean"] < 102 < model.rows[row]["current_mean"]
    assert model.data(model.index(row, 5)) == "improvement"
    assert model.data(model.index(row, 4)).startswith("+")
    assert model.data(model.index(rows[(TEST, "latency_ms")], 5)) == "same"
    assert "nightly" in explorer.compare_summary.text() and "1 improvement" in explorer.compare_summary.text()


def test_comparison_model_passes_the_model_tester_with_every_verdict(qtmodeltester):
    model = ComparisonModel()
    model.set_rows([{"test_id": "t", "metric": m, "unit": "s", "baseline_mean": 1.0, "current_mean": 2.0,
                     "pct_change": 100.0, "verdict": v, "p_value": 0.01, "baseline_n": 3, "current_n": 3}
                    for m, v in (("a", "regressed"), ("b", "improved"), ("c", "unchanged"), ("d", "new"),
                                 ("e", "missing"))])
    qtmodeltester.check(model)
    assert [model.data(model.index(r, 5)) for r in range(5)] == ["regression", "improvement", "same", "new",
                                                                  "missing"]
    assert model.data(model.index(0, 2)) == "1 s"


class Requests:
    """Every request the view sends through the (real) bridge: (op, args)."""

    def __init__(self, bridge: CoordinatorBridge, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        real = bridge.call_async

        def call_async(op: str, args: dict[str, Any] | None, done: Any, **kw: Any) -> bool:
            self.sent.append((op, dict(args or {})))
            return real(op, args, done, **kw)

        monkeypatch.setattr(bridge, "call_async", call_async)

    def of(self, op: str) -> list[dict[str, Any]]:
        return [a for o, a in self.sent if o == op]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def live_view(qtbot, bridge: CoordinatorBridge, clock: Clock) -> ResultsExplorer:
    """The explorer on screen with the series drawn, on a clock the test moves."""
    view = ResultsExplorer(bridge, clock=clock)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: TEST in view.catalog, timeout=10_000)
    view.select(TEST, METRIC)
    qtbot.waitUntil(lambda: shown(view) and view.series.data["metric"] == METRIC and not view._in_flight,
                    timeout=10_000)
    return view


def done(test_id: str, n: int = 1) -> list[dict[str, Any]]:
    """Task events as the bridge relays them (TaskRecord.summary's keys the view reads)."""
    return [{"task_id": f"t-{test_id}-{i}", "status": "completed", "test_id": test_id} for i in range(n)]


def idle(view: ResultsExplorer) -> bool:
    return not view._timer.isActive() and not view._catalog_timer.isActive() and not view._in_flight


def test_hidden_it_reads_nothing_and_catches_up_when_shown(qtbot, live_view, bridge, lab, clock, monkeypatch):
    view = live_view
    requests = Requests(bridge, monkeypatch)
    view.hide()
    # A busy lab: completions of the selected test, of a test the catalog does not list, and plain
    # commands (no test id); a finding of the selected series.
    bridge.tasksChanged.emit(done(TEST, 5) + done("new/suite::test_x", 5) + done("", 50))
    bridge.findingsChanged.emit([{"test_id": TEST, "metric": METRIC, "kind": "anomaly"}])
    clock.now += 60.0
    assert idle(view), "nothing may be scheduled while hidden"
    assert requests.sent == []
    view.show()
    # Shown again: the catalog once, and the series once (in full: a finding came).
    qtbot.waitUntil(lambda: len(requests.of("series_catalog")) == 1 and len(requests.of("metric_series")) == 1,
                    timeout=10_000)
    assert "since" not in requests.of("metric_series")[0]
    qtbot.waitUntil(lambda: idle(view), timeout=10_000)
    assert view.point_count() == 300


def test_hidden_completions_of_the_selected_test_are_caught_up_from_the_last_point(
        qtbot, live_view, bridge, lab, clock, monkeypatch):
    view = live_view
    requests = Requests(bridge, monkeypatch)
    view.hide()
    bridge.tasksChanged.emit(done(TEST, 3) + done("", 3))
    assert idle(view) and requests.sent == []
    clock.now += 60.0
    view.show()
    qtbot.waitUntil(lambda: bool(requests.of("metric_series")), timeout=10_000)
    [args] = requests.of("metric_series")
    assert args["since"] == lab["points"][-1][0]
    assert requests.of("series_catalog") == []  # no test the catalog lacks


def test_plain_commands_never_read_the_catalog(qtbot, live_view, bridge, lab, clock, monkeypatch):
    requests = Requests(bridge, monkeypatch)
    clock.now += 60.0
    bridge.tasksChanged.emit(done("", 200))
    assert idle(live_view) and requests.sent == []


def test_a_completion_of_the_selected_test_reads_only_the_new_points(qtbot, live_view, bridge, lab, clock,
                                                                     monkeypatch):
    view = live_view
    requests = Requests(bridge, monkeypatch)
    clock.now += 60.0
    # A burst: one read, from the last point shown.
    bridge.tasksChanged.emit(done(TEST, 10))
    bridge.tasksChanged.emit(done(TEST, 10))
    qtbot.waitUntil(lambda: bool(requests.of("metric_series")) and idle(view), timeout=10_000)
    [args] = requests.of("metric_series")
    assert args == {"test_id": TEST, "metric": METRIC, "limit": 100_000, "since": lab["points"][-1][0]}
    # The reply holds the last point again (no new result was stored): merged, not doubled.
    assert view.point_count() == 300 and len(view.series.result_ids) == 300
    assert requests.of("series_catalog") == []
    folder = os.environ.get("DTF_SHOTS")  # a screenshot for a person, only when asked
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        view.grab().save(str(Path(folder) / "results_live.png"))


def test_a_finding_of_the_selected_series_reads_it_in_full(qtbot, live_view, bridge, lab, clock, monkeypatch):
    requests = Requests(bridge, monkeypatch)
    clock.now += 60.0
    bridge.findingsChanged.emit([{"test_id": TEST, "metric": "latency_ms"}])  # another series: nothing
    assert idle(live_view) and requests.sent == []
    bridge.findingsChanged.emit([{"test_id": TEST, "metric": METRIC}])
    qtbot.waitUntil(lambda: bool(requests.of("metric_series")) and idle(live_view), timeout=10_000)
    [args] = requests.of("metric_series")
    assert "since" not in args and live_view.point_count() == 300


def test_an_unlisted_test_reads_the_catalog_at_most_every_ten_seconds(qtbot, live_view, bridge, lab, clock,
                                                                       monkeypatch):
    view = live_view
    requests = Requests(bridge, monkeypatch)
    clock.now += 1.0  # a second after the catalog was read
    bridge.tasksChanged.emit(done("new/suite::test_x", 20))
    bridge.tasksChanged.emit(done("other::test_y", 20))
    # Due CATALOG_INTERVAL after the last read, not now (the timer runs on real time; the bound is loose).
    assert requests.sent == [] and view._catalog_timer.isActive()
    assert view._catalog_timer.remainingTime() > 5_000
    # Its time comes: one read for all of them.
    clock.now += 10.0
    view._catalog_timer.start(0)
    qtbot.waitUntil(lambda: bool(requests.of("series_catalog")) and idle(view), timeout=10_000)
    assert len(requests.of("series_catalog")) == 1
    bridge.tasksChanged.emit(done("new/suite::test_x"))  # still unlisted (no metrics): not before 10 s again
    assert len(requests.of("series_catalog")) == 1 and view._catalog_timer.remainingTime() > 5_000


def test_merging_keeps_time_order_ids_once_findings_and_the_limit() -> None:
    def reply(ts: list[float], ids: list[str], **more: Any) -> _Series:
        return _Series.from_reply({"test_id": "t", "metric": "m", "t": ts, "v": [float(x) for x in ts],
                                   "worker": ["w"] * len(ts), "hardware": [""] * len(ts), "result_id": ids,
                                   "task_id": [f"task-{i}" for i in ids], "run_id": [""] * len(ts), **more})

    old = reply([1.0, 2.0, 3.0], ["a", "b", "c"], anomalies=[{"result_id": "b", "t": 2.0, "v": 2.0}])
    new = reply([3.0, 2.5, 4.0], ["c", "late", "d"], anomalies=[{"result_id": "d", "t": 4.0, "v": 4.0}])
    m = old.merged(new, limit=10)
    assert list(m.t) == [1.0, 2.0, 2.5, 3.0, 4.0] and list(m.result_id) == ["a", "b", "late", "c", "d"]
    assert list(m.task_id) == ["task-a", "task-b", "task-late", "task-c", "task-d"] and list(m.v) == list(m.t)
    assert [a["result_id"] for a in m.data["anomalies"]] == ["b", "d"] and not m.data.get("truncated")
    capped = old.merged(new, limit=3)
    assert list(capped.result_id) == ["late", "c", "d"] and capped.data["truncated"]
    assert [a["result_id"] for a in capped.data["anomalies"]] == ["d"] and capped.result_ids == {"late", "c", "d"}


def test_a_new_result_of_the_selected_test_appears_live(qtbot, explorer, bridge, lab, tmp_path, monkeypatch):
    explorer.select(TEST, METRIC)
    qtbot.waitUntil(lambda: shown(explorer) and not explorer._in_flight, timeout=10_000)
    before = explorer.fetches
    requests = Requests(bridge, monkeypatch)
    # A task of the selected test that reports the metric through its result file.
    script = tmp_path / "emit.py"
    script.write_text("import json, os\n"
                      f"json.dump({{'{METRIC}': 321.0}}, open(os.environ['DTF_RESULT_FILE'], 'w'))\n")
    agent = LocalAgent(bridge.coordinator.endpoint("agents"), "lab-live", slots=1,
                       log_path=tmp_path / "agent.log").start()
    try:
        assert bridge.call("create_task", {"command": f"{sys.executable} {script}", "test_id": TEST})
        qtbot.waitUntil(lambda: explorer.point_count() == 301, timeout=30_000)
    finally:
        agent.stop()
    assert 321.0 in np.concatenate([i.yData for i in explorer.group_items.values()])
    assert explorer.fetches > before
    # The completion read the points since the last one shown, not the whole series.
    first = requests.of("metric_series")[0]
    assert first["since"] == lab["points"][-1][0]
