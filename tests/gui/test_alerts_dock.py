"""The alerts dock: health alerts and regression findings listed, acknowledged, muted; desktop
notifications batched; rows open their worker or finding."""

from __future__ import annotations

import time
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMainWindow

from dtf_gui.ui.alerts_dock import KEY_ROLE, AlertsDock, AlertsModel, alert_item, finding_item
from tests.gui.fake_alerts import alert, fake_health_bridge, shot, worker


def finding(result_id: str, *, direction: str = "regression", kind: str = "change point", test_id: str = "test_io",
            worker_id: str | None = "bench-02", metric: str = "duration_s") -> dict[str, Any]:
    """A finding as the bridge hands it over (bridge.finding_row's shape)."""
    k = "change_point" if kind == "change point" else "anomaly"
    return {"finding_id": f"{k}:{result_id}:{metric}", "kind": kind, "time": time.time(), "test_id": test_id,
            "worker_id": worker_id, "metric": metric, "direction": direction,
            "detail": "+25.0% (1.2 -> 1.5), p=0.001", "result_id": result_id}


@pytest.fixture
def dock(qtbot):
    made: list[Any] = []

    def make(**kwargs: Any) -> tuple[AlertsDock, Any, Any]:
        bridge, fake = fake_health_bridge(**kwargs)
        win = QMainWindow()
        d = AlertsDock(bridge, win)
        win.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, d)
        qtbot.addWidget(win)
        win.resize(1000, 360)
        win.show()
        qtbot.waitUntil(lambda: d.loaded, timeout=5000)
        made.append((bridge, win))  # the window owns the dock: keep it alive
        return d, bridge, fake

    yield make
    for bridge, _ in made:
        bridge.stop()


def rows(d: AlertsDock) -> dict[str, list[str]]:
    """What the table shows: key -> the five cells."""
    out = {}
    for r in range(d.proxy.rowCount()):
        out[d.proxy.index(r, 0).data(KEY_ROLE)] = [d.proxy.index(r, c).data() for c in range(5)]
    return out


def test_model_passes_the_model_tester(qtmodeltester) -> None:
    m = AlertsModel(max_rows=3)
    m.upsert([alert_item(alert("a1", "w1")), finding_item(finding("r1"))])
    m.upsert([alert_item(alert("a1", "w1", state="cleared")), alert_item(alert("a2", "w2")),
              alert_item(alert("a3", "w3"))])
    assert m.keys() == ["a1", "a2", "a3"]  # the oldest row went: at most max_rows
    m.mark(["a2"], acked=True)
    m.remove(["a3"])
    qtmodeltester.check(m, force_py=True)


def test_lists_what_the_coordinator_has_and_counts_what_needs_attention(qtbot, dock) -> None:
    now = time.time()
    d, bridge, fake = dock(alerts=[
        alert("a1", "bench-02", "cpu", value=97, when=now - 60),
        alert("a2", "bench-03", "disk", severity="critical", value=99, when=now - 30),
        alert("a3", "bench-04", "offline", state="cleared", when=now - 120),
        alert("a4", "bench-05", "memory", acked=True, when=now - 10),
    ], acked_findings=["change_point:r9:duration_s"])
    assert ("list_alerts", {"include_cleared": True, "limit": 1000}) in fake.calls
    shown = rows(d)
    assert set(shown) == {"a1", "a2", "a4"}  # cleared hidden until asked
    assert shown["a2"][1:3] == ["critical", "bench-03"] and shown["a2"][4] == "raised"
    assert shown["a4"][4] == "acknowledged"
    assert d.windowTitle() == "Alerts (2)"
    index = next(d.proxy.index(r, 3) for r in range(d.proxy.rowCount()) if d.proxy.index(r, 0).data(KEY_ROLE) == "a1")
    assert index.data(Qt.ItemDataRole.FontRole).bold()
    # Listed at open is not news: no notification.
    assert d.notifications == []

    d.show_cleared_box.setChecked(True)
    assert "a3" in rows(d) and rows(d)["a3"][4] == "cleared"

    # Findings: regressions and change points come in; an improving anomaly does not; one acknowledged
    # before the window opened arrives acknowledged.
    bridge.findingsChanged.emit([finding("r1"), finding("r2", kind="anomaly", direction="improvement"),
                                 finding("r9"), finding("r3", direction="improvement")])
    shown = rows(d)
    assert "change_point:r1:duration_s" in shown and "anomaly:r2:duration_s" not in shown
    assert shown["change_point:r9:duration_s"][4] == "acknowledged"
    assert shown["change_point:r3:duration_s"][1] == "info"
    assert d.windowTitle() == "Alerts (3)"  # a1, a2 and the regression r1
    bridge.findingsRetracted.emit(["change_point:r1:duration_s"])
    assert "change_point:r1:duration_s" not in rows(d)
    assert d.windowTitle() == "Alerts (2)"


