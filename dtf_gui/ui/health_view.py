"""Worker health: the workers table (state, load sparklines, heartbeat age, hardware, tags), strip charts
of the selected worker, drain / resume / revoke, and the drop target for tasks dragged from the tasks
table.

Each worker keeps a ring buffer of samples (at most one a second, the last :data:`HISTORY_SECONDS`):
events fill it as they come, and a one-second clock carries the last values forward, so the charts run
on to "now" and the heartbeat age of a silent worker keeps counting up.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QAction,
    QBrush,
    QColor,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDragMoveEvent,
    QDropEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from dtf_gui.ui import theme
from dtf_gui.ui.alerts_dock import plain_tip
from dtf_gui.ui.bridge import CoordinatorBridge, agent_row, history_worker_row
from dtf_gui.ui.models import TASK_IDS_MIME, status_colour
from dtf_gui.ui.sparkline import SPARK_ROLE, Spark, SparklineDelegate

Index = QModelIndex | QPersistentModelIndex

HISTORY_SECONDS = 1800  # what a worker's ring buffer holds (one sample a second at most)
SPARK_SECONDS = 300  # the window a table cell's sparkline shows
CHART_MINUTES = (5, 10, 30)
CHART_INTERVAL_MS = 250  # strip charts redraw at most four times a second, however fast events come
ASSIGN_CHUNK = 10_000  # task ids one assign_tasks request takes at most

# Sample fields (columns of a History's value array).
FIELDS = ("cpu_percent", "memory_percent", "disk_percent", "gpu_percent", "gpu_memory_percent", "running",
          "slots", "age")
F = {name: i for i, name in enumerate(FIELDS)}

WORKER_ROLE = Qt.ItemDataRole.UserRole  # the worker id (an agent's name for a pending enrollment)
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
KIND_ROLE = Qt.ItemDataRole.UserRole + 2  # "worker" | "pending"

def state_colour(state: str) -> str:
    """A worker state's text colour in the current colour scheme (theme.status_colours has them all)."""
    return status_colour(state) or theme.plot_colours().foreground
STATE_TIPS = {
    "online": "connected, room for more tasks",
    "busy": "connected, every slot taken",
    "lost": "no heartbeat within the timeout: its tasks went back to the queue",
    "offline": "not connected: it left, or has not come back since the coordinator started",
    "draining": "finishes what it runs, takes no new task (Resume to take tasks again)",
    "pending enrollment": "an agent asking to join: accept or reject its key under Machines",
    "error": "the agent reported an error",
}


