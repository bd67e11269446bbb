"""The tasks table: every task the database holds, newest first, through windows of rows.

:class:`TaskTableModel` never holds a row per task: its row count is the query's total, and a row
comes from a small LRU cache of blocks (``task_page`` windows of 200). A block that is not there is
asked for once, off the GUI thread (``bridge.call_async``); its rows show a placeholder until it
lands. Positions are pinned to a snapshot key (``upto``): new tasks arrive above it as inserted
rows, so what the engineer looks at does not move. Live task events are laid over the cached rows
at once (an overlay, bounded, by task id); the table itself refreshes at most twice a second.

:class:`TasksPanel` puts it together: a :class:`TaskFilterBar`, the :class:`TaskTableView` (context
menu, shortcuts, drag onto a worker) and a count line.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QItemSelectionModel,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QAction,
    QBrush,
    QColor,
    QContextMenuEvent,
    QDrag,
    QFont,
    QFontDatabase,
    QFontMetrics,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QTableView,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from dtf_agent import protocol as p
from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.models import TASK_IDS_MIME, fmt_when, status_colour

log = logging.getLogger(__name__)

Index = QModelIndex | QPersistentModelIndex
Row = dict[str, Any]

BLOCK = 200
MAX_BLOCKS = 50          # 10,000 cached rows at most
OVERLAY_LIMIT = 20_000   # latest task summaries laid over cached rows
REFRESH_MS = 500         # new tasks: at most two refreshes a second
LOOK_S = 2.0             # how long after an event of a new task its committed row is looked for
FULL_REFRESH_S = 1.0     # a reset (filter changed, or an empty unfiltered table) at most once a second
# Under a filter on what changes (status, worker, text) live changes move tasks in and out: the
# filtered count is taken again at most this often (a text count scans the table: ~780 ms on 1M).
COUNT_S = 1.0
COUNT_TEXT_S = 5.0
ACT_CAP = 10_000         # tasks one action sends (the batch ops' own bound)
PRIORITY_CAP = 1_000     # set_priority goes per task
RESOLVE_PAGE = 500       # ids of selected rows not cached are read in pages of this many (task_page's bound)
MAX_POSITIONS = 1000     # ids whose rows are looked for again after a reset (task_positions' bound)
PLACEHOLDER = "…"
FILTER_KEYS = ("status", "worker_id", "tag", "run_id", "text")
# Filters on fields that change while a task lives: a live change may move a task in or out.
_MUTABLE_FILTERS = ("status", "worker_id", "text")


def _command_or_test(row: Row) -> str:
    return row.get("command") or row.get("test_id") or ""


def _plain(v: Any) -> str:
    return "" if v is None else str(v)


# (title, how a row shows in it, the row key a tooltip shows whole)
COLUMNS: list[tuple[str, Callable[[Row], str], str]] = [
    ("Task", lambda r: r.get("short_id") or _plain(r.get("task_id")), "task_id"),
    ("Status", lambda r: _plain(r.get("status")), "status"),
    ("Type", lambda r: _plain(r.get("type")), "type"),
    ("Command / test", _command_or_test, ""),
    ("Priority", lambda r: _plain(r.get("priority")), "priority"),
    ("Worker", lambda r: _plain(r.get("worker_id")), "worker_id"),
    ("Attempt", lambda r: _plain(r.get("attempt") or ""), "attempt"),
    ("Submitted", lambda r: fmt_when(r.get("create_time")), "create_time"),
    ("Finished", lambda r: fmt_when(r.get("end_time")), "end_time"),
    ("Error / reason", lambda r: _plain(r.get("why")).split("\n", 1)[0], "why"),
]
COL_TASK, COL_STATUS, COL_COMMAND, COL_WHY = 0, 1, 3, 9
_NUMERIC = (4, 6)


def ids_mime(ids: list[str]) -> QMimeData:
    """Task ids as a drag carries them (one a line; also as text)."""
    data = QMimeData()
    data.setData(TASK_IDS_MIME, "\n".join(ids).encode())
    data.setText("\n".join(ids))
    return data


def _mono() -> QFont:
    return QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)


class TaskTableModel(QAbstractTableModel):
    """A window over ``task_page``: row r is the r-th matching task, newest first.

    Rows are addressed internally by a *base* number, ``row - shift``: new tasks inserted at the
    top raise ``shift``, so cached blocks keep their keys however many rows arrive above them.
    Every page asked for is pinned to ``upto`` (the newest row when the table was last counted or
    grown), so its offsets mean the same rows whatever arrives meanwhile.

    Under a filter on what changes (status, worker, text) the table is never reset by live
    changes: the filtered count is taken again (throttled), rows that left (or joined) below the
    pin are removed from (added to) the end, new ones are inserted at the top, and cached blocks
    go stale so the rows in view are read again. A reset happens only when the filter itself
    changes (or an unfiltered table was empty), and never while the view holds the model
    (:attr:`held`: a context menu or a drag is open)."""

    countsChanged = Signal()   # total, all_total or loading changed
    refreshed = Signal()       # a reset or a growth at the top has been applied
    failed = Signal(str)       # a read was refused (the reason)

    def __init__(self, bridge: CoordinatorBridge, *, block_size: int = BLOCK, max_blocks: int = MAX_BLOCKS,
                 overlay_limit: int = OVERLAY_LIMIT, refresh_ms: int = REFRESH_MS, start: bool = True) -> None:
        super().__init__()
        self.bridge = bridge
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.overlay_limit = overlay_limit
        self.filter: dict[str, Any] = {}
        self.total = 0
        self.all_total: int | None = None
        self.loading = False
        self.upto: list[Any] | None = None
        self._shift = 0
        self._epoch = 0
        self._blocks: OrderedDict[int, list[Row | None]] = OrderedDict()
        self._stale: set[int] = set()
        self._pending: set[int] = set()
        self._base_of: dict[str, int] = {}
        self._overlay: OrderedDict[str, Row] = OrderedDict()
        self._serial = 0        # of the latest full refresh asked for
        self._head_busy = False
        self._want_head = False
        self._want_full = False
        self._last_full = 0.0
        self._want_count = False
        self._last_count = 0.0
        # > 0 while a context menu or a drag acts on the rows as they are: no reset meanwhile.
        self.held = 0
        # Events announce a task before its row is committed (the store writes in groups every
        # quarter second): until this moment after the last new task, refreshes go on looking for it.
        self._look_until = 0.0
        self.requests = 0       # pages asked for (tests and the benchmark count them)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(refresh_ms)
        self._timer.timeout.connect(self._refresh_due)
        bridge.tasksChanged.connect(self.apply_events)
        bridge.historyReloaded.connect(self._reload)
        if start:
            self.refresh(full=True)

    # -- Qt API -----------------------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own signature
        return 0 if parent.isValid() else self.total

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(COLUMNS):
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section][0]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < self.total:
            return None
        col = index.column()
        row = self.row_at(index.row())
        if row is None:
            if role == Qt.ItemDataRole.DisplayRole:
                return PLACEHOLDER if col == COL_TASK else ""
            if role == Qt.ItemDataRole.ForegroundRole:
                return QBrush(QColor("#9e9e9e"))
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[col][1](row)
        if role == Qt.ItemDataRole.UserRole:
            return row.get("task_id")
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == COL_TASK:
                return row.get("task_id")
            if col == COL_COMMAND:
                return "\n".join(x for x in (row.get("command"), row.get("test_id")) if x) or None
            value = row.get(COLUMNS[col][2])
            text = COLUMNS[col][1](row)
            return _plain(value) if value not in (None, "") and (col == COL_WHY or len(text) > 20) else None
        if role == Qt.ItemDataRole.ForegroundRole and col == COL_STATUS:
            colour = status_colour(row.get("status"))
            return QBrush(QColor(colour)) if colour else None
        if role == Qt.ItemDataRole.FontRole and col == COL_TASK:
            return _mono()
        if role == Qt.ItemDataRole.TextAlignmentRole and col in _NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        base = super().flags(index)
        return base | Qt.ItemFlag.ItemIsDragEnabled if index.isValid() else base

    def mimeTypes(self) -> list[str]:
        return [TASK_IDS_MIME]

    def mimeData(self, indexes: Sequence[QModelIndex]) -> QMimeData:
        return ids_mime(self.ids_of(i.row() for i in indexes if i.isValid()))

    def supportedDragActions(self) -> Qt.DropAction:
        return Qt.DropAction.CopyAction


    # -- reading rows -----------------------------------------------------------------------------

    def row_at(self, r: int) -> Row | None:
        """Row ``r`` if its block is here (asking for it, once, if not, or if it went stale)."""
        base = r - self._shift
        key = base - base % self.block_size
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
            if key in self._stale and key not in self._pending:
                self._request(key)
            row = block[base - key]
            if row is not None:
                return row
        if key not in self._pending:
            self._request(key)
        return None

    def peek(self, r: int) -> Row | None:
        """Row ``r`` if cached; asks for nothing."""
        base = r - self._shift
        key = base - base % self.block_size
        block = self._blocks.get(key)
        return None if block is None else block[base - key]

    def ids_of(self, rows: Any) -> list[str]:
        """The full ids of these rows (those loaded), each once, in the order given."""
        out: dict[str, None] = {}
        for r in rows:
            row = self.peek(r)
            if row is not None:
                out[row["task_id"]] = None
        return list(out)

    def row_of(self, task_id: str) -> int | None:
        """The row of a cached task."""
        base = self._base_of.get(task_id)
        return None if base is None else base + self._shift

    def cached_ids_in(self, spans: list[tuple[int, int]], cap: int) -> list[str]:
        """Ids of the cached rows inside these (sorted, merged) row spans, in row order, at most
        ``cap``: costs the cache's size (10,000 rows at most), never the spans' (Ctrl+A: a million)."""
        starts = [a for a, _ in spans]
        out: dict[str, None] = {}
        for key in sorted(self._blocks):  # base order is row order
            for i, row in enumerate(self._blocks[key]):
                r = key + i + self._shift
                if row is None or not 0 <= r < self.total:
                    continue
                j = bisect_right(starts, r) - 1
                if j >= 0 and r <= spans[j][1]:
                    out[row["task_id"]] = None
                    if len(out) >= cap:
                        return list(out)
        return list(out)

    def resolve(self, spans: list[tuple[int, int]], cap: int,
                done: Callable[[list[str], int, str | None], None]) -> None:
        """The ids of the first ``cap`` rows of these (sorted, merged) spans, in row order. Cached
        rows answer at once; the others are read off the GUI thread in pages of RESOLVE_PAGE,
        pinned to the snapshot of this moment (the rows the engineer selected, whatever arrives
        meanwhile). ``done(ids, selected, error)`` runs when all is read (at once if all is
        cached); ``selected`` is how many rows the spans hold."""
        selected = sum(b - a + 1 for a, b in spans)
        found: dict[int, str] = {}
        gaps: list[tuple[int, int]] = []
        left = cap
        for a, b in spans:
            if left <= 0:
                break
            b = min(b, a + left - 1, self.total - 1)
            left -= b - a + 1
            start: int | None = None
            for r in range(a, b + 1):  # cap rows at most
                row = self.peek(r)
                if row is not None:
                    found[r] = row["task_id"]
                    if start is not None:
                        gaps.append((start, r - 1))
                        start = None
                elif start is None:
                    start = r
            if start is not None:
                gaps.append((start, b))
        pin = self.upto
        filt = self._args()

        def finish(error: str | None = None) -> None:
            done(list(dict.fromkeys(found[r] for r in sorted(found))), selected, error)

        def next_gap() -> None:
            if not gaps:
                finish()
                return
            a, b = gaps.pop(0)
            fetch(a, b, pin, a)

        def fetch(a: int, b: int, key: list[Any] | None, offset: int) -> None:
            n = min(RESOLVE_PAGE, b - a + 1)
            args = {**filt, "offset": offset, "limit": n, "with_total": False}
            if key is not None:
                args["upto"] = key

            def got(data: Any, error: str | None) -> None:
                if error is not None:
                    finish(error)
                    return
                rows = data["rows"]
                for i, row in enumerate(rows):
                    found[a + i] = row["task_id"]
                if len(rows) < n or a + n > b:
                    next_gap()
                    return
                # The next page starts just below the last row read: an index walk from its key,
                # not a skip from the top again (a text filter's skip is a scan).
                last = rows[-1]
                fetch(a + n, b, [last["create_time"], last["task_id"]], 1)

            self.requests += 1
            if not self.bridge.call_async("task_page", args, got):
                finish("the coordinator is gone")

        next_gap()

    def cached_rows(self) -> int:
        return sum(1 for b in self._blocks.values() for r in b if r is not None)

    def _args(self, **extra: Any) -> dict[str, Any]:
        args = {k: v for k, v in self.filter.items() if v}
        return {**args, **extra}

    def _request(self, key: int) -> None:
        offset = key + self._shift
        limit = self.block_size
        if offset < 0:  # the block straddles the top: only its part below row 0 exists
            limit += offset
            offset = 0
        if limit <= 0 or offset >= self.total:
            return
        self._pending.add(key)
        epoch, shift = self._epoch, self._shift
        args = self._args(offset=offset, limit=min(limit, self.total - offset), with_total=False)
        if self.upto is not None:
            args["upto"] = self.upto
        self.requests += 1

        def done(data: Any, error: str | None) -> None:
            if epoch != self._epoch:
                return
            self._pending.discard(key)
            if error is not None:
                self.failed.emit(error)
                return
            self._stale.discard(key)
            self._place(offset - shift, data["rows"])

        if not self.bridge.call_async("task_page", args, done):
            self._pending.discard(key)

    def _place(self, base0: int, rows: list[Row]) -> None:
        """Store rows whose first has base number ``base0``, with the live overlay laid over them,
        and tell the view about the span."""
        if not rows:
            return
        for i, row in enumerate(rows):
            base = base0 + i
            key = base - base % self.block_size
            block = self._blocks.get(key)
            if block is None:
                block = self._blocks[key] = [None] * self.block_size
            old = block[base - key]
            if old is not None and self._base_of.get(old["task_id"]) == base:
                del self._base_of[old["task_id"]]
            live = self._overlay.get(row["task_id"])
            if live is not None:
                row.update(live)
            block[base - key] = row
            self._base_of[row["task_id"]] = base
        while len(self._blocks) > self.max_blocks:
            key, block = self._blocks.popitem(last=False)
            self._stale.discard(key)
            for i, row in enumerate(block):
                if row is not None and self._base_of.get(row["task_id"]) == key + i:
                    del self._base_of[row["task_id"]]
        first = max(0, base0 + self._shift)
        last = min(self.total - 1, base0 + self._shift + len(rows) - 1)
        if first <= last:
            self.dataChanged.emit(self.index(first, 0), self.index(last, len(COLUMNS) - 1))

    # -- filtering and refreshing -----------------------------------------------------------------

    def _reload(self) -> None:
        """Events were lost on the way (a resync): what is shown may be stale; read it all again."""
        self.refresh(full=True)

    def set_filter(self, f: dict[str, Any]) -> None:
        """Show the tasks matching ``f`` (keys of FILTER_KEYS; empty values match everything)."""
        f = {k: v for k, v in f.items() if k in FILTER_KEYS and v}
        if f == self.filter:
            return
        self.filter = f
        self.refresh(full=True)

    def refresh(self, *, full: bool = False) -> None:
        """Count again and start over (``full``), or take in the tasks that arrived above the
        snapshot key and refresh what is in view."""
        if full or self.upto is None:
            self._full_refresh()
        else:
            self._head_refresh()

    def _full_refresh(self) -> None:
        self._serial += 1
        serial = self._serial
        self._last_full = time.monotonic()
        self._want_full = False
        self.loading = True
        self.countsChanged.emit()
        self.requests += 1

        def done(data: Any, error: str | None) -> None:
            if serial != self._serial:
                return  # a newer filter was asked for
            self.loading = False
            if error is not None:
                self.countsChanged.emit()
                self.failed.emit(error)
                return
            if self.held:
                # A menu or a drag is about the rows as they are now: the reset waits for it.
                self._schedule(full=True)
                return
            self.beginResetModel()
            self._epoch += 1
            self._blocks.clear()
            self._stale.clear()
            self._pending.clear()
            self._base_of.clear()
            self._shift = 0
            self.total = int(data["total"] or 0)
            self.upto = data["top"]
            self._last_count = time.monotonic()
            self._want_count = False
            self.endResetModel()
            self._place(0, data["rows"])
            if not self.filter:
                self.all_total = self.total
            self.countsChanged.emit()
            self.refreshed.emit()
            if time.monotonic() < self._look_until:
                self._schedule()

        self.bridge.call_async("task_page", self._args(offset=0, limit=self.block_size, with_total=True), done)
        if self.filter:
            def counted(data: Any, error: str | None) -> None:
                if error is None and serial == self._serial:
                    self.all_total = data["total"]
                    self.countsChanged.emit()

            self.bridge.call_async("task_page", {"limit": 0, "with_total": True}, counted)

    def _count_due_in(self) -> float:
        """Seconds until the filtered count may be taken again (text: a scan; status, worker: cheaper)."""
        every = COUNT_TEXT_S if self.filter.get("text") else COUNT_S
        return every - (time.monotonic() - self._last_count)

    def _head_refresh(self, *, count: bool = False) -> None:
        """Take in the tasks that arrived above the pin; with ``count``, also the filtered count, so
        that rows that left the filter (or joined it) below the pin go from (come to) the end."""
        if self._head_busy:
            self._want_head = True
            self._want_count = self._want_count or count
            return
        self._head_busy = True
        self._want_head = False
        if count:
            self._want_count = False
            self._last_count = time.monotonic()
        epoch = self._epoch
        anchor = self.upto
        self.requests += 1

        def done(data: Any, error: str | None) -> None:
            self._head_busy = False
            if error is not None:
                self.failed.emit(error)
            elif epoch == self._epoch and anchor == self.upto:
                newer = int(data["newer"] or 0) if anchor is not None else int(data["total"] or 0)
                if count:
                    self._resize_below(int(data["total"] or 0) - newer)
                self._grow(newer, data["top"], data["rows"])
            if self._want_head or time.monotonic() < self._look_until:
                self._schedule()
            elif self._want_count and not self._timer.isActive():
                self._timer.start(max(1, int(self._count_due_in() * 1000) + 1))

        args = self._args(offset=0, limit=self.block_size, with_total=count or anchor is None)
        if anchor is not None:
            args["newer_than"] = anchor
        if not self.bridge.call_async("task_page", args, done):
            self._head_busy = False

    def _resize_below(self, below: int) -> None:
        """The rows at or below the pin are ``below`` now: the difference goes from (comes to) the
        end, as rows removed (inserted); what moved in between is re-read (the blocks go stale)."""
        below = max(0, below)
        if below < self.total:
            self.beginRemoveRows(QModelIndex(), below, self.total - 1)
            self.total = below
            self._forget_from(below)
            self.endRemoveRows()
        elif below > self.total:
            self.beginInsertRows(QModelIndex(), self.total, below - 1)
            self._forget_from(self.total)
            self.total = below
            self.endInsertRows()

    def _forget_from(self, row: int) -> None:
        """Drop cached rows from ``row`` down (they are no longer, or not yet, what those rows show)."""
        first = row - self._shift
        for key, block in self._blocks.items():
            for i in range(max(0, first - key), len(block)):
                old = block[i]
                if old is not None:
                    if self._base_of.get(old["task_id"]) == key + i:
                        del self._base_of[old["task_id"]]
                    block[i] = None

    def _grow(self, n: int, top: list[Any] | None, rows: list[Row]) -> None:
        """``n`` tasks arrived above the snapshot key: rows inserted at the top, the key moved up;
        ``rows`` are the newest (row 0 on). Cached blocks go stale: the ones in view ask again."""
        if n > 0:
            self.beginInsertRows(QModelIndex(), 0, n - 1)
            self._shift += n
            self.total += n
            self.upto = top
            self.endInsertRows()
            if self.all_total is not None and not self.filter:
                self.all_total = self.total
        self._stale.update(self._blocks)
        self._place(-self._shift, rows)
        if self.total:
            # Repainting asks data() of the rows in view: their stale blocks are asked again.
            self.dataChanged.emit(self.index(0, 0), self.index(self.total - 1, len(COLUMNS) - 1))
        self.countsChanged.emit()
        self.refreshed.emit()

    def _schedule(self, *, full: bool = False) -> None:
        self._want_full = self._want_full or full
        self._want_head = True
        if not self._timer.isActive():
            self._timer.start()

    def _refresh_due(self) -> None:
        if self.upto is None and not self.loading and not self.filter:
            # Nothing was there to anchor on (an empty table): count again.
            self._want_full = True
        if self._want_full:
            wait = FULL_REFRESH_S - (time.monotonic() - self._last_full)
            if wait > 0:
                self._timer.start(int(wait * 1000) + 1)
                return
            self._full_refresh()
            return
        if self.loading:
            return  # the full refresh under way brings everything
        # Under a text filter even the newest rows may need a scan (a rare match): everything waits
        # for the throttled count, which takes in the new rows too.
        expensive = bool(self.filter.get("text"))
        count = self._want_count or (self.upto is None and bool(self.filter)) or (expensive and self._want_head)
        if count:
            wait = self._count_due_in()
            if wait > 0:
                # The count waits its turn; new tasks at the top (a cheap filter) do not.
                self._want_count = True
                if self._want_head and not expensive:
                    self._head_refresh()
                self._timer.start(int(wait * 1000) + 1)
                return
            self._want_head = False
            self._head_refresh(count=True)
        elif self._want_head:
            self._head_refresh()

    # -- live events ------------------------------------------------------------------------------

    def apply_events(self, batch: list[Row]) -> None:
        """Task summaries as they happen: cached rows show them at once; new tasks (or, under a
        filter on what changes, any change) bring a refresh, coalesced."""
        rows: list[int] = []
        fresh = False
        for summary in batch:
            tid = summary.get("task_id")
            if not tid:
                continue
            if tid not in self._overlay and tid not in self._base_of:
                fresh = True
            self._overlay[tid] = summary
            self._overlay.move_to_end(tid)
            base = self._base_of.get(tid)
            if base is not None:
                key = base - base % self.block_size
                row = self._blocks[key][base - key]
                if row is not None:
                    row.update(summary)
                    rows.append(base + self._shift)
        while len(self._overlay) > self.overlay_limit:
            self._overlay.popitem(last=False)
        rows = [r for r in rows if 0 <= r < self.total]
        if rows:
            self.dataChanged.emit(self.index(min(rows), 0), self.index(max(rows), len(COLUMNS) - 1))
        if any(self.filter.get(k) for k in _MUTABLE_FILTERS) and batch:
            # Tasks may have moved in or out of the filter: count again (throttled), never a reset.
            self._want_count = True
            self._schedule()
        if fresh:
            self._look_until = time.monotonic() + LOOK_S
            self._schedule()

    # -- positions --------------------------------------------------------------------------------

    def locate(self, task_ids: list[str], done: Callable[[dict[str, int]], None]) -> None:
        """The rows of these tasks under the current filter, answered later (absent: not shown)."""
        ids = task_ids[:1000]
        cached = {t: r for t in ids if (r := self.row_of(t)) is not None}
        missing = [t for t in ids if t not in cached]
        if not missing or self.upto is None:
            done(cached)
            return
        epoch, shift = self._epoch, self._shift

        def answered(data: Any, error: str | None) -> None:
            if epoch != self._epoch or error is not None:
                return
            done({**cached, **{t: pos + self._shift - shift for t, pos in data.items()}})

        self.bridge.call_async("task_positions", self._args(task_ids=missing, upto=self.upto), answered)


# -- the filter bar --------------------------------------------------------------------------------

class TaskFilterBar(QWidget):
    """Status (several), worker, requirement tag, run, free text (debounced): a filter dict."""

    filterChanged = Signal(dict)

    def __init__(self, bridge: CoordinatorBridge, parent: QWidget | None = None, *, debounce_ms: int = 250) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.status_button = QToolButton()
        self.status_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.status_menu = QMenu(self.status_button)
        self.status_actions: dict[str, QAction] = {}
        for s in p.TASK_STATUSES:
            a = self.status_menu.addAction(s)
            a.setCheckable(True)
            a.toggled.connect(self._changed)
            self.status_actions[s] = a
        self.status_button.setMenu(self.status_menu)
        self.status_button.setToolTip("Show tasks in these states (none checked: all)")
        self.status_button.setMinimumWidth(self.status_button.fontMetrics().horizontalAdvance("Status: running, failed")
                                           + 24)
        self.worker = QComboBox()
        self.worker.addItem("Any worker", "")
        self.worker.setToolTip("Tasks that ran or run on this worker")
        self.worker.currentIndexChanged.connect(self._changed)
        self.tag = QComboBox()
        self.tag.setEditable(True)
        self.tag.lineEdit().setPlaceholderText("Any tag")
        self.tag.setToolTip("Tasks that require this worker tag")
        self.tag.setMinimumContentsLength(8)
        self.run = QComboBox()
        self.run.addItem("Any run", "")
        self.run.setToolTip("Tasks of this run (dtf submit, dtf pytest, a plan)")
        self.run.currentIndexChanged.connect(self._changed)
        self.run.setMinimumContentsLength(12)
        self.run.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.text = QLineEdit()
        self.text.setPlaceholderText("Search: id, command, test, error")
        self.text.setClearButtonEnabled(True)
        self.text.setMaxLength(200)
        # Typing waits for a pause: one query per word, not per key.
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(debounce_ms)
        self._debounce.timeout.connect(self._changed)
        self.text.textChanged.connect(lambda _: self._debounce.start())
        self.tag.editTextChanged.connect(lambda _: self._debounce.start())
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for w in (self.status_button, self.worker, self.tag, self.run):
            lay.addWidget(w)
        lay.addWidget(self.text, 1)
        self._workers: set[str] = set()
        self._tags: set[str] = set()
        self._last: dict[str, Any] = {}
        self._update_status_text()
        bridge.workersChanged.connect(self.add_workers)
        self.refresh_runs()

    def filter(self) -> dict[str, Any]:
        return {"status": [s for s, a in self.status_actions.items() if a.isChecked()],
                "worker_id": self.worker.currentData() or "", "tag": self.tag.currentText().strip(),
                "run_id": self.run.currentData() or "", "text": self.text.text().strip()}

    def set_statuses(self, statuses: list[str]) -> None:
        for s, a in self.status_actions.items():
            a.blockSignals(True)
            a.setChecked(s in statuses)
            a.blockSignals(False)
        self._changed()

    def _update_status_text(self) -> None:
        chosen = [s for s, a in self.status_actions.items() if a.isChecked()]
        self.status_button.setText(f"Status: {', '.join(chosen) if chosen else 'all'}")

    def _changed(self, *_: Any) -> None:
        self._debounce.stop()
        self._update_status_text()
        f = self.filter()
        if f != self._last:
            self._last = f
            self.filterChanged.emit(f)

    def add_workers(self, rows: list[Row]) -> None:
        for w in rows:
            wid = w.get("worker_id")
            if wid and wid not in self._workers:
                self._workers.add(wid)
                self.worker.addItem(wid, wid)
            for t in w.get("tags") or ():
                if t not in self._tags:
                    self._tags.add(t)
                    self.tag.blockSignals(True)
                    text = self.tag.currentText()
                    self.tag.addItem(t)
                    self.tag.setEditText(text)
                    self.tag.blockSignals(False)

    def refresh_runs(self) -> None:
        def done(data: Any, error: str | None) -> None:
            if error is not None or not data:
                return
            current = self.run.currentData()
            self.run.blockSignals(True)
            self.run.clear()
            self.run.addItem("Any run", "")
            for r in data:
                label = f"{r.get('name') or r['run_id']}  ({fmt_when(r.get('created'))})"
                self.run.addItem(label, r["run_id"])
                self.run.setItemData(self.run.count() - 1, r["run_id"], Qt.ItemDataRole.ToolTipRole)
            i = self.run.findData(current)
            self.run.setCurrentIndex(max(0, i))
            self.run.blockSignals(False)

        self.bridge.call_async("list_runs", {"limit": 200}, done)


# -- the view ---------------------------------------------------------------------------------------

class TaskTableView(QTableView):
    """The tasks: select many, open one (Enter, double-click), act from a menu or a shortcut,
    drag onto a worker. Each action asks the coordinator; a refusal shows its reason here.

    The selection is read as spans of rows (Ctrl+A over a million rows is one span), never one
    index per row. An action resolves the ids of the selected rows (the ones not loaded are read
    in pages, off the GUI thread; ACT_CAP at most) and sends one batch op; its outcome shows when
    it is answered."""

    taskActivated = Signal(str)
    messageShown = Signal(str)  # the outcome of an action (a refusal's reason, or what was done)
    actionFinished = Signal(str, dict)  # a batch op and its answer ({"done": [...], "refused": {...}})

    def __init__(self, bridge: CoordinatorBridge, model: TaskTableModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setObjectName("taskTable")
        self.setModel(model)
        self.task_model = model
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setSortingEnabled(False)  # the order is the query's
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        vh = self.verticalHeader()
        vh.setVisible(False)
        # A million rows: fixed heights, or the header measures each one.
        vh.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        vh.setDefaultSectionSize(self.fontMetrics().height() + 8)
        hh = self.horizontalHeader()
        hh.setStretchLastSection(True)
        for col, width in ((0, _id_width()), (1, 80), (2, 70), (3, 260), (4, 60), (5, 150), (6, 60), (7, 130), (8, 130)):
            self.setColumnWidth(col, width)
        self._workers: dict[str, str] = {}
        self.last_message = ""
        self._saved: list[str] = []
        self._saved_current: str | None = None
        self._make_actions()
        bridge.workersChanged.connect(self._on_workers)
        bridge.call_async("list_workers", None, lambda data, err: self._on_workers(data or []) if not err else None)
        model.modelAboutToBeReset.connect(self._save_selection)
        model.modelReset.connect(self._restore_selection)
        model.rowsInserted.connect(self._keep_place)
        self.doubleClicked.connect(lambda index: self.open_task(index.row()))

    # -- actions ----------------------------------------------------------------------------------

    def _action(self, text: str, slot: Callable[[], Any], key: QKeySequence | QKeySequence.StandardKey | None,
                op: str | None) -> QAction:
        a = QAction(text, self)
        if key is not None:
            a.setShortcut(QKeySequence(key))
            a.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(a)
        a.triggered.connect(slot)
        a.setData(op)
        return a

    def _make_actions(self) -> None:
        self.open_action = self._action("Open details", lambda: self.open_task(self.currentIndex().row()),
                                        None, None)
        self.open_action.setShortcutVisibleInContextMenu(True)
        self.open_action.setShortcut(QKeySequence(Qt.Key.Key_Return))
        self.retry_action = self._action("Retry", self.retry_selected, QKeySequence("Ctrl+R"), "retry_task")
        self.cancel_action = self._action("Cancel", self.cancel_selected, QKeySequence(Qt.Key.Key_Delete),
                                          "cancel_task")
        self.priority_action = self._action("Set priority…", lambda: self.set_priority_selected(), None,
                                            "set_priority")
        self.copy_action = self._action("Copy id(s)", self.copy_ids, QKeySequence(QKeySequence.StandardKey.Copy),
                                        None)
        self.assign_menu = QMenu("Assign to", self)

    def apply_role(self) -> None:
        """Offer only what our role may do (again whenever who we are changes)."""
        for a in (self.retry_action, self.cancel_action, self.priority_action):
            op = a.data()
            a.setEnabled(self.bridge.allows(op))
            a.setToolTip("" if self.bridge.allows(op) else self.bridge.why_not(op))
        self.assign_menu.setEnabled(self.bridge.allows("assign_task"))

    def context_menu(self) -> QMenu:
        """The menu for the current selection (also what the right button opens)."""
        self.apply_role()
        menu = QMenu(self)
        menu.addAction(self.open_action)
        menu.addSeparator()
        for a in (self.retry_action, self.cancel_action, self.priority_action):
            menu.addAction(a)
        self.assign_menu.clear()
        online = sorted(w for w, s in self._workers.items() if s in (p.ONLINE, p.BUSY))
        for w in online:
            self.assign_menu.addAction(w, lambda w=w: self.assign_selected(w))
        if not online:
            none = self.assign_menu.addAction("no worker online")
            none.setEnabled(False)
        menu.addMenu(self.assign_menu)
        menu.addSeparator()
        menu.addAction(self.copy_action)
        has = self.selectionModel().hasSelection()
        for a in (self.open_action, self.retry_action, self.cancel_action, self.priority_action, self.copy_action):
            a.setEnabled(a.isEnabled() and has)
        return menu

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        menu = self.context_menu()
        self.task_model.held += 1  # what the menu acts on stays put until it closes
        try:
            menu.exec(event.globalPos())
        finally:
            self.task_model.held -= 1

    def startDrag(self, supportedActions: Qt.DropAction) -> None:
        # Qt's own drag lists every selected cell (ten million for Ctrl+A on a million rows): the
        # drag carries the loaded selected rows' ids instead; Assign to acts on all of them.
        spans = self.selection_spans()
        ids = self.task_model.cached_ids_in(spans, ACT_CAP)
        if not ids:
            return
        selected = sum(b - a + 1 for a, b in spans)
        if selected > len(ids):
            self.show_message(f"Dragging the {len(ids):,} loaded of {selected:,} selected tasks; "
                              "Assign to (right button) acts on all of them")
        drag = QDrag(self)
        drag.setMimeData(ids_mime(ids))
        self.task_model.held += 1
        try:
            drag.exec(Qt.DropAction.CopyAction)
        finally:
            self.task_model.held -= 1

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # QTableView copies the shown text itself (the short id): the full ids are what is wanted.
        if event.matches(QKeySequence.StandardKey.Copy):
            self.copy_ids()
            return
        # The actions' shortcuts, also when the window is not the active one (offscreen, a dock).
        pressed = QKeySequence(event.keyCombination())
        for a in (self.retry_action, self.cancel_action):
            if a.shortcut() == pressed:
                a.trigger()
                return
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self.open_task(self.currentIndex().row())
            return
        super().keyPressEvent(event)

    def _on_workers(self, rows: list[Row]) -> None:
        for w in rows:
            if w.get("worker_id"):
                self._workers[w["worker_id"]] = str(w.get("status"))

    # -- what the actions do ----------------------------------------------------------------------

    def selection_spans(self) -> list[tuple[int, int]]:
        """The selected rows as sorted, merged (first, last) spans, read from the selection's
        ranges: as cheap for a million selected rows as for one."""
        spans = sorted((r.top(), r.bottom()) for r in self.selectionModel().selection())
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def selected_ids(self, cap: int = ACT_CAP) -> list[str]:
        """The ids of the selected rows that are loaded (at once; see :meth:`resolve_selection`)."""
        return self.task_model.cached_ids_in(self.selection_spans(), cap)

    def resolve_selection(self, cap: int, done: Callable[[list[str], int, str | None], None]) -> int:
        """The ids of all selected rows (the first ``cap``), read where not loaded: ``done(ids,
        selected, error)``. Returns how many rows are selected."""
        spans = self.selection_spans()
        if not spans:
            return 0
        self.task_model.resolve(spans, cap, done)
        return sum(b - a + 1 for a, b in spans)

    def open_task(self, row: int) -> None:
        ids = self.task_model.ids_of([row]) if row >= 0 else []
        if ids:
            self.taskActivated.emit(ids[0])

    @staticmethod
    def _capped(acted: int, selected: int) -> str:
        if selected <= acted:
            return ""
        return f"{acted:,} of {selected:,} selected tasks acted on — narrow the filter. "

    def _batch(self, op: str, past: str, verb: str, extra: dict[str, Any] | None = None) -> int:
        """One batch op for the selected tasks (ACT_CAP at most), answered later. Returns how many
        tasks it is for (0: nothing selected, or our role may not)."""
        if not self.bridge.allows(op):
            self.show_message(f"Cannot {verb}: {self.bridge.why_not(op)}")
            return 0

        def resolved(ids: list[str], selected: int, error: str | None) -> None:
            if error is not None:
                self.show_message(f"Cannot {verb}: the selected tasks could not be read: {error}")
                return
            if not ids:
                return

            def answered(data: Any, error: str | None) -> None:
                if error is not None:
                    self.show_message(f"Cannot {verb}: {error}")
                    return
                self.show_message(self._capped(len(ids), selected) + _outcome(past, data, len(ids)))
                self.actionFinished.emit(op, data)

            if not self.bridge.call_async(op, {"task_ids": ids, **(extra or {})}, answered):
                self.show_message(f"Cannot {verb}: the coordinator is gone")

        return min(self.resolve_selection(ACT_CAP, resolved), ACT_CAP)

    def retry_selected(self) -> int:
        return self._batch("retry_tasks", "Retried", "retry")

    def cancel_selected(self) -> int:
        return self._batch("cancel_tasks", "Cancelled", "cancel")

    def assign_selected(self, worker_id: str) -> int:
        return self._batch("assign_tasks", f"Assigned to {worker_id}", f"assign to {worker_id}",
                           {"worker_id": worker_id})

    def set_priority_selected(self, value: int | None = None) -> int:
        """set_priority per task (there is no batch op for it), off the GUI thread, PRIORITY_CAP at most."""
        if not self.selectionModel().hasSelection():
            return 0
        if not self.bridge.allows("set_priority"):
            self.show_message(f"Cannot set the priority: {self.bridge.why_not('set_priority')}")
            return 0
        if value is None:
            current = (self.task_model.peek(self.currentIndex().row()) or {}).get("priority", 0) \
                if self.currentIndex().isValid() else 0
            value, ok = QInputDialog.getInt(self, "Set priority", "Priority of the selected task(s) "
                                            "(higher runs first):", int(current or 0), -p.MAX_PRIORITY,
                                            p.MAX_PRIORITY)
            if not ok:
                return 0
        priority = value

        def resolved(ids: list[str], selected: int, error: str | None) -> None:
            if error is not None:
                self.show_message(f"Cannot set the priority: the selected tasks could not be read: {error}")
                return
            outcome: dict[str, Any] = {"done": [], "refused": {}}
            waiting = set(ids)

            def one(tid: str) -> Callable[[Any, str | None], None]:
                def answered(data: Any, error: str | None) -> None:
                    waiting.discard(tid)
                    if error is None:
                        outcome["done"].append(tid)
                    else:
                        outcome["refused"][tid] = error
                    if not waiting:
                        self.show_message(self._capped(len(ids), selected)
                                          + _outcome(f"Priority {priority} set on", outcome, len(ids)))
                        self.actionFinished.emit("set_priority", outcome)
                return answered

            for tid in ids:
                if not self.bridge.call_async("set_priority", {"task_id": tid, "priority": priority}, one(tid)):
                    one(tid)(None, "the coordinator is gone")

        return min(self.resolve_selection(PRIORITY_CAP, resolved), PRIORITY_CAP)

    def copy_ids(self) -> int:
        """The full ids of the selected tasks to the clipboard (ACT_CAP at most; read where not loaded)."""
        def resolved(ids: list[str], selected: int, error: str | None) -> None:
            if error is not None:
                self.show_message(f"Cannot copy: the selected tasks could not be read: {error}")
            elif ids:
                QGuiApplication.clipboard().setText("\n".join(ids))
                more = f" (the first {len(ids):,} of {selected:,} selected)" if selected > len(ids) else ""
                self.show_message(f"Copied {len(ids):,} id{'s' if len(ids) != 1 else ''}{more}")

        return self.resolve_selection(ACT_CAP, resolved)

    def show_message(self, text: str) -> None:
        self.last_message = text
        self.messageShown.emit(text)
        index = self.currentIndex()
        rect = self.visualRect(index) if index.isValid() else self.viewport().rect()
        QToolTip.showText(self.viewport().mapToGlobal(rect.bottomLeft() + QPoint(8, 4)), text, self)

    # -- keeping place and selection across refreshes ---------------------------------------------

    def _keep_place(self, parent: QModelIndex, first: int, last: int) -> None:
        # Rows arrived at the top: what the engineer reads stays where it is unless they watch the top.
        bar = self.verticalScrollBar()
        if first == 0 and bar.value() > 0:
            bar.setValue(bar.value() + (last - first + 1))

    def _save_selection(self) -> None:
        # The loaded selected rows (a bounded look at the cache, whatever the selection's size) and
        # the current row, by id: found again after the reset.
        self._saved = self.selected_ids(MAX_POSITIONS)
        current = self.task_model.peek(self.currentIndex().row()) if self.currentIndex().isValid() else None
        self._saved_current = current["task_id"] if current else None

    def _restore_selection(self) -> None:
        ids, self._saved = self._saved, []
        current, self._saved_current = self._saved_current, None
        wanted = ids + ([current] if current and current not in ids else [])
        if not wanted:
            return

        def found(positions: dict[str, int]) -> None:
            self.select_rows({t: r for t, r in positions.items() if t in ids})
            if current in positions and not self.currentIndex().isValid():
                self.selectionModel().setCurrentIndex(self.task_model.index(positions[current], 0),
                                                      QItemSelectionModel.SelectionFlag.NoUpdate)

        self.task_model.locate(wanted, found)

    def select_rows(self, positions: dict[str, int]) -> None:
        """Select these rows (task id -> row), unless the engineer selected something meanwhile."""
        if self.selectionModel().hasSelection() or not positions:
            return
        sel = QItemSelection()
        last = len(COLUMNS) - 1
        for r in sorted(positions.values()):
            sel.select(self.task_model.index(r, 0), self.task_model.index(r, last))
        self.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.scrollTo(self.task_model.index(min(positions.values()), 0))


def _outcome(past: str, data: Any, asked: int) -> str:
    """``Cancelled 37; 3 refused: <first reason>`` from a batch op's answer."""
    done = len(data.get("done") or ()) if isinstance(data, dict) else 0
    refused = data.get("refused") or {} if isinstance(data, dict) else {}
    if asked == 1 and refused:
        return f"Refused: {next(iter(refused.values()))}"
    text = f"{past} {done:,}"
    if refused:
        text += f"; {len(refused):,} refused: {next(iter(refused.values()))}"
    return text


def _id_width() -> int:
    """The Task column's width: a short id (13 hex digits for a coordinator's ids) in monospace."""
    return QFontMetrics(_mono()).horizontalAdvance("0" * 15) + 16


# -- the panel --------------------------------------------------------------------------------------

class TasksPanel(QWidget):
    """Filter bar, table and count line: the Tasks tab."""

    def __init__(self, bridge: CoordinatorBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.filter_bar = TaskFilterBar(bridge)
        self.model = TaskTableModel(bridge)
        self.view = TaskTableView(bridge, self.model)
        self.count_label = QLabel()
        self.message = QLabel()
        self.message.setStyleSheet("color: palette(mid);")
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.filter_bar)
        lay.addWidget(self.view, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.count_label)
        bottom.addStretch(1)
        bottom.addWidget(self.message)
        lay.addLayout(bottom)
        self.filter_bar.filterChanged.connect(self.model.set_filter)
        self.model.countsChanged.connect(self._update_count)
        self.model.failed.connect(self.view.show_message)
        self.view.messageShown.connect(self.message.setText)
        self._update_count()

    def _update_count(self) -> None:
        m = self.model
        if m.loading and not m.total:
            self.count_label.setText("Loading tasks…")
            return
        all_total = m.all_total if m.all_total is not None else m.total
        text = f"{all_total:,} task{'s' if all_total != 1 else ''}"
        if m.filter:
            text += f", {m.total:,} shown by filter"
        self.count_label.setText(text + (" (counting…)" if m.loading else ""))
