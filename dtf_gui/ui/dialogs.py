"""Dialogs: a new command task."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)


class NewTaskDialog(QDialog):
    submitted = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New task")
        self.setObjectName("newTaskDialog")
        form = QFormLayout(self)
        self.command = QLineEdit()
        self.command.setObjectName("commandEdit")
        self.command.setPlaceholderText("e.g. pytest -q tests/  or  ./bench.sh --size 1G")
        self.priority = QSpinBox()
        self.priority.setRange(0, 100)
        self.priority.setValue(5)
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(0, 7 * 24 * 3600)
        self.timeout.setDecimals(0)
        self.timeout.setSpecialValueText("none")
        self.timeout.setSuffix(" s")
        self.test_id = QLineEdit()
        self.test_id.setPlaceholderText("optional: groups results of the same test")
        self.error = QLabel()
        self.error.setStyleSheet("color: #c62828")
        form.addRow("Command", self.command)
        form.addRow("Priority", self.priority)
        form.addRow("Timeout", self.timeout)
        form.addRow("Test id", self.test_id)
        form.addRow(self.error)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Submit")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "command", "command": self.command.text().strip(),
                               "priority": self.priority.value()}
        if self.timeout.value() > 0:
            out["timeout"] = float(self.timeout.value())
        if self.test_id.text().strip():
            out["test_id"] = self.test_id.text().strip()
        return out

    def _accept(self) -> None:
        if not self.command.text().strip():
            self.error.setText("Type the command to run.")
            return
        self.submitted.emit(self.fields())
        self.accept()
