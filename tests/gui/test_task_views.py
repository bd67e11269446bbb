"""The tasks table, its filter bar and menu, and the task detail pane, over a real coordinator.

The windowed model reads the real database through task_page (a real embedded coordinator, its
analysis thread, SQLite); the detail pane reads a real task's log as the local agent streamed it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QItemSelectionModel, QModelIndex, Qt
from PySide6.QtWidgets import QApplication, QWidget

from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.models import TASK_IDS_MIME
from dtf_gui.ui.task_detail import TaskDetailPane
from dtf_gui.ui.task_table import COL_STATUS, COL_TASK, PLACEHOLDER, TasksPanel, TaskTableModel

# Screenshots for a look, only when asked: DTF_SHOTS=/tmp/shots pytest ...
SHOTS = os.environ.get("DTF_SHOTS")
NOWHERE = {"worker": "nowhere"}  # pinned to a worker that never comes: stays pending


@pytest.fixture
def bridge(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CoordinatorBridge]:
    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    b = CoordinatorBridge.embedded(ephemeral_settings(tmp_path / "dtf.sqlite"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def submit(bridge: CoordinatorBridge, n: int, **fields: Any) -> list[str]:
    ids: list[str] = []
    for i in range(0, n, 1000):
        data = bridge.call("create_tasks", {"tasks": [{"type": "noop", "requirements": NOWHERE, **fields}
                                                      for _ in range(min(1000, n - i))]})
        assert data is not None
        ids.extend(data["task_ids"])
    return ids


def stored(bridge: CoordinatorBridge) -> int:
    return bridge.call("task_page", {"limit": 0})["total"]


def wait_stored(qtbot, bridge: CoordinatorBridge, n: int) -> None:
    qtbot.waitUntil(lambda: stored(bridge) >= n, timeout=20_000)


def shot(widget: QWidget, name: str) -> None:
    if SHOTS:
        QApplication.processEvents()  # the rows that just arrived, painted
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        widget.grab().save(str(Path(SHOTS) / name))


def shown(model: TaskTableModel, rows: range) -> list[str]:
    return [model.index(r, COL_TASK).data(Qt.ItemDataRole.UserRole) for r in rows]


def load_rows(qtbot, model: TaskTableModel, rows: range) -> None:
    """Ask for these rows the way a view does (data()), and wait until their blocks are in."""
    for r in rows:
        model.index(r, 0).data()
    qtbot.waitUntil(lambda: all(model.peek(r) is not None for r in rows), timeout=10_000)


def test_model_windows_over_thousands_of_tasks(qtbot, qtmodeltester, bridge) -> None:
    ids = submit(bridge, 3000, command="echo x")
    wait_stored(qtbot, bridge, 3000)
    model = TaskTableModel(bridge, block_size=100, max_blocks=5)
    qtbot.waitUntil(lambda: model.rowCount() == 3000, timeout=10_000)
    # Only the first window was read: no row per task.
    assert model.cached_rows() == 100
    assert model.index(2500, COL_TASK).data() == PLACEHOLDER  # asked for, not there yet
    qtbot.waitUntil(lambda: model.index(2500, COL_TASK).data() != PLACEHOLDER, timeout=10_000)
    # Newest first: the last submitted is row 0, the first submitted the last row.
    load_rows(qtbot, model, range(2990, 3000))
    assert shown(model, range(2990, 3000)) == list(reversed(ids[:10]))
    assert shown(model, range(0, 3)) == list(reversed(ids[-3:]))
    # Scrolling far fetches blocks; the cache stays bounded.
    for r in range(0, 3000, 150):
        load_rows(qtbot, model, range(r, r + 1))
    assert model.cached_rows() <= 5 * 100
    # Short ids on screen tell consecutive tasks apart (a fixed 10-character cut did not).
    load_rows(qtbot, model, range(1000, 1100))
    shorts = [model.index(r, COL_TASK).data() for r in range(1000, 1100)]
    assert len(set(shorts)) == 100
    assert len({i[:10] for i in ids[1900:2000]}) < 100
    for r in range(1000, 1010):
        full = model.index(r, COL_TASK).data(Qt.ItemDataRole.ToolTipRole)
        assert full.startswith(model.index(r, COL_TASK).data()) and len(full) > len(model.index(r, COL_TASK).data())
    # Drag carries the full ids of the rows.
    mime = model.mimeData([model.index(1000, 0), model.index(1001, 3), model.index(1000, 2)])
    assert bytes(mime.data(TASK_IDS_MIME).data()).decode().split("\n") == shown(model, range(1000, 1002))
    assert model.flags(model.index(1000, 0)) & Qt.ItemFlag.ItemIsDragEnabled
    qtmodeltester.check(model, force_py=True)


def test_status_overlay_and_new_tasks_insert_at_top_keeping_selection(qtbot, bridge) -> None:
    ids = submit(bridge, 500)
    wait_stored(qtbot, bridge, 500)
    panel = TasksPanel(bridge)
    qtbot.addWidget(panel)
    panel.resize(1200, 600)
    panel.show()
    model, view = panel.model, panel.view
    qtbot.waitUntil(lambda: model.rowCount() == 500, timeout=10_000)
    load_rows(qtbot, model, range(0, 50))
    row = 10
    target = model.index(row, 0).data(Qt.ItemDataRole.UserRole)
    view.selectionModel().select(model.index(row, 0), QItemSelectionModel.SelectionFlag.ClearAndSelect
                                 | QItemSelectionModel.SelectionFlag.Rows)
    assert view.selected_ids() == [target]
    # Cancel it: the event's status shows at once (overlay), before any page is read again.
    before = model.requests
    assert view.cancel_selected() == 1
    qtbot.waitUntil(lambda: model.index(row, COL_STATUS).data() == "cancelled", timeout=10_000)
    assert model.requests == before  # the overlay, not a page read
    # New tasks arrive as rows inserted at the top, the selection moves with its task.
    inserted: list[tuple[int, int]] = []
    model.rowsInserted.connect(lambda _p, first, last: inserted.append((first, last)))
    new = submit(bridge, 7)
    qtbot.waitUntil(lambda: model.rowCount() == 507, timeout=10_000)
    assert inserted and all(first == 0 for first, _ in inserted)
    assert model.requests > before
    assert view.selected_ids() == [target]
    assert view.selectionModel().selectedRows()[0].row() == row + 7
    load_rows(qtbot, model, range(0, 7))
    assert shown(model, range(0, 7)) == list(reversed(new))
    assert "507 tasks" in panel.count_label.text()
    assert ids  # the first 500 are below


def test_filters_by_status_and_text(qtbot, bridge) -> None:
    ids = submit(bridge, 300, command="echo plain")
    special = submit(bridge, 3, command="echo needle-in-hay")
    wait_stored(qtbot, bridge, 303)
    for t in ids[:20]:
        assert bridge.call("cancel_task", {"task_id": t}) is not None
    qtbot.waitUntil(lambda: bridge.call("task_page", {"status": ["cancelled"], "limit": 0})["total"] == 20,
                    timeout=10_000)
    panel = TasksPanel(bridge)
    qtbot.addWidget(panel)
    model = panel.model
    qtbot.waitUntil(lambda: model.rowCount() == 303, timeout=10_000)
    panel.filter_bar.set_statuses(["cancelled"])
    qtbot.waitUntil(lambda: model.rowCount() == 20, timeout=10_000)
    load_rows(qtbot, model, range(20))
    assert set(shown(model, range(20))) == set(ids[:20])
    assert "Status: cancelled" in panel.filter_bar.status_button.text()
    assert "303 tasks, 20 shown by filter" in panel.count_label.text()
    panel.filter_bar.set_statuses([])
    qtbot.keyClicks(panel.filter_bar.text, "NEEDLE")
    qtbot.waitUntil(lambda: model.rowCount() == 3, timeout=10_000)  # after the debounce
    load_rows(qtbot, model, range(3))
    assert shown(model, range(3)) == list(reversed(special))
    # A short id typed (or pasted) finds its task.
    panel.filter_bar.text.setText(ids[5][:14])
    qtbot.waitUntil(lambda: model.rowCount() >= 1 and model.peek(0) is not None
                    and model.peek(0)["task_id"] == ids[5], timeout=10_000)


def test_context_menu_actions_and_a_refusal_shown(qtbot, bridge) -> None:
    ids = submit(bridge, 3)
    wait_stored(qtbot, bridge, 3)
    panel = TasksPanel(bridge)
    qtbot.addWidget(panel)
    panel.show()
    model, view = panel.model, panel.view
    qtbot.waitUntil(lambda: model.rowCount() == 3 and model.peek(2) is not None, timeout=10_000)
    view.selectRow(0)
    menu = view.context_menu()
    titles = [a.text() for a in menu.actions()]
    assert {"Open details", "Retry", "Cancel", "Set priority…", "Assign to", "Copy id(s)"} <= set(titles)
    # Priority through the op (answered later, off the GUI thread).
    assert view.set_priority_selected(7) == 1
    qtbot.waitUntil(lambda: view.last_message == "Priority 7 set on 1", timeout=10_000)
    assert bridge.call("get_task", {"task_id": ids[-1]})["priority"] == 7
    # Copy: the full id, not the short one.
    qtbot.keyClick(view, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert QApplication.clipboard().text() == ids[-1]
    # Cancel by its shortcut; cancelling it again is refused, and the reason is shown.
    with qtbot.waitSignal(view.actionFinished, timeout=10_000) as sent:
        qtbot.keyClick(view, Qt.Key.Key_Delete)
    assert sent.args == ["cancel_tasks", {"done": [ids[-1]], "refused": {}}]
    assert view.last_message == "Cancelled 1"
    assert bridge.call("get_task", {"task_id": ids[-1]})["status"] == "cancelled"
    with qtbot.waitSignal(view.actionFinished, timeout=10_000):
        assert view.cancel_selected() == 1
    assert view.last_message == panel.message.text() == "Refused: cannot cancel: task already cancelled"
    # Two tasks, one refused: both counted, the first reason shown.
    view.selectionModel().select(model.index(1, 0), QItemSelectionModel.SelectionFlag.Select
                                 | QItemSelectionModel.SelectionFlag.Rows)
    with qtbot.waitSignal(view.actionFinished, timeout=10_000):
        assert view.cancel_selected() == 2
    assert view.last_message == "Cancelled 1; 1 refused: cannot cancel: task already cancelled"
    view.selectRow(2)
    # Assign to a worker that does not exist: refused with the coordinator's reason.
    with qtbot.waitSignal(view.actionFinished, timeout=10_000):
        view.assign_selected("ghost")
    assert "no worker 'ghost'" in panel.message.text()
    # Enter opens the task.
    opened: list[str] = []
    view.taskActivated.connect(opened.append)
    view.setCurrentIndex(model.index(1, 0))
    qtbot.keyClick(view, Qt.Key.Key_Return)
    assert opened == [ids[1]]


def test_detail_pane_shows_a_finished_tasks_stdout(qtbot, gui_session, qtmodeltester) -> None:
    bridge = gui_session.bridge
    task_id = bridge.call("create_task", {"command": "echo hello-detail; echo oops >&2",
                                          "requirements": {"tags": []}})["task_id"]
    pane = TaskDetailPane(bridge, poll_ms=200)
    qtbot.addWidget(pane)
    pane.resize(500, 700)
    pane.show()
    pane.show_task(task_id)
    qtbot.waitUntil(lambda: "hello-detail" in pane.log_text("stdout"), timeout=30_000)
    qtbot.waitUntil(lambda: "oops" in pane.log_text("stderr"), timeout=10_000)
    qtbot.waitUntil(lambda: pane.status_label.text() == "completed" and pane.attempts.rowCount() == 1,
                    timeout=20_000)
    qtbot.waitUntil(lambda: not pane._timer.isActive(), timeout=10_000)  # log complete: polling stopped
    assert pane.id_label.text() == task_id
    assert pane.attempts.index(0, 2).data() == "success" and pane.attempts.index(0, 3).data() == "0"
    assert "echo hello-detail" in pane.task_text.toPlainText()
    assert pane.log_text("stdout").count("hello-detail") == 1  # read once, not appended per poll
    qtmodeltester.check(pane.attempts, force_py=True)
    qtmodeltester.check(pane.metrics, force_py=True)
    shot(pane, "task_detail.png")


def test_detail_pane_says_why_a_task_waits_and_cancels_it(qtbot, bridge) -> None:
    task_id = submit(bridge, 1)[0]
    pane = TaskDetailPane(bridge, poll_ms=200)
    qtbot.addWidget(pane)
    pane.show_task(task_id)
    qtbot.waitUntil(lambda: pane.status_label.text() == "pending", timeout=10_000)
    assert pane.why_label.text() == "Waiting: no workers connected yet"  # the scheduler's own words
    assert pane.cancel_button.isEnabled() and not pane.retry_button.isEnabled()
    pane.cancel_button.click()
    qtbot.waitUntil(lambda: pane.status_label.text() == "cancelled", timeout=10_000)
    assert not pane.act("cancel_task", "cancel")
    assert "already cancelled" in pane.message.text()


def test_metrics_and_attempts_models_pass_the_model_tester(qtmodeltester) -> None:
    from dtf_gui.ui.task_detail import attempts_model, metrics_model
    a = attempts_model()
    a.set_rows([{"attempt": 1, "worker_id": "w", "status": "failure", "exit_code": 1, "execution_time": 0.2,
                 "error": "x\nboom"}])
    assert a.index(0, 5).data() == "boom" and a.index(0, 4).data() == "200 ms"
    m = metrics_model()
    m.set_rows([{"attempt": 1, "name": "latency", "value": 1.5, "unit": "ms"}])
    for model in (a, m):
        qtmodeltester.check(model, force_py=True)
    assert QModelIndex().isValid() is False


def test_screenshot_of_the_tasks_table(qtbot, gui_session) -> None:
    """A few thousand tasks of mixed outcome, as a lab engineer sees them (saved for a look)."""
    bridge = gui_session.bridge
    waiting: list[str] = []
    done: list[str] = []
    for r in range(15):  # rounds, so that outcomes mix on screen as they do in a lab
        waiting += submit(bridge, 160, type="command", command=f"pytest tests/perf -k throughput_{r}")
        done += bridge.call("create_tasks", {"tasks": [{"command": f"echo run-{r}-{i}",
                                                        "test_id": f"tests/io.py::test_{r}_{i}"} for i in range(8)]
                                             + [{"command": "echo failing >&2; exit 3"}]})["task_ids"]
    for t in waiting[::37]:
        bridge.call("cancel_task", {"task_id": t})
    qtbot.waitUntil(lambda: bridge.call("task_page", {"status": ["completed", "failed"], "limit": 0})["total"]
                    == len(done), timeout=60_000)
    panel = TasksPanel(bridge)
    qtbot.addWidget(panel)
    panel.resize(1400, 560)
    panel.show()
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2535, timeout=10_000)
    panel.view.scrollTo(panel.model.index(160, 0), panel.view.ScrollHint.PositionAtTop)
    qtbot.waitUntil(lambda: panel.model.peek(160) is not None and panel.model.peek(190) is not None,
                    timeout=10_000)
    panel.view.selectRow(170)
    shot(panel, "tasks_table.png")
    assert "2,535 tasks" in panel.count_label.text()


def test_detail_pane_polls_only_while_seen_and_ignores_late_answers(qtbot, bridge, monkeypatch) -> None:
    import shiboken6
    a, b = submit(bridge, 2)
    asked: list[tuple[str, dict[str, Any], Any]] = []
    forward = bridge.call_async

    def recording(op: str, args: Any, done: Any, **kw: Any) -> bool:
        asked.append((op, dict(args or {}), done))
        return forward(op, args, done, **kw)

    monkeypatch.setattr(bridge, "call_async", recording)
    pane = TaskDetailPane(bridge, poll_ms=50)
    qtbot.addWidget(pane)
    pane.show()
    pane.show_task(a)
    qtbot.waitUntil(lambda: pane.status_label.text() == "pending", timeout=10_000)
    assert pane._timer.isActive()  # a waiting task: its log is followed
    # Hidden (its dock closed): no more polls, until it is seen again.
    pane.hide()
    assert not pane._timer.isActive()
    n = len(asked)
    pane.poll_logs()
    assert len(asked) == n
    pane.show()
    assert pane._timer.isActive()
    qtbot.waitUntil(lambda: any(op == "get_log" for op, _, _ in asked[n:]), timeout=10_000)
    # An answer about the task shown before lands after another one is shown: ignored.
    late = next(done for op, args, done in asked if op == "get_task" and args["task_id"] == a)
    pane.show_task(b)
    qtbot.waitUntil(lambda: pane.status_label.text() == "pending", timeout=10_000)
    late({"task_id": a, "status": "failed", "why": "not this one"}, None)
    assert pane.id_label.text() == b and pane.status_label.text() == "pending"
    assert "not this one" not in pane.why_label.text()
    # Destroyed with a read in flight: its answer does nothing (no error on a deleted widget).
    gone = TaskDetailPane(bridge, poll_ms=50)
    gone.show()
    gone.show_task(a)
    pending = [done for op, args, done in asked if op in ("get_task", "get_log")][-3:]
    shiboken6.delete(gone)
    for done in pending:
        done({"task_id": a, "status": "failed", "attempt": 1, "data": b"x", "next_offset": 1, "size": 1,
              "complete": True}, None)


def test_live_changes_under_a_filter_pass_the_model_tester_without_resets(qtbot, qtmodeltester, bridge) -> None:
    """_grow (insert at the top), the filtered refresh (rows leave at the end) and a reset, all with
    the model tester connected: it checks every signal the model sends meanwhile."""
    ids = submit(bridge, 600)
    wait_stored(qtbot, bridge, 600)
    panel = TasksPanel(bridge)
    qtbot.addWidget(panel)
    panel.resize(1000, 500)
    panel.show()
    model, view = panel.model, panel.view
    qtbot.waitUntil(lambda: model.rowCount() == 600, timeout=10_000)
    qtmodeltester.check(model, force_py=True)
    resets: list[int] = []
    removed: list[tuple[int, int]] = []
    model.modelReset.connect(lambda: resets.append(model.rowCount()))
    model.rowsRemoved.connect(lambda _p, first, last: removed.append((first, last)))
    submit(bridge, 5)  # unfiltered: inserted at the top
    qtbot.waitUntil(lambda: model.rowCount() == 605, timeout=10_000)
    model.set_filter({"status": ["pending"]})  # a filter change: one reset
    qtbot.waitUntil(lambda: resets == [605] and not model.loading, timeout=10_000)
    load_rows(qtbot, model, range(0, 60))
    view.selectRow(40)
    # Tasks in view leave the filter: no reset; the count goes down at the end; what is in view is
    # read again (every row shown is pending again).
    leaving = [model.peek(r)["task_id"] for r in range(0, 30, 3)]
    for t in leaving:
        assert bridge.call("cancel_task", {"task_id": t}) is not None
    qtbot.waitUntil(lambda: model.rowCount() == 595, timeout=10_000)
    assert removed and all(first >= 595 for first, _ in removed)  # at the end

    def all_pending() -> bool:
        return all(model.index(r, COL_STATUS).data() == "pending" for r in range(0, 60))
    qtbot.waitUntil(all_pending, timeout=10_000)
    assert not set(leaving) & {model.peek(r)["task_id"] for r in range(0, 60)}
    # New tasks under the filter: at the top, still no reset; the selection was never dropped.
    submit(bridge, 4)
    qtbot.waitUntil(lambda: model.rowCount() == 599, timeout=10_000)
    assert resets == [605]
    assert view.selectionModel().hasSelection()
    # Back to no filter: a reset, and the selected task selected again by id.
    keep = view.selected_ids()
    assert len(keep) == 1
    model.set_filter({})
    qtbot.waitUntil(lambda: len(resets) == 2 and model.rowCount() == 609, timeout=10_000)
    qtbot.waitUntil(lambda: view.selected_ids() == keep, timeout=10_000)
    assert ids


class _NoPerRowSelection(QItemSelectionModel):
    """A selection model that fails a test reading it one index per row (Ctrl+A: a million)."""

    def selectedRows(self, column: int = 0) -> list[QModelIndex]:
        raise AssertionError("selection read per row")

    def selectedIndexes(self) -> list[QModelIndex]:
        raise AssertionError("selection read per index")


def _finished_db(path: Path, n: int) -> None:
    """n ended tasks in the real schema, fast (executemany; the coordinator loads none at start)."""
    import json
    import sqlite3

    from dtf_gui.coordinator.store import Store
    Store(path).close()
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO tasks (task_id, type, status, priority, create_time, worker_id, parameters, "
                       "attempt) VALUES (?,?,?,?,?,?,?,?)",
                       ((f"{1_700_000_000_000_000 + i:x}b7", "command", ("completed", "failed")[i % 2], 0,
                         1_700_000_000.0 + i * 0.001, "w0", json.dumps({"command": f"echo {i}"}), 1)
                        for i in range(n)))
    db.close()


def test_select_all_over_100k_tasks_acts_through_one_capped_batch(qtbot, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    n = 100_000
    _finished_db(tmp_path / "big.sqlite", n)
    bridge = CoordinatorBridge.embedded(ephemeral_settings(tmp_path / "big.sqlite"))
    bridge.start()
    try:
        sent: list[tuple[str, dict[str, Any]]] = []
        forward = bridge.call_async

        def recording(op: str, args: Any, done: Any, **kw: Any) -> bool:
            sent.append((op, dict(args or {})))
            return forward(op, args, done, **kw)

        monkeypatch.setattr(bridge, "call_async", recording)
        panel = TasksPanel(bridge)
        qtbot.addWidget(panel)
        panel.resize(1000, 500)
        panel.show()
        model, view = panel.model, panel.view
        qtbot.waitUntil(lambda: model.rowCount() == n, timeout=30_000)
        view.setSelectionModel(_NoPerRowSelection(model, view))
        view.selectAll()
        # The menu, the save on a reset and the actions read spans, never a row at a time (the
        # selection model above fails the test otherwise).
        menu = view.context_menu()
        assert view.retry_action.isEnabled() and menu.actions()
        view._save_selection()
        assert 0 < len(view._saved) <= 1000
        with qtbot.waitSignal(view.actionFinished, timeout=60_000) as finished:
            assert view.retry_selected() == 10_000
        batches = [args for op, args in sent if op == "retry_tasks"]
        assert len(batches) == 1  # one batch op, not a request per task
        asked = batches[0]["task_ids"]
        newest = [f"{1_700_000_000_000_000 + i:x}b7" for i in range(n - 1, n - 10_001, -1)]
        assert asked == newest  # the first 10,000 selected rows, loaded or not, in order
        assert all(args["limit"] <= 500 for op, args in sent if op == "task_page")
        out = finished.args[1]
        assert len(out["done"]) + len(out["refused"]) == 10_000
        assert view.last_message.startswith("10,000 of 100,000 selected tasks acted on — narrow the filter. Retried")
    finally:
        bridge.stop()
