"""The main window: machines (asking to join, and workers), tasks, live throughput, security events,
and a status bar that says where the coordinator is, with what key, and loudly when it is insecure."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any, TypeVar

import pyqtgraph as pg
from PySide6.QtCore import QRegularExpression, QSettings, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QTableView,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from dtf_agent.keys import short
from dtf_gui.ui import theme
from dtf_gui.ui.about import AboutDialog
from dtf_gui.ui.alerts_dock import AlertsDock
from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.dialogs import AddMachinesDialog
from dtf_gui.ui.export_dialog import ExportDialog
from dtf_gui.ui.health_view import HealthView
from dtf_gui.ui.models import (
    KeyedTableModel,
    agents_model,
    findings_model,
    security_model,
)
from dtf_gui.ui.results_view import ResultsExplorer
from dtf_gui.ui.submit_dialog import SubmitDialog
from dtf_gui.ui.task_detail import TaskDetailPane
from dtf_gui.ui.task_table import TasksPanel

HISTORY_POINTS = 300
# Bumped when the docks change so much that an old saved layout would misplace them.
LAYOUT_VERSION = 2
INSECURE_TEXT = "INSECURE: plain-text sockets, any agent accepted"


class PendingAgentsView(QTableView):
    """Agents asking to join, each row with its own Accept and Reject buttons (in the model's last,
    empty column). The buttons follow their row as the table sorts and go with it when it leaves."""

    decided = Signal(str, str)  # "accept" | "reject", the agent's fingerprint (or name)

    def __init__(self) -> None:
        super().__init__()
        self.buttons_enabled = True
        self.why_disabled = ""

    def setModel(self, model: Any) -> None:
        super().setModel(model)
        model.rowsInserted.connect(self.place_buttons)
        model.modelReset.connect(self.place_buttons)
        model.layoutChanged.connect(self.place_buttons)

    def place_buttons(self, *_: Any) -> None:
        model = self.model()
        col = model.columnCount() - 1
        for r in range(model.rowCount()):
            index = model.index(r, col)
            if self.indexWidget(index) is None:
                self.setIndexWidget(index, self._buttons(str(index.data(Qt.ItemDataRole.UserRole))))
        self.resizeColumnsToContents()

    def fit_rows(self, rows: int, most: int = 5) -> None:
        """As tall as its rows (up to ``most``; it scrolls beyond), so the workers keep the room."""
        header = self.horizontalHeader().sizeHint().height()
        scroll = self.horizontalScrollBar().sizeHint().height()
        self.setFixedHeight(header + max(1, min(rows, most)) * self.verticalHeader().defaultSectionSize()
                            + scroll + 2 * self.frameWidth() + 2)

    def _buttons(self, key: str) -> QWidget:
        box = QWidget()
        lay = QHBoxLayout(box)
        lay.setContentsMargins(2, 0, 2, 0)
        lay.setSpacing(4)
        for decision, text in (("accept", "Accept"), ("reject", "Reject")):
            b = QPushButton(text)
            b.setObjectName(f"{decision}:{key}")
            b.setEnabled(self.buttons_enabled)
            b.setToolTip(self.why_disabled or f"{text} this agent's key")
            b.clicked.connect(lambda _=False, d=decision: self.decided.emit(d, key))
            lay.addWidget(b)
        return box

    def button(self, decision: str, key: str) -> QPushButton | None:
        return self.findChild(QPushButton, f"{decision}:{key}")

    def set_buttons_enabled(self, enabled: bool, why: str = "") -> None:
        self.buttons_enabled, self.why_disabled = enabled, why
        for b in self.findChildren(QPushButton):
            b.setEnabled(enabled)
            if why:
                b.setToolTip(why)


View = TypeVar("View", bound=QTableView)


def _table(model: KeyedTableModel, name: str, view: View) -> tuple[View, QSortFilterProxyModel]:
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    view.setObjectName(name)
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setAlternatingRowColors(True)
    view.verticalHeader().setVisible(False)
    view.verticalHeader().setDefaultSectionSize(22)
    view.setWordWrap(False)
    # A narrow column keeps both ends of an id (bench-07-…-local, 6619f4…e05a): cut at the end, ids
    # that share a prefix would read the same.
    view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    view.horizontalHeader().setStretchLastSection(True)
    return view, proxy


class ThroughputPlot(pg.PlotWidget):
    """Completed tasks per second over the last five minutes, from the coordinator's once-a-second
    stats events. The axes are fixed where autoscaling misleads: an idle coordinator reads 0 on a
    0-1 scale (not -400..400 "x0.001"), and a rate is never scaled to milli-tasks."""

    WINDOW_S = 300.0

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("throughputPlot")
        self.setLabel("left", "completed tasks/s")
        self.setLabel("bottom", "seconds ago")
        self.showGrid(x=True, y=True, alpha=0.3)
        self.setMinimumHeight(140)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        for side in ("left", "bottom"):
            self.getAxis(side).enableAutoSIPrefix(False)
        # The 0 of the rate axis sits on the plot's edge, where pyqtgraph would hide it as overlapping.
        self.getAxis("left").setStyle(hideOverlappingLabels=False)
        self.setXRange(-self.WINDOW_S, 0, padding=0)
        self.setYRange(0, 1, padding=0)
        self.curve = self.plot([], [], pen=pg.mkPen("#1565c0", width=2), fillLevel=0,
                               brush=pg.mkBrush(21, 101, 192, 40))
        self.points: collections.deque[tuple[float, float]] = collections.deque(maxlen=HISTORY_POINTS)
        self.peak = 0.0
        self.recolour()
        # A method, not a lambda: the notifier outlives this plot, and Qt drops a connection to a
        # destroyed receiver's method but not to a lambda (which would then touch a deleted plot).
        theme.notifier.changed.connect(self.recolour)

    def recolour(self, _scheme: str = "") -> None:
        """The current colour scheme's background and text (the plot may outlive a switch to dark)."""
        colours = theme.plot_colours()
        self.setBackground(colours.background)
        for side in ("left", "bottom"):
            axis = self.getAxis(side)
            axis.setPen(colours.foreground)
            axis.setTextPen(colours.foreground)

    def set_history(self, points: list[tuple[float, float]]) -> None:
        """What the database says of the minutes before the window opened, ahead of the live points."""
        live = [pt for pt in self.points if not points or pt[0] > points[-1][0]]
        self.points.clear()
        self.points.extend([(float(t), float(r)) for t, r in points][-(HISTORY_POINTS - len(live)):] + live)
        self._redraw()

    def add_point(self, when: float, rate: float) -> None:
        self.points.append((when, max(0.0, rate)))
        self._redraw()

    def _redraw(self) -> None:
        now = time.time()
        xs = [t - now for t, _ in self.points]
        ys = [r for _, r in self.points]
        self.curve.setData(xs, ys)
        # The top follows the busiest moment in view, with headroom, never below one task a second.
        top = max(ys, default=0.0)
        self.peak = top
        self.setYRange(0, max(1.0, top * 1.15), padding=0)


