"""Run a ``command`` task in its own process group, so a timeout or cancel kills the whole tree.

A small waiter thread per running task blocks in ``wait`` and hands the finished outcome back to
the agent's loop through a callback; it never touches the agent's socket (libzmq sockets are
not thread-safe) and never lets an exception die silently.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import psutil

from dtf_agent.protocol import MAX_COMMAND, RunSpec
from dtf_agent.runners.resultfile import read_result_file

log = logging.getLogger(__name__)

_SHELL_CHARS = set("|&;<>()$`\\\"'*?[]#~=%{}\n")
# The separators shlex.split (and the shell) use; str.split() would also split at Unicode spaces
# (a no-break space in a file name), which neither of them does.
_WORD = re.compile(r"[^ \t\r\n]+")
# Longest command accepted, in UTF-8 bytes (a list command: all its arguments together). Far above
# what exec takes anyway (Linux: 128 KiB per argument, ARG_MAX for all); a bound keeps a runaway
# generated command from costing the agent memory and time before exec refuses it.
MAX_COMMAND_BYTES = MAX_COMMAND
KILL_GRACE_S = 2.0
# execution.shell's default: what runs a command that uses shell syntax.
DEFAULT_SHELL = "/bin/sh"


@dataclass
class Outcome:
    """What the agent turns into a ResultRecord."""

    task_id: str
    status: Literal["success", "failure"]
    start_time: float
    end_time: float
    exit_code: int | None = None
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    stdout_tail: str = ""
    stderr_tail: str = ""
    # A pytest shard's per-test outcomes (dicts of protocol.TestOutcome's fields).
    tests: list[dict[str, Any]] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)


def _too_long(command: str | list[Any]) -> str:
    """Why ``command`` is refused for its size, or "" when it is not."""
    if isinstance(command, list):
        size = sum(len(str(a).encode("utf-8", "surrogatepass")) for a in command)
    else:
        # A character is at least one byte: past the limit in characters, no need to encode.
        size = len(command) if len(command) > MAX_COMMAND_BYTES else len(command.encode("utf-8", "surrogatepass"))
    if size <= MAX_COMMAND_BYTES:
        return ""
    return f"command is {size} bytes, over the limit of {MAX_COMMAND_BYTES} bytes (MAX_COMMAND_BYTES)"


def _argv(command: str | list[Any]) -> tuple[str | list[str], bool]:
    """A plain command is exec'd directly (one fork less than a shell); anything with shell
    syntax runs under the shell (execution.shell, /bin/sh by default), as the engineer who typed
    it expects."""
    if isinstance(command, list):
        return [str(a) for a in command], False
    if _SHELL_CHARS & set(command):
        return command, True
    # No quotes, backslashes or comments (they are shell characters), so shlex.split would only
    # split at its separators; a regex does that in linear time (shlex took minutes on a 4 MB
    # command: it grows each word one character at a time).
    return _WORD.findall(command), False


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def kill_tree(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE_S,
              known: Sequence[psutil.Process] = ()) -> None:
    """SIGTERM the task's process group and every descendant, then SIGKILL what is left.

    Descendants are collected first because a child may have left the group (setsid); the group
    kill catches the ones that were forked while we looked. ``known`` are descendants seen
    earlier: once the task's own process has exited, its orphans cannot be found from it.
    """
    descendants: list[psutil.Process] = []
    if proc.returncode is None:  # once reaped, its pid may already belong to someone else
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
    pids = {d.pid for d in descendants}
    descendants += [k for k in known if k.pid not in pids]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for child in descendants:
            try:
                child.send_signal(sig)
            except psutil.Error:
                pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            alive = _wait_gone(descendants, grace)
            if not alive:
                return
            descendants = alive
    proc.wait()
    _wait_gone(descendants, grace)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Descendants still running after ``timeout``. A zombie counts as gone: orphans are reaped by
    init, which may take its time, and waiting for that would stall every kill for the grace period."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)  # polling other processes' state; nothing to wait on
        alive = [p for p in alive if _running(p)]
    return alive


class CommandRun:
    """One running command task; ``cancel`` may be called from the agent's loop thread."""

    def __init__(
        self,
        spec: RunSpec,
        work_dir: Path,
        on_done: Callable[[Outcome], None],
        *,
        tail_bytes: int = 4096,
        default_timeout: float | None = None,
        shell: str = DEFAULT_SHELL,
        prepare: Callable[[RunSpec], RunSpec] | None = None,
    ) -> None:
        self.spec = spec
        # Held to change the spec: the task's thread fills in parameters, the agent's loop the attempt.
        self.spec_lock = threading.Lock()
        self.on_done = on_done
        self.tail_bytes = tail_bytes
        self.shell = shell
        # Run on the task's own thread before the command starts (unpacking a bundle, making its
        # virtual environment): slow work that must not stall the agent's loop. It returns the spec
        # to run (with cwd, env... filled in); an exception fails the task with its message.
        self.prepare = prepare
        self.timeout = spec.timeout if spec.timeout is not None else default_timeout
        self._cancelled = threading.Event()
        self._start_lock = threading.Lock()
        # Three files per task beside each other in the agent's work dir, not a directory each:
        # creating and removing a directory per task was a fifth of a short command's cost here.
        safe = re.sub(r"[^\w.-]", "_", spec.task_id[:40])
        base = f"task-{safe}-{os.urandom(4).hex()}"
        self._files = [work_dir / f"{base}.stdout", work_dir / f"{base}.stderr", work_dir / f"{base}.result.json"]
        # Made now, empty: the agent streams them to the coordinator from the moment the task starts.
        for path in self._files[:2]:
            path.touch()
        # Removed by cleanup(), once the agent has streamed their last bytes (it may also remove
        # more: a bundle unpacked for this task).
        self.extra_cleanup: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._tree: list[psutil.Process] = []
        self._escalate: threading.Timer | None = None
        self.start_time = time.time()
        self._thread = threading.Thread(target=self._run, name=f"task-{spec.task_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Non-blocking (the agent's loop calls it): SIGTERM now, SIGKILL after the grace period."""
        with self._start_lock:
            self._cancelled.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            self._tree, self._escalate = start_terminating(proc)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def log_files(self) -> dict[str, Path]:
        """The files the task's stdout and stderr go to (they grow while it runs)."""
        return {"stdout": self._files[0], "stderr": self._files[1]}

    def progress(self) -> tuple[int, int, int, str] | None:
        """A command has no progress to tell (a pytest shard has)."""
        return None

    def cleanup(self) -> None:
        """Remove the task's files; the agent calls it after it has streamed the last of them."""
        _cleanup(self._files)
        for extra in self.extra_cleanup:
            shutil.rmtree(extra, ignore_errors=True)

    def _run(self) -> None:
        try:
            outcome = self._prepared()
            if outcome is None:
                outcome = self._execute()
        except Exception as exc:
            log.exception("task %s: runner failed", self.spec.task_id, extra={"task_id": self.spec.task_id})
            outcome = Outcome(self.spec.task_id, "failure", self.start_time, time.time(),
                              error=f"runner error: {type(exc).__name__}: {exc}")
        if self._escalate is not None:
            self._escalate.cancel()  # the tree is gone; its pids must not be signalled later
        self.on_done(outcome)

    def _prepared(self) -> Outcome | None:
        """Run ``prepare``; the failed outcome when it refused, None when the command may start."""
        if self.prepare is None:
            return None
        try:
            prepared = self.prepare(self.spec)
            # Only its parameters: the agent's loop may have raised the attempt meanwhile (a resent Assign).
            with self.spec_lock:
                self.spec = msgspec.structs.replace(self.spec, parameters=prepared.parameters)
        except Exception as exc:  # noqa: BLE001 - a bundle that cannot be had, a venv pip cannot make: the task's failure
            log.warning("task %s: cannot prepare it: %s", self.spec.task_id, exc, extra={"task_id": self.spec.task_id})
            return Outcome(self.spec.task_id, "failure", self.start_time, time.time(),
                           error=f"cannot prepare the task: {exc}")
        return None

    def _execute(self) -> Outcome:
        params: dict[str, Any] = self.spec.parameters
        command = params.get("command")
        if not command:
            return Outcome(self.spec.task_id, "failure", self.start_time, time.time(),
                           error="command task has no 'command' parameter")
        if not isinstance(command, (str, list)):
            return Outcome(self.spec.task_id, "failure", self.start_time, time.time(),
                           error=f"'command' must be a string or a list of arguments, got {type(command).__name__}")
        too_long = _too_long(command)
        if too_long:
            return Outcome(self.spec.task_id, "failure", self.start_time, time.time(), error=too_long)
        argv, shell = _argv(command)
        out_path, err_path, result_file = self._files
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (params.get("env") or {}).items()})
        env["DTF_RESULT_FILE"] = str(result_file)
        env["DTF_TASK_ID"] = self.spec.task_id
        env["DTF_ATTEMPT"] = str(self.spec.attempt)
        cwd = params.get("cwd") or None
        self.start_time = time.time()
        t0 = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            # The start is under the lock that cancel() takes: a cancel either comes first (the
            # command never starts) or finds self.proc set and signals it; none slips in between.
            self._start_lock.acquire()
            if self._cancelled.is_set():
                self._start_lock.release()
                return Outcome(self.spec.task_id, "failure", self.start_time, time.time(), error="cancelled")
            try:
                try:
                    self.proc = subprocess.Popen(
                        argv, shell=shell, executable=self.shell if shell else None, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True,
                    )
                except FileNotFoundError:
                    if shell or not isinstance(command, str):
                        raise
                    # No such program: a shell builtin (`exit 3`, `cd dir`, `ulimit -a`) has no shell
                    # syntax to give it away, and the engineer who typed it expects the shell to run it.
                    # Nothing ran, so trying again under the shell is safe; it also words a missing
                    # program the usual way (exit code 127, "not found" on stderr).
                    self.proc = subprocess.Popen(
                        command, shell=True, executable=self.shell, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=err, env=env, cwd=cwd, start_new_session=True,
                    )
            except OSError as exc:
                return Outcome(self.spec.task_id, "failure", self.start_time, time.time(),
                               error=f"cannot start {command!r}: {exc}")
            finally:
                self._start_lock.release()
            error = ""
            try:
                code: int | None = self.proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc)
                code = self.proc.returncode
                error = f"timed out after {self.timeout:g} s; process tree killed"
            if self._cancelled.is_set():
                # The group got SIGTERM from cancel(); make sure nothing it forked survives.
                kill_tree(self.proc, known=self._tree)
                error = "cancelled"
            elif not error:
                # A command may exit and leave background children in its group behind.
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        end = self.start_time + (time.perf_counter() - t0)
        found = read_result_file(result_file)
        metrics, note = found.metrics, found.note
        if not error and code != 0:
            error = f"exit code {code}"
        if note:
            error = f"{error}; {note}" if error else note
        ok = code == 0 and not error.startswith(("timed out", "cancelled"))
        status: Literal["success", "failure"] = "success" if ok else "failure"
        outcome = Outcome(
            self.spec.task_id, status, self.start_time, end, exit_code=code, error=error if status != "success"
            or note else "", metrics=metrics, stdout_tail=_tail(out_path, self.tail_bytes),
            stderr_tail=_tail(err_path, self.tail_bytes), tests=found.tests, units=found.units,
            directions=found.directions,
        )
        return outcome


