"""`dtf-gui`: the window with its embedded coordinator and a local agent; `dtf-gui --connect`: the
same window on a coordinator elsewhere (`dtf serve`), nothing embedded.

A start that fails says why in a dialog (and on stderr) and offers the way out where there is one
(:func:`start_session`): a port in use names the process holding it and offers free ports; another
coordinator on this home is offered to be opened remotely instead. The choice is a callable, so a
test answers it without a modal dialog.
"""

from __future__ import annotations

import dataclasses
import errno
import html
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil
from pyqtgraph.util.garbage_collector import GarbageCollector
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from dtf_agent import keys
from dtf_agent.paths import dtf_home, remove_coordinator_file, write_coordinator_file
from dtf_agent.transport import hostname
from dtf_gui.coordinator.backup import BACKUP_DIR, Backups, check_database
from dtf_gui.coordinator.config import ServerSettings
from dtf_gui.coordinator.homelock import HomeLock, HomeLockError
from dtf_gui.coordinator.local_agent import LocalAgent
from dtf_gui.coordinator.server import Coordinator
from dtf_gui.remote import RemoteCoordinator, RemoteError
from dtf_gui.ui.bridge import CoordinatorBridge
from dtf_gui.ui.main_window import MainWindow
from dtf_gui.ui.theme import apply_theme

log = logging.getLogger(__name__)

_collector: GarbageCollector | None = None  # see _application

# Where a window remembers its docks and size (QSettings, INI), in the DTF home.
WINDOW_SETTINGS = "window.ini"


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
        self.window = MainWindow(self.bridge, settings_path=home / WINDOW_SETTINGS)
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
    """A window on a coordinator elsewhere: no coordinator, agent, lock or backups of its own.
    ``plain``: no key at all (an --insecure coordinator), whatever key files lie around."""

    def __init__(self, endpoint: str | None, key_file: str | None = None, *, plain: bool = False) -> None:
        if plain:
            if not endpoint:
                raise RemoteError("no coordinator address")
            address = endpoint
            self.bridge = CoordinatorBridge(
                lambda sinks: RemoteCoordinator(address, credentials=None, event_sinks=sinks), remote=True)
        else:
            self.bridge = CoordinatorBridge.remote_to(endpoint, key_file)  # RemoteError: address, key file
        self.bridge.start()  # RemoteError: nobody answers this key there
        try:
            # The layout of this machine's windows, whichever coordinator they show.
            self.window = MainWindow(self.bridge, settings_path=dtf_home() / WINDOW_SETTINGS)
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
    apply_theme(app)
    # Python's cyclic GC runs in whichever thread allocates: the coordinator loop or a bridge reader
    # could finalize a window's dropped Qt object (a timer, a model) off the GUI thread, which crashes
    # Qt. Collection moves to a timer in the GUI thread (pyqtgraph's collector, kept by the app).
    global _collector
    if _collector is None:
        _collector = GarbageCollector(interval=1.0)
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


# -- start errors ----------------------------------------------------------------------------------

FREE_PORTS, OPEN_REMOTE, QUIT = "free_ports", "open_remote", "quit"
_ADDR = re.compile(r"addr='?tcp://(?P<host>[^']*?):(?P<port>\d+)'?")
_PORT_NAMES = {"agent_port": "agents", "port": "clients", "events_port": "live events"}


@dataclasses.dataclass(frozen=True)
class StartProblem:
    """Why the window could not start, and what the engineer may do about it."""

    kind: str  # "port", "home", "other"
    title: str
    text: str  # the one-line what
    advice: str  # what the choices do
    detail: str  # the error itself, for the details pane
    actions: tuple[tuple[str, str], ...]  # (choice, button label); QUIT is always one of them
    owner: dict[str, Any] = dataclasses.field(default_factory=dict)  # home: who holds it


# Shows the problem and returns the choice (one of its actions' keys).
Chooser = Callable[[StartProblem], str]


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def is_port_in_use(exc: BaseException) -> bool:
    return any(getattr(e, "errno", None) == errno.EADDRINUSE or "Address already in use" in str(e)
               for e in _causes(exc))


