"""Submissions the window hands to the real `dtf` command (pytest runs, plans, bundle commands), so
they behave exactly as they do from a terminal, pointed at the window's own coordinator.

:func:`cli_target` says how a `dtf` process reaches the coordinator the window is on: its client
endpoint (``--coordinator``) and the key the window itself uses (embedded: this home's admin key,
through ``DTF_HOME``; remote: the key file the window was opened with, ``--key``). :class:`CliRuns`
owns the processes: one per window, found or made by :meth:`CliRuns.of`, stopped when the window
closes (Ctrl-C first, so `dtf pytest` cancels its shards, then a kill).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment

# The seconds a `dtf` process gets to finish after Ctrl-C (cancelling its tasks) before it is killed.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class CliTarget:
    """How a `dtf` process reaches the window's coordinator."""

    endpoint: str  # the client endpoint, for --coordinator
    global_args: tuple[str, ...] = ()  # before the command: --key FILE
    env: dict[str, str] = field(default_factory=dict)  # set in the process's environment
    unset: tuple[str, ...] = ()  # removed from it


def cli_target(coordinator: Any) -> CliTarget:
    """From the bridge's backend (``bridge.coordinator``): an embedded Coordinator has a ``home``
    (its admin key is there); a RemoteCoordinator has the ``credentials`` it was opened with (None:
    plain text, an --insecure coordinator)."""
    endpoint = coordinator.endpoint("clients")
    home = getattr(coordinator, "home", None)
    if home is not None:
        # This home's admin key, as `dtf` finds it with nothing typed; a DTF_CLIENT_KEY of the
        # engineer's shell would be for another coordinator.
        return CliTarget(endpoint, env={"DTF_HOME": str(home)}, unset=("DTF_CLIENT_KEY",))
    creds = getattr(coordinator, "credentials", None)
    source = getattr(creds, "source", "") if creds is not None else ""
    if source:
        return CliTarget(endpoint, global_args=("--key", str(source)), unset=("DTF_CLIENT_KEY",))
    return CliTarget(endpoint)


def dtf_argv(target: CliTarget, command: Sequence[str], options: Sequence[str] = (),
             rest: Sequence[str] = ()) -> list[str]:
    """``python -m dtf_gui.cli [--key K] COMMAND... --coordinator E OPTIONS... REST...``: this
    interpreter, so the process runs the same DTF as the window."""
    return [sys.executable, "-m", "dtf_gui.cli", *target.global_args, *command,
            "--coordinator", target.endpoint, *options, *rest]


def shown_command(argv: Sequence[str]) -> str:
    """The command line as the engineer would type it (``dtf ...``), for the output pane."""
    args = list(argv)
    if args[1:3] == ["-m", "dtf_gui.cli"]:
        args = ["dtf", *args[3:]]
    return shlex.join(args)


def submit_options(*, command: str, tags: Sequence[str] = (), worker: str = "", priority: int | None = None,
                   timeout: float | None = None, retries: int | None = None, depends_on: Sequence[str] = (),
                   count: int = 1, test_id: str = "", bundle: str = "") -> list[str]:
    """`dtf submit`'s options for one command task (repeated ``count`` times)."""
    out = ["--command", command]
    for tag in tags:
        out += ["--tag", tag]
    if worker:
        out += ["--worker", worker]
    if priority is not None:
        out += ["--priority", str(priority)]
    if timeout is not None:
        out += ["--timeout", f"{timeout:g}"]
    if retries is not None:
        out += ["--retries", str(retries)]
    for dep in depends_on:
        out += ["--depends-on", dep]
    if count != 1:
        out += ["--count", str(count)]
    if test_id:
        out += ["--test-id", test_id]
    if bundle:
        out += ["--bundle", bundle]
    return out


def pytest_options(*, tags: Sequence[str] = (), worker: str = "", shards: int = 0, reruns: int = 0) -> list[str]:
    """`dtf pytest`'s own options (``shards`` 0: auto); pytest's arguments follow them."""
    out: list[str] = []
    for tag in tags:
        out += ["--tag", tag]
    if worker:
        out += ["--worker", worker]
    out += ["--shards", str(shards) if shards > 0 else "auto"]
    if reruns:
        out += ["--reruns", str(reruns)]
    return out


class CliRuns(QObject):
    """The `dtf` processes one window started. :meth:`stop` ends them (the window calls it as it closes)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("dtfCliRuns")
        self._running: list[QProcess] = []

    @classmethod
    def of(cls, window: QObject | None) -> CliRuns:
        """The window's own: made on first use, as its child, and stopped when it closes (through its
        ``on_close`` hook, where it has one)."""
        if window is not None:
            found = window.findChild(CliRuns, "dtfCliRuns")
            if isinstance(found, CliRuns):
                return found
        runs = cls(window)
        on_close = getattr(window, "on_close", None)
        if callable(on_close):
            on_close(runs.stop)
        return runs

    def start(self, argv: Sequence[str], *, cwd: str, target: CliTarget) -> QProcess:
        """Start ``argv`` in ``cwd`` with the target's environment; stdout and stderr merged."""
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        for name in target.unset:
            env.remove(name)
        for name, value in target.env.items():
            env.insert(name, value)
        env.insert("PYTHONUNBUFFERED", "1")  # output shows as it is printed, not when a buffer fills
        proc.setProcessEnvironment(env)
        proc.setWorkingDirectory(cwd)
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        proc.finished.connect(lambda *_: self._forget(proc))
        proc.errorOccurred.connect(lambda err: self._forget(proc) if err == QProcess.ProcessError.FailedToStart
                                   else None)
        self._running.append(proc)
        proc.start(argv[0], list(argv[1:]))
        return proc

    def running(self) -> list[QProcess]:
        return [p for p in self._running if p.state() != QProcess.ProcessState.NotRunning]

    def _forget(self, proc: QProcess) -> None:
        if proc in self._running:
            self._running.remove(proc)

    @staticmethod
    def interrupt(proc: QProcess) -> None:
        """Ctrl-C: `dtf pytest` cancels its shards and reports; `dtf submit` and `plan run` just end."""
        pid = proc.processId()
        if pid <= 0:
            return
        if sys.platform == "win32":  # no SIGINT to another process there: ask it to end
            proc.terminate()
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Interrupt every running process, wait up to ``grace_s`` for them together, kill the rest."""
        procs = self.running()
        for proc in procs:
            self.interrupt(proc)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            # One grace for them all: each waits only for what is left of it.
            left_ms = int((deadline - time.monotonic()) * 1000)
            if not proc.waitForFinished(max(left_ms, 1)):
                proc.kill()
                proc.waitForFinished(1000)
        self._running.clear()
