"""The results explorer: one test x metric series over time, its findings, and two runs compared.

Everything is read through the coordinator's deferred operations with ``bridge.call_async``
(series_catalog, metric_series, list_runs, compare_runs): never a synchronous read in the GUI
thread. The plot holds one PlotDataItem per colour group, with downsampling and clipping to the
view, so 100,000 points pan and zoom smoothly; a click is resolved to the nearest point with numpy
in the view's own scale (not the scatter's hit test, which walks every spot).

Live, and only while the view is on screen (what happened while it was hidden is caught up when it
shows): a completed or failed task of the selected test schedules a read of the points since the
last one shown (``since``), merged into the plot; findings of (or retracted from) the selected
series, like a new selection, a full read. Reads are coalesced to at most one a second. A task of a
test the catalog does not list reads the catalog again, at most every CATALOG_INTERVAL seconds (a
test without metrics is never listed, and the catalog groups 200,000 results); tasks without a
test id never do.
"""

from __future__ import annotations

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
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QCompleter,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from dtf_gui.ui import theme
from dtf_gui.ui.bridge import CoordinatorBridge

REFRESH_INTERVAL = 1.0  # seconds between two live reads of the series at most
CATALOG_INTERVAL = 10.0  # seconds between two live reads of the catalog at most
SERIES_LIMIT = 100_000
MAX_GROUPS = 16  # colour groups drawn; the rest share one grey "others"
CLICK_RADIUS = 0.04  # of the view's width/height: how near a click must be to pick a point
ALL_WORKERS = "all workers"
NO_TEST = "(no test id)"
_INDEX = QModelIndex | QPersistentModelIndex
_ROLE_VERDICT = Qt.ItemDataRole.UserRole + 1

# compare_runs' verdicts as the engineer reads them, and the status colour each takes.
VERDICTS = {"regressed": ("regression", "regression"), "improved": ("improvement", "improvement"),
            "unchanged": ("same", None), "new": ("new", None), "missing": ("missing", "offline")}


def fmt(x: float | None) -> str:
    """A level for a label: 4 significant digits, no exponent for ordinary values."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"


def change_label(before: float | None, after: float | None, rel: float | None) -> str:
    """"+5.2% (100 → 105.2)"."""
    pct = "" if rel is None else f"{rel * 100:+.1f}% "
    return f"{pct}({fmt(before)} → {fmt(after)})"


def settled(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Changes without a suspected one whose change was confirmed since (same ``change_id``): one
    step is drawn once, confirmed."""
    confirmed = {c.get("change_id") for c in changes if c.get("state") != "suspected" and c.get("change_id")}
    return [c for c in changes if c.get("state") != "suspected" or c.get("change_id") not in confirmed]


def plural(n: int, one: str, many: str = "") -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def run_title(run: dict[str, Any]) -> str:
    """"nightly (12-01 00:12)": a run's name and start, which tell two runs of one name apart."""
    created = run.get("created")
    when = time.strftime("%m-%d %H:%M", time.localtime(created)) if created else ""
    name = run.get("name") or str(run.get("run_id", ""))[:12]
    return f"{name} ({when})" if when else name


def axis_label(metric: str, unit: str, direction: str | None) -> str:
    text = f"{metric} [{unit}]" if unit else metric
    return f"{text} — {direction} is better" if direction in ("higher", "lower") else text