def busy_port(exc: BaseException, settings: ServerSettings) -> int | None:
    """The port the bind failed on: the address in ZeroMQ's message, else the first fixed port of
    the settings that something listens on."""
    for e in _causes(exc):
        m = _ADDR.search(str(e))
        if m:
            return int(m["port"])
    srv = settings.config.server
    listening = {h[0] for h in _listeners()}
    for field in _PORT_NAMES:
        port = int(getattr(srv, field))
        if port and port in listening:
            return port
    return None


def _listeners() -> list[tuple[int, int | None]]:
    """(port, pid or None) of every listening TCP socket this user may see."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):  # macOS without root: nothing to see
        return []
    return [(c.laddr.port, c.pid) for c in conns if c.status == psutil.CONN_LISTEN and c.laddr]


def port_holder(port: int) -> str:
    """Who listens on ``port``: "NAME (pid N)", or a sentence saying it cannot be told."""
    pids = {pid for p, pid in _listeners() if p == port}
    known = sorted(pid for pid in pids if pid is not None)
    if not known:
        return ("a process this window cannot see (another user's, or the system's: "
                f"`sudo ss -ltnp 'sport = :{port}'` names it)")
    holders = []
    for pid in known:
        try:
            name = psutil.Process(pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            name = "?"
        holders.append(f"{name} (pid {pid}{', this window' if pid == os.getpid() else ''})")
    return ", ".join(holders)


def free_ports(settings: ServerSettings) -> ServerSettings:
    """The same settings with every port 0: the system picks free ones."""
    server = msgspec.structs.replace(settings.config.server, port=0, agent_port=0, events_port=0)
    return dataclasses.replace(settings, config=msgspec.structs.replace(settings.config, server=server))


def port_problem(exc: BaseException, settings: ServerSettings) -> StartProblem:
    srv = settings.config.server
    port = busy_port(exc, settings)
    role = next((name for field, name in _PORT_NAMES.items() if port and getattr(srv, field) == port), "")
    if port:
        what = f"Port {port}{f' ({role})' if role else ''} on {srv.host} is already in use, by {port_holder(port)}."
    else:
        what = f"A port of this coordinator on {srv.host} is already in use (which one, the system did not say)."
    return StartProblem(
        kind="port", title="DTF: a port is in use",
        text=what,
        advice=("Use free ports: start on ports the system picks (agents, clients, live events). Tools on this "
                "machine find it through coordinator.json and agents on the LAN through mDNS; an agent set up "
                "with a fixed address and port will not. Or quit, stop the other program, and start again."),
        detail=(f"{exc}\n\nFrom the command line: dtf-gui --port 0 --agent-port 0 --events-port 0, or set "
                "server.port, server.agent_port and server.events_port in coordinator.yaml."),
        actions=((FREE_PORTS, "Use free ports"), (QUIT, "Quit")))


def home_problem(exc: HomeLockError, home: Path) -> StartProblem:
    owner = dict(exc.owner)
    endpoint = owner.get("client_endpoint")
    who = f"{owner.get('owner') or 'a coordinator'}, pid {owner.get('pid') or 'unknown'}"
    if endpoint:
        who += f", clients at {endpoint}"
        advice = ("Open it: this window connects to that coordinator (with this home's admin key) instead of "
                  "starting one of its own. Or quit, and stop the other one, or set DTF_HOME to another directory.")
        actions: tuple[tuple[str, str], ...] = ((OPEN_REMOTE, "Open it"), (QUIT, "Quit"))
    else:
        advice = ("It has not said where it listens yet (it may still be starting): quit and try again in a "
                  "moment, or stop it, or set DTF_HOME to another directory.")
        actions = ((QUIT, "Quit"),)
    return StartProblem(kind="home", title="DTF: this home has a coordinator already",
                        text=f"Another DTF coordinator ({who}) already uses {home}.", advice=advice,
                        detail=str(exc), actions=actions, owner=owner)


def other_problem(exc: BaseException, title: str = "DTF could not start") -> StartProblem:
    return StartProblem(kind="other", title=title, text=str(exc), advice="", detail=f"{type(exc).__name__}: {exc}",
                        actions=((QUIT, "Quit"),))


def problem_box(problem: StartProblem, parent: QWidget | None = None) -> tuple[QMessageBox, dict[Any, str]]:
    """The dialog that shows ``problem``, and its buttons' choices (not shown: :func:`ask` runs it)."""
    box = QMessageBox(parent)
    box.setObjectName("startProblem")
    box.setIcon(QMessageBox.Icon.Warning if problem.kind in ("port", "home") else QMessageBox.Icon.Critical)
    box.setWindowTitle(problem.title)
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(f"<b>{html.escape(problem.text)}</b>")
    if problem.advice:
        box.setInformativeText(problem.advice)
    # Wide enough that the advice reads as a paragraph, not a column.
    box.setStyleSheet("QLabel#qt_msgbox_label, QLabel#qt_msgbox_informativelabel { min-width: 460px; }")
    box.setDetailedText(problem.detail)
    choices: dict[Any, str] = {}
    for choice, label in problem.actions:
        role = QMessageBox.ButtonRole.RejectRole if choice == QUIT else QMessageBox.ButtonRole.AcceptRole
        choices[box.addButton(label, role)] = choice
    first = next(b for b, c in choices.items() if c == problem.actions[0][0])
    box.setDefaultButton(first)
    return box, choices


