"""Help → About: what this window is, what it is connected to, the key to compare with what agents
pin, and the versions a bug report needs."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QPushButton, QWidget

from dtf_agent import protocol as p

# Distributions whose versions matter when something misbehaves (read from their metadata: importing
# pyzmq here would break the rule that the window never touches a socket library).
_DISTRIBUTIONS = ("dtf", "pyqtgraph", "numpy", "scipy", "pyzmq", "msgspec", "zeroconf")


def versions() -> dict[str, str]:
    out = {"Python": f"{platform.python_version()} ({sys.executable})", "Qt": qVersion(), "PySide6": pyside_version,
           "Protocol": f"{p.PROTOCOL_VERSION} (accepts ≥ {p.MIN_COMPATIBLE_VERSION})"}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


class AboutDialog(QDialog):
    def __init__(self, identity: dict[str, Any], where: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About DTF")
        self.setObjectName("aboutDialog")
        form = QFormLayout(self)
        form.addRow(QLabel("<b>DTF</b> — distributed testing and benchmarking"))
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
        self.versions = versions()
        for name, version in self.versions.items():
            label = QLabel(version)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(name, label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        copy = QPushButton("Copy versions")
        copy.clicked.connect(self.copy_versions)
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def text(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.versions.items())

    def copy_versions(self) -> None:
        QGuiApplication.clipboard().setText(self.text())
