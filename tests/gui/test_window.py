"""The window end to end: local agent appears, a task typed into the dialog completes, close is clean."""

from __future__ import annotations

import psutil
from PySide6.QtWidgets import QDialogButtonBox

from dtf_gui.ui.models import KeyedTableModel, tasks_model, workers_model


def shown(win, task_id: str) -> dict | None:
    """The task's row as the tasks table shows it (None until it is on screen)."""
    model = win.tasks_panel.model
    row = model.row_of(task_id)
    return None if row is None else model.peek(row)


def test_local_agent_appears_and_dialog_task_completes(qtbot, gui_session) -> None:
    win = gui_session.window
    qtbot.waitUntil(lambda: win.workers.rowCount() == 1, timeout=15_000)
    worker = win.workers.row_for(win.workers.keys()[0])
    assert worker["status"] in ("online", "busy")
    assert "Workers online: 1" in win.workers_label.text() or qtbot.waitUntil(
        lambda: "Workers online: 1" in win.workers_label.text(), timeout=5000) is None

    dlg = win.open_new_task_dialog()
    qtbot.keyClicks(dlg.command, "echo from-the-dialog")
    dlg.buttons.button(QDialogButtonBox.StandardButton.Ok).click()

    model = win.tasks_panel.model
    qtbot.waitUntil(lambda: model.rowCount() == 1 and model.peek(0) is not None, timeout=10_000)
    task_id = model.peek(0)["task_id"]
    qtbot.waitUntil(lambda: (shown(win, task_id) or {}).get("status") == "completed", timeout=20_000)
    row = shown(win, task_id)
    assert row["worker_id"] == worker["worker_id"]
    assert row["command"] == "echo from-the-dialog"
    # The result really landed in SQLite, with the command's output.
    stored = gui_session.bridge.call("get_task", {"task_id": task_id})
    assert stored["status"] == "completed"
    assert stored["result_list"][0]["raw_data"]["stdout_tail"].strip() == "from-the-dialog"


def test_empty_command_is_refused_in_the_dialog(qtbot, gui_session) -> None:
    win = gui_session.window
    dlg = win.open_new_task_dialog()
    dlg.buttons.button(QDialogButtonBox.StandardButton.Ok).click()
    assert dlg.isVisible()
    assert "command" in dlg.error.text().lower()
    assert win.tasks_panel.model.rowCount() == 0


def test_closing_the_window_stops_agent_and_coordinator(qtbot, gui_session) -> None:
    win = gui_session.window
    qtbot.waitUntil(lambda: win.workers.rowCount() == 1, timeout=15_000)
    agent_pid = gui_session.agent.pid
    win.close()
    assert not gui_session.bridge.coordinator.is_running
    assert not psutil.pid_exists(agent_pid) or psutil.Process(agent_pid).status() == psutil.STATUS_ZOMBIE


def test_events_arrive_in_batches_not_one_signal_per_event(qtbot, gui_session) -> None:
    win = gui_session.window
    qtbot.waitUntil(lambda: win.workers.rowCount() == 1, timeout=15_000)
    before = gui_session.bridge.batches_received
    data = gui_session.bridge.call("create_tasks", {"tasks": [{"type": "noop"}] * 500})
    assert len(data["task_ids"]) == 500
    qtbot.waitUntil(lambda: gui_session.bridge.last_stats.get("tasks", {}).get("completed", 0) >= 500,
                    timeout=20_000)
    qtbot.waitUntil(lambda: win.tasks_panel.model.rowCount() == 500, timeout=10_000)
    view = win.task_view  # the rows on screen show the statuses the events brought
    qtbot.waitUntil(lambda: all((shown(win, t) or {}).get("status") == "completed" for t in data["task_ids"]
                                if win.tasks_panel.model.row_of(t) is not None
                                and view.rowViewportPosition(win.tasks_panel.model.row_of(t)) >= 0)
                    and any(win.tasks_panel.model.row_of(t) is not None for t in data["task_ids"]), timeout=10_000)
    batches = gui_session.bridge.batches_received - before
    # 500 tasks x (pending, assigned, completed) = 1,500 task events, carried in a few batches.
    assert 0 < batches < 200


def test_models_pass_qt_model_tester(qtmodeltester) -> None:
    for model in (workers_model(), tasks_model(max_rows=3)):
        key = model.key
        model.apply([{key: "a", "status": "pending"}, {key: "b", "status": "running"}])
        model.apply([{key: "a", "status": "completed"}, {key: "c"}, {key: "d"}, {key: "c", "status": "failed"}])
        qtmodeltester.check(model, force_py=True)


def test_keyed_model_upserts_and_trims() -> None:
    m = KeyedTableModel("id", [], max_rows=3)
    m.apply([{"id": "a", "v": 1}, {"id": "b", "v": 1}])
    m.apply([{"id": "a", "v": 2}, {"id": "c", "v": 1}, {"id": "c", "v": 5}, {"id": "d", "v": 1}])
    assert m.keys() == ["b", "c", "d"]
    assert m.row_for("c")["v"] == 5
    assert m.row_for("a") is None


