"""Adding test machines: a join command to paste on each (the New task dialog is submit_dialog.py,
About is about.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt
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
