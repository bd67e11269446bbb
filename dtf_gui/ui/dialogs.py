"""Dialogs: a new command task; adding test machines (a join command); about (the coordinator's key)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
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


# create_token's arguments -> its answer, or None when refused (the bridge has shown why).
MakeToken = Callable[[int, float, list[str]], "dict[str, Any] | None"]


class AddMachinesDialog(QDialog):
    """One command to paste on each new test machine: `dtf-agent --join <token>`. The token carries the
    coordinator's address and key (the agent pins it) and a secret that enrolls the agent without a
    click, for a number of machines and a time."""

    def __init__(self, make_token: MakeToken, seen: list[dict[str, Any]] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.make_token = make_token
        self.setWindowTitle("Add test machines")
        self.setObjectName("addMachinesDialog")
        self.setMinimumWidth(720)
        lay = QVBoxLayout(self)
        intro = QLabel("Run this command on each test machine (with DTF installed). The machine joins this "
                       "coordinator and is accepted at once, no click needed.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        row = QHBoxLayout()
        self.command = QLineEdit()
        self.command.setObjectName("joinCommand")
        self.command.setReadOnly(True)
        self.command.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command.setCursorPosition(0)
        row.addWidget(self.command, 1)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("copyJoinCommand")
        self.copy_button.clicked.connect(self.copy)
        row.addWidget(self.copy_button)
        lay.addLayout(row)
        self.validity = QLabel()
        self.validity.setObjectName("joinValidity")
        self.validity.setWordWrap(True)
        lay.addWidget(self.validity)

        form = QFormLayout()
        self.uses = QSpinBox()
        self.uses.setRange(1, 1000)
        self.uses.setValue(10)
        self.uses.setSuffix(" machines")
        self.hours = QDoubleSpinBox()
        self.hours.setRange(0.25, 24 * 30)
        self.hours.setDecimals(2)
        self.hours.setValue(8)
        self.hours.setSuffix(" h")
        self.tags = QLineEdit()
        self.tags.setPlaceholderText("optional: tags these machines get, e.g. gpu, lab-2")
        form.addRow("Good for", self.uses)
        form.addRow("Valid for", self.hours)
        form.addRow("Tags", self.tags)
        lay.addLayout(form)
        self.remake = QPushButton("Make a new command with these settings")
        self.remake.clicked.connect(self.refresh)
        lay.addWidget(self.remake, 0, Qt.AlignmentFlag.AlignLeft)

        self.seen = QLabel()
        self.seen.setObjectName("seenAgents")
        self.seen.setWordWrap(True)
        self.seen.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.seen)
        self.show_seen(seen or [])
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.token: dict[str, Any] | None = None
        self.refresh()

    def refresh(self) -> None:
        tags = [t.strip() for t in self.tags.text().replace(",", " ").split() if t.strip()]
        token = self.make_token(self.uses.value(), self.hours.value() * 3600.0, tags)
        self.token = token
        if not token:
            self.command.clear()
            self.validity.setText("No command: the coordinator refused to make a join token (see the status bar).")
            self.copy_button.setEnabled(False)
            return
        self.command.setText(str(token.get("command") or f"dtf-agent --join {token['token']}"))
        self.command.setCursorPosition(0)
        self.copy_button.setEnabled(True)
        expires = token.get("expires")
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires)) if expires else "?"
        uses = token.get("uses")
        self.validity.setText(f"Good for {uses} machine{'s' if uses != 1 else ''}, until {until}. "
                              "Anyone holding this command can join a machine until then: share it like a password.")

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.command.text())
        self.copy_button.setText("Copied")

    def show_seen(self, seen: list[dict[str, Any]]) -> None:
        if not seen:
            self.seen.hide()
            return
        names = ", ".join(f"{a.get('name')} ({a.get('address')})" for a in seen[:20])
        more = f" and {len(seen) - 20} more" if len(seen) > 20 else ""
        self.seen.setText(f"Agents on this network that have not joined: {names}{more}.")
        self.seen.show()


class AboutDialog(QDialog):
    """What this window is connected to, and the key to compare with what agents pin."""

    def __init__(self, identity: dict[str, Any], where: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About DTF")
        self.setObjectName("aboutDialog")
        form = QFormLayout(self)
        form.addRow(QLabel("<b>DTF</b> — distributed testing"))
        form.addRow("Coordinator", QLabel(where))
        form.addRow("Coordinator id", QLabel(str(identity.get("coordinator_id") or "")))
        self.fingerprint = QLineEdit(str(identity.get("fingerprint") or "none (plain text)"))
        self.fingerprint.setObjectName("coordinatorFingerprint")
        self.fingerprint.setReadOnly(True)
        self.fingerprint.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.fingerprint.setMinimumWidth(460)
        form.addRow("Key fingerprint", self.fingerprint)
        form.addRow("You", QLabel(f"{identity.get('name') or 'this window'} ({identity.get('role') or '?'})"))
        if identity.get("insecure"):
            warn = QLabel("INSECURE: plain-text sockets, any agent accepted.")
            warn.setStyleSheet("color: #c62828; font-weight: bold")
            form.addRow(warn)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
