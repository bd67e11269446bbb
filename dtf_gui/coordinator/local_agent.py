"""The window's (or a test's) own agent on this machine: a child process with an owner that stops it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


# The log of the window's agent is rolled over at a start once it is this big (one older copy kept).
_ROLL_BYTES = 10 * 1024 * 1024


def _roll(path: Path) -> None:
    try:
        if path.stat().st_size > _ROLL_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except OSError:
        pass  # none yet, or not ours to move: appended to as it is


class LocalAgent:
    def __init__(self, agent_endpoint: str, worker_id: str, *, slots: int | None = None,
                 log_path: Path | None = None, extra_args: list[str] | None = None) -> None:
        self.cmd = [sys.executable, "-m", "dtf_agent.cli", "--coordinator", agent_endpoint, "--worker-id", worker_id]
        if slots:
            self.cmd += ["--slots", str(slots)]
        # Its output goes to ``log_path`` (kept whole: a crash's traceback included), so not also to a
        # rotated file of its own under $DTF_HOME/logs/.
        if log_path is not None:
            self.cmd.append("--no-log-file")
        self.cmd += extra_args or []
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> LocalAgent:
        if self.log_path is not None:
            _roll(self.log_path)
        self._log = open(self.log_path, "ab") if self.log_path else None  # closed in stop()
        out = self._log if self._log is not None else subprocess.DEVNULL
        # Its own session: a Ctrl-C in the terminal reaches the window, which then stops the agent in order.
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        log.info("local agent started (pid %d)", self.proc.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the agent kills its running tasks and says goodbye), then SIGKILL the group if needed."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("local agent did not stop in %.0f s; killing its process group", timeout)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode
