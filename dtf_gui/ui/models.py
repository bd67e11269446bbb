"""Qt item models fed by batches of coordinator events.

One ``apply(batch)`` per event batch: rows that changed get one dataChanged over their span, new
rows one beginInsertRows, so a flood of task updates costs the view a handful of signals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QMimeData, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QFontDatabase

from dtf_gui.ui import theme

Index = QModelIndex | QPersistentModelIndex
TASK_IDS_MIME = "application/x-dtf-task-ids"
Formatter = Callable[[Any], str]

# Light-scheme colours (the names other modules import); data() picks the current scheme's set.
STATUS_COLOURS = theme.LIGHT_STATUS_COLOURS
# An agent's enrollment state: waiting for a decision stands out, refused and revoked recede.
STATE_COLOURS = theme.LIGHT_STATE_COLOURS


def status_colour(status: Any) -> str | None:
    """The text colour of a status (task, worker, finding direction) in the current colour scheme."""
    return theme.status_colours().get(str(status))


def fmt_time(v: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(v)) if v else ""


def fmt_pct(v: Any) -> str:
    return f"{v:.0f}%" if isinstance(v, (int, float)) else ""


def fmt_when(v: Any) -> str:
    """A time that may be days old: the date too unless it is today."""
    if not v:
        return ""
    t = time.localtime(v)
    same_day = time.strftime("%Y-%m-%d", t) == time.strftime("%Y-%m-%d")
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", t)


def fmt_yes(v: Any) -> str:
    return "yes" if v else ""


def fmt_plain(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


class Column:
    def __init__(self, key: str, title: str, fmt: Formatter = fmt_plain, *, colours: dict[str, str] | None = None,
                 mono: bool = False) -> None:
        self.key, self.title, self.fmt = key, title, fmt
        # Foreground colour by value (statuses); a monospaced font (keys and fingerprints, read character
        # by character against another screen).
        self.colours = colours if colours is not None else (
            STATUS_COLOURS if key in ("status", "direction") else None)
        self.mono = mono


def _mono_font() -> QFont:
    return QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)


class KeyedTableModel(QAbstractTableModel):
    """Rows are dicts identified by ``key``; ``apply`` upserts a batch of them."""

    def __init__(self, key: str, columns: Sequence[Column], *, max_rows: int = 10_000,
                 drag_mime: str | None = None) -> None:
        super().__init__()
        self.key = key
        # Rows of this model can be dragged (tasks onto workers) carrying their keys as this MIME type.
        self.drag_mime = drag_mime
        self.columns = list(columns)
        self.max_rows = max_rows
        self._rows: list[dict[str, Any]] = []
        self._pos: dict[str, int] = {}

    # -- Qt API -----------------------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own signature
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        row = self._rows[index.row()]
        col = self.columns[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return col.fmt(row.get(col.key))
        if role == Qt.ItemDataRole.ForegroundRole and col.colours:
            colours = (theme.status_colours() if col.colours is STATUS_COLOURS else
                       theme.state_colours() if col.colours is STATE_COLOURS else col.colours)
            colour = colours.get(str(row.get(col.key)))
            return QBrush(QColor(colour)) if colour else None
        if role == Qt.ItemDataRole.FontRole and col.mono:
            return _mono_font()
        if role == Qt.ItemDataRole.ToolTipRole:
            value = row.get(col.key)
            return None if value is None else str(value)
        if role == Qt.ItemDataRole.UserRole:
            return row.get(self.key)
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        base = super().flags(index)
        if self.drag_mime and index.isValid():
            return base | Qt.ItemFlag.ItemIsDragEnabled
        return base

    def mimeTypes(self) -> list[str]:
        return [self.drag_mime] if self.drag_mime else []

    def mimeData(self, indexes: Sequence[QModelIndex]) -> QMimeData:
        data = QMimeData()
        keys = sorted({self._rows[i.row()][self.key] for i in indexes if i.isValid() and i.row() < len(self._rows)})
        if self.drag_mime:
            data.setData(self.drag_mime, "\n".join(keys).encode())
        data.setText(" ".join(keys))
        return data

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            if 0 <= section < len(self.columns):
                return self.columns[section].title
        return None

    # -- feeding ----------------------------------------------------------------------------------

    def row_for(self, key: str) -> dict[str, Any] | None:
        i = self._pos.get(key)
        return None if i is None else self._rows[i]

    def keys(self) -> list[str]:
        return [r[self.key] for r in self._rows]

    def apply(self, batch: Sequence[dict[str, Any]]) -> None:
        changed: list[int] = []
        new: list[dict[str, Any]] = []
        for item in batch:
            k = item[self.key]
            i = self._pos.get(k)
            if i is None:
                new.append(dict(item))
                self._pos[k] = -1  # placeholder so a repeat within the batch updates the new row
            elif i == -1:
                for n in new:
                    if n[self.key] == k:
                        n.update(item)
            else:
                self._rows[i].update(item)
                changed.append(i)
        if changed:
            self.dataChanged.emit(self.index(min(changed), 0), self.index(max(changed), len(self.columns) - 1))
        if new:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
            for j, row in enumerate(new):
                self._pos[row[self.key]] = first + j
            self._rows.extend(new)
            self.endInsertRows()
        if len(self._rows) > self.max_rows:
            self._trim()

    def remove(self, keys: Sequence[str]) -> int:
        """Drop these rows (one removal per contiguous run); returns how many were present."""
        rows = sorted((self._pos[k] for k in keys if self._pos.get(k, -1) >= 0), reverse=True)
        i = 0
        while i < len(rows):
            last = first = rows[i]
            while i + 1 < len(rows) and rows[i + 1] == first - 1:
                i += 1
                first = rows[i]
            self.beginRemoveRows(QModelIndex(), first, last)
            del self._rows[first:last + 1]
            self.endRemoveRows()
            i += 1
        if rows:
            self._pos = {r[self.key]: j for j, r in enumerate(self._rows)}
        return len(rows)

    def _trim(self) -> None:
        """Drop the oldest rows beyond max_rows; the database keeps everything."""
        excess = len(self._rows) - self.max_rows
        self.beginRemoveRows(QModelIndex(), 0, excess - 1)
        del self._rows[:excess]
        self._pos = {r[self.key]: i for i, r in enumerate(self._rows)}
        self.endRemoveRows()


def workers_model() -> KeyedTableModel:
    return KeyedTableModel("worker_id", [
        Column("worker_id", "Worker"), Column("hostname", "Host"), Column("status", "Status"),
        Column("running", "Running"), Column("slots", "Slots"), Column("cpu_percent", "CPU", fmt_pct),
        Column("memory_percent", "Memory", fmt_pct), Column("tags", "Tags"),
        Column("last_seen", "Last seen", fmt_time),
    ])


def tasks_model(max_rows: int = 10_000) -> KeyedTableModel:
    return KeyedTableModel("task_id", [
        Column("task_id", "Task"), Column("status", "Status"), Column("type", "Type"),
        Column("command", "Command"), Column("priority", "Priority"), Column("worker_id", "Worker"),
        Column("attempt", "Attempt"), Column("create_time", "Submitted", fmt_time),
        Column("end_time", "Finished", fmt_time), Column("why", "Error / reason"),
    ], max_rows=max_rows, drag_mime=TASK_IDS_MIME)


# Why a change row looks the way it does (the Kind column's tooltip).
FINDING_STATE_TIPS = {
    "suspected": "Suspected by the online stage; the windowed test has not confirmed it yet. "
                 "This row turns into a change point when it is confirmed, or is greyed out if retracted.",
    "retracted": "Retracted: the windowed test did not confirm this suspected change (the level fell back "
                 "or stayed too close). Kept greyed out until the window closes.",
    "confirmed": "A change point confirmed by the windowed test (E-Divisive + t-test).",
}


class FindingsModel(KeyedTableModel):
    """Findings (bridge.finding_row rows): a suspected change in amber italics, a retracted one
    greyed out, so the one row a change keeps tells its state at a glance."""

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        state = self._rows[index.row()].get("state") or ""
        if state in ("suspected", "retracted"):
            if role == Qt.ItemDataRole.FontRole:
                font = QFont()
                font.setItalic(True)
                return font
            kind_column = self.columns[index.column()].key == "kind"
            if role == Qt.ItemDataRole.ForegroundRole and (state == "retracted" or kind_column):
                colour = theme.state_colours()["revoked" if state == "retracted" else "pending"]
                return QBrush(QColor(colour))
        if role == Qt.ItemDataRole.ToolTipRole and state and self.columns[index.column()].key == "kind":
            return FINDING_STATE_TIPS.get(state)
        return super().data(index, role)


def findings_model(max_rows: int = 5000) -> FindingsModel:
    return FindingsModel("finding_id", [
        Column("time", "Time", fmt_time), Column("kind", "Kind"), Column("direction", "Direction"),
        Column("test_id", "Test"), Column("worker_id", "Worker"), Column("metric", "Metric"),
        Column("result_id", "Result"), Column("detail", "Detail"),
    ], max_rows=max_rows)


def agents_model() -> KeyedTableModel:
    """Agents by enrollment state, keyed by key fingerprint (two machines may share a name; never a key).
    The last column is empty: views put their Accept / Reject buttons there."""
    return KeyedTableModel("key", [
        Column("name", "Agent"), Column("state", "State", colours=STATE_COLOURS),
        Column("fingerprint", "Key fingerprint", mono=True), Column("hostname", "Host"),
        Column("address", "Address"), Column("how", "How"), Column("first_seen", "First seen", fmt_when),
        Column("last_seen", "Last seen", fmt_when), Column("online", "Online", fmt_yes), Column("", ""),
    ], max_rows=5000)


def security_model(max_rows: int = 2000) -> KeyedTableModel:
    """Security events (refused keys, enrollments, tokens ...), newest kept."""
    return KeyedTableModel("seq", [
        Column("time", "Time", fmt_when), Column("what", "What"), Column("subject", "Who"),
        Column("detail", "Detail"),
    ], max_rows=max_rows)
