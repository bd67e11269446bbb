"""Run a ``pytest`` task: one shard of a suite, all its tests in one pytest process where it can.

The shard's pytest loads :mod:`dtf_agent.runners.pytest_plugin`, which keeps exactly the listed
node ids and writes one JSON line per event to a report file. The runner reads that file as the
tests go (for progress) and once more when pytest ends. A test that kills pytest (``os._exit``, a
signal, a segfault) is "crashed", and pytest starts again with the tests that have not run yet,
appending to the same log files. Timeout and cancel work as for a command task: the process group
and every descendant are killed (command.py's helpers).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

import msgspec
import psutil

from dtf_agent.protocol import FAILING_OUTCOMES, MAX_NODEID, RunSpec
from dtf_agent.runners.command import Outcome, _tail, kill_tree, start_terminating
from dtf_agent.runners.resultfile import parse_result_data

log = logging.getLogger(__name__)

PLUGIN_SOURCE = Path(__file__).with_name("pytest_plugin.py")
# The plugin goes to the shard's interpreter as a copy under a name of its own, alone in a folder
# on PYTHONPATH. Putting the folder that holds dtf_agent there instead would, for an installed
# agent, put the agent's whole site-packages (its pytest among them) ahead of the suite's own
# packages, and would shadow the dtf_agent of a suite that has another version of dtf installed.
PLUGIN_MODULE = "_dtf_pytest_plugin"
# The whole `tests` list of one result, in UTF-8 bytes, far inside the frame limit (16 MiB).
MAX_TESTS_BYTES = 8 * 1024 * 1024
CRASH_STDERR_BYTES = 2048
EXIT_STDERR_BYTES = 4096
NOT_FOUND = "not found: the test was not collected on this machine"
# As in pytest_plugin.py (see there): a teardown error besides the test's own outcome.
TEARDOWN_AFTER_FAILURE = "\n\n--- error in teardown ---\n"
TEARDOWN_AFTER_PASS = "--- error in teardown; the test itself passed ---\n"
# How often the waiter thread looks at the report while pytest runs, and how long a pytest that
# has reported the end of its session may take to exit.
WAIT_STEP_S = 0.5
EXIT_GRACE_S = 10.0
_EXIT_NAMES = {1: "tests failed", 2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}


def bound(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, keeping head and tail. The same rule as
    pytest_plugin.bound, which cannot be imported here: that module imports pytest, which an
    agent need not have."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    marker = f"\n[... cut in the middle: {len(data)} bytes in all ...]\n".encode()
    if limit <= 2 * len(marker):
        return data[:max(0, limit)].decode("utf-8", "ignore")
    keep = limit - len(marker)
    head, tail = data[: keep // 2], data[len(data) - (keep - keep // 2):]
    return head.decode("utf-8", "ignore") + marker.decode() + tail.decode("utf-8", "ignore")


def _test(nodeid: str, outcome: str, longrepr: str = "", *, duration: float = 0.0, output: str = "") -> dict[str, Any]:
    return {"nodeid": nodeid, "outcome": outcome, "duration": duration, "longrepr": longrepr, "output": output}


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _under(nodeid: str, node: str) -> bool:
    """Whether ``nodeid`` is ``node`` or inside it (a module, a class, a package directory)."""
    if not node:
        return True
    return nodeid == node or nodeid.startswith(node + "::") or nodeid.startswith(node.rstrip("/") + "/")


def _how_it_ended(code: int | None, *, pytest_meaning: bool = True) -> str:
    """``pytest_meaning``: name pytest's exit codes (not for a test that called os._exit(3))."""
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    name = _EXIT_NAMES.get(code) if pytest_meaning else None
    return f"exit code {code} ({name})" if name else f"exit code {code}"