def start_terminating(proc: subprocess.Popen[bytes]) -> tuple[list[psutil.Process], threading.Timer]:
    """A cancel, without blocking: SIGTERM the task's tree now and SIGKILL it after the grace period.
    Returns the tree as seen now, and the timer (cancel it once the tree is gone, so its pids are
    never signalled after they may belong to others)."""
    # Remember the tree while the task's process still lives: once it exits, a child that left the
    # group (setsid) is an orphan nothing could find any more, and it would outlive the cancel.
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    _signal_tree(proc, tree, signal.SIGTERM)
    # The waiter thread sits in wait(): a task that ignores SIGTERM would keep it there for ever,
    # so a timer escalates.
    escalate = threading.Timer(KILL_GRACE_S, _signal_tree, (proc, tree, signal.SIGKILL))
    escalate.daemon = True
    escalate.start()
    return tree, escalate


def _signal_tree(proc: subprocess.Popen[bytes], tree: Sequence[psutil.Process], sig: int) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for child in tree:
        try:
            child.send_signal(sig)  # psutil checks the pid still names the same process
        except psutil.Error:
            pass


def _cleanup(files: Sequence[Path]) -> None:
    for path in files:
        try:
            path.unlink()
        except OSError:
            pass  # never created (the command did not start, or wrote no result file)