def _drop_on_worker(win, task_ids: list[str], worker_id: str) -> None:
    """What a drag from the tasks table onto a worker row delivers: a drop event with the task ids."""
    from PySide6.QtCore import QPointF, Qt
    from PySide6.QtGui import QDropEvent

    view = win.workers_view
    proxy = view.model()
    row = next(r for r in range(proxy.rowCount())
               if proxy.index(r, 0).data(Qt.ItemDataRole.UserRole) == worker_id)
    target = view.visualRect(proxy.index(row, 0)).center()
    model = win.tasks_panel.model
    mime = model.mimeData([model.index(model.row_of(t), 0) for t in task_ids])
    event = QDropEvent(QPointF(target), Qt.DropAction.MoveAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    view.dropEvent(event)
    assert event.isAccepted()


def test_dragging_a_task_onto_a_worker_pins_it_there(qtbot, gui_session) -> None:
    win = gui_session.window
    bridge = gui_session.bridge
    qtbot.waitUntil(lambda: win.workers.rowCount() == 1, timeout=15_000)
    worker_id = win.workers.keys()[0]
    # Fill both slots of the local agent so the dragged task has to wait for room on that worker.
    blockers = [bridge.submit_task({"command": "sleep 60"}) for _ in range(2)]
    qtbot.waitUntil(lambda: all(bridge.call("get_task", {"task_id": b})["status"] == "running" for b in blockers),
                    timeout=15_000)
    task_id = bridge.submit_task({"command": "echo dragged"})
    qtbot.waitUntil(lambda: shown(win, task_id) is not None, timeout=5000)
    assert bridge.call("get_task", {"task_id": task_id})["status"] == "pending"

    _drop_on_worker(win, [task_id], worker_id)

    qtbot.waitUntil(lambda: "Assigned 1 task" in win.statusBar().currentMessage(), timeout=10_000)
    why = bridge.call("get_task", {"task_id": task_id})["why"]
    assert f"pinned to {worker_id}" in why
    for b in blockers:
        bridge.cancel_task(b)
    qtbot.waitUntil(lambda: bridge.call("get_task", {"task_id": task_id})["status"] == "completed", timeout=20_000)
    assert bridge.call("get_task", {"task_id": task_id})["worker_id"] == worker_id


def test_a_refused_drop_says_why(qtbot, gui_session) -> None:
    win = gui_session.window
    bridge = gui_session.bridge
    qtbot.waitUntil(lambda: win.workers.rowCount() == 1, timeout=15_000)
    worker_id = win.workers.keys()[0]
    task_id = bridge.submit_task({"command": "echo needs-a-gpu", "requirements": {"tags": ["gpu"]}})
    qtbot.waitUntil(lambda: shown(win, task_id) is not None, timeout=5000)
    _drop_on_worker(win, [task_id], worker_id)
    qtbot.waitUntil(lambda: "cannot assign" in win.statusBar().currentMessage(), timeout=10_000)
    assert "gpu" in win.statusBar().currentMessage()
    assert bridge.call("get_task", {"task_id": task_id})["status"] == "pending"


def test_keyed_model_removes_rows_and_stays_consistent(qtmodeltester) -> None:
    m = KeyedTableModel("id", [])
    m.apply([{"id": k} for k in "abcdefg"])
    assert m.remove(["b", "c", "f", "zz"]) == 3
    assert m.keys() == ["a", "d", "e", "g"]
    assert m.row_for("g") == {"id": "g"}
    m.apply([{"id": "e", "v": 1}, {"id": "h"}])
    assert m.row_for("e")["v"] == 1 and m.keys()[-1] == "h"
    qtmodeltester.check(m, force_py=True)


def test_the_window_opens_showing_what_the_database_holds(qtbot, tmp_path, monkeypatch) -> None:
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.server import Coordinator
    from dtf_gui.ui.app import Session

    db = tmp_path / "dtf.sqlite"
    earlier = Coordinator(ephemeral_settings(db)).start()
    try:
        ids = earlier.request("create_tasks", {"tasks": [{"command": "true", "requirements": {"tags": ["x"]}}] * 5})
    finally:
        earlier.stop()
    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    session = Session(ephemeral_settings(db), tmp_path, local_agent=False)
    qtbot.addWidget(session.window)
    try:
        model = session.window.tasks_panel.model
        qtbot.waitUntil(lambda: model.rowCount() == 5 and all(model.row_of(t) is not None for t in ids["task_ids"]),
                        timeout=10_000)
        assert session.bridge.last_stats["tasks"]["pending"] == 5
    finally:
        session.close()


def test_the_throughput_plot_shows_the_minutes_before_the_window_opened(qtbot, tmp_path, monkeypatch) -> None:
    import time

    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.records import TaskRecord
    from dtf_gui.coordinator.scheduler import TaskSpec
    from dtf_gui.coordinator.store import Store
    from dtf_gui.ui.app import Session

    db = tmp_path / "dtf.sqlite"
    store = Store(db)
    now = time.time()
    try:
        for i in range(40):  # 40 tasks completed in one 5 s bucket a minute ago: 8 tasks/s
            t = TaskRecord(TaskSpec(task_id=f"done-{i}"), type="command", parameters={"command": "true"},
                           timeout=None, metadata=None, create_time=now - 70, status="completed")
            t.end_time = now - 60
            store.put_task(t)
        store.flush(wait=True)
    finally:
        store.close()
    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    session = Session(ephemeral_settings(db), tmp_path, local_agent=False)
    qtbot.addWidget(session.window)
    try:
        plot = session.window.throughput
        qtbot.waitUntil(lambda: plot.peak > 0, timeout=10_000)
        assert plot.peak == 8.0
        xs, ys = plot.curve.getData()
        assert -70 < xs[list(ys).index(8.0)] < -50  # drawn a minute ago, not now
        assert plot.viewRange()[1][0] == 0  # a rate axis starts at 0
    finally:
        session.close()


def test_the_docks_come_back_as_they_were_left(qtbot, tmp_path, monkeypatch) -> None:
    from PySide6.QtCore import Qt

    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.ui.app import WINDOW_SETTINGS, Session

    monkeypatch.setenv("DTF_HOME", str(tmp_path))

    def open_window() -> Session:
        session = Session(ephemeral_settings(tmp_path / "dtf.sqlite"), tmp_path, local_agent=False)
        qtbot.addWidget(session.window)
        session.window.show()
        return session

    first = open_window()
    try:
        win = first.window
        assert win.alerts_dock.isVisibleTo(win) or win.detail_dock.isVisibleTo(win)
        win.throughput_dock.hide()  # the engineer closes a dock and moves another
        win.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, win.detail_dock)
    finally:
        first.window.close()  # saves the layout, then closes the session
    assert (tmp_path / WINDOW_SETTINGS).exists()

    second = open_window()
    try:
        win = second.window
        assert not win.throughput_dock.isVisibleTo(win)
        assert win.dockWidgetArea(win.detail_dock) == Qt.DockWidgetArea.LeftDockWidgetArea
        win.reset_layout()  # View → Reset layout brings back the first arrangement
        assert win.throughput_dock.isVisibleTo(win)
        assert win.dockWidgetArea(win.detail_dock) == Qt.DockWidgetArea.RightDockWidgetArea
    finally:
        second.close()