class ComparisonModel(QAbstractTableModel):
    """compare_runs' rows: per test x metric, baseline and this run's means, change and verdict."""

    HEADERS = ("Test", "Metric", "Baseline", "This run", "Change", "Verdict")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[dict[str, Any]] = []

    def set_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: _INDEX = QModelIndex()) -> int:  # noqa: B008 (Qt's own default)
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: _INDEX = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal \
                and 0 <= section < len(self.HEADERS):
            return self.HEADERS[section]
        return None

    def verdict(self, row: int) -> str:
        return VERDICTS.get(self.rows[row].get("verdict", ""), (str(self.rows[row].get("verdict")), None))[0]

    def data(self, index: _INDEX, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not (0 <= index.row() < len(self.rows)):
            return None
        r = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            unit = f" {r['unit']}" if r.get("unit") else ""
            if col == 0:
                return str(r.get("test_id") or NO_TEST)
            if col == 1:
                return str(r.get("metric", ""))
            if col == 2:
                return fmt(r.get("baseline_mean")) + unit
            if col == 3:
                return fmt(r.get("current_mean")) + unit
            if col == 4:
                pct = r.get("pct_change")
                return "–" if pct is None else f"{pct:+.1f}%"
            if col == 5:
                return self.verdict(index.row())
        if role == Qt.ItemDataRole.ToolTipRole:
            p = r.get("p_value")
            lines = [str(r.get("test_id") or NO_TEST), f"{r.get('metric')}: {r.get('direction')} is better"
                     f" ({r.get('direction_source') or 'declared'})",
                     f"n {r.get('baseline_n')} → {r.get('current_n')}" + ("" if p is None else f", p = {p:.2g}")]
            if r.get("note"):
                lines.append(str(r["note"]))
            return "\n".join(lines)
        if role == Qt.ItemDataRole.ForegroundRole and col in (4, 5):
            key = VERDICTS.get(r.get("verdict", ""), ("", None))[1]
            colour = theme.status_colours().get(key or "")
            return QBrush(QColor(colour)) if colour else None
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (2, 3, 4):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == _ROLE_VERDICT:
            return r.get("verdict")
        return None


_COLUMNS = ("worker", "hardware", "result_id", "task_id", "run_id")  # the string columns of a reply


class _Series:
    """A metric_series reply as numpy columns (what the plot and the click need); ``data`` is the
    rest of the reply (names, unit, direction, truncated, findings)."""

    def __init__(self, data: dict[str, Any], t: np.ndarray, v: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        self.data = data
        self.t = t
        self.v = v
        self.worker = cols["worker"]
        self.hardware = cols["hardware"]
        self.result_id = cols["result_id"]
        self.task_id = cols["task_id"]
        self.run_id = cols["run_id"]
        self.result_ids: set[str] = set(self.result_id.tolist())

    @classmethod
    def from_reply(cls, data: dict[str, Any]) -> _Series:
        t = np.asarray(data.get("t") or [], dtype=np.float64)
        cols = {}
        for name in _COLUMNS:
            raw = data.get(name) or []
            col = np.empty(len(t), dtype=object)
            col[:] = [str(x or "") for x in raw[:len(t)]] + [""] * max(0, len(t) - len(raw))
            cols[name] = col
        meta = {k: x for k, x in data.items() if k not in ("t", "v", *_COLUMNS)}
        return cls(meta, t, np.asarray(data.get("v") or [], dtype=np.float64), cols)

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _COLUMNS}

    def merged(self, reply: _Series, limit: int) -> _Series:
        """This series with the points of ``reply`` (a ``since`` read: its first ones may be ours
        already) and their findings, in time order, the newest ``limit`` kept."""
        fresh = np.fromiter((r not in self.result_ids for r in reply.result_id.tolist()), dtype=bool,
                            count=len(reply.result_id))
        t = np.concatenate([self.t, reply.t[fresh]])
        v = np.concatenate([self.v, reply.v[fresh]])
        cols = {name: np.concatenate([col, getattr(reply, name)[fresh]]) for name, col in self.columns().items()}
        if self.t.size and fresh.any() and float(reply.t[fresh].min()) < float(self.t[-1]):
            order = np.argsort(t, kind="stable")  # a late result (an agent's slow clock) goes where it belongs
            t, v = t[order], v[order]
            cols = {name: col[order] for name, col in cols.items()}
        data = dict(self.data)
        if len(t) > limit:
            t, v = t[-limit:], v[-limit:]
            cols = {name: col[-limit:] for name, col in cols.items()}
            data["truncated"] = True
        first = float(t[0]) if t.size else math.inf
        for key in ("anomalies", "change_points"):
            have = {(f.get("result_id"), f.get("state")) for f in data.get(key) or []}
            found = [*(data.get(key) or []),
                     *(f for f in reply.data.get(key) or [] if (f.get("result_id"), f.get("state")) not in have)]
            data[key] = sorted((f for f in found if float(f.get("t") or 0.0) >= first), key=lambda f: f["t"])
        data["change_points"] = settled(data["change_points"])
        return _Series(data, t, v, cols)


class ResultsExplorer(QWidget):
    """Test x metric selectors, the series plot, the runs list and the comparison table."""

    taskRequested = Signal(str)  # a clicked point's task id

    def __init__(self, bridge: CoordinatorBridge, parent: QWidget | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self.setObjectName("resultsExplorer")
        self.bridge = bridge
        self.clock = clock
        self.catalog: dict[str, list[str]] = {}  # test id -> its metrics, newest series first
        self.series: _Series | None = None
        self.group_items: dict[str, pg.PlotDataItem] = {}
        self.change_items: list[pg.PlotDataItem] = []
        self.change_labels: list[pg.TextItem] = []
        self.change_markers: list[pg.InfiniteLine] = []
        self.fetches = 0  # metric_series requests sent (tests read it)
        self.catalog_fetches = 0  # series_catalog requests sent
        self._gen = 0  # bumped by each selection: replies for an older one are dropped
        self._in_flight = False
        self._want_new = False  # points newer than the last shown are wanted
        self._want_full = False  # the whole series is wanted (findings changed, reload)
        self._last_fetch = -math.inf
        self._catalog_wanted = False
        self._last_catalog = -math.inf
        self._view_touched = False  # the engineer panned or zoomed: a live update keeps their view
        self._shown_once = False
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self._fetch_due)
        self._catalog_timer = QTimer(self, singleShot=True)
        self._catalog_timer.timeout.connect(self._catalog_due)

        self.test_box = QComboBox(editable=True, objectName="resultsTest")
        self.test_box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.test_box.setMinimumContentsLength(18)  # grows with the window (stretch 3)
        self.test_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        completer = QCompleter(self.test_box.model(), self.test_box)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.test_box.setCompleter(completer)
        self.metric_box = QComboBox(objectName="resultsMetric")
        self.metric_box.setMinimumContentsLength(12)
        self.colour_box = QComboBox(objectName="resultsColour")
        self.colour_box.addItems(["worker", "hardware"])
        self.worker_box = QComboBox(objectName="resultsWorker")
        self.worker_box.addItem(ALL_WORKERS)
        self.worker_box.setMinimumContentsLength(8)
        self.reload_button = QPushButton("Reload", objectName="resultsReload")
        self.status = QLabel(objectName="resultsStatus")

        bar = QHBoxLayout()
        for label, w in (("Test", self.test_box), ("Metric", self.metric_box), ("Colour by", self.colour_box),
                         ("Worker", self.worker_box)):
            bar.addWidget(QLabel(label))
            bar.addWidget(w, 3 if w is self.test_box else 0)
        bar.addWidget(self.reload_button)

        self.plot = pg.PlotWidget(axisItems={"bottom": pg.DateAxisItem(orientation="bottom")})
        self.plot.setObjectName("resultsPlot")
        # Level lines only: the time axis's grid (every tick level of a date axis) doubled the
        # cost of a repaint of 100,000 points.
        self.plot.showGrid(x=False, y=True, alpha=0.25)
        self.plot.setLabel("bottom", "time of the result")
        self.plot.setMinimumHeight(260)
        # The legend sits in a row of the plot's layout under the time axis: it never covers a point.
        self.legend = pg.LegendItem(colCount=6, labelTextSize="8pt", verSpacing=-6, horSpacing=12)
        layout = self.plot.getPlotItem().layout
        layout.addItem(self.legend, 4, 1)
        layout.setAlignment(self.legend, Qt.AlignmentFlag.AlignLeft)
        self.legend.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Maximum)
        self.anomaly_item = pg.ScatterPlotItem(symbol="o", size=15, pen=pg.mkPen("#d32f2f", width=2),
                                               brush=None, pxMode=True)
        self.anomaly_item.setZValue(20)
        self.plot.addItem(self.anomaly_item)
        self.plot.scene().sigMouseClicked.connect(self._scene_clicked)
        self.plot.getPlotItem().vb.sigRangeChangedManually.connect(lambda *_: setattr(self, "_view_touched", True))

        self.runs_list = QListWidget(objectName="resultsRuns")
        self.runs_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.runs_list.setToolTip("Select two runs to compare them (the older one is the baseline)")
        self.runs_hint = QLabel("Runs — select two to compare", objectName="resultsRunsHint")
        runs_box = QWidget()
        rl = QVBoxLayout(runs_box)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.runs_hint)
        rl.addWidget(self.runs_list)
        self.compare_model = ComparisonModel(self)
        self.compare_table = QTableView(objectName="resultsComparison")
        self.compare_table.setModel(self.compare_model)
        self.compare_table.setAlternatingRowColors(True)
        self.compare_table.verticalHeader().hide()
        self.compare_table.setWordWrap(False)
        self.compare_table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.compare_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in range(1, len(ComparisonModel.HEADERS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.compare_summary = QLabel(objectName="resultsCompareSummary")
        table_box = QWidget()
        tl = QVBoxLayout(table_box)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.compare_summary)
        tl.addWidget(self.compare_table)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(runs_box)
        lower.addWidget(table_box)
        lower.setSizes([280, 720])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.plot)
        split.addWidget(lower)
        split.setSizes([620, 300])

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)

        self.test_box.activated.connect(lambda _i: self._test_chosen())
        self.test_box.lineEdit().editingFinished.connect(self._test_chosen)
        self.metric_box.activated.connect(lambda _i: self._metric_chosen())
        self.colour_box.currentIndexChanged.connect(lambda _i: self._render())
        self.worker_box.activated.connect(lambda _i: self._selection_changed())
        self.reload_button.clicked.connect(self.refresh)
        self.runs_list.itemSelectionChanged.connect(self._runs_selected)
        bridge.tasksChanged.connect(self._on_tasks)
        bridge.findingsChanged.connect(self._on_findings)
        bridge.findingsRetracted.connect(self._on_retracted)
        # A method, not a lambda: the notifier outlives this view; Qt drops a destroyed receiver's
        # connection, not a lambda's (which would then draw on a deleted plot).
        theme.notifier.changed.connect(self._on_scheme)

    # -- public ---------------------------------------------------------------------------------

    @property
    def test_id(self) -> str:
        text = self.test_box.currentText().strip()
        return "" if text == NO_TEST else text

    @property
    def metric(self) -> str:
        return self.metric_box.currentText()

    def refresh(self) -> None:
        """Read the catalog and the runs again, and the selected series."""
        self.refresh_catalog()
        self.refresh_runs()
        if self.metric:
            self._want_full = True
            self._refetch_now()

    def refresh_catalog(self) -> None:
        self._catalog_timer.stop()
        self._catalog_wanted = False
        self._last_catalog = self.clock()
        self.catalog_fetches += 1
        self.bridge.call_async("series_catalog", {"limit": 5000}, self._on_catalog)

    def refresh_runs(self) -> None:
        self.bridge.call_async("list_runs", {"limit": 200}, self._on_runs)

    def select(self, test_id: str, metric: str) -> None:
        """Show ``test_id`` x ``metric`` (fetched now, whatever the catalog knows)."""
        self.test_box.setCurrentText(test_id or NO_TEST)
        self._fill_metrics(test_id, prefer=metric)
        if self.metric_box.findText(metric) < 0:
            self.metric_box.addItem(metric)
        self.metric_box.setCurrentText(metric)
        self.worker_box.setCurrentIndex(0)
        self._selection_changed()

    def set_series(self, data: dict[str, Any]) -> None:
        """Render a metric_series reply."""
        self._show(_Series.from_reply(data))

    def _show(self, series: _Series, *, live: bool = False) -> None:
        self.series = series
        workers = sorted(set(self.series.worker.tolist()))
        current = self.worker_box.currentText()
        self.worker_box.blockSignals(True)
        self.worker_box.clear()
        self.worker_box.addItem(ALL_WORKERS)
        self.worker_box.addItems([w for w in workers if w])
        if current != ALL_WORKERS and self.worker_box.findText(current) < 0:
            self.worker_box.addItem(current)
        self.worker_box.setCurrentText(current)
        self.worker_box.blockSignals(False)
        view = self.plot.getPlotItem().vb.viewRange() if live and self._view_touched else None
        self._render()
        if view is not None:
            self.plot.setRange(xRange=view[0], yRange=view[1], padding=0)
        else:
            self._view_touched = False

    def click_at(self, x: float, y: float) -> str | None:
        """The task of the point nearest (x, y) (data coordinates) in the view's scale, if one is
        within CLICK_RADIUS of the view; emits taskRequested with it."""
        s = self.series
        if s is None or not s.t.size:
            return None
        (x0, x1), (y0, y1) = self.plot.getPlotItem().vb.viewRange()
        sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
        d = ((s.t - x) / sx) ** 2 + ((s.v - y) / sy) ** 2
        i = int(np.nanargmin(d))
        if not math.isfinite(d[i]) or d[i] > CLICK_RADIUS ** 2:
            return None
        task_id = str(s.task_id[i])
        self.taskRequested.emit(task_id)
        return task_id

    def compare(self, run_id: str, baseline: str) -> None:
        """Fill the comparison table with ``run_id`` against ``baseline``."""
        self.compare_summary.setText(f"Comparing {run_id[:12]} with {baseline[:12]}…")
        self.bridge.call_async("compare_runs", {"run_id": run_id, "baseline": baseline}, self._on_compare)

    def point_count(self) -> int:
        """Points drawn (every colour group's data, before downsampling)."""
        return sum(len(item.xData) for item in self.group_items.values() if item.xData is not None)

    # -- selection ------------------------------------------------------------------------------

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            self.refresh_catalog()
            self.refresh_runs()
            return
        # Catch up with what happened while hidden (nothing was read then).
        if self._catalog_wanted:
            self._want_catalog()
        if self._want_new or self._want_full:
            self._schedule()

    def _fill_metrics(self, test_id: str, prefer: str = "") -> None:
        metrics = self.catalog.get(test_id, [])
        keep = prefer or self.metric_box.currentText()
        self.metric_box.blockSignals(True)
        self.metric_box.clear()
        self.metric_box.addItems(metrics)
        if keep and self.metric_box.findText(keep) >= 0:
            self.metric_box.setCurrentText(keep)
        self.metric_box.blockSignals(False)

    def _test_chosen(self) -> None:
        test_id = self.test_id
        if test_id not in self.catalog:
            return
        shown = self.series.data if self.series is not None else {}
        if shown.get("test_id") == test_id and self.metric in self.catalog[test_id]:
            return
        self._fill_metrics(test_id)
        if self.metric:
            self._selection_changed()

    def _metric_chosen(self) -> None:
        if self.metric:
            self._selection_changed()

    def _selection_changed(self) -> None:
        self._gen += 1
        self._in_flight = False
        self._want_full = True
        self._refetch_now()

    # -- fetching -------------------------------------------------------------------------------

    def _args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"test_id": self.test_id, "metric": self.metric, "limit": SERIES_LIMIT}
        worker = self.worker_box.currentText()
        if worker and worker != ALL_WORKERS:
            args["worker_id"] = worker
        return args

    def _refetch_now(self) -> None:
        """Read now (a selection, Reload: the engineer asked, whether or not the view shows yet)."""
        self._timer.stop()
        self._want_new = True
        self._fetch()

    def _schedule(self, *, full: bool = False) -> None:
        """A read within REFRESH_INTERVAL of the last one, coalescing everything meanwhile; none
        while the view is hidden (showEvent schedules it)."""
        self._want_new = True
        self._want_full = self._want_full or full
        if self._timer.isActive() or self._in_flight or not self.isVisible():
            return
        wait = max(0.0, REFRESH_INTERVAL - (self.clock() - self._last_fetch))
        self._timer.start(int(wait * 1000))

    def _fetch_due(self) -> None:
        if self.isVisible():
            self._fetch()

    def _fetch(self) -> None:
        if self._in_flight or not self.metric:
            return
        args = self._args()
        s = self.series
        same = (s is not None and s.t.size > 0 and s.data.get("test_id") == args["test_id"]
                and s.data.get("metric") == args["metric"] and s.data.get("worker_id") == args.get("worker_id"))
        incremental = same and not self._want_full
        if incremental:
            assert s is not None
            # Points from the last one shown on (it, and any of the same time, come again: merged by id).
            args["since"] = min(max(0.0, float(s.t[-1])), 1e11)
        self._want_new = self._want_full = False
        self._in_flight = True
        self._last_fetch = self.clock()
        gen = self._gen
        self.fetches += 1
        if not incremental:
            self.status.setText(f"Reading {args['test_id'] or NO_TEST} · {args['metric']}…")
        worker = args.get("worker_id")
        if not self.bridge.call_async("metric_series", args,
                                      lambda d, e: self._on_series(gen, d, e, incremental, worker)):
            self._in_flight = False

    def _on_series(self, gen: int, data: Any, error: str | None, incremental: bool, worker: str | None) -> None:
        if gen != self._gen:
            return  # an earlier selection's answer
        self._in_flight = False
        if error is not None:
            self.status.setText(f"Could not read the series: {error}")
        elif isinstance(data, dict):
            reply = _Series.from_reply({**data, "worker_id": worker})
            if incremental and self.series is not None and not reply.data.get("truncated"):
                self._show(self.series.merged(reply, SERIES_LIMIT), live=True)
            else:
                # A full read, or more new points than one reply holds: the newest, as read.
                self._show(reply)
        if self._want_new or self._want_full:
            self._schedule()

    def _on_catalog(self, data: Any, error: str | None) -> None:
        if error is not None or not isinstance(data, list):
            self.status.setText(f"Could not list the series: {error}")
            return
        catalog: dict[str, list[str]] = {}
        for row in data:
            catalog.setdefault(str(row.get("test_id") or ""), []).append(str(row.get("metric")))
        self.catalog = catalog
        current, metric = self.test_box.currentText(), self.metric
        self.test_box.blockSignals(True)
        self.test_box.clear()
        self.test_box.addItems([t or NO_TEST for t in catalog])
        self.test_box.setCurrentText(current)
        self.test_box.blockSignals(False)
        if current:
            self._fill_metrics(self.test_id, prefer=metric)
        elif catalog and self.series is None:
            first = next(iter(catalog))
            self.select(first, catalog[first][0])
        if not catalog and self.series is None:
            self.status.setText("No results with metrics yet: tasks report them in $DTF_RESULT_FILE")

    # -- live ---------------------------------------------------------------------------------------

    def _on_tasks(self, tasks: list[dict[str, Any]]) -> None:
        done = [t for t in tasks if t.get("status") in ("completed", "failed")]
        if not done:
            return
        if self.metric and any((t.get("test_id") or "") == self.test_id for t in done):
            self._schedule()
        # A task without a test id is never in the catalog: it is no reason to read it again.
        if any(t.get("test_id") and t["test_id"] not in self.catalog for t in done):
            self._want_catalog()

    def _want_catalog(self) -> None:
        """The catalog read again within CATALOG_INTERVAL of the last read; none while hidden."""
        self._catalog_wanted = True
        if self._catalog_timer.isActive() or not self.isVisible():
            return
        wait = max(0.0, CATALOG_INTERVAL - (self.clock() - self._last_catalog))
        self._catalog_timer.start(int(wait * 1000))

    def _catalog_due(self) -> None:
        if self.isVisible() and self._catalog_wanted:
            self.refresh_catalog()

    def _on_findings(self, rows: list[dict[str, Any]]) -> None:
        if any((r.get("test_id") or "") == self.test_id and r.get("metric") == self.metric for r in rows):
            self._schedule(full=True)

    def _on_retracted(self, ids: list[str]) -> None:
        s = self.series
        if s is None:
            return
        for fid in ids:
            _kind, _, rest = fid.partition(":")
            rid, _, metric = rest.rpartition(":")
            if metric == self.metric and rid in s.result_ids:
                self._schedule(full=True)
                return

    # -- drawing --------------------------------------------------------------------------------

    def _clear_plot(self) -> None:
        pi = self.plot.getPlotItem()
        for item in [*self.group_items.values(), *self.change_items, *self.change_markers]:
            pi.removeItem(item)
        self.legend.clear()
        self.group_items = {}
        self.change_items = []
        self.change_labels = []
        self.change_markers = []
        self.anomaly_item.setData([], [])

    def _on_scheme(self, _scheme: str) -> None:
        self._render()

    def _render(self) -> None:
        self._clear_plot()
        s = self.series
        colours = theme.plot_colours()
        self.plot.setBackground(colours.background)
        if s is None:
            return
        data = s.data
        self.plot.setLabel("left", axis_label(str(data.get("metric", "")), str(data.get("unit") or ""),
                                              data.get("direction")))
        if not s.t.size:
            self.status.setText(f"No values of {data.get('metric')} for {data.get('test_id') or NO_TEST}")
            return
        by_hardware = self.colour_box.currentText() == "hardware"
        keys = s.hardware if by_hardware else s.worker
        names, inverse = np.unique(keys.astype(str), return_inverse=True)
        counts = np.bincount(inverse, minlength=len(names))
        order = np.argsort(-counts, kind="stable")
        shown = order[:MAX_GROUPS]
        groups: list[tuple[str, np.ndarray, str]] = []
        # Colours by name order, so a worker keeps its colour while others come and go less.
        for rank, g in enumerate(sorted(shown, key=lambda g: str(names[g]))):
            name = str(names[g]) or ("unknown hardware" if by_hardware else "unknown worker")
            groups.append((name, np.flatnonzero(inverse == g), colours.series[rank % len(colours.series)]))
        if len(order) > MAX_GROUPS:
            rest = np.flatnonzero(np.isin(inverse, order[MAX_GROUPS:]))
            groups.append((f"{len(order) - MAX_GROUPS} others", rest, "#9e9e9e"))
        pi = self.plot.getPlotItem()
        # The range first and the data last: every option set on an item holding data redraws
        # all its spots, and an item added under auto-range redraws them again for each range step.
        pi.disableAutoRange()
        self._limit_view(s)
        for name, _idx, colour in groups:
            item = pg.PlotDataItem(pen=None, symbol="o", symbolSize=5, symbolBrush=pg.mkBrush(colour), symbolPen=None,
                                   name=name, skipFiniteCheck=True)
            # About 1.5 values per pixel column and group, min and max of each bin ("peak"): an
            # outlier stays visible however many points share its column.
            item.opts["autoDownsampleFactor"] = 0.5
            pi.addItem(item)
            # After addItem: clipping asks the item's view box, which it has only once added.
            item.setDownsampling(auto=True, method="peak")
            item.setClipToView(True)
            self.legend.addItem(item, name)
            self.group_items[name] = item
        for (_name, idx, _colour), item in zip(groups, self.group_items.values(), strict=True):
            item.setData(s.t[idx], s.v[idx])
        anomalies = data.get("anomalies") or []
        self.anomaly_item.setData([a["t"] for a in anomalies], [a["v"] for a in anomalies])
        changes = data.get("change_points") or []
        self._draw_changes(s, changes, colours.foreground)
        suspected = sum(1 for c in changes if c.get("state") == "suspected")
        note = " (the newest; older ones left out)" if data.get("truncated") else ""
        self.status.setText(f"{len(s.t):,} results{note} · {plural(len(anomalies), 'anomaly', 'anomalies')}"
                            f" · {plural(len(changes) - suspected, 'change point')}"
                            + (f" · {suspected:,} suspected (not confirmed yet)" if suspected else "") +
                            f" · {plural(len(names), 'hardware id' if by_hardware else 'worker')}"
                            " · click a point to open its task")

    def _draw_changes(self, s: _Series, changes: list[dict[str, Any]], colour: str) -> None:
        """Each change point as a step: its before level up to it (from the previous change of its
        series, or the first point), its after level from it (to the next change, or the last point).
        A suspected change (not confirmed yet) is a thinner dotted step in amber, labelled so."""
        pi = self.plot.getPlotItem()
        first, last = float(s.t[0]), float(s.t[-1])
        by_series: dict[str, list[dict[str, Any]]] = {}
        for cp in changes:
            by_series.setdefault(str(cp.get("worker") or ""), []).append(cp)
        confirmed_pen = pg.mkPen(colour, width=2, style=Qt.PenStyle.DashLine)
        suspected_colour = theme.state_colours()["pending"]
        suspected_pen = pg.mkPen(suspected_colour, width=1.5, style=Qt.PenStyle.DotLine)
        for cps in by_series.values():
            cps.sort(key=lambda c: c["t"])
            for i, cp in enumerate(cps):
                before, after = cp.get("before"), cp.get("after")
                if before is None or after is None:
                    continue
                t = float(cp["t"])
                start = float(cps[i - 1]["t"]) if i else first
                end = float(cps[i + 1]["t"]) if i + 1 < len(cps) else last
                suspected = cp.get("state") == "suspected"
                pen = suspected_pen if suspected else confirmed_pen
                item = pg.PlotDataItem([start, t, t, end], [before, before, after, after], pen=pen)
                item.suspected = suspected  # type: ignore[attr-defined]
                item.setZValue(10)
                item.levels = (before, after)  # type: ignore[attr-defined]
                item.change_time = t  # type: ignore[attr-defined]
                pi.addItem(item)
                self.change_items.append(item)
                # The label rides a faint vertical line at the top of the view, clear of the points.
                text = change_label(before, after, cp.get("rel_change"))
                marker_colour = suspected_colour if suspected else colour
                marker = pg.InfiniteLine(t, angle=90, pen=pg.mkPen(marker_colour, width=1, style=Qt.PenStyle.DotLine),
                                         label=f"suspected {text}" if suspected else text,
                                         labelOpts={"position": 0.96, "color": marker_colour,
                                                    "anchors": [(0, 0), (0, 0)],
                                                    "fill": pg.mkBrush(QColor(theme.plot_colours().background))})
                marker.setZValue(5)
                pi.addItem(marker)
                label = marker.label
                self.change_markers.append(marker)
                self.change_labels.append(label)

    def _limit_view(self, s: _Series) -> None:
        """The whole series in view, with room above it for the change labels."""
        finite = s.v[np.isfinite(s.v)]
        if not finite.size:
            return
        lo, hi = float(finite.min()), float(finite.max())
        # A fifth of the span above the points: a change's label (about 20 px at the top) must not
        # cover the highest ones, which after a step are the new level's.
        pad = (hi - lo) * 0.2 or abs(hi) * 0.05 or 1.0
        self.plot.setXRange(float(s.t[0]), float(s.t[-1]), padding=0.02)
        self.plot.setYRange(lo - pad * 0.3, hi + pad, padding=0)

    def _scene_clicked(self, event: Any) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        vb = self.plot.getPlotItem().vb
        if not vb.sceneBoundingRect().contains(event.scenePos()):
            return
        p = vb.mapSceneToView(event.scenePos())
        self.click_at(p.x(), p.y())

    # -- runs -------------------------------------------------------------------------------------

    def _on_runs(self, data: Any, error: str | None) -> None:
        if error is not None or not isinstance(data, list):
            self.runs_hint.setText(f"Runs could not be listed: {error}")
            return
        selected = {i.data(Qt.ItemDataRole.UserRole) for i in self.runs_list.selectedItems()}
        self.runs_list.blockSignals(True)
        self.runs_list.clear()
        for run in data:
            created = run.get("created")
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else "?"
            tests = run.get("tests") or {}
            counts = ", ".join(f"{n} {k}" for k, n in sorted(tests.items())) if tests else ""
            text = f"{run.get('name') or run['run_id'][:12]} · {when} · {run.get('status') or 'running'}"
            item = QListWidgetItem(text + (f" · {counts}" if counts else ""))
            item.setData(Qt.ItemDataRole.UserRole, run["run_id"])
            item.setData(Qt.ItemDataRole.UserRole + 1, created or 0.0)
            item.setToolTip(f"run {run['run_id']} ({run.get('kind')})")
            self.runs_list.addItem(item)
            item.setSelected(run["run_id"] in selected)
        self.runs_list.blockSignals(False)

    def _runs_selected(self) -> None:
        items = self.runs_list.selectedItems()
        if len(items) != 2:
            self.runs_hint.setText("Runs — select two to compare" if len(items) < 2 else
                                   "Runs — select only two to compare")
            return
        older, newer = sorted(items, key=lambda i: float(i.data(Qt.ItemDataRole.UserRole + 1) or 0.0))
        self.runs_hint.setText("Runs — the older selected is the baseline")
        self.compare(str(newer.data(Qt.ItemDataRole.UserRole)), str(older.data(Qt.ItemDataRole.UserRole)))

    def _on_compare(self, data: Any, error: str | None) -> None:
        if error is not None or not isinstance(data, dict):
            self.compare_summary.setText(f"Could not compare: {error}")
            self.compare_model.set_rows([])
            return
        self.compare_model.set_rows(data.get("metrics") or [])
        summary = data.get("summary") or {}
        run, base = data.get("run") or {}, data.get("baseline") or {}
        parts = [f"{summary.get(k, 0)} {VERDICTS[k][0]}"
                 for k in ("regressed", "improved", "unchanged", "new", "missing") if summary.get(k)]
        self.compare_summary.setText(f"{run_title(run)} against {run_title(base)}, the baseline: "
                                     + (", ".join(parts) or "nothing to compare"))
