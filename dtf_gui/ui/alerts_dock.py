"""The alerts dock: worker health alerts (the coordinator's alert book) and regression findings in one
table, to acknowledge and mute, with a desktop notification for each new one (batched, at most one
message every few seconds, so a failing rack does not bury the desktop in bubbles)."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from PySide6 import QtGui
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
from PySide6.QtGui import QAction, QBrush, QColor, QFont, QFontMetrics
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDockWidget,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QStyle,
    QSystemTrayIcon,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.models import fmt_when

Index = QModelIndex | QPersistentModelIndex

KEY_ROLE = Qt.ItemDataRole.UserRole
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
ROW_ROLE = Qt.ItemDataRole.UserRole + 2  # the whole row (dict)

NOTIFY_INTERVAL_MS = 5000
MAX_ROWS = 5000
ACK_CHUNK = 1000  # ids one ack_alerts request takes at most (AckAlerts.alert_ids)
MUTE_CHOICES = (("1 hour", 3600.0), ("1 day", 86400.0))
SEVERITY_COLOURS = {"critical": "#c62828", "warning": "#b26a00", "info": "#6d6d6d"}
SEVERITY_RANK = {"critical": 2, "warning": 1, "info": 0}
KIND_WORDS = {"cpu": "CPU", "memory": "memory", "disk": "disk", "gpu_memory": "GPU memory",
              "failures": "failures", "offline": "offline"}

COLUMNS = ("Time", "Severity", "Worker / test", "What", "State")


def plain_tip(text: str) -> str:
    """A tooltip that shows ``text`` as it is: Qt renders a tooltip that looks like HTML as HTML,
    and worker ids, hardware lines and messages come from agents."""
    if not QtGui.Qt.mightBeRichText(text):  # QtGui's Qt namespace, not QtCore's, has it
        return text
    return "<qt>" + html.escape(text).replace("\n", "<br>") + "</qt>"


def alert_item(a: dict[str, Any]) -> dict[str, Any]:
    """A health alert (the coordinator's alert event) as a row of the dock."""
    kind = str(a.get("kind") or "")
    return {"key": str(a["alert_id"]), "source": "health", "time": a.get("time"),
            "severity": str(a.get("severity") or "warning"), "subject": str(a.get("worker_id") or ""),
            "worker_id": a.get("worker_id"),
            "what": str(a.get("message") or f"{KIND_WORDS.get(kind, kind)} {a.get('value')}"),
            "state": str(a.get("state") or "raised"), "acked": bool(a.get("acked")), "muted": bool(a.get("muted")),
            "raw": dict(a)}


# What a finding is, after its direction ("regression (suspected change) in ..."), by kind and state.
_FINDING_LABELS = {("change_point", "suspected"): "suspected change", ("change_point", "confirmed"): "change point",
                   ("change_point", "retracted"): "retracted change", ("trend", ""): "trend"}
SUSPECTED_COLOUR = "#b26a00"
SUSPECTED_TIP = ("Suspected by the online stage; the windowed test has not confirmed it yet. The row turns "
                 "into a change point when it is confirmed, or leaves the list (Show cleared) if retracted.")


def finding_kind(f: dict[str, Any]) -> str:
    """A bridge.finding_row row's kind of finding: "anomaly", "change_point" or "trend" (rows from
    before changes had states carry only the display kind)."""
    raw = f.get("finding_kind")
    if raw:
        return str(raw)
    return "change_point" if f.get("kind") == "change point" else str(f.get("kind") or "anomaly")


def finding_item(f: dict[str, Any], acked: bool = False) -> dict[str, Any]:
    """A regression, change or trend (bridge.finding_row) as a row of the dock. A retracted change
    is "cleared" (hidden unless Show cleared); its ``finding_state`` says why."""
    regression = f.get("direction") == "regression"
    subject = str(f.get("test_id") or "")
    if f.get("worker_id"):
        subject += f" @ {f['worker_id']}"
    kind = finding_kind(f)
    fstate = str(f.get("state") or ("confirmed" if kind == "change_point" else ""))
    label = "regression" if regression else str(f.get("direction") or "change")
    what = _FINDING_LABELS.get((kind, fstate))
    if what:
        label += f" ({what})"
    return {"key": str(f["finding_id"]), "source": "finding", "time": f.get("time"),
            "severity": "warning" if regression else "info", "subject": subject, "worker_id": f.get("worker_id"),
            "what": f"{label} in {f.get('metric')}: {f.get('detail')}",
            "state": "cleared" if fstate == "retracted" else "raised", "finding_state": fstate, "acked": acked,
            "muted": False, "raw": dict(f)}


def wants_finding(f: dict[str, Any]) -> bool:
    """Regressions (anomalies, changes, trends), and changes whichever way they go (a step is
    news; an anomaly or a drift that is an improvement is not)."""
    return f.get("direction") == "regression" or finding_kind(f) == "change_point"


def needs_attention(item: dict[str, Any]) -> bool:
    return (item["state"] == "raised" and not item["acked"] and not item["muted"]
            and item["severity"] != "info")


class AlertsModel(QAbstractTableModel):
    """Alerts and findings keyed by id (alert id, finding id); newest are kept."""

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        super().__init__()
        self.max_rows = max_rows
        self._keys: list[str] = []
        self._rows: dict[str, dict[str, Any]] = {}

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own signature
        return 0 if parent.isValid() else len(self._keys)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal \
                and 0 <= section < len(COLUMNS):
            return COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._keys) or index.column() >= len(COLUMNS):
            return None
        item = self._rows[self._keys[index.row()]]
        c = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(item, c)
        if role == KEY_ROLE:
            return item["key"]
        if role == ROW_ROLE:
            return item
        if role == SORT_ROLE:
            return (float(item["time"] or 0.0) if c == 0 else SEVERITY_RANK.get(item["severity"], 0) if c == 1
                    else self._text(item, c).lower())
        suspected = item.get("finding_state") == "suspected"
        if role == Qt.ItemDataRole.FontRole and (needs_attention(item) or suspected):
            font = QFont()
            font.setBold(needs_attention(item))
            font.setItalic(suspected)  # not settled yet: it may still be retracted
            return font
        if role == Qt.ItemDataRole.ForegroundRole:
            if c == 1:
                return QBrush(QColor(SEVERITY_COLOURS.get(item["severity"], "#000000")))
            if item["state"] == "cleared":
                return QBrush(QColor("#8a8a8a"))
            if c == 4 and suspected:
                return QBrush(QColor(SUSPECTED_COLOUR))
        if role == Qt.ItemDataRole.ToolTipRole:
            if c == 0 and item["time"]:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["time"]))
            if c == 3 and item["source"] == "health":
                raw = item["raw"]
                return plain_tip(f"{item['what']}\nvalue {raw.get('value')}, threshold {raw.get('threshold')}")
            if c == 4 and suspected:
                return SUSPECTED_TIP
            return plain_tip(self._text(item, c)) or None
        return None

    @staticmethod
    def _text(item: dict[str, Any], c: int) -> str:
        if c == 0:
            return fmt_when(item["time"])
        if c == 1:
            return item["severity"]
        if c == 2:
            return item["subject"]
        if c == 3:
            return item["what"]
        state = item["state"]
        fstate = item.get("finding_state")
        if item["source"] == "finding" and fstate == "retracted":
            state = "retracted"
        elif item["source"] == "finding" and fstate == "suspected":
            state = "suspected · acknowledged" if item["acked"] else "suspected"
        elif state == "raised" and item["acked"]:
            state = "acknowledged"
        elif state == "raised" and item["source"] == "finding":
            state = "new"  # a finding is not raised and cleared: it is news until acknowledged
        if not item["muted"]:
            return state
        until = item.get("muted_until")
        return state + (f" · muted until {fmt_when(until)}" if until else " · muted")

    # -- feeding ----------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._keys)

    def row_for(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def upsert(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Add or update rows; returns the keys that are new."""
        changed: list[int] = []
        new: list[str] = []
        for item in items:
            key = item["key"]
            old = self._rows.get(key)
            if old is None:
                if key not in new:
                    new.append(key)
                self._rows[key] = dict(item)
            else:
                old.update(item)
                if key in self._keys:
                    changed.append(self._keys.index(key))
        if changed:
            self.dataChanged.emit(self.index(min(changed), 0), self.index(max(changed), len(COLUMNS) - 1))
        if new:
            first = len(self._keys)
            self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
            self._keys.extend(new)
            self.endInsertRows()
        if len(self._keys) > self.max_rows:  # the oldest go (the coordinator keeps them all)
            by_age = sorted(self._keys, key=lambda k: float(self._rows[k].get("time") or 0.0))
            self.remove(by_age[: len(self._keys) - self.max_rows])
        return new

    def mark(self, keys: Sequence[str], **fields: Any) -> None:
        self.upsert([{"key": k, **fields} for k in keys if k in self._rows])

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key in self._rows:
                i = self._keys.index(key)
                self.beginRemoveRows(QModelIndex(), i, i)
                del self._keys[i]
                del self._rows[key]
                self.endRemoveRows()

    def attention_count(self) -> int:
        return sum(1 for r in self._rows.values() if needs_attention(r))


class _AlertsFilter(QSortFilterProxyModel):
    """Hides cleared alerts unless asked."""

    def __init__(self) -> None:
        super().__init__()
        self.show_cleared = False
        self.setSortRole(SORT_ROLE)

    def set_show_cleared(self, on: bool) -> None:
        self.beginFilterChange()  # Qt 6.10's replacement of invalidateFilter()
        self.show_cleared = on
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        if self.show_cleared:
            return True
        item = self.sourceModel().index(source_row, 0, source_parent).data(ROW_ROLE)
        return not (item and item["state"] == "cleared")


class AlertsDock(QDockWidget):
    """Health alerts and regression findings; acknowledge, mute, and desktop notifications."""

    workerRequested = Signal(str)  # a health alert's row activated: show this worker
    findingRequested = Signal(dict)  # a finding's row activated: its finding (bridge.finding_row shape)
    acknowledged = Signal(list)  # the ids an acknowledge() had acknowledged, once every answer came

    def __init__(self, bridge: CoordinatorBridge, parent: QWidget | None = None) -> None:
        super().__init__("Alerts", parent)
        self.setObjectName("alertsDock")
        self.bridge = bridge
        self.model = AlertsModel()
        self.proxy = _AlertsFilter()
        self.proxy.setSourceModel(self.model)
        self.acked_findings: set[str] = set()
        self.last_refusal = ""
        # Mutes in effect as the coordinator told us, (worker or None, kind or None) -> until (epoch);
        # a timer unmutes the rows when the earliest one ends.
        self.mutes: dict[tuple[str | None, str | None], float] = {}
        self._mute_timer = QTimer(self)
        self._mute_timer.setSingleShot(True)
        self._mute_timer.timeout.connect(self._apply_mutes)
        self._mutes_asked = False

        self.view = QTableView()
        self.view.setObjectName("alertsView")
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setAlternatingRowColors(True)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(22)
        self.view.setWordWrap(False)
        self.view.setTextElideMode(Qt.TextElideMode.ElideRight)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        # Widths for bold text: rows that need attention are bold and must not elide "warning".
        bold = QFont(self.view.font())
        bold.setBold(True)
        fm = QFontMetrics(bold)
        self.view.setColumnWidth(0, fm.horizontalAdvance("2026-12-31 23:59") + 14)
        self.view.setColumnWidth(1, fm.horizontalAdvance("warning") + 16)
        self.view.setColumnWidth(2, fm.horizontalAdvance("test_matmul[1024] @ bench-07") + 16)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.view.setColumnWidth(4, fm.horizontalAdvance("raised · muted until 23:59:59") + 16)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.activated.connect(self._activated)

        self.ack_action = QAction("Acknowledge", self)
        self.ack_action.triggered.connect(self.acknowledge_selected)
        self.ack_all_action = QAction("Acknowledge all", self)
        self.ack_all_action.triggered.connect(self.acknowledge_all)
        self.mute_actions: list[QAction] = []
        for label, seconds in MUTE_CHOICES:
            a = QAction(f"Mute worker for {label}", self)
            a.triggered.connect(lambda _=False, s=seconds: self.mute_selected(s))
            self.mute_actions.append(a)
        self.show_cleared_action = QAction("Show cleared", self)
        self.show_cleared_action.setCheckable(True)
        self.show_cleared_action.toggled.connect(self.set_show_cleared)

        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        self.ack_button = QPushButton("Acknowledge")
        self.ack_button.setObjectName("ackButton")
        self.ack_button.clicked.connect(self.ack_action.trigger)
        self.ack_all_button = QPushButton("Acknowledge all")
        self.ack_all_button.setObjectName("ackAllButton")
        self.ack_all_button.clicked.connect(self.ack_all_action.trigger)
        self.mute_button = QToolButton()
        self.mute_button.setObjectName("muteButton")
        self.mute_button.setText("Mute worker")
        self.mute_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        mute_menu = QMenu(self.mute_button)
        for a in self.mute_actions:
            mute_menu.addAction(a)
        self.mute_button.setMenu(mute_menu)
        self.show_cleared_box = QCheckBox("Show cleared")
        self.show_cleared_box.setObjectName("showCleared")
        self.show_cleared_box.toggled.connect(self.show_cleared_action.setChecked)
        self.show_cleared_action.toggled.connect(self.show_cleared_box.setChecked)
        self.message = QLabel()
        self.message.setObjectName("alertsMessage")
        self.message.setTextFormat(Qt.TextFormat.PlainText)  # it quotes the coordinator, which quotes agents
        for w in (self.ack_button, self.ack_all_button, self.mute_button):
            bar.addWidget(w)
        bar.addStretch(1)
        # A second row: the dock shares the window's right side with Task details, so it stays narrow.
        row2 = QHBoxLayout()
        row2.setContentsMargins(0, 0, 0, 0)
        row2.addWidget(self.show_cleared_box)
        row2.addWidget(self.message, 1)
        self.message.setWordWrap(True)
        body = QWidget()
        lay = QVBoxLayout(body)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(bar)
        lay.addLayout(row2)
        lay.addWidget(self.view)
        self.setWidget(body)

        # Desktop notifications: a tray icon where the desktop has a tray; everything that would be
        # said is kept in ``notifications`` (title, text) either way (offscreen has no tray).
        self.tray: QSystemTrayIcon | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = QSystemTrayIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning), self)
            self.tray.setToolTip("DTF alerts")
            self.tray.messageClicked.connect(self._raise)
            self.tray.show()
        self.notifications: list[tuple[str, str]] = []
        self._unsaid: list[str] = []
        self._notify_timer = QTimer(self)
        self._notify_timer.setSingleShot(True)
        self._notify_timer.setInterval(NOTIFY_INTERVAL_MS)
        self._notify_timer.timeout.connect(self._notify_later)

        self.view.selectionModel().selectionChanged.connect(lambda *_: self._update_actions())
        self.model.rowsInserted.connect(lambda *_: self._update_title())
        self.model.rowsRemoved.connect(lambda *_: self._update_title())
        self.model.dataChanged.connect(lambda *_: self._update_title())
        bridge.alertsChanged.connect(self.on_alerts)
        bridge.findingsChanged.connect(self.on_findings)
        bridge.findingsLoaded.connect(self.on_stored_findings)
        bridge.findingsRetracted.connect(self.model.remove)
        bridge.identityChanged.connect(lambda _: self._update_actions())
        self._update_title()
        self._update_actions()
        self.loaded = False
        bridge.call_async("list_alerts", {"include_cleared": True, "limit": 1000}, self._on_listed)

    # -- feeding ------------------------------------------------------------------------------------------

    def _on_listed(self, data: Any, error: str | None) -> None:
        if error:
            self._show(f"Alerts not loaded: {error}", error=True)
            return
        data = data or {}
        self.acked_findings.update(data.get("acked_findings") or ())
        self.model.mark(sorted(self.acked_findings), acked=True)
        # What was there before the window opened is not news: listed, not notified. A live event
        # that came first is newer than the list: keep it.
        self.model.upsert([alert_item(a) for a in data.get("alerts") or ()
                           if self.model.row_for(str(a.get("alert_id"))) is None])
        self._set_mutes(data.get("mutes"))
        self.loaded = True

    def on_alerts(self, alerts: list[dict[str, Any]]) -> None:
        items = [alert_item(a) for a in alerts if a.get("alert_id")]
        new = set(self.model.upsert(items))
        if any(i["muted"] and i["state"] == "raised" and self._mute_end(i, time.time()) is None for i in items):
            self._ask_mutes()  # muted by someone else: when does it end?
        else:
            self._apply_mutes()
        self._notify([f"{i['subject']}: {i['what']}" for i in items
                      if i["key"] in new and i["state"] == "raised" and not i["muted"] and not i["acked"]])

    def on_findings(self, findings: list[dict[str, Any]], *, notify: bool = True) -> None:
        """Findings in; a change's later states update its row. A retracted change clears the row
        of its suspicion (one this dock never listed is not added), and is never announced."""
        items: list[dict[str, Any]] = []
        lines: list[str] = []
        for f in findings:
            if not wants_finding(f):
                continue
            key = str(f["finding_id"])
            old = next((i for i in reversed(items) if i["key"] == key), None) or self.model.row_for(key)
            if f.get("state") == "retracted":
                if old is None:
                    continue
                # In the direction it was suspected in: the retraction's statistics say where the
                # level stands now, which may lean the other way.
                f = {**f, "direction": old["raw"].get("direction")}
            item = finding_item(f, old["acked"] if old else key in self.acked_findings)
            items.append(item)
            if notify and item["severity"] != "info":
                lines.extend(self._announcement(item, old))
        self.model.upsert(items)
        self._notify(lines)

    def _announcement(self, item: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
        """The notification a finding's row earns: a new one once (unless acknowledged already); a
        change only once confirmed, never while suspected nor when retracted. The online stage
        raises a false suspicion every few hundred steady results of a series (the windowed test
        retracts it), and a desktop notification cannot be taken back: the row says "suspected"."""
        fstate, metric = item["finding_state"], item["raw"].get("metric")
        detail = f"{item['subject']}: {metric} {item['raw'].get('detail')}"
        if fstate == "suspected":
            return []
        if fstate == "confirmed" and old is not None and old.get("finding_state") == "suspected":
            return [f"Confirmed {item['raw'].get('direction') or 'change'}: {detail}"]
        if old is None and not item["acked"] and fstate != "retracted":
            return [f"{item['subject']}: {item['what']}"]
        return []

    def on_stored_findings(self, findings: list[dict[str, Any]]) -> None:
        """Findings from before the window opened: listed (acknowledged or not), never announced."""
        self.on_findings(findings, notify=False)

    def _update_title(self) -> None:
        n = self.model.attention_count()
        self.setWindowTitle(f"Alerts ({n})" if n else "Alerts")
        self.ack_all_button.setEnabled(n > 0 and self.bridge.allows("ack_alerts"))

    # -- mutes ----------------------------------------------------------------------------------------------

    def _ask_mutes(self) -> None:
        if not self._mutes_asked:
            self._mutes_asked = True
            self.bridge.call_async("list_alerts", {"limit": 1}, self._on_mutes)

    def _on_mutes(self, data: Any, error: str | None) -> None:
        self._mutes_asked = False
        if not error and isinstance(data, dict):
            self._set_mutes(data.get("mutes"))

    def _set_mutes(self, mutes: Any) -> None:
        if isinstance(mutes, list):
            self.mutes = {(m.get("worker_id"), m.get("kind")): float(m["until"]) for m in mutes
                          if isinstance(m, dict) and isinstance(m.get("until"), (int, float))}
        self._apply_mutes(authoritative=isinstance(mutes, list))

    def _mute_end(self, item: dict[str, Any], now: float) -> float | None:
        wid, kind = item.get("worker_id"), item["raw"].get("kind")
        ends = [u for k, u in self.mutes.items() if u > now and k in ((None, None), (wid, None), (None, kind),
                                                                        (wid, kind))]
        return max(ends) if ends else None

    def _apply_mutes(self, authoritative: bool = False) -> None:
        """Rows show the mutes in effect, with their end; a mute that ended unmutes its rows (the
        coordinator says nothing when a mute runs out). ``authoritative``: the mutes just came from
        the coordinator, so a muted row no mute covers is muted no more."""
        now = time.time()
        self.mutes = {k: u for k, u in self.mutes.items() if u > now}
        updates: list[dict[str, Any]] = []
        for key in self.model.keys():
            row = self.model.row_for(key) or {}
            if row.get("source") != "health":
                continue
            until = self._mute_end(row, now) if row["state"] == "raised" else None
            if until is not None:
                if not row["muted"] or row.get("muted_until") != until:
                    updates.append({"key": key, "muted": True, "muted_until": until})
            elif row["muted"] and row["state"] == "raised" and (authoritative or row.get("muted_until")):
                updates.append({"key": key, "muted": False, "muted_until": None})
        if updates:
            self.model.upsert(updates)
        self._mute_timer.stop()
        if self.mutes:
            first = min(self.mutes.values())
            self._mute_timer.start(max(0, min(int((first - now) * 1000) + 50, 24 * 3600 * 1000)))

    # -- notifications -----------------------------------------------------------------------------------

    def _notify(self, lines: list[str]) -> None:
        if not lines:
            return
        self._unsaid.extend(lines)
        if not self._notify_timer.isActive():
            self._say()
            self._notify_timer.start()

    def _notify_later(self) -> None:
        if self._unsaid:
            self._say()
            self._notify_timer.start()

    def _say(self) -> None:
        lines, self._unsaid = self._unsaid, []
        if len(lines) == 1:
            title, text = "DTF: new alert", lines[0]
        else:
            title = f"DTF: {len(lines)} new alerts"
            text = "\n".join(lines[:4]) + (f"\n… and {len(lines) - 4} more" if len(lines) > 4 else "")
        self.notifications.append((title, text))
        if self.tray is not None:
            self.tray.showMessage(title, text, QSystemTrayIcon.MessageIcon.Warning, 10_000)

    def _raise(self) -> None:
        self.show()
        self.raise_()

    def set_notify_interval(self, ms: int) -> None:
        self._notify_timer.setInterval(ms)

    # -- actions ------------------------------------------------------------------------------------------

    def selected_items(self) -> list[dict[str, Any]]:
        sel = self.view.selectionModel()
        return [i.data(ROW_ROLE) for i in sel.selectedRows()] if sel is not None else []

    def select_keys(self, keys: Sequence[str]) -> None:
        """Select these rows (by alert or finding id)."""
        self.view.clearSelection()
        flags = self.view.selectionModel().SelectionFlag
        for r in range(self.proxy.rowCount()):
            idx = self.proxy.index(r, 0)
            if idx.data(KEY_ROLE) in keys:
                self.view.selectionModel().select(idx, flags.Select | flags.Rows)

    def _update_actions(self) -> None:
        items = self.selected_items()
        may_ack, may_mute = self.bridge.allows("ack_alerts"), self.bridge.allows("mute_alert")
        self.ack_action.setEnabled(may_ack and any(not i["acked"] for i in items))
        self.ack_button.setEnabled(self.ack_action.isEnabled())
        muteable = any(i["source"] == "health" and i["worker_id"] for i in items)
        for a in self.mute_actions:
            a.setEnabled(may_mute and muteable)
        self.mute_button.setEnabled(may_mute and muteable)
        self.ack_button.setToolTip("Acknowledge the selected alerts" if may_ack else self.bridge.why_not("ack_alerts"))
        self.mute_button.setToolTip("Mute the selected workers' health alerts for a while" if may_mute
                                    else self.bridge.why_not("mute_alert"))
        self._update_title()

    def _show(self, text: str, *, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setToolTip(plain_tip(text))
        self.message.setStyleSheet("color: #c62828;" if error else "")
        if error:
            self.last_refusal = text

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        said: list[str] = []
        self.bridge.errorRaised.connect(said.append)
        try:
            data = self.bridge.call(op, args)
        finally:
            self.bridge.errorRaised.disconnect(said.append)
        if said:
            self._show(said[-1], error=True)
        return data

    def acknowledge(self, keys: Sequence[str]) -> int:
        """Acknowledge alerts or findings by id, in requests of ACK_CHUNK ids answered off the GUI
        thread; :attr:`acknowledged` is emitted once with every id the coordinator took. Returns the
        number of requests made."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return 0
        chunks = [keys[i:i + ACK_CHUNK] for i in range(0, len(keys), ACK_CHUNK)]
        outcome: dict[str, Any] = {"left": len(chunks), "acked": [], "errors": []}

        def answered(data: Any, error: str | None) -> None:
            if error:
                outcome["errors"].append(error)
            elif isinstance(data, dict):
                outcome["acked"].extend(str(k) for k in data.get("acked") or ())
            outcome["left"] -= 1
            if outcome["left"] == 0:
                self._acknowledged(outcome["acked"], outcome["errors"])

        for chunk in chunks:
            if not self.bridge.call_async("ack_alerts", {"alert_ids": chunk}, answered):
                outcome["left"] -= 1
                outcome["errors"].append("the window is closing")
        if outcome["left"] == 0:  # nothing could be sent
            self._acknowledged(outcome["acked"], outcome["errors"])
        return len(chunks)

    def _acknowledged(self, acked: list[str], errors: list[str]) -> None:
        self.acked_findings.update(k for k in acked if (self.model.row_for(k) or {}).get("source") == "finding")
        self.model.mark(acked, acked=True)  # the alerts' events say the same shortly; findings have none
        if errors:
            distinct = list(dict.fromkeys(errors))
            self._show((f"Acknowledged {len(acked)}; " if acked else "") + "; ".join(distinct[:2]), error=True)
        else:
            self._show(f"Acknowledged {len(acked)}")
        self._update_actions()
        self.acknowledged.emit(acked)

    def acknowledge_selected(self) -> int:
        return self.acknowledge([i["key"] for i in self.selected_items() if not i["acked"]])

    def acknowledge_all(self) -> int:
        return self.acknowledge([k for k in self.model.keys() if needs_attention(self.model.row_for(k) or {})])

    def mute_selected(self, seconds: float) -> list[str]:
        """Mute the health alerts of the selected rows' workers for ``seconds``."""
        workers = sorted({str(i["worker_id"]) for i in self.selected_items() if i["source"] == "health"
                          and i["worker_id"]})
        muted: list[str] = []
        for wid in workers:
            data = self._call("mute_alert", {"worker_id": wid, "kind": None, "seconds": seconds})
            if data is None:
                continue
            muted.append(wid)
            until = data.get("muted_until")
            if isinstance(until, (int, float)):
                self.mutes[(wid, None)] = float(until)
                self._apply_mutes()
                self._show(f"Muted {', '.join(muted)} until {fmt_when(until)}")
        return muted

    def set_show_cleared(self, on: bool) -> None:
        self.proxy.set_show_cleared(on)

    def _activated(self, index: QModelIndex) -> None:
        item = index.data(ROW_ROLE)
        if not item:
            return
        if item["source"] == "finding":
            self.findingRequested.emit(dict(item["raw"]))
        elif item["worker_id"]:
            self.workerRequested.emit(str(item["worker_id"]))

    def _context_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        menu.addAction(self.ack_action)
        menu.addAction(self.ack_all_action)
        menu.addSeparator()
        for a in self.mute_actions:
            menu.addAction(a)
        menu.addSeparator()
        menu.addAction(self.show_cleared_action)
        menu.aboutToHide.connect(menu.deleteLater)  # one menu per right-click: it goes when it closes
        menu.popup(self.view.viewport().mapToGlobal(pos))