def test_closing_hooks_run_last_registered_first(qtbot, gui_session) -> None:
    seen: list[bool] = []
    win = gui_session.window
    # Registered after the session's own close (as a dialog's `dtf` processes are): it runs while the
    # coordinator they talk to is still up.
    win.on_close(lambda: seen.append(gui_session.bridge.coordinator.is_running))
    win.close()
    assert seen == [True]
    assert not gui_session.bridge.coordinator.is_running


def test_findings_stored_before_the_window_opened_are_listed_not_announced(qtbot, tmp_path, monkeypatch) -> None:
    import time

    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.store import Store
    from dtf_gui.ui.app import Session

    db = tmp_path / "dtf.sqlite"
    store = Store(db)
    now = time.time()
    try:
        store.put_event("change_point", "r-step", {
            "kind": "change_point", "result_id": "r-step", "metric": "throughput_mb_s", "timestamp": now - 3600,
            "series": {"test_id": "bench/io", "worker_id": "lab-1"}, "direction": "regression",
            "rel_change": -0.08, "mean_before": 100.0, "mean_after": 92.0, "p_value": 1e-9})
        store.put_event("anomaly", "r-spike", {
            "kind": "anomaly", "result_id": "r-spike", "metric": "throughput_mb_s", "timestamp": now - 7200,
            "series": {"test_id": "bench/io", "worker_id": "lab-1"}, "value": 130.0, "score": 9.1})
        store.flush(wait=True)
    finally:
        store.close()
    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    session = Session(ephemeral_settings(db), tmp_path, local_agent=False)
    qtbot.addWidget(session.window)
    try:
        win = session.window
        qtbot.waitUntil(lambda: win.findings.rowCount() == 2, timeout=10_000)
        assert "(2)" in win.tabs.tabText(win.tabs.indexOf(win.findings_view))
        dock = win.alerts_dock
        qtbot.waitUntil(lambda: dock.model.rowCount() >= 1, timeout=10_000)  # the regression needs attention
        assert "Alerts (1)" == dock.windowTitle()
        assert dock.notifications == []  # history, not news
    finally:
        session.close()