def ask(problem: StartProblem) -> str:
    box, choices = problem_box(problem)
    box.exec()
    return choices.get(box.clickedButton(), QUIT)


def _remote_on(owner: dict[str, Any], home: Path) -> RemoteSession:
    """A window on the coordinator that holds ``home``: its client endpoint, this home's admin key
    (plain text when it runs --insecure)."""
    if owner.get("insecure"):
        return RemoteSession(owner["client_endpoint"], plain=True)
    admin = home / keys.ADMIN_KEY
    return RemoteSession(owner["client_endpoint"], str(admin) if admin.exists() else None)


def start_session(settings: ServerSettings, home: Path, *, local_agent: bool = True, local_slots: int | None = None,
                  choose: Chooser = ask) -> Session | RemoteSession | None:
    """A started session, or None when the engineer chose to quit (every problem is also said on
    stderr). Free ports start again; another coordinator on the home is opened remotely."""
    for _ in range(3):  # free ports cannot be in use, but a second, different problem may follow
        try:
            return Session(settings, home, local_agent=local_agent, local_slots=local_slots)
        except HomeLockError as exc:
            problem = home_problem(exc, home)
        except RuntimeError as exc:  # a port in use, an unloadable processor, a damaged database ...
            problem = port_problem(exc, settings) if is_port_in_use(exc) else other_problem(exc)
        print(f"dtf-gui: {problem.text}", file=sys.stderr)
        choice = choose(problem)
        if choice == FREE_PORTS:
            settings = free_ports(settings)
            print("dtf-gui: starting again on free ports", file=sys.stderr)
            continue
        if choice == OPEN_REMOTE:
            print(f"dtf-gui: opening the coordinator at {problem.owner['client_endpoint']}", file=sys.stderr)
            try:
                return _remote_on(problem.owner, home)
            except RemoteError as exc:
                print(f"dtf-gui: {exc}", file=sys.stderr)
                choose(other_problem(exc, "DTF could not connect"))
        return None
    return None


def run_app(settings: ServerSettings, home: Path, *, local_agent: bool = True, local_slots: int | None = None,
            choose: Chooser = ask) -> int:
    app = _application()
    session = start_session(settings, home, local_agent=local_agent, local_slots=local_slots, choose=choose)
    if session is None:
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
        ask(other_problem(exc, "DTF could not connect"))
        return 1
    return _run(app, session)
