"""The main window: workers, tasks, live throughput, and a status bar."""

from __future__ import annotations

import collections
import time
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDragMoveEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTableView,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.dialogs import NewTaskDialog
from dtf_gui.ui.models import TASK_IDS_MIME, KeyedTableModel, findings_model, tasks_model, workers_model

HISTORY_POINTS = 300


class WorkerDropView(QTableView):
    """The workers table: drop tasks on a worker to assign them there."""

    tasksDropped = Signal(list, str)  # task ids, worker id

    def __init__(self) -> None:
        super().__init__()
        self.setAcceptDrops(True)
        self.setDropIndicatorShown(True)

    def _worker_at(self, event: QDropEvent | QDragMoveEvent) -> str | None:
        index = self.indexAt(event.position().toPoint())
        return index.data(Qt.ItemDataRole.UserRole) if index.isValid() else None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasFormat(TASK_IDS_MIME):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasFormat(TASK_IDS_MIME) and self._worker_at(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        worker = self._worker_at(event)
        if not worker or not event.mimeData().hasFormat(TASK_IDS_MIME):
            event.ignore()
            return
        ids = [t for t in bytes(event.mimeData().data(TASK_IDS_MIME).data()).decode().split("\n") if t]
        event.acceptProposedAction()
        self.tasksDropped.emit(ids, worker)


def _table(model: KeyedTableModel, name: str, view: QTableView | None = None,
           ) -> tuple[QTableView, QSortFilterProxyModel]:
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    view = view or QTableView()
    view.setObjectName(name)
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setAlternatingRowColors(True)
    view.verticalHeader().setVisible(False)
    view.verticalHeader().setDefaultSectionSize(22)
    view.setWordWrap(False)
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    view.horizontalHeader().setStretchLastSection(True)
    return view, proxy


class ThroughputPlot(pg.PlotWidget):
    """Completed tasks per second, from the coordinator's once-a-second stats events."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("throughputPlot")
        self.setBackground("w")
        self.setLabel("left", "tasks/s")
        self.setLabel("bottom", "seconds ago")
        self.showGrid(x=True, y=True, alpha=0.3)
        self.setMinimumHeight(140)
        self.curve = self.plot([], [], pen=pg.mkPen("#1565c0", width=2))
        self.points: collections.deque[tuple[float, float]] = collections.deque(maxlen=HISTORY_POINTS)

    def add_point(self, when: float, rate: float) -> None:
        self.points.append((when, rate))
        now = time.time()
        xs = [t - now for t, _ in self.points]
        ys = [r for _, r in self.points]
        self.curve.setData(xs, ys)


class MainWindow(QMainWindow):
    def __init__(self, bridge: CoordinatorBridge) -> None:
        super().__init__()
        self.bridge = bridge
        self.setWindowTitle("DTF — distributed testing")
        self.resize(1200, 760)
        self.workers = workers_model()
        self.tasks = tasks_model()
        self.workers_view, _ = _table(self.workers, "workersView", WorkerDropView())
        self.tasks_view, _ = _table(self.tasks, "tasksView")
        # Drag a task (or several) from the tasks table onto a worker to assign it there.
        self.tasks_view.setDragEnabled(True)
        self.tasks_view.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.workers_view.tasksDropped.connect(self.assign_tasks)
        self.tasks_view.sortByColumn(7, Qt.SortOrder.DescendingOrder)
        self.findings = findings_model()
        self.findings_view, _ = _table(self.findings, "findingsView")
        self.throughput = ThroughputPlot()

        central = QWidget()
        layout = QVBoxLayout(central)
        split = QSplitter(Qt.Orientation.Vertical)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self._titled("Workers", self.workers_view))
        top.addWidget(self._titled("Throughput", self.throughput))
        top.setSizes([700, 500])
        split.addWidget(top)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.tasks_view, "Tasks")
        self.tabs.addTab(self.findings_view, "Anomalies && regressions")
        split.addWidget(self.tabs)
        split.setSizes([280, 480])
        layout.addWidget(split)
        self.setCentralWidget(central)

        bar = QToolBar("Main")
        bar.setObjectName("mainToolbar")
        self.addToolBar(bar)
        self.new_task_action = QAction("New task…", self)
        self.new_task_action.setShortcut(QKeySequence.StandardKey.New)
        self.new_task_action.triggered.connect(self.open_new_task_dialog)
        bar.addAction(self.new_task_action)
        self.cancel_action = QAction("Cancel task", self)
        self.cancel_action.triggered.connect(self.cancel_selected)
        bar.addAction(self.cancel_action)

        self.address_label = QLabel()
        self.workers_label = QLabel()
        self.tasks_label = QLabel()
        for w in (self.address_label, self.workers_label, self.tasks_label):
            self.statusBar().addPermanentWidget(w)
        c = bridge.coordinator
        self.address_label.setText(f"Coordinator {c.endpoint('agents')} (clients {c.endpoint('clients')})")
        self._update_status({})

        bridge.workersChanged.connect(self.workers.apply)
        bridge.tasksChanged.connect(self.tasks.apply)
        bridge.findingsChanged.connect(self._on_findings)
        bridge.findingsRetracted.connect(self._on_retracted)
        bridge.statsChanged.connect(self._on_stats)
        bridge.errorRaised.connect(self._on_error)
        # Opened on an existing database, the window shows what it holds, not empty tables.
        bridge.load_history()
        self._closing_hooks: list[Any] = []
        # The status bar also shows how fresh the data is; refresh it even when nothing happens.
        self._clock = QTimer(self)
        self._clock.timeout.connect(lambda: self._update_status(bridge.last_stats))
        self._clock.start(1000)

    @staticmethod
    def _titled(title: str, widget: QWidget) -> QWidget:
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(2, 2, 2, 2)
        label = QLabel(f"<b>{title}</b>")
        lay.addWidget(label)
        lay.addWidget(widget)
        return box

    def on_close(self, hook: Any) -> None:
        self._closing_hooks.append(hook)

    def _on_stats(self, stats: dict[str, Any]) -> None:
        interval = stats.get("interval_s") or 1.0
        self.throughput.add_point(time.time(), stats.get("completed_in_interval", 0) / interval)
        self._update_status(stats)

    def _update_status(self, stats: dict[str, Any]) -> None:
        tasks = stats.get("tasks", {})
        self.workers_label.setText(f"Workers online: {stats.get('workers_online', 0)}")
        self.tasks_label.setText(f"Pending: {tasks.get('pending', 0)}  Running: "
                                 f"{tasks.get('running', 0) + tasks.get('assigned', 0)}  "
                                 f"Completed: {tasks.get('completed', 0)}  Failed: {tasks.get('failed', 0)}")

    def _on_findings(self, rows: list[dict[str, Any]]) -> None:
        self.findings.apply(rows)
        self.tabs.setTabText(1, f"Anomalies && regressions ({self.findings.rowCount()})")

    def _on_retracted(self, finding_ids: list[str]) -> None:
        self.findings.remove(finding_ids)
        self.tabs.setTabText(1, f"Anomalies && regressions ({self.findings.rowCount()})")

    def _on_error(self, message: str) -> None:
        self.statusBar().showMessage(message, 10_000)

    def open_new_task_dialog(self) -> NewTaskDialog:
        dlg = NewTaskDialog(self)
        dlg.submitted.connect(self._submit)
        dlg.open()
        return dlg

    def _submit(self, fields: dict[str, Any]) -> None:
        task_id = self.bridge.submit_task(fields)
        if task_id:
            self.statusBar().showMessage(f"Submitted task {task_id}", 5000)

    def assign_tasks(self, task_ids: list[str], worker_id: str) -> int:
        """Pin tasks to a worker (drag-and-drop); refusals show in the status bar with the reason."""
        done = 0
        for tid in task_ids:
            if self.bridge.call("assign_task", {"task_id": tid, "worker_id": worker_id}) is not None:
                done += 1
        if done:
            self.statusBar().showMessage(f"Assigned {done} task(s) to {worker_id}", 5000)
        return done

    def selected_task_ids(self) -> list[str]:
        ids = []
        for idx in self.tasks_view.selectionModel().selectedRows():
            ids.append(idx.data(Qt.ItemDataRole.UserRole))
        return ids

    def cancel_selected(self) -> None:
        ids = self.selected_task_ids()
        if not ids:
            QMessageBox.information(self, "Cancel task", "Select one or more tasks first.")
            return
        for tid in ids:
            self.bridge.cancel_task(tid)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._clock.stop()
        for hook in self._closing_hooks:
            hook()
        super().closeEvent(event)