class History:
    """A worker's samples in a ring: times (float64, epoch) and values (float32, NaN = not measured)."""

    def __init__(self, capacity: int = HISTORY_SECONDS + 60) -> None:
        self.t = np.full(capacity, np.nan)
        self.v = np.full((capacity, len(FIELDS)), np.nan, dtype=np.float32)
        self.count = 0  # samples ever recorded; the latest is at (count - 1) % capacity

    @property
    def capacity(self) -> int:
        return len(self.t)

    def last_time(self) -> float | None:
        return None if not self.count else float(self.t[(self.count - 1) % self.capacity])

    def record(self, when: float, values: Sequence[float]) -> None:
        """A sample; within the same second as the latest one it replaces it (one sample a second at
        most, so the buffer spans HISTORY_SECONDS whatever the event rate)."""
        last = self.last_time()
        if last is not None and math.floor(last) == math.floor(when):
            i = (self.count - 1) % self.capacity
        else:
            i = self.count % self.capacity
            self.count += 1
        self.t[i] = when
        self.v[i] = values

    def since(self, start: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, values) from ``start`` on, oldest first."""
        n = min(self.count, self.capacity)
        if n < self.capacity:
            t, v = self.t[:n], self.v[:n]
        else:
            head = self.count % self.capacity
            t = np.concatenate((self.t[head:], self.t[:head]))
            v = np.concatenate((self.v[head:], self.v[:head]))
        first = int(np.searchsorted(t, start))
        return t[first:], v[first:]


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def worker_state(row: dict[str, Any]) -> str:
    if row.get("_pending"):
        return "pending enrollment"
    status = str(row.get("status") or "")
    if status == "offline":
        # Lost: it went silent (a problem); offline: it left, or has not come back since a restart.
        return "lost" if row.get("health") == "lost" else "offline"
    if row.get("draining"):
        return "draining"
    return status or "online"


def fmt_age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} days"


def stored_worker_row(w: dict[str, Any]) -> dict[str, Any]:
    """A worker from list_workers (the database) in the shape of a live worker event."""
    return history_worker_row(w)


class Col:
    def __init__(self, key: str, title: str, tip: str, *, spark: str | None = None) -> None:
        self.key, self.title, self.tip, self.spark = key, title, tip, spark


COLUMNS = [
    Col("worker", "Worker", "The worker's id (its agent name)"),
    Col("state", "State", "online, busy, lost, draining or pending enrollment"),
    Col("load", "Run/Slots", "Tasks running / slots"),
    Col("cpu", "CPU", f"CPU use, the last {SPARK_SECONDS // 60} minutes", spark="cpu_percent"),
    Col("memory", "Memory", f"Memory use, the last {SPARK_SECONDS // 60} minutes", spark="memory_percent"),
    Col("disk", "Disk", f"Disk use, the last {SPARK_SECONDS // 60} minutes", spark="disk_percent"),
    Col("gpu", "GPU", f"GPU use, the last {SPARK_SECONDS // 60} minutes", spark="gpu_percent"),
    Col("heartbeat", "Heartbeat", "Seconds since the worker was last heard from"),
    Col("hardware", "Hardware", "Cores, memory, GPUs, OS"),
    Col("tags", "Tags", "What tasks may ask of this worker"),
]
COL = {c.key: i for i, c in enumerate(COLUMNS)}
SPARK_COLUMNS = [i for i, c in enumerate(COLUMNS) if c.spark]


class WorkerHealthModel(QAbstractTableModel):
    """One row per worker (live summaries) and per agent waiting for enrollment; a History per worker."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self._keys: list[str] = []
        self._rows: dict[str, dict[str, Any]] = {}
        self.history: dict[str, History] = {}

    # -- Qt API -------------------------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own signature
        return 0 if parent.isValid() else len(self._keys)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section].title
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMNS[section].tip
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._keys) or index.column() >= len(COLUMNS):
            return None
        key = self._keys[index.row()]
        row = self._rows[key]
        col = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(row, col)
        if role == WORKER_ROLE:
            return row.get("worker_id")
        if role == KIND_ROLE:
            return "pending" if row.get("_pending") else "worker"
        if role == SORT_ROLE:
            return self._sort_key(row, col)
        if role == SPARK_ROLE and col.spark:
            return self._spark(key, row, col.spark)
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = self._tip(row, col)
            return plain_tip(tip) if tip else tip
        if role == Qt.ItemDataRole.ForegroundRole:
            if col.key == "state":
                return QBrush(QColor(state_colour(worker_state(row))))
            if worker_state(row) in ("lost", "offline", "pending enrollment"):
                return QBrush(QColor("#8a8a8a"))  # what a lost machine last said is history, not news
        if role == Qt.ItemDataRole.TextAlignmentRole and col.key in ("load", "heartbeat"):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    # -- cells ----------------------------------------------------------------------------------------

    def age(self, row: dict[str, Any]) -> float | None:
        seen = row.get("last_seen")
        return None if not isinstance(seen, (int, float)) or row.get("_pending") else self.clock() - seen

    def _text(self, row: dict[str, Any], col: Col) -> str:
        k = col.key
        if k == "worker":
            return str(row.get("worker_id") or "")
        if k == "state":
            return worker_state(row)
        if k == "load":
            if row.get("_pending"):
                return ""
            return f"{row.get('running') or 0}/{row.get('slots') or 0}"
        if col.spark:
            v = row.get(col.spark)
            if row.get("_pending"):
                return ""
            return f"{v:.0f}%" if isinstance(v, (int, float)) else "—"
        if k == "heartbeat":
            return fmt_age(self.age(row))
        if k == "hardware":
            if row.get("_pending"):
                return f"{row.get('hostname') or ''} {row.get('address') or ''}".strip()
            return str(row.get("hardware") or row.get("hardware_id") or "")
        if k == "tags":
            return ", ".join(map(str, row.get("tags") or ()))
        return ""

    def _tip(self, row: dict[str, Any], col: Col) -> str | None:
        k = col.key
        if k == "worker":
            host = row.get("hostname")
            return f"{row.get('worker_id')}" + (f" on {host}" if host else "")
        if k == "state":
            state = worker_state(row)
            return f"{state}: {STATE_TIPS.get(state, '')}"
        if k == "load":
            return f"{row.get('running') or 0} task(s) running on {row.get('slots') or 0} slot(s)"
        if col.spark == "gpu_percent":
            gpu, mem = row.get("gpu_percent"), row.get("gpu_memory_percent")
            if gpu is None and mem is None:
                return "no GPU reported"
            return f"GPU use {_pct(gpu)}, GPU memory {_pct(mem)}"
        if col.spark:
            return f"{col.title} {_pct(row.get(col.spark))} (last {SPARK_SECONDS // 60} minutes drawn)"
        if k == "heartbeat":
            seen = row.get("last_seen")
            return time.strftime("last heard from at %Y-%m-%d %H:%M:%S", time.localtime(seen)) if seen else None
        if k == "hardware":
            hw = row.get("hardware") or ""
            return f"{hw}\nhardware id: {row.get('hardware_id')}" if row.get("hardware_id") else hw or None
        if k == "tags":
            return "\n".join(map(str, row.get("tags") or ())) or "no tags"
        return None

    def _sort_key(self, row: dict[str, Any], col: Col) -> Any:
        if col.spark:
            v = row.get(col.spark)
            return float(v) if isinstance(v, (int, float)) else -1.0
        if col.key == "heartbeat":
            a = self.age(row)
            return a if a is not None else -1.0
        if col.key == "load":
            return float(row.get("running") or 0)
        return self._text(row, col).lower()

    def _spark(self, key: str, row: dict[str, Any], field: str) -> Spark | None:
        h = self.history.get(key)
        if h is None:
            return None
        now = self.clock()
        t, v = h.since(now - SPARK_SECONDS)
        current = row.get(field)
        if not len(t):
            return None
        y = v[:, F[field]].astype(np.float64)
        if not np.isfinite(y).any():
            return None
        return Spark(np.clip((t - (now - SPARK_SECONDS)) / SPARK_SECONDS, 0.0, 1.0), y,
                     float(current) if isinstance(current, (int, float)) else None)

    # -- feeding --------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._keys)

    def row_for(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def row_of(self, key: str) -> int:
        return self._keys.index(key)

    def apply_workers(self, batch: Sequence[dict[str, Any]]) -> None:
        """Live worker summaries (or stored rows): upsert and record a sample each."""
        now = self.clock()
        changed: list[int] = []
        new: list[str] = []
        for item in batch:
            wid = item.get("worker_id")
            if not wid:
                continue
            key = str(wid)
            row = self._rows.get(key)
            if row is None:
                self._rows[key] = row = {}
                new.append(key)
            else:
                if key in self._keys:
                    changed.append(self._keys.index(key))
            row.update(item)
            self._sample(key, row, now)
        # An agent that was waiting and is now a worker: its pending row goes.
        self._drop([f"pending:{row['worker_id']}" for row in batch if row.get("worker_id")])
        if changed:
            self.dataChanged.emit(self.index(min(changed), 0), self.index(max(changed), len(COLUMNS) - 1))
        self._insert(new)

    def apply_agents(self, rows: Sequence[dict[str, Any]]) -> None:
        """Enrollment rows: the pending ones show as "pending enrollment"; decided ones leave."""
        new: list[str] = []
        gone: list[str] = []
        for a in rows:
            name = str(a.get("name") or a.get("fingerprint") or "")
            if not name:
                continue
            key = f"pending:{name}"
            if a.get("state") == "pending" and name not in self._rows:
                if key not in self._rows:
                    new.append(key)
                self._rows[key] = {"worker_id": name, "_pending": True, "hostname": a.get("hostname"),
                                   "address": a.get("address"), "fingerprint": a.get("fingerprint")}
            elif a.get("state") != "pending":
                gone.append(key)
        self._drop(gone)
        self._insert(new)

    def tick(self) -> None:
        """Once a second: carry every worker's last values forward and refresh the cells that move with
        time (heartbeat age, sparklines)."""
        now = self.clock()
        for key in self._keys:
            row = self._rows[key]
            if not row.get("_pending"):
                self._sample(key, row, now)
        if self._keys:
            self.dataChanged.emit(self.index(0, SPARK_COLUMNS[0]), self.index(len(self._keys) - 1, COL["heartbeat"]))

    def _sample(self, key: str, row: dict[str, Any], now: float) -> None:
        h = self.history.get(key)
        if h is None:
            h = self.history[key] = History()
        seen = row.get("last_seen")
        age = now - seen if isinstance(seen, (int, float)) else math.nan
        if row.get("status") == "offline":
            # A lost worker measures nothing: its last figures carried on would draw a machine that is
            # not there. Its slots and its growing silence are still true.
            values = [math.nan] * (len(FIELDS) - 3) + [0.0, _num(row.get("slots"))]
        else:
            values = [_num(row.get(f)) for f in FIELDS[:-1]]
        h.record(now, [*values, age])

    def _insert(self, keys: list[str]) -> None:
        if not keys:
            return
        first = len(self._keys)
        self.beginInsertRows(QModelIndex(), first, first + len(keys) - 1)
        self._keys.extend(keys)
        self.endInsertRows()

    def _drop(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key not in self._rows:
                continue
            i = self._keys.index(key)
            self.beginRemoveRows(QModelIndex(), i, i)
            del self._keys[i]
            del self._rows[key]
            self.history.pop(key, None)
            self.endRemoveRows()


def _pct(v: Any) -> str:
    return f"{v:.0f}%" if isinstance(v, (int, float)) else "not measured"


class WorkerTableView(QTableView):
    """The workers table; tasks dragged from the tasks table drop on a worker row."""

    tasksDropped = Signal(list, str, QPoint)  # task ids, worker id, where (global position)
    resized = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DropOnly)
        self.drop_row: int | None = None  # the row under a drag, highlighted

    def worker_at(self, pos: QPoint) -> tuple[int, str] | None:
        index = self.indexAt(pos)
        if not index.isValid() or index.data(KIND_ROLE) != "worker":
            return None
        return index.row(), str(index.data(WORKER_ROLE))

    def _set_drop_row(self, row: int | None) -> None:
        if row != self.drop_row:
            self.drop_row = row
            self.viewport().update()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasFormat(TASK_IDS_MIME):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        hit = self.worker_at(event.position().toPoint()) if event.mimeData().hasFormat(TASK_IDS_MIME) else None
        self._set_drop_row(hit[0] if hit else None)
        if hit:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        self._set_drop_row(None)
        super().dragLeaveEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        self._set_drop_row(None)
        pos = event.position().toPoint()
        hit = self.worker_at(pos)
        if not hit or not event.mimeData().hasFormat(TASK_IDS_MIME):
            event.ignore()
            return
        ids = [t for t in bytes(event.mimeData().data(TASK_IDS_MIME).data()).decode().split("\n") if t]
        event.acceptProposedAction()
        self.tasksDropped.emit(ids, hit[1], self.viewport().mapToGlobal(pos))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.resized.emit()

    def paintEvent(self, event: QPaintEvent) -> None:
        super().paintEvent(event)
        if self.drop_row is None or self.model() is None:
            return
        first = self.visualRect(self.model().index(self.drop_row, 0))
        last = self.visualRect(self.model().index(self.drop_row, self.model().columnCount() - 1))
        rect = first.united(last).adjusted(1, 0, -1, -1)
        painter = QPainter(self.viewport())
        colour = self.palette().highlight().color()
        fill = QColor(colour)
        fill.setAlpha(50)
        painter.fillRect(rect, fill)
        painter.setPen(QPen(colour, 2))
        painter.drawRect(rect)
        painter.end()


class StripChart(pg.PlotWidget):
    """One chart of a few curves over the last minutes (x: minutes before now)."""

    def __init__(self, name: str, title: str, unit: str, curves: Sequence[tuple[str, str, str, Qt.PenStyle]],
                 *, y_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.setObjectName(name)
        self.setBackground("w")
        self.setLabel("left", unit)
        self.setLabel("bottom", "minutes ago")
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        # Thirty minutes of samples in a few hundred pixels: draw the peaks per pixel, not every point.
        self.getPlotItem().setDownsampling(auto=True, mode="peak")
        self.getPlotItem().setClipToView(True)
        self.setMinimumHeight(110)
        self.fixed_y = y_range
        if y_range:
            self.setYRange(*y_range, padding=0.02)
        # The curves' names in the title, in their colours: a legend inside the plot covers the data.
        keys = "&nbsp;&nbsp;".join(f"<span style='color:{colour}'>{'┅' if style == Qt.PenStyle.DashLine else '━'} "
                                   f"{label}</span>" for _, label, colour, style in curves)
        self.setTitle(keys, size="9pt")
        self.setToolTip(title)
        self.curves: dict[str, pg.PlotDataItem] = {}
        for field, label, colour, style in curves:
            self.curves[field] = self.plot([], [], name=label, pen=pg.mkPen(colour, width=2, style=style),
                                           connect="finite")

    def show_window(self, minutes: float) -> None:
        self.setXRange(-minutes, 0, padding=0.01)

    def set_series(self, field: str, x: np.ndarray, y: np.ndarray) -> None:
        self.curves[field].setData(x, y, connect="finite")


class HealthView(QWidget):
    """The workers table with sparklines, strip charts of the selected worker, and worker actions."""

    tasksAssigned = Signal(list, str)  # task ids the coordinator accepted, worker id
    assignAnswered = Signal(str)  # a drop's outcome, as the status bar says it
    workerSelected = Signal(str)

    def __init__(self, bridge: CoordinatorBridge, parent: QWidget | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(parent)
        self.setObjectName("healthView")
        self.bridge = bridge
        self.clock = clock
        self.model = WorkerHealthModel(clock)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = WorkerTableView()
        self.table.setObjectName("workersView")
        self.table.setModel(self.proxy)
        self._setup_table()
        self.selected_worker: str | None = None
        self.last_refusal = ""
        self.chart_redraws = 0

        # Actions on the selected workers.
        self.drain_action = QAction("Drain", self)
        self.drain_action.triggered.connect(self.drain_selected)
        self.resume_action = QAction("Resume", self)
        self.resume_action.triggered.connect(self.resume_selected)
        self.revoke_action = QAction("Revoke…", self)
        self.revoke_action.triggered.connect(lambda: self.revoke_selected())
        self.buttons: dict[str, QPushButton] = {}
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        title = QLabel("<b>Workers</b>")
        bar.addWidget(title)
        for name, action in (("drain", self.drain_action), ("resume", self.resume_action),
                             ("revoke", self.revoke_action)):
            b = QPushButton(action.text())
            b.setObjectName(f"{name}Button")
            b.clicked.connect(action.trigger)
            self.buttons[name] = b
            bar.addWidget(b)
        self.message = QLabel()
        self.message.setObjectName("healthMessage")
        self.message.setWordWrap(False)
        self.message.setTextFormat(Qt.TextFormat.PlainText)  # it quotes the coordinator, which quotes agents
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar.addWidget(self.message, 1)
        bar.addWidget(QLabel("Charts:"))
        self.window_box = QComboBox()
        self.window_box.setObjectName("chartWindow")
        for m in CHART_MINUTES:
            self.window_box.addItem(f"last {m} min", m)
        self.window_box.setCurrentIndex(CHART_MINUTES.index(10))
        self.window_box.currentIndexChanged.connect(lambda _: self._redraw_charts())
        bar.addWidget(self.window_box)

        # Strip charts of the selected worker.
        dash = Qt.PenStyle.DashLine
        solid = Qt.PenStyle.SolidLine
        self.charts: list[StripChart] = [
            StripChart("cpuGpuChart", "CPU and GPU", "%", [("cpu_percent", "CPU", "#1565c0", solid),
                                                            ("gpu_percent", "GPU", "#6a1b9a", solid)],
                       y_range=(0, 100)),
            StripChart("memoryDiskChart", "Memory and disk", "%",
                       [("memory_percent", "memory", "#2e7d32", solid), ("disk_percent", "disk", "#8d6e63", solid),
                        ("gpu_memory_percent", "GPU mem", "#6a1b9a", dash)], y_range=(0, 100)),
            StripChart("slotsChart", "Running vs slots", "tasks", [("running", "running", "#1565c0", solid),
                                                                  ("slots", "slots", "#757575", dash)]),
            StripChart("heartbeatChart", "Heartbeat age", "s", [("age", "heartbeat age", "#e65100", solid)]),
        ]
        self.chart_title = QLabel()
        self.chart_title.setObjectName("chartTitle")
        charts = QWidget()
        grid = QGridLayout(charts)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(4)
        grid.addWidget(self.chart_title, 0, 0, 1, 4)
        for i, chart in enumerate(self.charts):
            grid.addWidget(chart, 1, i)
        top = QWidget()
        tlay = QVBoxLayout(top)
        tlay.setContentsMargins(0, 0, 0, 0)
        tlay.addLayout(bar)
        tlay.addWidget(self.table)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(charts)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([240, 150])  # six or seven workers in sight above the charts
        self.splitter = split
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(split)

        self._chart_timer = QTimer(self)
        self._chart_timer.setSingleShot(True)
        self._chart_timer.setInterval(CHART_INTERVAL_MS)
        self._chart_timer.timeout.connect(self._redraw_charts)
        self._clock = QTimer(self)
        self._clock.timeout.connect(self._tick)
        self._clock.start(1000)

        self.table.tasksDropped.connect(self.assign_tasks)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._on_selection())
        self.model.rowsInserted.connect(lambda *_: self._on_rows_inserted())
        bridge.workersChanged.connect(self._on_workers)
        bridge.agentsChanged.connect(self.model.apply_agents)
        bridge.identityChanged.connect(lambda _: self._apply_role())
        self._apply_role()
        self._on_selection()
        # The workers the database knows, whether or not load_history ran before this view existed.
        bridge.call_async("list_workers", None, self._on_stored_workers)
        bridge.call_async("list_agents", None, self._on_stored_agents)

    # -- building -------------------------------------------------------------------------------------

    def _setup_table(self) -> None:
        t = self.table
        t.setSortingEnabled(True)
        t.sortByColumn(COL["worker"], Qt.SortOrder.AscendingOrder)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setAlternatingRowColors(True)
        t.verticalHeader().setVisible(False)
        t.verticalHeader().setDefaultSectionSize(26)  # a sparkline needs some height to read
        t.setWordWrap(False)
        t.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # both ends of an id tell workers apart
        t.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        t.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        t.customContextMenuRequested.connect(self._context_menu)
        delegate = SparklineDelegate(t)
        for c in SPARK_COLUMNS:
            t.setItemDelegateForColumn(c, delegate)
        header = t.horizontalHeader()
        header.setMinimumSectionSize(40)
        fm = t.fontMetrics()
        # Fixed columns sized to what they hold; the id, hardware and tags share what is left, so all
        # of it is in sight at 1280 px without scrolling sideways (long text elides, tooltips say all).
        fixed = {"state": fm.horizontalAdvance("pending enrollment") + 16,
                 "load": fm.horizontalAdvance("Run/Slots") + 16, "heartbeat": fm.horizontalAdvance("Heartbeat") + 18}
        for key, width in fixed.items():
            header.setSectionResizeMode(COL[key], QHeaderView.ResizeMode.Fixed)
            t.setColumnWidth(COL[key], width)
        for c in SPARK_COLUMNS:
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.Fixed)
            t.setColumnWidth(c, fm.horizontalAdvance("100%") + 72)
        t.resized.connect(self.fit_columns)

    def fit_columns(self) -> None:
        """Share the width the fixed columns leave between the id, hardware and tags: each what its
        longest text needs if all fit, else in proportion to that need (elided, tooltips say all)."""
        t = self.table
        flexible = [COL["worker"], COL["hardware"], COL["tags"]]
        room = t.viewport().width() - sum(t.columnWidth(c) for c in range(len(COLUMNS)) if c not in flexible)
        fm = t.fontMetrics()
        need = []
        for c in flexible:
            texts = [str(self.model.headerData(c, Qt.Orientation.Horizontal))]
            texts += [self.model.index(r, c).data() or "" for r in range(min(self.model.rowCount(), 500))]
            need.append(max(fm.horizontalAdvance(x) for x in texts) + 16)
        if sum(need) <= room:
            widths = [*need[:-1], room - sum(need[:-1])]  # what is left goes to the tags
        else:
            # The id first (it names the row; "bui…-01" tells no worker apart), up to 40% of the room;
            # hardware and tags share the rest by need.
            first = min(need[0], max(90, int(room * 0.4)))
            rest = max(120, room - first)
            widths = [first] + [max(60, int(rest * n / sum(need[1:]))) for n in need[1:]]
            widths[-1] = max(60, room - sum(widths[:-1]))
        for c, w in zip(flexible, widths, strict=True):
            t.setColumnWidth(c, w)

    # -- events ---------------------------------------------------------------------------------------

    def _on_workers(self, rows: list[dict[str, Any]]) -> None:
        self.model.apply_workers(rows)
        if self.selected_worker and any(r.get("worker_id") == self.selected_worker for r in rows):
            self.schedule_charts()

    def _on_stored_workers(self, data: Any, error: str | None) -> None:
        if error or not data:
            return
        fresh = []
        for w in data:
            known = self.model.row_for(str(w.get("worker_id")))
            # Live events may have come first: never let the stored row roll a worker back.
            if known is None or (w.get("last_seen") or 0) > (known.get("last_seen") or 0):
                fresh.append(stored_worker_row(w))
        if fresh:
            self.model.apply_workers(fresh)

    def _on_stored_agents(self, data: Any, error: str | None) -> None:
        if not error and data:
            self.model.apply_agents([agent_row(a) for a in data])

    def _on_rows_inserted(self) -> None:
        self.fit_columns()
        if self.selected_worker is None:
            self.select_worker(self._first_worker())

    def _first_worker(self) -> str | None:
        for r in range(self.proxy.rowCount()):
            idx = self.proxy.index(r, 0)
            if idx.data(KIND_ROLE) == "worker":
                return str(idx.data(WORKER_ROLE))
        return None

    def _tick(self) -> None:
        self.model.tick()
        self.schedule_charts()

    def _on_selection(self) -> None:
        ids = self.selected_workers()
        if ids and ids[0] != self.selected_worker:
            self.selected_worker = ids[0]
            self.workerSelected.emit(ids[0])
            self.schedule_charts()
        has = bool(ids)
        for name, op in (("drain", "drain_worker"), ("resume", "resume_worker"), ("revoke", "revoke_agents")):
            self.buttons[name].setEnabled(has and self.bridge.allows(op))

    def _apply_role(self) -> None:
        tips = {"drain": ("drain_worker", "Let the selected workers finish what they run and take no new task"),
                "resume": ("resume_worker", "Let the selected workers take tasks again"),
                "revoke": ("revoke_agents", "Revoke the selected workers' keys: they may not connect again")}
        actions = {"drain": self.drain_action, "resume": self.resume_action, "revoke": self.revoke_action}
        for name, (op, tip) in tips.items():
            ok = self.bridge.allows(op)
            actions[name].setEnabled(ok)
            self.buttons[name].setToolTip(tip if ok else self.bridge.why_not(op))
            actions[name].setToolTip(tip if ok else self.bridge.why_not(op))
        self.table.setAcceptDrops(self.bridge.allows("assign_tasks"))
        self._on_selection()

    # -- selection and charts -------------------------------------------------------------------------

    def selected_workers(self) -> list[str]:
        sel = self.table.selectionModel()
        if sel is None:
            return []
        return [str(i.data(WORKER_ROLE)) for i in sel.selectedRows() if i.data(KIND_ROLE) == "worker"]

    def select_worker(self, worker_id: str | None) -> None:
        if worker_id is None:
            return
        for r in range(self.proxy.rowCount()):
            idx = self.proxy.index(r, 0)
            if idx.data(WORKER_ROLE) == worker_id and idx.data(KIND_ROLE) == "worker":
                self.table.selectRow(r)
                self.selected_worker = worker_id
                self.schedule_charts()
                return

    def schedule_charts(self) -> None:
        """Redraw soon: any number of calls within CHART_INTERVAL_MS make one redraw."""
        if not self._chart_timer.isActive():
            self._chart_timer.start()

    @property
    def chart_minutes(self) -> int:
        return int(self.window_box.currentData() or 10)

    def _redraw_charts(self) -> None:
        self.chart_redraws += 1
        minutes = self.chart_minutes
        wid = self.selected_worker
        row = self.model.row_for(wid) if wid else None
        if not wid or row is None:
            self.chart_title.setText("<i>Select a worker to see its last minutes.</i>")
            for chart in self.charts:
                for field in chart.curves:
                    chart.set_series(field, np.empty(0), np.empty(0))
            return
        # The id and the hardware line are the agent's words: escaped, never markup.
        hw = row.get("hardware")
        self.chart_title.setText(f"<b>{html.escape(wid)}</b> — {worker_state(row)}, last {minutes} minutes"
                                 + (f" · {html.escape(str(hw))}" if hw else ""))
        now = self.clock()
        t, v = self.model.history[wid].since(now - minutes * 60) if wid in self.model.history else (
            np.empty(0), np.empty((0, len(FIELDS))))
        x = (t - now) / 60.0
        for chart in self.charts:
            for field in chart.curves:
                chart.set_series(field, x, v[:, F[field]].astype(np.float64))
            chart.show_window(minutes)
        slots = v[:, F["slots"]]
        top = float(np.nanmax(slots)) if len(slots) and np.isfinite(slots).any() else 1.0
        self.charts[2].setYRange(0, max(1.0, top) * 1.15, padding=0)
        # Tasks come whole: integer ticks while they fit (pyqtgraph's own spacing below 20 slots).
        self.charts[2].getAxis("left").setTickSpacing(*((1, 1) if top <= 12 else (None, None)))
        ages = v[:, F["age"]]
        oldest = float(np.nanmax(ages)) if len(ages) and np.isfinite(ages).any() else 1.0
        self.charts[3].setYRange(0, max(5.0, oldest) * 1.15, padding=0)

    # -- actions --------------------------------------------------------------------------------------

    def _context_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        menu.addAction(self.drain_action)
        menu.addAction(self.resume_action)
        menu.addSeparator()
        menu.addAction(self.revoke_action)
        enabled = bool(self.selected_workers())
        for a in menu.actions():
            if not a.isSeparator():
                a.setEnabled(enabled and a.isEnabled())
        menu.aboutToHide.connect(menu.deleteLater)  # one menu per right-click: it goes when it closes
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def _call(self, op: str, args: dict[str, Any]) -> tuple[Any, str | None]:
        """A quick loop op through the bridge, with the refusal's text (which the bridge also sends to
        the status bar through errorRaised)."""
        said: list[str] = []
        self.bridge.errorRaised.connect(said.append)
        try:
            data = self.bridge.call(op, args)
        finally:
            self.bridge.errorRaised.disconnect(said.append)
        return data, (said[-1] if said else (None if data is not None else f"{op} failed"))

    def _show(self, text: str, *, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setToolTip(plain_tip(text))
        self.message.setStyleSheet("color: #c62828;" if error else "")
        if error:
            self.last_refusal = text

    def _drain_or_resume(self, op: str, verb: str) -> list[str]:
        done: list[str] = []
        refused: list[str] = []
        for wid in self.selected_workers():
            data, error = self._call(op, {"worker_id": wid})
            if error is None and isinstance(data, dict):
                self.model.apply_workers([data])  # the answer is the worker now; its event agrees later
                done.append(wid)
            else:
                refused.append(f"{wid}: {error}")
        if refused:
            self._show(f"{verb} refused — " + "; ".join(refused), error=True)
        elif done:
            self._show(f"{verb}: {', '.join(done)}")
        self.schedule_charts()
        return done

    def drain_selected(self) -> list[str]:
        """Drain the selected workers (they finish their tasks and take no new ones)."""
        return self._drain_or_resume("drain_worker", "Draining")

    def resume_selected(self) -> list[str]:
        return self._drain_or_resume("resume_worker", "Resumed")

    def revoke_selected(self, *, confirm: bool = True) -> list[str]:
        """Revoke the selected workers' keys (asks first unless ``confirm`` is False)."""
        ids = self.selected_workers()
        if not ids:
            return []
        if confirm and QMessageBox.question(
                self, "Revoke workers",
                f"Revoke the key of {', '.join(ids)}? They will not be able to connect until accepted again.",
        ) != QMessageBox.StandardButton.Yes:
            return []
        said: list[str] = []
        self.bridge.errorRaised.connect(said.append)
        try:
            done = self.bridge.decide_agents("revoke", ids)
        finally:
            self.bridge.errorRaised.disconnect(said.append)
        if said:
            self._show(f"Revoke refused — {said[-1]}", error=True)
        elif done:
            self._show(f"Revoked: {', '.join(done)}")
        return done

    def assign_tasks(self, task_ids: list[str], worker_id: str, where: QPoint | None = None) -> int:
        """Pin dropped tasks to a worker: one assign_tasks request per ASSIGN_CHUNK ids, answered off
        the GUI thread; the outcome shows where they were dropped and in the status bar
        (:attr:`assignAnswered`), and :attr:`tasksAssigned` names those taken. Returns the requests made."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return 0
        chunks = [ids[i:i + ASSIGN_CHUNK] for i in range(0, len(ids), ASSIGN_CHUNK)]
        outcome: dict[str, Any] = {"left": len(chunks), "done": [], "refused": {}, "errors": []}

        def answered(data: Any, error: str | None) -> None:
            if error:
                outcome["errors"].append(error)
            elif isinstance(data, dict):
                outcome["done"].extend(str(t) for t in data.get("done") or ())
                outcome["refused"].update({str(k): str(v) for k, v in (data.get("refused") or {}).items()})
            outcome["left"] -= 1
            if outcome["left"] == 0:
                self._assigned(len(ids), worker_id, outcome, where)

        for chunk in chunks:
            if not self.bridge.call_async("assign_tasks", {"task_ids": chunk, "worker_id": worker_id}, answered):
                outcome["left"] -= 1
                outcome["errors"].append("the window is closing")
        if outcome["left"] == 0:
            self._assigned(len(ids), worker_id, outcome, where)
        return len(chunks)

    def _assigned(self, asked: int, worker_id: str, outcome: dict[str, Any], where: QPoint | None) -> None:
        done: list[str] = outcome["done"]
        reasons = [*outcome["errors"], *outcome["refused"].values()]
        refused = asked - len(done)
        if refused:
            distinct = list(dict.fromkeys(reasons)) or ["no answer"]
            why = "; ".join(distinct[:3]) + (f" (+{len(distinct) - 3} more)" if len(distinct) > 3 else "")
            if done:
                text = f"{len(done)} of {asked} assigned to {worker_id}; {refused} refused: {why}"
            else:
                text = f"Not assigned to {worker_id}: {why}"
            self._show(text, error=True)
            self.bridge.errorRaised.emit(text)  # the status bar keeps the summary, not the last refusal
        else:
            text = f"Assigned {len(done)} task(s) to {worker_id}"
            self._show(text)
        if where is not None:
            QToolTip.showText(where, plain_tip(text), self.table)
        if done:
            self.tasksAssigned.emit(done, worker_id)
        self.assignAnswered.emit(text)