def test_acknowledge_and_mute(qtbot, dock) -> None:
    d, bridge, fake = dock(workers=[worker("bench-02")], alerts=[alert("a1", "bench-02"), alert("a2", "bench-03")])
    bridge.findingsChanged.emit([finding("r1")])
    d.select_keys(["a1", "change_point:r1:duration_s"])
    assert d.ack_button.isEnabled()
    with qtbot.waitSignal(d.acknowledged, timeout=5000) as sig:
        d.ack_button.click()
    assert sorted(sig.args[0]) == ["a1", "change_point:r1:duration_s"]
    acks = [sorted(args["alert_ids"]) for op, args in fake.calls if op == "ack_alerts"]
    assert acks == [["a1", "change_point:r1:duration_s"]]
    assert rows(d)["a1"][4] == "acknowledged"
    assert rows(d)["change_point:r1:duration_s"][4] == "acknowledged"
    assert d.windowTitle() == "Alerts (1)"
    # A finding acknowledged here stays acknowledged if it comes again.
    bridge.findingsChanged.emit([finding("r1")])
    assert rows(d)["change_point:r1:duration_s"][4] == "acknowledged"

    d.select_keys(["a2"])
    assert d.mute_button.isEnabled()
    d.mute_actions[1].trigger()  # 1 day
    assert [{k: m[k] for k in ("worker_id", "kind", "seconds")} for m in fake.mutes] == [
        {"worker_id": "bench-03", "kind": None, "seconds": 86400.0}]
    assert rows(d)["a2"][4].startswith("raised · muted until ")
    assert d.windowTitle() == "Alerts"
    assert "Muted bench-03 until" in d.message.text()


def test_new_alerts_notify_once_per_batch(qtbot, dock) -> None:
    d, bridge, fake = dock()
    assert d.tray is None  # offscreen: no system tray, the messages are counted instead
    d.set_notify_interval(300)
    fake.emit_many("alert", [alert("n1", "w1"), alert("n2", "w2", "memory"), alert("n3", "w3", "disk"),
                             alert("m1", "w4", muted=True)])
    qtbot.waitUntil(lambda: len(d.notifications) == 1, timeout=5000)
    title, text = d.notifications[0]
    assert title == "DTF: 3 new alerts" and "w1: cpu at 97%" in text and "w4" not in text
    # More within the interval wait for it and go out as one message; a re-sent known alert (acked,
    # cleared) is no news.
    fake.emit_many("alert", [alert("n4", "w5")])
    bridge.findingsChanged.emit([finding("r1")])
    fake.emit_many("alert", [alert("n1", "w1", state="cleared")])
    assert len(d.notifications) == 1
    qtbot.waitUntil(lambda: len(d.notifications) == 2, timeout=5000)
    assert d.notifications[1][0] == "DTF: 2 new alerts"
    assert "test_io @ bench-02: regression (change point) in duration_s" in d.notifications[1][1]
    # An interval with nothing new ends the batching (the timer stops) and says nothing.
    qtbot.waitUntil(lambda: not d._notify_timer.isActive(), timeout=5000)
    assert len(d.notifications) == 2
    fake.emit_many("alert", [alert("n5", "w6")])
    qtbot.waitUntil(lambda: len(d.notifications) == 3, timeout=5000)
    assert d.notifications[2] == ("DTF: new alert", "w6: cpu at 97% (threshold 90%)")


def test_acknowledge_all_of_1500_goes_in_requests_of_at_most_1000(qtbot, dock) -> None:
    now = time.time()
    many = [alert(f"a{i:04d}", f"w{i % 50}", when=now - i) for i in range(1500)]
    d, bridge, fake = dock(alerts=many)
    d.on_alerts(many)  # the list at open is capped; the rest arrive as events
    assert d.model.attention_count() == 1500
    with qtbot.waitSignal(d.acknowledged, timeout=10_000) as sig:
        assert d.acknowledge_all() == 2
    sizes = [len(args["alert_ids"]) for op, args in fake.calls if op == "ack_alerts"]
    assert sorted(sizes) == [500, 1000]
    assert sorted(sig.args[0]) == sorted(a["alert_id"] for a in many)
    assert d.model.attention_count() == 0 and d.windowTitle() == "Alerts"
    assert d.message.text() == "Acknowledged 1500"


def test_a_mute_shows_its_end_and_the_rows_unmute_when_it_passes(qtbot, dock) -> None:
    d, bridge, fake = dock(alerts=[alert("a1", "bench-02"), alert("a2", "bench-03")])
    d.select_keys(["a1"])
    assert d.mute_selected(1.0) == ["bench-02"]
    state = rows(d)["a1"][4]
    assert state.startswith("raised · muted until "), state
    assert rows(d)["a2"][4] == "raised"
    assert d.windowTitle() == "Alerts (1)"
    qtbot.waitUntil(lambda: rows(d)["a1"][4] == "raised", timeout=10_000)  # nobody said so: the timer did
    assert d.windowTitle() == "Alerts (2)"
    # A mute made elsewhere (an alert event says muted): the dock asks when it ends and shows it.
    fake.mutes.append({"worker_id": None, "kind": "cpu", "seconds": 3600.0, "until": time.time() + 3600})
    fake.emit("alert", alert("a2", "bench-03", muted=True))
    qtbot.waitUntil(lambda: rows(d)["a2"][4].startswith("raised · muted until "), timeout=5000)
    assert rows(d)["a1"][4].startswith("raised · muted until "), "the kind's mute covers bench-02 too"


def test_agent_text_is_shown_as_text_not_markup(qtbot, dock) -> None:
    d, bridge, fake = dock(alerts=[alert("a1", "<b>x</b>", message="<b>x</b>: cpu at 97%")])
    d._call("drain_worker", {"worker_id": "<b>x</b>"})  # the fake refuses an unknown worker, quoting it
    assert d.message.textFormat() == Qt.TextFormat.PlainText
    assert "<b>x</b>" in d.message.text() and "<span" not in d.message.text()
    index = next(d.proxy.index(r, 2) for r in range(d.proxy.rowCount()))
    assert index.data() == "<b>x</b>"
    tip = d.proxy.index(index.row(), 3).data(Qt.ItemDataRole.ToolTipRole)
    assert "&lt;b&gt;x&lt;/b&gt;" in tip and "<b>x</b>" not in tip


def test_the_context_menu_goes_when_it_closes(qtbot, dock) -> None:
    from PySide6.QtWidgets import QApplication, QMenu

    d, bridge, fake = dock(alerts=[alert("a1", "bench-02")])
    before = len(d.findChildren(QMenu))
    for _ in range(3):
        d._context_menu(d.view.viewport().rect().center())
        qtbot.waitUntil(lambda: isinstance(QApplication.activePopupWidget(), QMenu), timeout=5000)
        assert len(d.findChildren(QMenu)) == before + 1
        QApplication.activePopupWidget().close()
        qtbot.waitUntil(lambda: len(d.findChildren(QMenu)) == before, timeout=5000)


def test_activating_a_row_asks_for_its_worker_or_finding(qtbot, dock) -> None:
    d, bridge, fake = dock(alerts=[alert("a1", "bench-02")])
    bridge.findingsChanged.emit([finding("r1")])
    by_key = {d.proxy.index(r, 0).data(KEY_ROLE): d.proxy.index(r, 2) for r in range(d.proxy.rowCount())}
    with qtbot.waitSignal(d.workerRequested) as sig:
        d.view.activated.emit(by_key["a1"])
    assert sig.args == ["bench-02"]
    with qtbot.waitSignal(d.findingRequested) as sig:
        d.view.activated.emit(by_key["change_point:r1:duration_s"])
    assert sig.args[0]["result_id"] == "r1"


def test_a_viewer_may_look_but_not_acknowledge(qtbot, dock) -> None:
    d, bridge, fake = dock(role="viewer", alerts=[alert("a1", "bench-02")])
    d.select_keys(["a1"])
    assert not d.ack_button.isEnabled() and not d.mute_button.isEnabled()
    assert "operator role" in d.ack_button.toolTip()
    with qtbot.waitSignal(d.acknowledged, timeout=5000) as sig:
        assert d.acknowledge(["a1"]) == 1
    assert sig.args == [[]]
    assert "ack_alerts needs the operator role" in d.last_refusal
    assert rows(d)["a1"][4] == "raised"


