"""One task in full: what it runs, what it asked for, why it waits, its attempts, metrics and log.

:class:`TaskDetailPane` reads the task with ``get_task`` and its output with ``get_log``, both off
the GUI thread (``bridge.call_async``). While the task runs the log follows it: once a second the
pane asks for what came after the last offset, for stdout and stderr, and stops when the task has
ended and its log is complete. A log never kept (an agent from before streaming, or one gone)
falls back to the tails stored with the result. Live task events update the header at once and
reload the attempts when one ends.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFontDatabase, QGuiApplication, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from dtf_agent import protocol as p
from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.models import fmt_when, status_colour

Index = QModelIndex | QPersistentModelIndex
Row = dict[str, Any]

POLL_MS = 1000
# Polls of a finished task that found no log at all before the stored tails are shown instead.
NO_LOG_POLLS = 2
MAX_LOG_CHARS = 4_000_000  # kept in a text view; beyond, the oldest lines go


def _fmt_duration(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return ""
    if v < 1:
        return f"{v * 1000:.0f} ms"
    if v < 120:
        return f"{v:.2f} s"
    return f"{v / 60:.1f} min"


def _fmt_value(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else "" if v is None else str(v)


class _RowsModel(QAbstractTableModel):
    """A small read-only table of dict rows (a task has a handful of attempts and metrics)."""

    def __init__(self, columns: list[tuple[str, Callable[[Row], str]]]) -> None:
        super().__init__()
        self.columns = columns
        self.rows: list[Row] = []

    def set_rows(self, rows: list[Row]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own signature
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal \
                and 0 <= section < len(self.columns):
            return self.columns[section][0]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self.rows):
            return None
        row = self.rows[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            text = self.columns[index.column()][1](row)
            return text if role == Qt.ItemDataRole.DisplayRole else (text or None)
        if role == Qt.ItemDataRole.ForegroundRole and self.columns[index.column()][0] == "Status":
            colour = status_colour({"success": "completed", "failure": "failed"}.get(row.get("status"), ""))
            return QBrush(QColor(colour)) if colour else None
        return None


def attempts_model() -> _RowsModel:
    return _RowsModel([
        ("Attempt", lambda r: str(r.get("attempt") or "")),
        ("Worker", lambda r: r.get("worker_id") or ""),
        ("Status", lambda r: r.get("status") or ""),
        ("Exit", lambda r: "" if r.get("exit_code") is None else str(r["exit_code"])),
        ("Duration", lambda r: _fmt_duration(r.get("execution_time"))),
        ("Error", lambda r: (r.get("error") or "").strip().split("\n")[-1]),
    ])


def metrics_model() -> _RowsModel:
    return _RowsModel([
        ("Attempt", lambda r: str(r.get("attempt") or "")),
        ("Metric", lambda r: r["name"]),
        ("Value", lambda r: _fmt_value(r.get("value"))),
        ("Unit", lambda r: r.get("unit") or ""),
    ])


class _Stream:
    """Where the pane is in one of the task's output streams."""

    def __init__(self, name: str, view: QPlainTextEdit) -> None:
        self.name = name
        self.view = view
        self.reset(None)

    def reset(self, attempt: int | None) -> None:
        self.attempt = attempt
        self.offset = 0
        self.complete = False
        self.dropped = 0
        self.busy = False
        self.empty_polls = 0
        self.fallback = False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.view.clear()


