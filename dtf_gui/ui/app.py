"""`dtf-gui`: the window with its embedded coordinator and a local agent; `dtf-gui --connect`: the
same window on a coordinator elsewhere (`dtf serve`), nothing embedded."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox

from dtf_agent.paths import remove_coordinator_file, write_coordinator_file
from dtf_agent.transport import hostname
from dtf_gui.coordinator.backup import BACKUP_DIR, Backups, check_database
from dtf_gui.coordinator.config import ServerSettings
from dtf_gui.coordinator.homelock import HomeLock
from dtf_gui.coordinator.local_agent import LocalAgent
from dtf_gui.coordinator.server import Coordinator
from dtf_gui.remote import RemoteError
from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.main_window import MainWindow

log = logging.getLogger(__name__)


class Session:
    """Everything one window owns: the coordinator, the local agent, and the order they stop in."""

    def __init__(self, settings: ServerSettings, home: Path, *, local_agent: bool = True,
                 local_slots: int | None = None) -> None:
        self.home = home
        # One coordinator per home, taken before the database is opened (see coordinator/homelock.py).
        self.lock = HomeLock(home, "dtf-gui").acquire()
        try:
            problem = check_database(settings.db_path, home / BACKUP_DIR)
            if problem:  # a RuntimeError: run_app shows it in a dialog
                raise RuntimeError(problem)
            self.bridge = CoordinatorBridge.embedded(settings)
            self.bridge.start()
            self.coordinator = self.bridge.coordinator
            assert isinstance(self.coordinator, Coordinator)
            info = self.coordinator.info()
            info["db"] = str(Path(info["db"]).resolve())  # absolute: `dtf backup` reads it from anywhere
            self.lock.write_info(info)
            # The same file `dtf serve` writes, so the CLI and agents on this machine find the window's
            # coordinator; only the lock's owner writes it.
            write_coordinator_file(info, home)
            db = settings.config.database
            self.backups = Backups(settings.db_path, home / BACKUP_DIR, db.backup_interval, db.backups_kept).start()
        except BaseException:
            self.lock.release()  # a window that failed to start leaves the home free
            raise
        self.agent: LocalAgent | None = None
        if local_agent:
            self.agent = LocalAgent(self.coordinator.endpoint("agents"), f"{hostname()}-local",
                                    slots=local_slots, log_path=home / "local-agent.log").start()
        self.window = MainWindow(self.bridge)
        self.window.on_close(self.close)
        self._closed = False

    def close(self) -> None:
        """Agent first (it reports what it was running), then the coordinator."""
        if self._closed:
            return
        self._closed = True
        if self.agent is not None:
            self.agent.stop()
        self.backups.stop()  # before the coordinator: no copy is left reading a closing database
        self.bridge.stop()
        remove_coordinator_file(os.getpid(), self.home)  # only if it is still ours
        self.lock.release()


class RemoteSession:
    """A window on a coordinator elsewhere: no coordinator, agent, lock or backups of its own."""

    def __init__(self, endpoint: str | None, key_file: str | None = None) -> None:
        self.bridge = CoordinatorBridge.remote_to(endpoint, key_file)  # RemoteError: address, key file
        self.bridge.start()  # RemoteError: nobody answers this key there
        try:
            self.window = MainWindow(self.bridge)
        except BaseException:
            self.bridge.stop()
            raise
        self.window.on_close(self.close)
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bridge.stop()


def _application() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    app.setApplicationName("DTF")
    icon = Path(__file__).resolve().parents[2] / "resources" / "dtf.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    return app


def _run(app: QApplication, session: Session | RemoteSession) -> int:
    session.window.show()
    # Ctrl-C in the terminal closes the window in order; the timer lets Python see the signal.
    signal.signal(signal.SIGINT, lambda *_: session.window.close())
    signal.signal(signal.SIGTERM, lambda *_: session.window.close())
    tick = QTimer()
    tick.timeout.connect(lambda: None)
    tick.start(250)
    try:
        return app.exec()
    finally:
        session.close()


def run_app(settings: ServerSettings, home: Path, *, local_agent: bool = True, local_slots: int | None = None) -> int:
    app = _application()
    try:
        session = Session(settings, home, local_agent=local_agent, local_slots=local_slots)
    except RuntimeError as exc:  # a port in use, an unloadable processor ...: say so, do not trace back
        print(f"dtf-gui: {exc}", file=sys.stderr)
        QMessageBox.critical(None, "DTF could not start", str(exc))
        return 1
    return _run(app, session)


def run_remote(endpoint: str | None, key_file: str | None = None) -> int:
    """`dtf-gui --connect tcp://HOST:PORT [--key FILE]`: the window on a coordinator elsewhere.
    ``endpoint`` may be None when the key file names the coordinator's address. Returns the exit status."""
    app = _application()
    try:
        session = RemoteSession(endpoint, key_file)
    except RemoteError as exc:
        print(f"dtf-gui: {exc}", file=sys.stderr)
        QMessageBox.critical(None, "DTF could not connect", str(exc))
        return 1
    return _run(app, session)
