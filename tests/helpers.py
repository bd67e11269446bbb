"""Shared test helpers: deadline polling, process tracking, a local `dtf serve`, a fake agent.

Everything here talks to real processes over real loopback sockets. Nothing sleeps to
synchronise: waits poll a predicate against a deadline and fail with a message that says what
was awaited and what was last seen.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psutil
import zmq

from dtf_agent import keys
from dtf_agent import protocol as p
from dtf_agent.paths import dtf_home
from dtf_agent.transport import CurveClient, make_socket
from dtf_gui.client import Client, find_credentials
from dtf_gui.coordinator.store import connect_readonly

T = TypeVar("T")

BIN = Path(sys.executable).parent


class WaitTimeout(AssertionError):
    """A polled condition did not come true before its deadline."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    message: str | Callable[[], str] = "",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises :class:`WaitTimeout` naming the condition and, when ``message`` is a callable, what it
    describes at the moment of failure (the last state seen, a log tail ...). A predicate that
    raises AssertionError, LookupError, OSError, ValueError or a database/socket error counts as
    "not yet" (the file, table or row may not exist yet); the last such error is in the message.
    """
    deadline = time.monotonic() + timeout
    pause = interval
    last_exc: BaseException | None = None
    while True:
        value: T | None = None
        try:
            value = predicate()
        except (AssertionError, LookupError, OSError, ValueError, sqlite3.Error, zmq.ZMQError) as exc:
            # The thing polled may not exist yet (file, table, row): keep polling, remember why.
            last_exc = exc
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            name = getattr(predicate, "__name__", repr(predicate))
            detail = message() if callable(message) else message
            extra = f"; last error: {type(last_exc).__name__}: {last_exc}" if last_exc else ""
            raise WaitTimeout(f"condition {name} not met within {timeout:g} s{extra}"
                              + (f"\n{detail}" if detail else ""))
        time.sleep(min(pause, remaining))  # the pause between two polls, not a wait for the condition
        pause = min(pause * 1.5, 0.25)


# -------------------------------------------------------------------------------------------
# processes


def process_alive(proc: psutil.Process) -> bool:
    """True while ``proc`` runs. A zombie counts as dead: in a container PID 1 may never reap
    the orphans of a killed tree, but a zombie holds no resources and runs nothing."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    return [pr for pr in procs if process_alive(pr)]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def find_descendants(pid: int, cmdline: str) -> list[psutil.Process]:
    """Live descendants of ``pid`` whose whole command line is ``cmdline`` (words joined by spaces;
    the shell that started them, whose command line merely contains it, does not match)."""
    out = []
    for child in descendants(pid):
        try:
            if " ".join(child.cmdline()) == cmdline and process_alive(child):
                out.append(child)
        except psutil.Error:
            continue
    return out


def _kill_all(procs: Sequence[psutil.Process], sig: int) -> None:
    for pr in procs:
        try:
            pr.send_signal(sig)
        except psutil.Error:
            pass