class TaskDetailPane(QWidget):
    """One task: header, why it waits, command, requirements, attempts, metrics, live log, actions."""

    loaded = Signal(dict)          # the get_task reply shown
    messageShown = Signal(str)     # an action's outcome (a refusal's reason, or what was done)

    def __init__(self, bridge: CoordinatorBridge, parent: QWidget | None = None, *, poll_ms: int = POLL_MS) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.task_id: str | None = None
        self.task: Row | None = None
        self._serial = 0
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)

        self._mono = mono
        self.id_label = QLabel("No task selected")
        self.id_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.id_label.setWordWrap(True)
        self.status_label = QLabel()
        bold = self.status_label.font()
        bold.setBold(True)
        self.status_label.setFont(bold)
        head = QHBoxLayout()
        head.addWidget(self.id_label, 1)
        head.addWidget(self.status_label)

        self.fields: dict[str, QLabel] = {}
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for key, title in (("command", "Command"), ("type", "Type"), ("priority", "Priority"), ("worker", "Worker"), ("attempt", "Attempt"),
                           ("run", "Run"), ("test", "Test"), ("times", "Times")):
            label = QLabel()
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)
            self.fields[key] = label
            form.addRow(title, label)
        self.why_label = QLabel()
        self.why_label.setWordWrap(True)
        self.why_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.why_label.setStyleSheet("QLabel { background: palette(alternate-base); padding: 4px; }")

        def text_view() -> QPlainTextEdit:
            v = QPlainTextEdit()
            v.setReadOnly(True)
            v.setFont(mono)
            v.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
            return v

        self.stdout_view = text_view()
        self.stderr_view = text_view()
        self.stdout_view.setMaximumBlockCount(200_000)
        self.stderr_view.setMaximumBlockCount(200_000)
        self.log_note = QLabel()
        self.log_note.setWordWrap(True)
        self.log_tabs = QTabWidget()
        self.log_tabs.addTab(self.stdout_view, "stdout")
        self.log_tabs.addTab(self.stderr_view, "stderr")
        log_box = QWidget()
        lay = QVBoxLayout(log_box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.log_note)
        lay.addWidget(self.log_tabs, 1)

        self.attempts = attempts_model()
        self.attempts_view = self._table(self.attempts)
        self.metrics = metrics_model()
        self.metrics_view = self._table(self.metrics)
        self.task_text = text_view()
        self.task_text.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)

        self.tabs = QTabWidget()
        self.tabs.addTab(log_box, "Output")
        self.tabs.addTab(self.attempts_view, "Attempts")
        self.tabs.addTab(self.metrics_view, "Metrics")
        self.tabs.addTab(self.task_text, "Command && requirements")

        self.retry_button = QPushButton("Retry")
        self.cancel_button = QPushButton("Cancel")
        self.priority_button = QPushButton("Priority…")
        self.copy_button = QPushButton("Copy id")
        self.retry_button.clicked.connect(lambda: self.act("retry_task", "retry"))
        self.cancel_button.clicked.connect(lambda: self.act("cancel_task", "cancel"))
        self.priority_button.clicked.connect(lambda: self.set_priority())
        self.copy_button.clicked.connect(self.copy_id)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.hide()  # shown with an action's outcome, no empty band before
        buttons = QHBoxLayout()
        for b in (self.retry_button, self.cancel_button, self.priority_button, self.copy_button):
            buttons.addWidget(b)
        buttons.addStretch(1)

        # Everything below the header: hidden until a task is shown, so an empty pane is a hint, not
        # a column of blank fields.
        self.body = QWidget()
        inner = QVBoxLayout(self.body)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addLayout(form)
        inner.addWidget(self.why_label)
        inner.addLayout(buttons)
        inner.addWidget(self.message)
        inner.addWidget(self.tabs, 1)
        outer = QVBoxLayout(self)
        outer.addLayout(head)
        outer.addWidget(self.body, 1)

        self._streams = {"stdout": _Stream("stdout", self.stdout_view), "stderr": _Stream("stderr", self.stderr_view)}
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self.poll_logs)
        bridge.tasksChanged.connect(self._on_tasks)
        self._show_empty()

    @staticmethod
    def _table(model: _RowsModel) -> QTableView:
        v = QTableView()
        v.setModel(model)
        v.verticalHeader().setVisible(False)
        v.horizontalHeader().setStretchLastSection(True)
        v.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        v.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        v.setWordWrap(False)
        return v

    def _gone(self) -> bool:
        # An answer may land after the pane was destroyed (a closed dock, the window closing).
        return not shiboken6.isValid(self)

    def _follow(self) -> None:
        """Poll the log while a task is shown and the pane can be seen (a hidden pane reads nothing)."""
        if self.task_id is not None and self.isVisible() and not self._timer.isActive():
            self._timer.start()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self.task_id is not None:
            self._follow()
            self.poll_logs()

    def hideEvent(self, event: QHideEvent) -> None:
        self._timer.stop()
        super().hideEvent(event)

    def _show_empty(self) -> None:
        self.body.hide()
        self.id_label.setFont(self.font())
        self.id_label.setText("No task selected. Double-click a task (or select it and press Enter) to see its "
                              "command, why it waits, its attempts, metrics and output.")
        for b in (self.retry_button, self.cancel_button, self.priority_button, self.copy_button):
            b.setEnabled(False)
        self.why_label.hide()

    # -- showing a task ---------------------------------------------------------------------------

    def show_task(self, task_id: str) -> None:
        """Show this task (read off the GUI thread) and follow its log while it runs."""
        self.task_id = task_id
        self.task = None
        self._serial += 1
        self.id_label.setFont(self._mono)
        self.id_label.setText(task_id)
        self.body.show()
        self.status_label.setText("loading…")
        self.message.clear()
        self.message.hide()
        self.attempts.set_rows([])
        self.metrics.set_rows([])
        for s in self._streams.values():
            s.reset(None)
        self.log_note.clear()
        self.reload()
        self._follow()
        self.poll_logs()

    def reload(self) -> None:
        if self.task_id is None:
            return
        serial = self._serial

        def done(data: Any, error: str | None) -> None:
            if self._gone() or serial != self._serial:
                return  # destroyed, or another task is shown now
            if error is not None:
                self.status_label.setText("")
                self.message.setText(error)
                self.message.show()
                return
            self._fill(data)

        self.bridge.call_async("get_task", {"task_id": self.task_id}, done)

    def _fill(self, t: Row) -> None:
        self.task = t
        status = str(t.get("status") or "")
        self.status_label.setText(status)
        colour = status_colour(status) or ""
        self.status_label.setStyleSheet(f"color: {colour};" if colour else "")
        meta = t.get("metadata") or {}
        command0 = (t.get("parameters") or {}).get("command")
        self.fields["command"].setText(command0 if isinstance(command0, str) else json.dumps(command0) if command0
                                       else "—")
        self.fields["command"].setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.fields["type"].setText(str(t.get("type") or ""))
        self.fields["priority"].setText(str(t.get("priority") if t.get("priority") is not None else ""))
        self.fields["worker"].setText(t.get("worker_id") or "—")
        self.fields["attempt"].setText(str(t.get("attempt") or 0))
        self.fields["run"].setText(str(meta.get("run") or "—"))
        self.fields["test"].setText(t.get("test_id") or "—")
        times = [f"submitted {fmt_when(t.get('create_time'))}"]
        if t.get("start_time"):
            times.append(f"started {fmt_when(t['start_time'])}")
        if t.get("end_time"):
            times.append(f"ended {fmt_when(t['end_time'])}")
            if t.get("start_time"):
                times.append(f"({_fmt_duration(t['end_time'] - t['start_time'])})")
        self.fields["times"].setText(", ".join(times[:-1]) + (" " if times[-1].startswith("(") else ", ") + times[-1]
                                     if len(times) > 1 else times[0])
        why = t.get("why") or ""
        if why:
            waiting = status in (p.PENDING, p.ASSIGNED)
            self.why_label.setText(("Waiting: " if waiting else "Error: " if status == p.FAILED else "") + why)
            self.why_label.show()
        else:
            self.why_label.hide()
        params = dict(t.get("parameters") or {})
        command = params.pop("command", None)
        text = []
        if command:
            text.append("Command:\n  " + (command if isinstance(command, str) else json.dumps(command)))
        if params:
            text.append("Parameters:\n" + json.dumps(params, indent=2, sort_keys=True))
        text.append("Requirements:\n" + (json.dumps(t.get("requirements"), indent=2, sort_keys=True)
                                         if t.get("requirements") else "  none (any worker)"))
        if t.get("dependencies"):
            text.append("Depends on:\n  " + "\n  ".join(t["dependencies"]))
        if t.get("timeout"):
            text.append(f"Timeout: {t['timeout']:g} s")
        if meta:
            text.append("Metadata:\n" + json.dumps(meta, indent=2, sort_keys=True))
        self.task_text.setPlainText("\n\n".join(text))
        results = t.get("result_list") or []
        self.attempts.set_rows(results)
        metrics = [{"attempt": r.get("attempt"), "name": name, "value": value}
                   for r in results for name, value in sorted((r.get("metrics") or {}).items())]
        self.metrics.set_rows(metrics)
        if metrics:
            self._units(metrics)
        terminal = status in p.TERMINAL_STATUSES
        self.retry_button.setEnabled(self.bridge.allows("retry_task") and terminal)
        self.cancel_button.setEnabled(self.bridge.allows("cancel_task") and not terminal)
        self.priority_button.setEnabled(self.bridge.allows("set_priority") and not terminal)
        self.copy_button.setEnabled(True)
        for b, op in ((self.retry_button, "retry_task"), (self.cancel_button, "cancel_task"),
                      (self.priority_button, "set_priority")):
            b.setToolTip("" if self.bridge.allows(op) else self.bridge.why_not(op))
        if not terminal:
            self._follow()
        self.loaded.emit(t)

    def _units(self, metrics: list[Row]) -> None:
        names = sorted({m["name"] for m in metrics})[:p.MAX_METRICS]
        serial = self._serial

        def done(data: Any, error: str | None) -> None:
            if self._gone() or serial != self._serial or error is not None or not isinstance(data, dict):
                return
            for m in metrics:
                info = data.get(m["name"])
                m["unit"] = info.get("unit", "") if isinstance(info, dict) else ""
            self.metrics.set_rows(metrics)

        self.bridge.call_async("metric_info", {"names": names}, done)

    def _on_tasks(self, batch: list[Row]) -> None:
        if self.task_id is None or self.task is None:
            return
        for s in batch:
            if s.get("task_id") != self.task_id:
                continue
            before = (self.task.get("status"), self.task.get("attempt"))
            self.task.update({k: s[k] for k in ("status", "worker_id", "attempt", "priority", "why", "start_time",
                                                "end_time", "error") if k in s})
            if (s.get("status"), s.get("attempt")) != before:
                # An attempt started or ended: its row, metrics and log are there to read.
                self.reload()
                self._follow()

    # -- the log ----------------------------------------------------------------------------------

    def _ended(self) -> bool:
        return self.task is not None and self.task.get("status") in p.TERMINAL_STATUSES

    def poll_logs(self) -> None:
        """Ask for each stream's next bytes (one request in flight per stream)."""
        if self.task_id is None or not self.isVisible():
            self._timer.stop()  # showEvent starts it again
            return
        if all(s.complete or s.fallback for s in self._streams.values()) and self._ended():
            self._timer.stop()
            return
        for s in self._streams.values():
            if not s.busy and not s.complete and not s.fallback:
                self._read(s)

    def _read(self, s: _Stream) -> None:
        serial = self._serial
        args: dict[str, Any] = {"task_id": self.task_id, "stream": s.name, "offset": s.offset}
        if s.attempt:
            args["attempt"] = s.attempt
        s.busy = True

        def done(data: Any, error: str | None) -> None:
            if self._gone() or serial != self._serial:
                return  # destroyed, or another task is shown now (its streams were reset)
            s.busy = False
            if error is not None:
                self.log_note.setText(error)
                return
            self._take(s, data)

        if not self.bridge.call_async("get_log", args, done):
            s.busy = False

    def _take(self, s: _Stream, d: Row) -> None:
        attempt = int(d.get("attempt") or 0)
        task_attempt = int((self.task or {}).get("attempt") or 0)
        if s.attempt and task_attempt > s.attempt:
            # A newer attempt started (a retry): follow it from its start.
            s.reset(task_attempt)
            return
        if not attempt:
            # No log kept for this task (yet): once it has ended, its stored tails are all there is.
            if self._ended():
                s.empty_polls += 1
                if s.empty_polls >= NO_LOG_POLLS:
                    self._show_tails(s)
            return
        s.attempt = attempt
        chunk = d.get("data") or b""
        if isinstance(chunk, str):
            chunk = chunk.encode()
        text = s.decoder.decode(chunk, final=bool(d.get("complete")) and d["next_offset"] >= d["size"])
        if text:
            at_end = s.view.verticalScrollBar().value() >= s.view.verticalScrollBar().maximum() - 2
            cursor = s.view.textCursor()
            cursor.movePosition(cursor.MoveOperation.End)
            cursor.insertText(text)
            if at_end:
                s.view.verticalScrollBar().setValue(s.view.verticalScrollBar().maximum())
        s.offset = int(d.get("next_offset") or s.offset)
        s.dropped = int(d.get("dropped") or 0)
        self._note()
        if d.get("complete") and s.offset >= int(d.get("size") or 0):
            s.complete = True
        elif s.offset < int(d.get("size") or 0):
            self._read(s)  # more is there already: no need to wait for the next tick

    def _show_tails(self, s: _Stream) -> None:
        s.fallback = True
        results = (self.task or {}).get("result_list") or []
        tail = ""
        for r in reversed(results):
            tail = ((r.get("raw_data") or {}).get(f"{s.name}_tail")) or ""
            if tail:
                break
        s.view.setPlainText(tail)
        self._note()

    def _note(self) -> None:
        notes = []
        for s in self._streams.values():
            if s.dropped:
                notes.append(f"{s.name}: {s.dropped:,} bytes dropped (the log keeps the start and the end; "
                             "a marker line shows where)")
            if s.fallback:
                notes.append(f"{s.name}: no log was kept; showing the tail stored with the result")
        if self.task is not None and not self._ended():
            notes.append("following the output while the task runs")
        self.log_note.setText("\n".join(notes))
        self.log_note.setVisible(bool(notes))

    def log_text(self, stream: str = "stdout") -> str:
        return self._streams[stream].view.toPlainText()

    # -- actions ----------------------------------------------------------------------------------

    def act(self, op: str, verb: str, extra: dict[str, Any] | None = None) -> bool:
        if self.task_id is None:
            return False
        errors: list[str] = []
        self.bridge.errorRaised.connect(errors.append)
        try:
            data = self.bridge.call(op, {"task_id": self.task_id, **(extra or {})})
        finally:
            self.bridge.errorRaised.disconnect(errors.append)
        text = f"Cannot {verb}: {errors[-1]}" if data is None and errors else \
            f"Cannot {verb}" if data is None else f"Done: {verb}"
        self.message.setText(text)
        self.message.show()
        self.messageShown.emit(text)
        if data is not None:
            self.reload()
            self._follow()
        return data is not None

    def set_priority(self, value: int | None = None) -> bool:
        if value is None:
            current = int((self.task or {}).get("priority") or 0)
            value, ok = QInputDialog.getInt(self, "Set priority", "Priority (higher runs first):", current,
                                            -p.MAX_PRIORITY, p.MAX_PRIORITY)
            if not ok:
                return False
        return self.act("set_priority", "set the priority", {"priority": value})

    def copy_id(self) -> None:
        if self.task_id:
            QGuiApplication.clipboard().setText(self.task_id)
            self.message.setText("Copied the task id")
            self.message.show()