def test_screenshot_alerts_dock(qtbot, dock) -> None:
    now = time.time()
    d, bridge, fake = dock(alerts=[
        alert("a1", "bench-02", "cpu", value=97, when=now - 65),
        alert("a2", "bench-03", "disk", severity="critical", value=99, threshold=95, when=now - 30),
        alert("a3", "bench-04", "offline", severity="critical", when=now - 400,
              message="no heartbeat for 42 s (timeout 30 s)"),
        alert("a4", "lab-pc-7", "memory", acked=True, value=91, when=now - 900),
        alert("a5", "bench-01-gpu", "gpu_memory", value=96, threshold=95, muted=True, when=now - 1200),
        alert("a6", "bench-02", "failures", severity="critical", when=now - 200,
              message="5 failed tasks in a row (threshold 3)"),
    ])
    bridge.findingsChanged.emit([finding("r1"), finding("r2", test_id="test_matmul[1024]", metric="gflops",
                                                        worker_id="bench-01-gpu"),
                                 finding("r3", direction="improvement", test_id="test_parse")])
    d.select_keys(["a5"])
    d.mute_selected(3600.0)
    d.view.clearSelection()
    assert rows(d)["a5"][4].startswith("raised · muted until ")
    d.parentWidget().resize(1100, 330)
    shot(d, "alerts_dock")


# -- the real coordinator -----------------------------------------------------------------------------


@pytest.fixture
def strict_session(qtbot, tmp_path, monkeypatch):
    """A window session whose coordinator raises a failures alert after two failed tasks in a row."""
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.ui.app import Session

    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    settings = ephemeral_settings(tmp_path / "dtf.sqlite", health_monitor={
        "heartbeat_interval": 1.0, "heartbeat_timeout": 10.0, "failure_threshold": 2})
    session = Session(settings, tmp_path, local_slots=2)
    qtbot.addWidget(session.window)
    try:
        yield session
    finally:
        session.close()


def test_a_failures_alert_from_the_real_coordinator_is_listed_notified_acknowledged_and_muted(
        qtbot, strict_session) -> None:
    bridge = strict_session.bridge
    win = QMainWindow()
    d = AlertsDock(bridge, win)
    win.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, d)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: d.loaded, timeout=10_000)
    assert d.model.rowCount() == 0 and d.windowTitle() == "Alerts"

    for _ in range(2):
        task_id = bridge.submit_task({"command": "false", "retry_limit": 0})
        qtbot.waitUntil(lambda t=task_id: bridge.call("get_task", {"task_id": t})["status"] == "failed",
                        timeout=20_000)
    qtbot.waitUntil(lambda: any((d.model.row_for(k) or {}).get("raw", {}).get("kind") == "failures"
                                for k in d.model.keys()), timeout=10_000)
    key = next(k for k in d.model.keys() if d.model.row_for(k)["raw"]["kind"] == "failures")
    row = d.model.row_for(key)
    assert row["worker_id"].endswith("-local") and row["state"] == "raised"
    assert d.windowTitle() == "Alerts (1)"
    assert len(d.notifications) == 1 and row["worker_id"] in d.notifications[0][1]

    d.select_keys([key])
    with qtbot.waitSignal(d.acknowledged, timeout=10_000) as sig:
        d.acknowledge_selected()
    assert sig.args == [[key]]
    assert rows(d)[key][4] == "acknowledged"
    listed = bridge.call("list_alerts", {"include_cleared": True, "limit": 10})
    assert next(a for a in listed["alerts"] if a["alert_id"] == key)["acked"] is True

    assert d.mute_selected(3600.0) == [row["worker_id"]]
    assert "Muted" in d.message.text()
    # A success clears the alert; its event reaches the dock (hidden until "Show cleared").
    ok = bridge.submit_task({"command": "true"})
    qtbot.waitUntil(lambda: bridge.call("get_task", {"task_id": ok})["status"] == "completed", timeout=20_000)
    qtbot.waitUntil(lambda: d.model.row_for(key)["state"] == "cleared", timeout=10_000)
    assert key not in rows(d)
    d.show_cleared_box.setChecked(True)
    assert rows(d)[key][4].startswith("cleared")