def _tail_since(path: Path, start: int, limit: int) -> str:
    """The last ``limit`` bytes written to ``path`` after offset ``start`` (one pytest session's)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _cap(sizes: list[int], room: int) -> int:
    """The largest per-item cap with sum(min(size, cap)) <= room (water-filling)."""
    if room <= 0:
        return 0
    left = len(sizes)
    for size in sorted(sizes):
        if size * left > room:
            return room // left
        room -= size
        left -= 1
    return max(sizes, default=0)


def fit(tests: list[dict[str, Any]], limit: int = MAX_TESTS_BYTES) -> None:
    """Shrink outputs, then longreprs, in place, until the list's texts fit in ``limit`` bytes.
    The largest are cut first, to the same size each; small ones are left whole."""
    def size(text: str) -> int:
        return len(text.encode("utf-8", "replace"))

    room = limit - sum(size(t["nodeid"]) + 100 for t in tests)  # 100: keys, outcome, duration
    for key, other in (("output", "longrepr"), ("longrepr", "output")):
        sizes = [size(t[key]) for t in tests]
        rest = sum(size(t[other]) for t in tests)
        if sum(sizes) + rest <= room:
            return
        cap = _cap(sizes, room - rest)
        for t, s in zip(tests, sizes, strict=True):
            if s > cap:
                t[key] = bound(t[key], cap)


@dataclass
class _Session:
    """One pytest process of the shard."""

    report: Path
    stderr_start: int
    pos: int = 0
    # Started and not yet done, in the order they started (a dict as an ordered set): with xdist
    # several run at once.
    open: dict[str, float] = field(default_factory=dict)
    any_start: bool = False
    exitstatus: int | None = None  # from the plugin's "finish": pytest ended in order


class PytestRun:
    """One running pytest shard; ``cancel`` and ``progress`` may be called from the agent's loop
    thread while the waiter thread runs the shard."""

    def __init__(
        self,
        spec: RunSpec,
        work_dir: Path,
        on_done: Callable[[Outcome], None],
        *,
        tail_bytes: int = 4096,
        default_timeout: float | None = None,
        max_restarts: int = 20,
        prepare: Callable[[RunSpec], RunSpec] | None = None,
    ) -> None:
        self.spec = spec
        # Held to change the spec: the task's thread fills in parameters, the agent's loop the attempt.
        self.spec_lock = threading.Lock()
        # As for CommandRun: run on the task's own thread before pytest starts (unpacking the
        # bundle, making its virtual environment); it returns the spec to run (cwd, python, env).
        self.prepare = prepare
        self.on_done = on_done
        self.tail_bytes = tail_bytes
        self.default_timeout = default_timeout
        self.max_restarts = max_restarts
        self._cancelled = threading.Event()
        self._start_lock = threading.Lock()
        self._lock = threading.Lock()  # the report state below, shared with progress()
        safe = re.sub(r"[^\w.-]", "_", spec.task_id[:40])
        base = work_dir.absolute() / f"task-{safe}-{os.urandom(4).hex()}"
        self._base = base
        self._stdout = Path(f"{base}.stdout")
        self._stderr = Path(f"{base}.stderr")
        self._tests_file = Path(f"{base}.tests")
        self._shim = Path(f"{base}.plugin")
        self._reports: list[Path] = []
        # Removed by cleanup() too (the agent adds the directory it unpacked the bundle into).
        self.extra_cleanup: list[Path] = []
        self._setup_error = ""
        try:
            # The agent starts streaming these as soon as the run starts.
            for path in (self._stdout, self._stderr):
                path.touch()
        except OSError as exc:
            self._setup_error = f"cannot create the log files in {work_dir}: {exc}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._tree: list[psutil.Process] = []
        self._escalate: threading.Timer | None = None
        self.start_time = time.time()
        tests = spec.parameters.get("tests")
        self._order: list[str] = list(dict.fromkeys(tests)) if _valid_ids(tests) else []
        self._wanted: set[str] = set(self._order)
        self._results: dict[str, dict[str, Any]] = {}
        self._failed = 0
        self._from_missing: set[str] = set()  # resolved as "not found"; a collection report may explain them
        self._collected: dict[str, tuple[str, str]] = {}  # node -> ("error" | "skip", longrepr)
        self._modules: dict[str, dict[str, Any]] = {}  # collection errors, one entry per node
        # pytest-benchmark's measurements: node id -> metrics, and their units and directions.
        self._bench: dict[str, dict[str, float]] = {}
        self._units: dict[str, str] = {}
        self._directions: dict[str, str] = {}
        self._session: _Session | None = None
        self._thread = threading.Thread(target=self._run, name=f"task-{spec.task_id}", daemon=True)

    # -- the agent's side ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Non-blocking: SIGTERM the tree now, SIGKILL after the grace period (command.py's way)."""
        with self._start_lock:
            self._cancelled.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            self._tree, self._escalate = start_terminating(proc)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def log_files(self) -> dict[str, Path]:
        return {"stdout": self._stdout, "stderr": self._stderr}

    def progress(self) -> tuple[int, int, int, str]:
        """(tests done, failed so far, total, the test running now)."""
        with self._lock:
            self._poll()
            current = ""
            if self._session is not None and self._session.open:
                current = next(reversed(self._session.open))
            return len(self._results), self._failed, len(self._order), current

    def cleanup(self) -> None:
        """Remove every file of the run, the logs included (the agent has streamed them)."""
        self._remove_internal()
        for path in (self._stdout, self._stderr):
            try:
                path.unlink()
            except OSError:
                pass
        for extra in self.extra_cleanup:
            shutil.rmtree(extra, ignore_errors=True)

    # -- the waiter thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            outcome = self._execute()
        except Exception as exc:
            log.exception("task %s: pytest runner failed", self.spec.task_id, extra={"task_id": self.spec.task_id})
            outcome = Outcome(self.spec.task_id, "failure", self.start_time, time.time(),
                              error=f"runner error: {type(exc).__name__}: {exc}",
                              stdout_tail=_tail(self._stdout, self.tail_bytes),
                              stderr_tail=_tail(self._stderr, self.tail_bytes))
        if self._escalate is not None:
            self._escalate.cancel()  # the tree is gone; its pids must not be signalled later
        self._remove_internal()
        self.on_done(outcome)

    def _fail(self, error: str) -> Outcome:
        return Outcome(self.spec.task_id, "failure", self.start_time, time.time(), error=error)

    def _execute(self) -> Outcome:
        if self._setup_error:
            return self._fail(self._setup_error)
        if self.prepare is not None:
            try:
                prepared = self.prepare(self.spec)
                # Only its parameters: the agent's loop may have raised the attempt meanwhile (a resent Assign).
                with self.spec_lock:
                    self.spec = msgspec.structs.replace(self.spec, parameters=prepared.parameters)
            except Exception as exc:  # noqa: BLE001 - a bundle or venv that cannot be had: the task's failure
                log.warning("task %s: cannot prepare it: %s", self.spec.task_id, exc, extra={"task_id": self.spec.task_id})
                return self._fail(f"cannot prepare the task: {exc}")
        spec = self.spec  # the agent may have replaced it (cwd set after unpacking the bundle)
        params: dict[str, Any] = spec.parameters
        tests = params.get("tests")
        if not _valid_ids(tests) or not tests:
            return self._fail(f"pytest task needs 'tests': a non-empty list of node ids "
                              f"of at most {MAX_NODEID} characters")
        args = params.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return self._fail("'args' must be a list of strings")
        env_param = params.get("env") or {}
        if not isinstance(env_param, dict):
            return self._fail("'env' must be a mapping of names to values")
        python = str(params.get("python") or sys.executable)
        cwd = str(params.get("cwd") or "") or None
        timeout = spec.timeout if spec.timeout is not None else self.default_timeout
        with self._lock:
            self._order = list(dict.fromkeys(tests))
            self._wanted = set(self._order)
            # A listed file that is not here would make pytest refuse the whole command line
            # (usage error): its tests are simply not found.
            base = Path(cwd or ".")
            for nid in self._order:
                if not (base / _file_of(nid)).exists():
                    self._resolve(_test(nid, "error", NOT_FOUND))

        self._shim.mkdir(exist_ok=True)
        shutil.copyfile(PLUGIN_SOURCE, self._shim / f"{PLUGIN_MODULE}.py")
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in env_param.items()})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self._shim), env.get("PYTHONPATH", "")) if p)
        env["DTF_TASK_ID"] = spec.task_id
        env["DTF_ATTEMPT"] = str(spec.attempt)

        self.start_time = time.time()
        t0 = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        restarts = 0
        code: int | None = None
        note = ""  # why the tests left over were not run
        error = ""  # what the outcome's error starts with
        while True:
            remaining = [nid for nid in self._order if nid not in self._results]
            if not remaining:
                break
            if deadline is not None and time.monotonic() >= deadline:
                error = f"timed out after {timeout:g} s"
                note = "not run: the shard timed out"
                break
            session = self._start_session(python, remaining, args, env, cwd)
            if session is None:  # cancelled before it started
                error = "cancelled"
                break
            if isinstance(session, str):
                error = session
                note = f"not run: {session}"
                break
            proc = self.proc
            assert proc is not None
            code, timed_out = self._wait(proc, session, deadline)
            if self._cancelled.is_set():
                kill_tree(proc, known=self._tree)
                code = proc.returncode
            else:
                # pytest may have left children behind in its group.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            ended = time.time()
            with self._lock:
                self._poll()
                opened = dict(session.open)
                session.open.clear()
            if self._cancelled.is_set():
                error = "cancelled"
                break
            if timed_out:
                error = f"timed out after {timeout:g} s"
                note = "not run: the shard timed out"
                for nid, began in opened.items():
                    self._resolve_locked(_test(nid, "crashed", f"timed out: the shard's time limit ({timeout:g} s) "
                                               "ran out while this test ran; the pytest process was killed",
                                               duration=max(0.0, ended - began)))
                break
            tail = _tail_since(self._stderr, session.stderr_start, CRASH_STDERR_BYTES)
            for nid, began in opened.items():
                text = (f"crashed: the pytest process died ({_how_it_ended(code, pytest_meaning=False)}) "
                        "while running this test")
                if tail.strip():
                    text += f"\n\nlast output of pytest on stderr:\n{tail}"
                self._resolve_locked(_test(nid, "crashed", text, duration=max(0.0, ended - began)))
            left = [nid for nid in self._order if nid not in self._results]
            if not left:
                break
            if not session.any_start:
                # pytest stopped before any test (a usage error, a broken conftest, an internal
                # error): starting it again would end the same way.
                error = f"pytest exited with {_how_it_ended(code)} before running any test"
                note = f"not run: {error}"
                tail = _tail_since(self._stderr, session.stderr_start, EXIT_STDERR_BYTES)
                if not tail.strip():
                    tail = _tail(self._stdout, EXIT_STDERR_BYTES)
                if tail.strip():
                    note += f"\n\n{tail}"
                break
            if session.exitstatus is not None:
                # pytest ended in order and did not run these: the shard's own arguments
                # deselected them, or stopped the session early (-x, --maxfail).
                note = (f"not run: pytest ended ({_how_it_ended(code)}) without running this test: "
                        "deselected by the shard's arguments, or the session stopped early (-x, --maxfail)")
                break
            if restarts >= self.max_restarts:
                error = f"pytest died {restarts + 1} times; gave up after {self.max_restarts} restarts"
                note = f"not run: {error}"
                break
            restarts += 1
            how = _how_it_ended(code, pytest_meaning=False)
            self._log_note(f"pytest died ({how}) with {len(left)} tests left to run; "
                           f"starting it again (restart {restarts} of at most {self.max_restarts})")

        end = self.start_time + (time.perf_counter() - t0)
        with self._lock:
            self._poll()
            if error != "cancelled":
                for nid in self._order:
                    if nid not in self._results:
                        self._resolve(_test(nid, "error", note or "not run"))
            tests = [dict(self._results[nid]) for nid in self._order if nid in self._results]
            for t in tests:
                if t["nodeid"] in self._bench:
                    t["metrics"] = self._bench[t["nodeid"]]
            tests += [dict(entry) for entry in self._modules.values()]
        fit(tests)
        return self._outcome(tests, code, error, restarts, end)

    def _outcome(self, tests: list[dict[str, Any]], code: int | None, error: str, restarts: int,
                 end: float) -> Outcome:
        with self._lock:
            outcomes = [t["outcome"] for t in self._results.values()]
        counts = {name: outcomes.count(name) for name in ("failed", "error", "crashed")}
        failing = any(counts.values())
        parts = [error] if error else []
        if counts["failed"]:
            parts.append(f"{counts['failed']} of {len(self._order)} tests failed")
        if counts["error"]:
            parts.append(f"{counts['error']} of {len(self._order)} tests errored")
        if counts["crashed"]:
            parts.append(f"{counts['crashed']} crashed")
        if restarts:
            parts.append(f"pytest restarted {restarts} time{'s' if restarts != 1 else ''}")
        if error:  # pytest's own code says more than a summary of the tests would
            exit_code = code
        else:
            exit_code = 1 if failing else (0 if tests else 5)
        ok = not failing and not error and bool(tests)
        status: Literal["success", "failure"] = "success" if ok else "failure"
        return Outcome(
            self.spec.task_id, status, self.start_time, end, exit_code=exit_code,
            error="; ".join(parts) if status == "failure" else "",
            stdout_tail=_tail(self._stdout, self.tail_bytes), stderr_tail=_tail(self._stderr, self.tail_bytes),
            tests=tests, units=dict(self._units) if self._bench else {},
            directions=dict(self._directions) if self._bench else {},
        )

    def _start_session(self, python: str, remaining: list[str], args: list[str], env: dict[str, str],
                       cwd: str | None) -> _Session | str | None:
        """Start pytest on ``remaining``: the session, None when cancelled, or why it could not start."""
        report = Path(f"{self._base}.report-{len(self._reports)}.jsonl")
        self._reports.append(report)
        self._tests_file.write_text("".join(f"{nid}\n" for nid in remaining), encoding="utf-8")
        files = list(dict.fromkeys(_file_of(nid) for nid in remaining))
        argv = [python, "-m", "pytest", "-p", PLUGIN_MODULE, f"--dtf-report={report}",
                f"--dtf-tests={self._tests_file}", "-p", "no:cacheprovider",
                # A module that fails to import must not stop the shard's other modules.
                "--continue-on-collection-errors", *args, *files]
        session = _Session(report, stderr_start=_size(self._stderr))
        with open(self._stdout, "ab") as out, open(self._stderr, "ab") as err:
            # Under the lock cancel() takes: a cancel either comes first (nothing starts) or finds
            # self.proc set and signals it.
            with self._start_lock:
                if self._cancelled.is_set():
                    return None
                try:
                    self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                                 cwd=cwd, start_new_session=True)
                except OSError as exc:
                    return f"cannot start {python} -m pytest: {exc}"
        with self._lock:
            self._session = session
        return session

    def _wait(self, proc: subprocess.Popen[bytes], session: _Session,
              deadline: float | None) -> tuple[int | None, bool]:
        """Wait for pytest to exit: (its exit code, whether the shard timed out). A pytest that
        reported the end of its session and still does not exit (a test left a non-daemon thread
        behind) is killed after a grace period: its tests are all reported."""
        finished_at: float | None = None
        while True:
            step = WAIT_STEP_S if deadline is None else max(0.0, min(WAIT_STEP_S, deadline - time.monotonic()))
            try:
                return proc.wait(timeout=step), False
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                kill_tree(proc)
                return proc.returncode, True
            with self._lock:
                self._poll()
                finished = session.exitstatus is not None
            if finished:
                finished_at = finished_at if finished_at is not None else now
                if now - finished_at >= EXIT_GRACE_S:
                    kill_tree(proc)
                    self._log_note(f"pytest ended its session but had not exited {EXIT_GRACE_S:g} s later; "
                                   "killed it")
                    return proc.returncode, False

    def _log_note(self, text: str) -> None:
        """A line of the runner's own in the stderr log, between two pytest sessions (nothing else
        writes there then): whoever reads the stream sees why pytest started again."""
        try:
            with open(self._stderr, "ab") as fh:
                fh.write(f"\n[dtf] {text}\n".encode("utf-8", "replace"))
        except OSError:
            pass

    # -- the report (all under self._lock) -----------------------------------------------------

    def _poll(self) -> None:
        """Apply the events written to the current session's report since the last look."""
        session = self._session
        if session is None:
            return
        try:
            with open(session.report, "rb") as fh:
                fh.seek(session.pos)
                data = fh.read()
        except OSError:
            return  # not created yet (pytest still starting), or removed after the run
        end = data.rfind(b"\n")
        if end < 0:
            return
        session.pos += end + 1  # a line being written stays for the next look
        for line in data[:end].split(b"\n"):
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("task %s: bad line in the pytest report: %r", self.spec.task_id, line[:200],
                            extra={"task_id": self.spec.task_id})
                continue
            if isinstance(event, dict):
                self._apply(session, event)

    def _apply(self, session: _Session, event: dict[str, Any]) -> None:
        kind = event.get("e")
        nodeid = str(event.get("nodeid", ""))
        if kind == "start":
            session.any_start = True
            began = event.get("time")
            session.open[nodeid] = float(began) if isinstance(began, (int, float)) else time.time()
        elif kind == "done":
            session.open.pop(nodeid, None)
            outcome = str(event.get("outcome"))
            if outcome not in ("passed", "failed", "skipped", "error", "xfailed", "xpassed", "crashed"):
                outcome = "error"
            duration = event.get("duration")
            self._resolve(_test(nodeid, outcome, str(event.get("longrepr") or ""),
                                duration=float(duration) if isinstance(duration, (int, float)) and duration >= 0 else 0.0,
                                output=str(event.get("output") or "")), replace=True)
        elif kind == "missing":
            self._resolve(self._not_collected(nodeid))
            if nodeid in self._results and self._results[nodeid]["longrepr"] == NOT_FOUND:
                self._from_missing.add(nodeid)
        elif kind in ("collect_error", "collect_skip"):
            longrepr = str(event.get("longrepr") or "")
            self._collected[nodeid] = ("error" if kind == "collect_error" else "skip", longrepr)
            if kind == "collect_error" and nodeid:
                self._modules[nodeid] = _test(nodeid, "error", longrepr)
            for nid in [n for n in self._from_missing if _under(n, nodeid)]:
                self._from_missing.discard(nid)
                self._resolve(self._not_collected(nid), replace=True)
        elif kind == "bench":
            # pytest-benchmark's stats for one test: read as its JSON file would be.
            found = parse_result_data({"benchmarks": [{"fullname": nodeid, "stats": event.get("stats"),
                                                       "extra_info": event.get("extra_info")}]})
            for t in found.tests:
                self._bench[t["nodeid"]] = t["metrics"]
            self._units.update(found.units)
            self._directions.update(found.directions)
        elif kind == "finish":
            status = event.get("exitstatus")
            session.exitstatus = int(status) if isinstance(status, int) else 0

    def _not_collected(self, nodeid: str) -> dict[str, Any]:
        """A listed test pytest did not collect: its module failed to import or was skipped as a
        whole, or it is simply not there."""
        for node, (kind, longrepr) in self._collected.items():
            if _under(nodeid, node):
                if kind == "skip":
                    return _test(nodeid, "skipped", longrepr)
                return _test(nodeid, "error", f"collecting {node or 'the tests'} failed:\n"
                             + bound(longrepr, CRASH_STDERR_BYTES * 2))
        return _test(nodeid, "error", NOT_FOUND)

    def _resolve(self, test: dict[str, Any], *, replace: bool = False) -> None:
        nodeid = test["nodeid"]
        if nodeid not in self._wanted:
            return
        old = self._results.get(nodeid)
        if old is not None:
            if not replace:
                return
            self._failed -= old["outcome"] in FAILING_OUTCOMES
        self._results[nodeid] = test
        self._failed += test["outcome"] in FAILING_OUTCOMES

    def _resolve_locked(self, test: dict[str, Any]) -> None:
        with self._lock:
            self._resolve(test)

    def _remove_internal(self) -> None:
        for path in (*self._reports, self._tests_file):
            try:
                path.unlink()
            except OSError:
                pass
        shutil.rmtree(self._shim, ignore_errors=True)


def _valid_ids(tests: object) -> TypeGuard[list[str]]:
    # The wire's bound on a node id: a longer one would make the agent's result record invalid.
    return isinstance(tests, list) and all(isinstance(t, str) and 0 < len(t) <= MAX_NODEID for t in tests)
