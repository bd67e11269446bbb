"""The worker health view: table with sparklines and states, strip charts, actions, and the drop target
for tasks; against a fake coordinator for the states and refusals it is told to give, and against the
real one (gui_session) for assigning by drag and drop."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QDragMoveEvent, QDropEvent, QImage
from PySide6.QtWidgets import QToolTip

from dtf_gui.ui.health_view import (
    COL,
    HISTORY_SECONDS,
    KIND_ROLE,
    WORKER_ROLE,
    HealthView,
    History,
    WorkerHealthModel,
)
from dtf_gui.ui.models import TASK_IDS_MIME
from tests.gui.fake_alerts import fake_health_bridge, shot, worker
from tests.gui.fakes import agent


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def six_workers(now: float) -> list[dict[str, Any]]:
    return [
        worker("bench-01-gpu", cpu=35, memory=62, disk=48, gpu=87, gpu_memory=71, running=2, slots=4,
               tags=["gpu", "cuda12", "linux"], hardware="32 cores, 128 GB, 1× A100, Linux"),
        worker("bench-02", cpu=92, memory=81, disk=30, running=8, slots=8, status="busy", tags=["linux", "x86_64"]),
        worker("bench-03", cpu=12, memory=22, disk=91, tags=["linux"], draining=True, running=1),
        worker("bench-04", status="offline", cpu=5, memory=10, disk=40, last_seen=now - 312, tags=["windows"],
               hardware="8 cores, 16 GB, Windows", health="lost"),
        worker("lab-pc-7", cpu=55, memory=47, disk=66, tags=["linux", "arm64", "big-memory", "nightly"],
               hardware="64 cores, 512 GB, Linux"),
        worker("mac-mini-2", cpu=3, memory=35, disk=20, tags=["macos"], hardware="10 cores, 32 GB, Darwin"),
    ]


def feed_minutes(view: HealthView, clock: Clock, workers: list[dict[str, Any]], seconds: int, seed: int = 1) -> None:
    """Heartbeats every 3 s for ``seconds`` (clock moved by hand, the view's clock ticking each second),
    load wandering around each worker's level; the offline worker is silent."""
    rng = np.random.default_rng(seed)
    start = clock.now
    for step in range(seconds):
        clock.now = start + step
        batch = []
        for w in workers:
            if w["status"] == "offline" or step % 3:
                continue
            w = dict(w, last_seen=clock.now)
            for k in ("cpu_percent", "memory_percent", "disk_percent", "gpu_percent"):
                if w[k] is not None:
                    w[k] = float(np.clip(w[k] + rng.normal(0, 6) + 12 * np.sin(step / 40), 0, 100))
            batch.append(w)
        view.model.apply_workers(batch)
        view.model.tick()


@pytest.fixture
def health(qtbot):
    made: list[Any] = []

    def make(workers: list[dict[str, Any]] | None = None, clock: Clock | None = None, **kwargs: Any):
        bridge, fake = fake_health_bridge(workers=workers, **kwargs)
        view = HealthView(bridge, clock=clock or time.time)
        qtbot.addWidget(view)
        view.resize(1280, 720)
        view.show()
        made.append(bridge)
        return view, bridge, fake

    yield make
    for bridge in made:
        bridge.stop()


def proxy_row(view: HealthView, worker_id: str, kind: str = "worker") -> int:
    p = view.proxy
    return next(r for r in range(p.rowCount())
                if p.index(r, 0).data(WORKER_ROLE) == worker_id and p.index(r, 0).data(KIND_ROLE) == kind)


def cell(view: HealthView, worker_id: str, col: str, kind: str = "worker") -> str:
    return view.proxy.index(proxy_row(view, worker_id, kind), COL[col]).data()


def drop(view: HealthView, task_ids: list[str], worker_id: str, kind: str = "worker") -> QDropEvent:
    """What a drag from the tasks table delivers on release over a worker's row."""
    table = view.table
    target = table.visualRect(view.proxy.index(proxy_row(view, worker_id, kind), 0)).center()
    mime = QMimeData()
    mime.setData(TASK_IDS_MIME, "\n".join(task_ids).encode())
    move = QDragMoveEvent(target, Qt.DropAction.MoveAction, mime, Qt.MouseButton.LeftButton,
                          Qt.KeyboardModifier.NoModifier)
    table.dragMoveEvent(move)
    event = QDropEvent(QPointF(target), Qt.DropAction.MoveAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    table.dropEvent(event)
    return event


# -- pure parts ---------------------------------------------------------------------------------------


def test_history_keeps_one_sample_a_second_and_wraps() -> None:
    h = History(capacity=10)
    h.record(100.2, [1.0] * 8)
    h.record(100.7, [2.0] * 8)  # same second: replaces
    assert h.count == 1
    for s in range(101, 115):
        h.record(float(s), [float(s)] * 8)
    t, v = h.since(0)
    assert len(t) == 10 and list(t) == [float(s) for s in range(105, 115)]  # the oldest went round
    assert v[-1, 0] == 114.0
    t, _ = h.since(110.5)
    assert list(t) == [111.0, 112.0, 113.0, 114.0]


def test_model_passes_the_model_tester(qtmodeltester) -> None:
    clock = Clock(1000.0)
    m = WorkerHealthModel(clock)
    m.apply_workers([worker("a", last_seen=1000.0), worker("b", gpu=50, gpu_memory=20, last_seen=1000.0)])
    m.apply_agents([agent("new-1"), agent("old", "accepted")])
    clock.now = 1003.0
    m.tick()
    m.apply_workers([worker("a", status="offline", last_seen=1000.0), worker("c", draining=True)])
    m.apply_agents([agent("new-1", "accepted")])
    assert [m.index(r, 0).data() for r in range(m.rowCount())] == ["a", "b", "c"]
    qtmodeltester.check(m, force_py=True)


# -- the view with a fake coordinator -----------------------------------------------------------------


def test_workers_show_states_load_and_sparklines(qtbot, health) -> None:
    now = time.time()
    clock = Clock(now - 300)
    workers = six_workers(now)
    view, bridge, fake = health(workers, clock)
    qtbot.waitUntil(lambda: view.model.rowCount() == 6, timeout=5000)  # from list_workers, at open
    fake.emit("enrollment", agent("new-box-9"))
    qtbot.waitUntil(lambda: view.model.rowCount() == 7, timeout=5000)
    feed_minutes(view, clock, workers, 300)

    assert cell(view, "bench-01-gpu", "state") == "online"
    assert cell(view, "bench-02", "state") == "busy"
    assert cell(view, "bench-03", "state") == "draining"
    assert cell(view, "bench-04", "state") == "lost"
    assert cell(view, "new-box-9", "state", "pending") == "pending enrollment"
    assert cell(view, "bench-02", "load") == "8/8"
    assert cell(view, "bench-02", "gpu") == "—" and cell(view, "bench-01-gpu", "gpu").endswith("%")
    assert cell(view, "bench-01-gpu", "hardware") == "32 cores, 128 GB, 1× A100, Linux"
    assert cell(view, "lab-pc-7", "tags") == "linux, arm64, big-memory, nightly"
    assert cell(view, "bench-04", "heartbeat") == "5 min"  # last heard 312 s before now, the clock is at now - 1

    # The delegate paints each worker's last minutes: the CPU cell holds the line's colour, the GPU cell
    # of a worker without a GPU holds none.
    image = view.table.viewport().grab().toImage()

    def line_pixels(worker_id: str, col: str) -> int:
        rect = view.table.visualRect(view.proxy.index(proxy_row(view, worker_id), COL[col]))
        plot_w = rect.width() - view.table.fontMetrics().horizontalAdvance("100%") - 10
        return sum(1 for x in range(rect.left() + 4, rect.left() + plot_w) for y in range(rect.top() + 3, rect.bottom() - 2)
                   if _near(image.pixelColor(x, y), QColor("#1565c0")))

    assert line_pixels("mac-mini-2", "cpu") > 20
    assert line_pixels("bench-02", "gpu") == 0
    assert view.model.history["mac-mini-2"].count == 300

    # Every column in sight at 1280 px, no sideways scrolling.
    header = view.table.horizontalHeader()
    assert header.length() <= view.table.viewport().width() + 1
    assert all(header.sectionSize(c) >= 40 for c in range(header.count()))

    # An agent that is accepted and registers leaves the pending row for a worker row.
    fake.emit("enrollment", agent("new-box-9", "accepted"))
    fake.emit("worker", worker("new-box-9"))
    qtbot.waitUntil(lambda: cell(view, "new-box-9", "state") == "online", timeout=5000)
    assert "pending:new-box-9" not in view.model.keys()


def _near(c: QColor, target: QColor, tol: int = 40) -> bool:
    return abs(c.red() - target.red()) + abs(c.green() - target.green()) + abs(c.blue() - target.blue()) < tol


def test_heartbeat_age_counts_up_for_a_silent_worker(qtbot, health) -> None:
    view, bridge, fake = health([worker("quiet", last_seen=time.time() - 3)])
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    first = int(cell(view, "quiet", "heartbeat").split()[0])
    # Nothing arrives; the view's own clock moves the age on.
    qtbot.waitUntil(lambda: int(cell(view, "quiet", "heartbeat").split()[0]) >= first + 2, timeout=5000)


def test_strip_charts_follow_the_selected_worker_at_most_four_times_a_second(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1"), worker("w2", gpu=40, gpu_memory=30)])
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)
    assert view.selected_worker == "w1"  # the first worker is shown without asking
    view.select_worker("w2")
    assert len(view.charts) == 4
    before = view.chart_redraws
    for i in range(200):  # a flood of heartbeats, one event batch each
        fake.emit("worker", worker("w2", cpu=float(i % 100), gpu=50.0, gpu_memory=30.0))
    qtbot.waitUntil(lambda: view.chart_redraws > before, timeout=3000)
    assert view.chart_redraws - before <= 2
    x, y = view.charts[0].curves["cpu_percent"].xData, view.charts[0].curves["cpu_percent"].yData
    assert len(x) >= 1 and y[-1] == 99.0
    gpu = view.charts[0].curves["gpu_percent"].yData
    assert gpu[-1] == 50.0
    assert "w2" in view.chart_title.text()
    slots = view.charts[2].curves["slots"].yData
    assert slots[-1] == 4


def test_drop_assigns_and_a_partial_refusal_shows_at_the_drop_point(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1"), worker("w2")],
                                refuse={"t2": "cannot assign t2: worker w1 lacks tag gpu",
                                        "t4": "cannot assign t4: worker w1 lacks tag gpu"})
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)
    errors: list[str] = []
    bridge.errorRaised.connect(errors.append)
    with qtbot.waitSignal(view.tasksAssigned) as sig:
        event = drop(view, ["t1", "t2", "t3", "t4", "t5"], "w1")
    assert event.isAccepted()
    assert sig.args == [["t1", "t3", "t5"], "w1"]
    assert fake.assigned == [("t1", "w1"), ("t3", "w1"), ("t5", "w1")]
    assert [op for op, _ in fake.calls if op.startswith("assign")] == ["assign_tasks"], "one request"
    tip = QToolTip.text()
    assert "3 of 5 assigned to w1; 2 refused" in tip and "lacks tag gpu" in tip
    assert errors[-1] == tip  # the status bar keeps the summary
    assert view.table.drop_row is None  # the highlight goes with the drop


def test_drag_highlights_the_worker_row_and_not_a_pending_one(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1")], agents=[agent("asking")])
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)
    mime = QMimeData()
    mime.setData(TASK_IDS_MIME, b"t1")

    def move(worker_id: str, kind: str) -> QDragMoveEvent:
        r = proxy_row(view, worker_id, kind)
        pos = view.table.visualRect(view.proxy.index(r, 1)).center()
        e = QDragMoveEvent(pos, Qt.DropAction.MoveAction, mime, Qt.MouseButton.LeftButton,
                           Qt.KeyboardModifier.NoModifier)
        view.table.dragMoveEvent(e)
        return e

    assert move("w1", "worker").isAccepted()
    assert view.table.drop_row == proxy_row(view, "w1")
    assert not move("asking", "pending").isAccepted()
    assert view.table.drop_row is None
    assert not drop(view, ["t1"], "asking", "pending").isAccepted()
    assert fake.assigned == []


def test_drain_and_resume_call_the_coordinator(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1"), worker("w2")])
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)
    view.select_worker("w2")
    assert view.buttons["drain"].isEnabled()
    view.buttons["drain"].click()
    assert ("drain_worker", {"worker_id": "w2"}) in fake.calls
    assert cell(view, "w2", "state") == "draining"
    assert "Draining: w2" in view.message.text()
    view.buttons["resume"].click()
    assert ("resume_worker", {"worker_id": "w2"}) in fake.calls
    assert cell(view, "w2", "state") == "online"


def test_a_refused_drain_says_why(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1")])
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    fake.emit("worker", worker("ghost"))  # a worker the coordinator no longer knows
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)
    view.select_worker("ghost")
    assert view.drain_selected() == []
    assert "no worker 'ghost'" in view.message.text()


def test_revoke_asks_the_coordinator_to_revoke_the_workers_key(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1")], agents=[agent("w1", "accepted")])
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    view.select_worker("w1")
    assert view.revoke_selected(confirm=False) == ["w1"]
    assert any(op == "revoke_agents" and args["agents"] == ["w1"] for op, args in fake.calls)


def test_a_viewer_is_offered_no_actions_and_no_drop(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1")], role="viewer")
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    view.select_worker("w1")
    for name in ("drain", "resume", "revoke"):
        assert not view.buttons[name].isEnabled()
    assert "operator role" in view.buttons["drain"].toolTip()
    assert not view.table.acceptDrops()


def test_screenshot_six_workers(qtbot, health, tmp_path) -> None:
    now = time.time()
    clock = Clock(now - 600)
    workers = six_workers(now)
    view, bridge, fake = health(workers, clock, agents=[agent("new-box-9")])
    qtbot.waitUntil(lambda: view.model.rowCount() == 7, timeout=5000)
    feed_minutes(view, clock, workers, 600)
    view.select_worker("bench-01-gpu")
    view._redraw_charts()
    shot(view, "health_view")
    assert QImage(view.grab().toImage()).width() >= 1280 - 4


# -- the real coordinator -----------------------------------------------------------------------------


def test_dropping_tasks_on_the_local_worker_with_a_real_coordinator(qtbot, gui_session) -> None:
    bridge = gui_session.bridge
    view = HealthView(bridge)
    qtbot.addWidget(view)
    view.resize(1280, 600)
    view.show()
    qtbot.waitUntil(lambda: any(k.endswith("-local") for k in view.model.keys()), timeout=15_000)
    local = next(k for k in view.model.keys() if k.endswith("-local"))
    # The agent's heartbeats measure its machine; the view keeps them.
    qtbot.waitUntil(lambda: cell(view, local, "cpu").endswith("%"), timeout=10_000)
    qtbot.waitUntil(lambda: np.isfinite(view.model.history[local].since(0)[1][:, 0]).sum() >= 2, timeout=10_000)
    assert cell(view, local, "state") in ("online", "busy")

    # Both slots taken, so a dropped task waits there, pinned; one needing a GPU is refused.
    blockers = [bridge.submit_task({"command": "sleep 60"}) for _ in range(2)]
    qtbot.waitUntil(lambda: all(bridge.call("get_task", {"task_id": b})["status"] == "running"
                                for b in blockers), timeout=15_000)
    plain = bridge.submit_task({"command": "echo dropped"})
    gpu = bridge.submit_task({"command": "echo needs-a-gpu", "requirements": {"tags": ["gpu"]}})
    with qtbot.waitSignal(view.tasksAssigned) as sig:
        assert drop(view, [plain, gpu], local).isAccepted()
    assert sig.args == [[plain], local]
    assert f"pinned to {local}" in bridge.call("get_task", {"task_id": plain})["why"]
    tip = QToolTip.text()
    assert tip.startswith(f"1 of 2 assigned to {local}; 1 refused") and "gpu" in tip
    assert bridge.call("get_task", {"task_id": gpu})["status"] == "pending"
    for b in blockers:
        bridge.cancel_task(b)
    qtbot.waitUntil(lambda: bridge.call("get_task", {"task_id": plain})["status"] == "completed", timeout=20_000)


def test_drop_position_is_where_the_tooltip_shows(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1")], refuse={"t1": "cannot assign t1: nope"})
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    shown: list[tuple[QPoint, str]] = []
    orig = QToolTip.showText

    def spy(pos: QPoint, text: str, *args: Any) -> None:
        shown.append((QPoint(pos), text))
        orig(pos, text, *args)

    QToolTip.showText = spy  # type: ignore[method-assign]
    try:
        drop(view, ["t1"], "w1")
        qtbot.waitUntil(lambda: bool(shown), timeout=5000)
    finally:
        QToolTip.showText = orig  # type: ignore[method-assign]
    target = view.table.visualRect(view.proxy.index(proxy_row(view, "w1"), 0)).center()
    assert shown == [(view.table.viewport().mapToGlobal(target), "Not assigned to w1: cannot assign t1: nope")]


def test_a_drop_of_many_tasks_is_one_request_off_the_gui_thread(qtbot, health) -> None:
    view, bridge, fake = health([worker("w1")], refuse={f"t{i}": "cannot assign: it is running" for i in range(0, 12_000, 1000)})
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    ids = [f"t{i}" for i in range(12_000)]
    with qtbot.waitSignal(view.assignAnswered, timeout=20_000) as sig:
        assert view.assign_tasks(ids, "w1") == 2  # 10,000 ids a request at most
    sizes = [len(a["task_ids"]) for op, a in fake.calls if op == "assign_tasks"]
    assert sorted(sizes) == [2000, 10_000] and not [op for op, _ in fake.calls if op == "assign_task"]
    assert sig.args == ["11988 of 12000 assigned to w1; 12 refused: cannot assign: it is running"]


def test_worker_text_is_shown_as_text_not_markup(qtbot, health) -> None:
    view, bridge, fake = health([worker("<b>x</b>", hardware="8 cores, <b>x</b>")])
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    view.select_worker("<b>x</b>")
    view._redraw_charts()
    title = view.chart_title.text()
    assert title.startswith("<b>&lt;b&gt;x&lt;/b&gt;</b>") and title.count("&lt;b&gt;x&lt;/b&gt;") == 2  # id, OS
    assert view.message.textFormat() == Qt.TextFormat.PlainText
    tip = view.proxy.index(0, COL["worker"]).data(Qt.ItemDataRole.ToolTipRole)
    assert "&lt;b&gt;x&lt;/b&gt;" in tip
    assert cell(view, "<b>x</b>", "worker") == "<b>x</b>"


def test_the_context_menu_goes_when_it_closes(qtbot, health) -> None:
    from PySide6.QtWidgets import QApplication, QMenu

    view, bridge, fake = health([worker("w1")])
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)
    before = len(view.findChildren(QMenu))
    for _ in range(3):
        view._context_menu(view.table.viewport().rect().center())
        qtbot.waitUntil(lambda: isinstance(QApplication.activePopupWidget(), QMenu), timeout=5000)
        assert len(view.findChildren(QMenu)) == before + 1
        QApplication.activePopupWidget().close()
        qtbot.waitUntil(lambda: len(view.findChildren(QMenu)) == before, timeout=5000)


def test_history_capacity_spans_the_longest_chart() -> None:
    assert History().capacity >= HISTORY_SECONDS >= 30 * 60


def test_drain_and_resume_the_local_worker_with_a_real_coordinator(qtbot, gui_session) -> None:
    bridge = gui_session.bridge
    view = HealthView(bridge)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitUntil(lambda: any(k.endswith("-local") for k in view.model.keys()), timeout=15_000)
    local = next(k for k in view.model.keys() if k.endswith("-local"))
    view.select_worker(local)
    view.buttons["drain"].click()
    assert cell(view, local, "state") == "draining"
    # A draining worker takes no new task (the scheduler says why it waits) ...
    task_id = bridge.submit_task({"command": "echo after-the-drain"})
    qtbot.waitUntil(lambda: "draining" in (bridge.call("get_task", {"task_id": task_id})["why"] or ""),
                    timeout=10_000)
    assert bridge.call("get_task", {"task_id": task_id})["status"] == "pending"
    # ... until it is resumed.
    view.buttons["resume"].click()
    assert cell(view, local, "state") in ("online", "busy")
    qtbot.waitUntil(lambda: bridge.call("get_task", {"task_id": task_id})["status"] == "completed", timeout=20_000)


def test_a_worker_that_went_silent_is_lost_and_one_that_left_is_offline() -> None:
    from dtf_gui.ui.health_view import worker_state

    assert worker_state({"status": "offline", "health": "lost"}) == "lost"
    assert worker_state({"status": "offline", "health": "offline"}) == "offline"  # said goodbye
    assert worker_state({"status": "offline"}) == "offline"  # not back since the coordinator restarted