class MainWindow(QMainWindow):
    def __init__(self, bridge: CoordinatorBridge, settings_path: Path | None = None) -> None:
        super().__init__()
        self.bridge = bridge
        # Where the layout is remembered (an INI file in the DTF home); None: not remembered.
        self.settings_path = settings_path
        self.setWindowTitle("DTF — distributed testing" + (" (remote)" if bridge.remote else ""))
        self.resize(1280, 800)
        self.agents = agents_model()
        self.security = security_model()
        # Workers: state, load sparklines, hardware and tags at a glance, strip charts of the selected
        # one, drain/resume/revoke; drop tasks on a worker to assign them there.
        self.health = HealthView(bridge)
        self.workers = self.health.model
        self.workers_view = self.health.table
        self.health.tasksAssigned.connect(
            lambda ids, worker: self.statusBar().showMessage(f"Assigned {len(ids)} task(s) to {worker}", 5000))
        # Tasks: a window onto the task table of the database (a million rows scroll like a hundred),
        # with live statuses laid over it; drag tasks from it onto a worker to assign them there.
        self.tasks_panel = TasksPanel(bridge)
        self.task_view = self.tasks_panel.view
        self.task_detail = TaskDetailPane(bridge)
        self.task_detail.setObjectName("taskDetail")
        self.task_view.taskActivated.connect(self.show_task)
        # Results: a test's metric over time, its anomalies and change points; a point opens its task.
        self.results = ResultsExplorer(bridge)
        self.results.taskRequested.connect(self.show_task)
        # Few rows: widen the columns to what they hold whenever a worker appears.
        self.findings = findings_model()
        self.findings_view, _ = _table(self.findings, "findingsView", QTableView())
        self.findings_view.doubleClicked.connect(lambda index: self.show_finding(self._finding_at(index)))
        fm = self.findings_view.fontMetrics()
        # Room for the state in Kind ("change (suspected)"); the rest stays narrow (ids elide in the
        # middle, the tooltip has them whole) so that the Detail column, last, gets the width.
        for col, sample in enumerate(("00:00:00", "change (suspected)", "improvement", "bench/test_io",
                                      "bench-07", "throughput_mb_s", "6619…e05a")):
            self.findings_view.setColumnWidth(col, fm.horizontalAdvance(sample) + 20)  # italics, the sort arrow
        self.throughput = ThroughputPlot()

        # Agents asking to join: only the pending ones, each with Accept / Reject; hidden when none.
        self.pending_view, self.pending_proxy = _table(self.agents, "pendingView", PendingAgentsView())
        self.pending_proxy.setFilterKeyColumn(1)
        self.pending_proxy.setFilterRegularExpression(QRegularExpression("^pending$"))
        # What to compare before accepting, and the buttons; the state (pending, all of them), how it
        # came, last seen and online add nothing here (the Agents tab has them).
        for title in ("State", "How", "Last seen", "Online"):
            self.pending_view.setColumnHidden(next(i for i, c in enumerate(self.agents.columns)
                                                   if c.title == title), True)
        self.pending_view.verticalHeader().setDefaultSectionSize(30)  # room for the buttons
        # The buttons right after what to check (fingerprint, host, address), before the rest, so they
        # are in sight on a narrow window.
        header, cols = self.pending_view.horizontalHeader(), [c.title for c in self.agents.columns]
        header.moveSection(header.visualIndex(len(cols) - 1), header.visualIndex(cols.index("First seen")))
        self.pending_view.decided.connect(self._decide_one)
        self.pending_box = self._pending_box()
        # Every agent the coordinator knows of, by state, with decisions on the selected ones.
        self.agents_view, _ = _table(self.agents, "agentsView", QTableView())
        self.agents_view.setColumnHidden(self.agents.columnCount() - 1, True)
        self.agents_view.sortByColumn(1, Qt.SortOrder.AscendingOrder)
        self.security_view, _ = _table(self.security, "securityView", QTableView())
        self.security_view.setSortingEnabled(False)  # a log: oldest first, as it happened

        self.tabs = QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.tasks_panel, "Tasks")
        self.tabs.addTab(self.results, "Results")
        self.tabs.addTab(self.findings_view, "Anomalies && regressions")
        self.tabs.addTab(self._agents_tab(), "Agents")
        self.tabs.addTab(self.security_view, "Security")
        self.setCentralWidget(self.tabs)
        # Docks: what an engineer arranges to taste; the layout is remembered (QSettings).
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks
                            | QMainWindow.DockOption.AllowNestedDocks)
        machines = QWidget()
        mlay = QVBoxLayout(machines)
        mlay.setContentsMargins(0, 0, 0, 0)
        mlay.addWidget(self.pending_box)
        mlay.addWidget(self.health, 1)
        self.workers_dock = self._dock("Workers", "workersDock", machines, Qt.DockWidgetArea.TopDockWidgetArea)
        self.throughput_dock = self._dock("Throughput", "throughputDock", self.throughput,
                                          Qt.DockWidgetArea.TopDockWidgetArea)
        self.splitDockWidget(self.workers_dock, self.throughput_dock, Qt.Orientation.Horizontal)
        self.resizeDocks([self.workers_dock, self.throughput_dock], [860, 420], Qt.Orientation.Horizontal)
        self.resizeDocks([self.workers_dock], [400], Qt.Orientation.Vertical)
        self.detail_dock = self._dock("Task details", "taskDetailDock", self.task_detail,
                                      Qt.DockWidgetArea.RightDockWidgetArea)
        self.alerts_dock = AlertsDock(bridge)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.alerts_dock)
        self.tabifyDockWidget(self.detail_dock, self.alerts_dock)
        self.detail_dock.raise_()
        self.alerts_dock.workerRequested.connect(self.show_worker)
        self.alerts_dock.findingRequested.connect(self.show_finding)
        self.resizeDocks([self.detail_dock], [480], Qt.Orientation.Horizontal)

        self._make_actions()
        self._make_menus()

        # Status bar: a plain, permanent warning first when the coordinator runs without security.
        self.insecure_label = QLabel(INSECURE_TEXT)
        self.insecure_label.setObjectName("insecureBanner")
        self.insecure_label.setStyleSheet("QLabel { background: #c62828; color: white; font-weight: bold; "
                                          "padding: 1px 8px; }")
        self.insecure_label.setVisible(False)
        # Permanent (a passing message never covers it), and the first of the permanent widgets.
        self.statusBar().addPermanentWidget(self.insecure_label)
        self.address_label = QLabel()
        self.key_label = QLabel()
        self.key_label.setObjectName("coordinatorKey")
        self.workers_label = QLabel()
        self.tasks_label = QLabel()
        for w in (self.address_label, self.key_label, self.workers_label, self.tasks_label):
            self.statusBar().addPermanentWidget(w)

        bridge.agentsChanged.connect(self._on_agents)
        bridge.securityEvents.connect(self._on_security)
        bridge.identityChanged.connect(self._on_identity)
        bridge.findingsChanged.connect(self._on_findings)
        bridge.findingsLoaded.connect(self._on_findings)
        bridge.findingsRetracted.connect(self._on_retracted)
        bridge.statsChanged.connect(self._on_stats)
        bridge.errorRaised.connect(self._on_error)
        self._on_identity(bridge.identity)
        self._update_status({})
        # Opened on an existing database, the window shows what it holds, not empty tables.
        bridge.load_history()
        bridge.call_async("throughput_history", {"seconds": ThroughputPlot.WINDOW_S, "bucket": 5.0},
                          lambda data, _err: self.throughput.set_history(data or []))
        self._closing_hooks: list[Any] = []
        # The status bar also shows how fresh the data is; refresh it even when nothing happens.
        self._clock = QTimer(self)
        self._clock.timeout.connect(lambda: self._update_status(bridge.last_stats))
        self._clock.start(1000)
        self._fill_view_menu()
        self._default_state = self.saveState(LAYOUT_VERSION)
        self.restore_layout()

    # -- building -----------------------------------------------------------------------------------

    def _dock(self, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)  # saveState keys the layout by it
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, text: str, slot: Any, shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None,
                tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        action.triggered.connect(lambda _=False: slot())
        return action

    def _make_actions(self) -> None:
        key = QKeySequence.StandardKey
        self.new_task_action = self._action("&New task…", self.open_new_task_dialog, key.New)
        self.cancel_action = self.task_view.cancel_action
        self.add_machines_action = self._action("&Add test machines…", self.open_add_machines_dialog)
        self.accept_all_action = self._action("Accept all waiting agents", self.accept_all_pending)
        self.about_action = self._action("&About DTF…", self.open_about_dialog)
        self.quit_action = self._action("&Quit", self.close, key.Quit)
        self.export_action = self._action("&Export…", self.open_export_dialog, "Ctrl+E",
                                          "A run's report (PDF), its JUnit XML, or tasks, results and findings as CSV")
        self.reset_layout_action = self._action("&Reset layout", self.reset_layout)
        bar = QToolBar("Main")
        bar.setObjectName("mainToolbar")
        self.addToolBar(bar)
        for a in (self.new_task_action, self.cancel_action, self.add_machines_action):
            bar.addAction(a)
        self.toolbar = bar

    def _make_menus(self) -> None:
        menu = self.menuBar()
        self.file_menu = menu.addMenu("&File")
        self.file_menu.addAction(self.export_action)
        self.file_menu.addSeparator()
        self.file_menu.addAction(self.quit_action)
        self.view_menu = menu.addMenu("&View")
        self.tasks_menu = menu.addMenu("&Tasks")
        self.tasks_menu.addAction(self.new_task_action)
        self.tasks_menu.addSeparator()
        v = self.task_view
        for a in (v.open_action, v.retry_action, v.cancel_action, v.priority_action, v.copy_action):
            self.tasks_menu.addAction(a)
        self.tasks_menu.addMenu(v.assign_menu)
        self.workers_menu = menu.addMenu("&Workers")
        self.workers_menu.addAction(self.add_machines_action)
        self.workers_menu.addAction(self.accept_all_action)
        self.workers_menu.addSeparator()
        for a in (self.health.drain_action, self.health.resume_action, self.health.revoke_action):
            self.workers_menu.addAction(a)
        self.help_menu = menu.addMenu("&Help")
        self.help_menu.addAction(self.about_action)

    def _fill_view_menu(self) -> None:
        """Every dock and the toolbar, shown or hidden from here; then a way back to the first layout."""
        self.view_menu.clear()
        for dock in self.findChildren(QDockWidget):
            self.view_menu.addAction(dock.toggleViewAction())
        self.view_menu.addAction(self.toolbar.toggleViewAction())
        self.view_menu.addSeparator()
        self.view_menu.addAction(self.reset_layout_action)

    # -- layout memory -------------------------------------------------------------------------------

    def _settings(self) -> QSettings | None:
        if self.settings_path is None:
            return None
        return QSettings(str(self.settings_path), QSettings.Format.IniFormat)

    def restore_layout(self) -> bool:
        """The docks as the engineer left them (saved on close); False when there is nothing saved."""
        st = self._settings()
        if st is None:
            return False
        geometry, state = st.value("window/geometry"), st.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        return state is not None and bool(self.restoreState(state, LAYOUT_VERSION))

    def save_layout(self) -> None:
        st = self._settings()
        if st is None:
            return
        st.setValue("window/geometry", self.saveGeometry())
        st.setValue("window/state", self.saveState(LAYOUT_VERSION))
        st.sync()

    def reset_layout(self) -> None:
        self.restoreState(self._default_state, LAYOUT_VERSION)
        for dock in self.findChildren(QDockWidget):
            dock.show()

    @staticmethod
    def _titled(title: str, widget: QWidget) -> QWidget:
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(2, 2, 2, 2)
        label = QLabel(f"<b>{title}</b>")
        lay.addWidget(label)
        lay.addWidget(widget)
        return box

    def _pending_box(self) -> QWidget:
        box = QFrame()
        box.setObjectName("pendingBox")
        box.setFrameShape(QFrame.Shape.StyledPanel)
        box.setStyleSheet("#pendingBox { background: #fff8e1; border: 1px solid #b26a00; }")
        lay = QVBoxLayout(box)
        lay.setContentsMargins(6, 4, 6, 4)
        self.pending_title = QLabel()
        self.pending_title.setObjectName("pendingTitle")
        self.pending_title.setWordWrap(True)
        lay.addWidget(self.pending_title)
        lay.addWidget(self.pending_view)
        box.setVisible(False)
        return box

    def _agents_tab(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.agent_buttons: dict[str, QPushButton] = {}
        for decision, text in (("accept", "Accept"), ("reject", "Reject"), ("revoke", "Revoke")):
            b = QPushButton(f"{text} selected")
            b.setObjectName(f"{decision}Selected")
            b.clicked.connect(lambda _=False, d=decision: self.decide_selected(d))
            self.agent_buttons[decision] = b
            row.addWidget(b)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.agents_view)
        return page

    def on_close(self, hook: Any) -> None:
        self._closing_hooks.append(hook)

    # -- identity and roles --------------------------------------------------------------------------

    def _on_identity(self, ident: dict[str, Any]) -> None:
        bridge = self.bridge
        self.insecure_label.setVisible(bool(ident.get("insecure")))
        self.address_label.setText(bridge.describe())
        fp = str(ident.get("fingerprint") or "")
        self.key_label.setText(f"Encrypted (CURVE), key {short(fp)}" if fp else "No key")
        self.key_label.setToolTip(f"Coordinator key fingerprint {fp} (full text in Help > About)" if fp else
                                  "The coordinator has no key: it runs in plain text")
        self._apply_role()

    def _apply_role(self) -> None:
        """Offer only what our role may do; say which role would allow the rest."""
        bridge = self.bridge

        def gate(widget: QAction | QPushButton, op: str, tip: str) -> None:
            ok = bridge.allows(op)
            widget.setEnabled(ok)
            widget.setToolTip(tip if ok else bridge.why_not(op))

        gate(self.new_task_action, "create_task", "Submit a command to run on a worker")
        gate(self.add_machines_action, "create_token", "A command that joins test machines to this coordinator")
        gate(self.accept_all_action, "accept_agents", "Accept every agent waiting to join")
        for decision, b in self.agent_buttons.items():
            gate(b, f"{decision}_agents", f"{decision.capitalize()} the selected agents")
        allowed = bridge.allows("accept_agents")
        self.pending_view.set_buttons_enabled(allowed, "" if allowed else bridge.why_not("accept_agents"))
        self.task_view.apply_role()

    # -- events ---------------------------------------------------------------------------------

    def _on_agents(self, rows: list[dict[str, Any]]) -> None:
        self.agents.apply(rows)
        pending = sum(1 for k in self.agents.keys() if (self.agents.row_for(k) or {}).get("state") == "pending")
        self.pending_box.setVisible(pending > 0)
        self.accept_all_action.setText(f"Accept all waiting agents ({pending})")
        self.pending_title.setText(
            f"<b>{pending} agent{'s' if pending != 1 else ''} waiting to join.</b> Before accepting, compare each "
            "key fingerprint with the one <tt>dtf-agent</tt> printed on that machine.")
        self.pending_view.place_buttons()
        self.pending_view.fit_rows(pending)
        self.agents_view.resizeColumnsToContents()

    def _on_security(self, rows: list[dict[str, Any]]) -> None:
        self.security.apply(rows)
        self.tabs.setTabText(self.tabs.indexOf(self.security_view), f"Security ({self.security.rowCount()})")
        for col in range(self.security.columnCount() - 1):  # the detail column takes the rest
            self.security_view.resizeColumnToContents(col)
        self.security_view.scrollToBottom()

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
        # A retracted change updates the row of its suspicion (greyed, kept until the window closes,
        # so what was withdrawn stays readable) with the direction and result it was suspected at;
        # one this window never showed is not news.
        shown: list[dict[str, Any]] = []
        batch: dict[str, dict[str, Any]] = {}
        for r in rows:
            key = str(r.get("finding_id"))
            if r.get("state") == "retracted":
                old = batch.get(key) or self.findings.row_for(key)
                if old is None:
                    continue
                r = {**r, "direction": old.get("direction"), "result_id": old.get("result_id")}
            batch[key] = r
            shown.append(r)
        self.findings.apply(shown)
        self.tabs.setTabText(self.tabs.indexOf(self.findings_view),
                             f"Anomalies && regressions ({self.findings.rowCount()})")

    def _on_retracted(self, finding_ids: list[str]) -> None:
        self.findings.remove(finding_ids)
        self.tabs.setTabText(self.tabs.indexOf(self.findings_view),
                             f"Anomalies && regressions ({self.findings.rowCount()})")

    def _on_error(self, message: str) -> None:
        self.statusBar().showMessage(message, 10_000)

    # -- agents ----------------------------------------------------------------------------------

    def _decide_one(self, decision: str, key: str) -> None:
        self.decide_agents(decision, [key])

    def decide_agents(self, decision: str, keys: list[str]) -> list[str]:
        done = self.bridge.decide_agents(decision, keys)
        if done:
            past = {"accept": "Accepted", "reject": "Rejected", "revoke": "Revoked"}[decision]
            self.statusBar().showMessage(f"{past}: {', '.join(done)}", 8000)
        return done

    def accept_all_pending(self) -> list[str]:
        done = self.bridge.decide_agents("accept", all_pending=True)
        if done:
            self.statusBar().showMessage(f"Accepted: {', '.join(done)}", 8000)
        return done

    def selected_agent_keys(self) -> list[str]:
        return [idx.data(Qt.ItemDataRole.UserRole) for idx in self.agents_view.selectionModel().selectedRows()]

    def decide_selected(self, decision: str) -> None:
        keys = self.selected_agent_keys()
        if not keys:
            QMessageBox.information(self, "Agents", "Select one or more agents first.")
            return
        self.decide_agents(decision, keys)

    def open_add_machines_dialog(self) -> AddMachinesDialog:
        dlg = AddMachinesDialog(self.bridge.create_token, self.bridge.seen_agents(), self)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # one per opening, gone when closed
        dlg.open()
        return dlg

    def open_about_dialog(self) -> AboutDialog:
        dlg = AboutDialog(self.bridge.identity, self.bridge.describe(), self)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # one per opening, gone when closed
        dlg.open()
        return dlg

    # -- tasks -----------------------------------------------------------------------------------

    def open_new_task_dialog(self) -> SubmitDialog:
        dlg = SubmitDialog(self.bridge, self)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # one per opening, gone when closed
        dlg.submitted.connect(lambda ids: self.statusBar().showMessage(f"Submitted {len(ids)} task(s)", 5000))
        dlg.runFinished.connect(
            lambda code, last: self.statusBar().showMessage(f"dtf finished ({code}): {last}", 10_000))
        dlg.open()
        return dlg

    def _finding_at(self, index: Any) -> dict[str, Any]:
        return self.findings.row_for(str(index.data(Qt.ItemDataRole.UserRole))) or {}

    def show_finding(self, finding: dict[str, Any]) -> None:
        """A finding's series in the results explorer, where its point and step are drawn."""
        if finding.get("test_id") and finding.get("metric"):
            self.tabs.setCurrentWidget(self.results)
            self.results.select(str(finding["test_id"]), str(finding["metric"]))

    def show_worker(self, worker_id: str) -> None:
        self.workers_dock.show()
        self.workers_dock.raise_()
        self.health.select_worker(worker_id)

    def open_export_dialog(self) -> ExportDialog:
        dlg = ExportDialog(self.bridge, self)
        dlg.show()
        return dlg

    def show_task(self, task_id: str) -> None:
        """A task's details in their dock, brought forward (double-click, Enter, a plot point, an alert)."""
        self.detail_dock.show()
        self.detail_dock.raise_()
        self.task_detail.show_task(task_id)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._clock.stop()
        self.save_layout()
        # Last registered, first run: what was added later (a dialog's `dtf` processes) may need what
        # was there before it (the coordinator they talk to), as in any teardown.
        for hook in reversed(self._closing_hooks):
            hook()
        super().closeEvent(event)