class ProcessTracker:
    """Starts processes in their own session and kills every one of them (their process group
    and every descendant, including task trees that left the group) at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.extra: list[psutil.Process] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the descriptor; ours closes at once.
        with open(self.log_dir / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, cwd=cwd)
        self.procs.append((name, proc))
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log for {name})"
        return f"--- {name} log (last {tail} chars) ---\n{text[-tail:]}"

    def logs(self) -> str:
        return "\n".join(self.log(name) for name, _ in self.procs)

    def adopt(self, procs: Iterable[psutil.Process]) -> None:
        """Processes outside any tracked tree (orphans of a killed agent) to kill at teardown."""
        self.extra.extend(procs)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace``; the whole tree goes either way."""
        tree = descendants(proc.pid)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=grace)
        self._reap(tree)
        return proc.returncode

    def _reap(self, procs: Sequence[psutil.Process]) -> None:
        left = alive(procs)
        _kill_all(left, signal.SIGKILL)
        psutil.wait_procs(left, timeout=5)

    def close(self) -> None:
        trees: list[psutil.Process] = []
        for _, proc in self.procs:
            trees.extend(descendants(proc.pid))
        for _, proc in reversed(self.procs):
            try:
                self.stop(proc, grace=3.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._reap(trees + self.extra)


# -------------------------------------------------------------------------------------------
# a local coordinator and agents as subprocesses


def dtf_command(name: str) -> list[str]:
    """The installed console script (tests the packaging too), else the module."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"dtf": "dtf_gui.cli", "dtf-agent": "dtf_agent.cli"}[name]
    return [sys.executable, "-m", module]


def read_coordinator_json(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((home / "coordinator.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Serve:
    """A `dtf serve` subprocess on free ports, found through $DTF_HOME/coordinator.json."""

    def __init__(self, tracker: ProcessTracker, home: Path, env: dict[str, str], *extra: str,
                 command: Sequence[str] = (), cwd: Path | None = None) -> None:
        """``command``: how to run `dtf` (default: this checkout's); ``cwd``: where it runs (``python -m``
        imports from there first)."""
        self.tracker = tracker
        self.home = home
        self.env = env
        # Secure, as the product's default; a test that wants plain text passes "--insecure".
        argv = list(command or dtf_command("dtf")) + ["serve", "--port", "0", "--agent-port", "0", "--events-port", "0", *extra]
        self.proc = tracker.start("serve", argv, env, cwd=cwd)

        def coordinator_json_written() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dtf serve exited with {self.proc.returncode}\n{tracker.log('serve')}")
            info = read_coordinator_json(home)
            return info if info and info.get("pid") == self.proc.pid else None

        self.info = wait_until(coordinator_json_written, 20, message=lambda: tracker.log("serve"))
        self.client_endpoint: str = self.info["client_endpoint"]
        self.agent_endpoint: str = self.info["agent_endpoint"]
        self.db_path = Path(self.info["db"])
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            # This coordinator's home's admin key (the test process's own $DTF_HOME may be another).
            creds = None if self.info.get("insecure") else find_credentials(home=self.home)
            self._client = Client(self.client_endpoint, timeout=20, credentials=creds)
        return self._client

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return self.client.call(op, args)

    def start_agent(self, name: str, slots: int = 2, env_extra: dict[str, str] | None = None,
                    *extra: str) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        env.update(env_extra or {})
        argv = dtf_command("dtf-agent") + ["--coordinator", self.agent_endpoint, "--worker-id", name,
                                           "--slots", str(slots), *extra]
        return self.tracker.start(name, argv, env)

    def worker_status(self, worker_id: str) -> str | None:
        for row in self.call("list_workers"):
            if row["worker_id"] == worker_id:
                return row["status"]
        return None

    def wait_workers_online(self, *worker_ids: str, timeout: float = 20) -> None:
        def all_online() -> bool:
            online = {r["worker_id"] for r in self.call("list_workers") if r["status"] in ("online", "busy")}
            return set(worker_ids) <= online

        wait_until(all_online, timeout, message=self.tracker.logs)

    def task(self, task_id: str) -> dict[str, Any]:
        return self.call("get_task", {"task_id": task_id})

    def wait_task_status(self, task_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            seen.update(self.task(task_id))
            return dict(seen) if seen["status"] in statuses else None

        return wait_until(reached, timeout, message=lambda: (
            f"task {task_id} wanted {statuses}, last seen {seen.get('status')!r} "
            f"(error {seen.get('error')!r})\n{self.tracker.logs()}"))

    def db(self) -> sqlite3.Connection:
        return connect_readonly(self.db_path)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@contextmanager
def serve_lab(root: Path, agents: Mapping[str, int], *, config: str = "",
              env_extra: Mapping[str, str] | None = None) -> Iterator[tuple[Serve, dict[str, str]]]:
    """A `dtf serve` (secure, no mDNS) in a DTF home under ``root`` with these agents (name: slots)
    online; ``config`` is its coordinator.yaml. Everything started is stopped on the way out."""
    home, logs = root / "home", root / "logs"
    home.mkdir()
    logs.mkdir()
    if config:
        (home / "coordinator.yaml").write_text(config)
    env = dict(os.environ, DTF_HOME=str(home), PYTHONUNBUFFERED="1", **(env_extra or {}))
    tracker = ProcessTracker(logs)
    serve: Serve | None = None
    try:
        serve = Serve(tracker, home, env, "--no-mdns")
        for name, slots in agents.items():
            serve.start_agent(name, slots=slots)
        serve.wait_workers_online(*agents)
        yield serve, env
    finally:
        if serve is not None:
            serve.close()
        tracker.close()


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `dtf ARGS...` to completion and return what it printed."""
    return subprocess.run(dtf_command("dtf") + list(args), env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


# -------------------------------------------------------------------------------------------
# a fake agent: a real DEALER socket speaking the protocol, driven by the test


class FakeAgent:
    def __init__(self, endpoint: str, worker_id: str = "fake-agent", *, max_message_size: int = 0,
                 ctx: zmq.Context[Any] | None = None, insecure: bool = False, stranger: bool = False) -> None:
        """``stranger``: an agent from another machine (no enrollment secret: it waits for acceptance)."""
        self.worker_id = worker_id
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        # As a real agent on the coordinator's own machine: its key in the home (the same one at
        # every start), the home's coordinator key, and the home's enrollment secret in its Register.
        home = dtf_home()
        self.join = ""
        curve = None
        if not insecure and (home / keys.COORDINATOR_KEY).exists():
            me = keys.load_or_create(keys.agent_dir(home, worker_id) / "agent.key", "agent", worker_id)
            self.key = me.public
            curve = CurveClient(me.public, me.secret, keys.read_key_file(home / keys.COORDINATOR_KEY).public)
            self.join = "" if stranger else keys.read_secret(home / keys.LOCAL_SECRET) or ""
        # No local size cap: the tests want to send frames the coordinator must refuse.
        self.sock = make_socket(self.ctx, zmq.DEALER, max_message_size=max_message_size, curve=curve)
        self.sock.connect(endpoint)
        self.inbox: list[p.Message] = []

    def send(self, msg: p.Message) -> None:
        if isinstance(msg, p.Register) and self.join and not msg.join:
            msg = msgspec.structs.replace(msg, join=self.join)
        self.sock.send(p.encode(msg))

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def register(self, slots: int = 1, protocol_version: int = p.PROTOCOL_VERSION) -> None:
        self.send(p.Register(protocol_version=protocol_version, worker_id=self.worker_id, hostname="fakehost",
                             slots=slots))

    def register_until_welcomed(self, msg: p.Register, timeout: float = 20.0) -> p.Welcome:
        """Send ``msg`` until a Welcome comes, as an agent does: a frame sent while the socket is
        still finding out that the coordinator restarted goes down with the old connection."""

        def welcomed() -> p.Welcome | None:
            self.send(msg)
            try:
                return self.recv(p.Welcome, timeout=1.0)
            except WaitTimeout:
                return None

        return wait_until(welcomed, timeout)

    def recv(self, kind: type[T], timeout: float = 10.0) -> T:
        """The next message of type ``kind`` (others are kept in ``inbox``)."""
        for i, msg in enumerate(self.inbox):
            if isinstance(msg, kind):
                del self.inbox[i]
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise WaitTimeout(f"fake agent {self.worker_id}: no {kind.__name__} within {timeout:g} s; "
                                  f"other messages: {[type(m).__name__ for m in self.inbox]}")
            msg = p.decode(self.sock.recv())
            if isinstance(msg, kind):
                return msg
            self.inbox.append(msg)

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()


def results_per_task(conn: sqlite3.Connection) -> dict[str, int]:
    return {row[0]: row[1] for row in conn.execute("SELECT task_id, COUNT(*) FROM results GROUP BY task_id")}


def pause(seconds: float) -> None:
    """A deliberate pause in a schedule the test itself sets (the gap between two injected faults,
    a random delay to aim one), never a wait for something to happen: that is wait_until's job."""
    time.sleep(seconds)


def scrape(url: str) -> dict[str, float]:
    """{sample name with its labels as written: value} of one Prometheus scrape."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
