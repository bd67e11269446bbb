"""The command runner: exit code, output tails and $DTF_RESULT_FILE metrics are captured; a
timeout or a cancel kills the task's whole process tree, including children that left its group.
And the agent's loop around it, against a fake coordinator: heartbeats, re-assignment, resends."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psutil
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from dtf_agent import protocol as p
from dtf_agent.agent import _REATTACH_PAUSE, Agent, AgentSettings
from dtf_agent.protocol import RunSpec
from dtf_agent.runners.command import MAX_COMMAND_BYTES, CommandRun, Outcome, _argv, _too_long
from dtf_agent.spool import SpoolLocked
from dtf_agent.transport import bind, make_socket
from tests.helpers import alive, descendants, find_descendants, wait_until

T = TypeVar("T")

PY = shlex.quote(sys.executable)


class Runner:
    """Starts CommandRuns and hands back their outcomes; kills leftovers at teardown."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.runs: list[CommandRun] = []
        self.seen: list[psutil.Process] = []

    def start(self, command: str | list[str], *, timeout: float | None = None, task_id: str = "t1",
              tail_bytes: int = 4096, default_timeout: float | None = None, shell: str = "/bin/sh",
              prepare: Any = None, **params: object) -> CommandRun:
        spec = RunSpec(task_id=task_id, parameters={"command": command, **params}, timeout=timeout)
        run = CommandRun(spec, self.work_dir, self.done.put, tail_bytes=tail_bytes, default_timeout=default_timeout,
                         shell=shell, prepare=prepare)
        self.runs.append(run)
        run.start()
        return run

    def outcome(self, timeout: float = 30) -> Outcome:
        try:
            return self.done.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no outcome within {timeout} s") from None

    def run(self, command: str | list[str], **kw: Any) -> Outcome:
        self.start(command, **kw)
        return self.outcome()

    def tree(self, run: CommandRun, needle: str, n: int) -> list[psutil.Process]:
        """Wait until ``n`` processes matching ``needle`` run under the task, and return them."""
        wait_until(lambda: run.proc is not None, 10)
        assert run.proc is not None
        pid = run.proc.pid
        procs = wait_until(lambda: (lambda found: found if len(found) >= n else None)(find_descendants(pid, needle)),
                           15, message=lambda: f"descendants of {pid}: {psutil.Process(pid).children(True)}")
        self.seen.extend(procs)
        return procs

    def close(self) -> None:
        for run in self.runs:
            run.cancel()
        for run in self.runs:
            run.join(10)
        # Whatever a broken runner left behind dies here, so one failure cannot leak processes.
        for run in self.runs:
            if run.proc is not None and run.proc.poll() is None:
                self.seen.extend(descendants(run.proc.pid))
                try:
                    os.killpg(run.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                run.proc.wait(10)
        for pr in alive(self.seen):
            pr.kill()


@pytest.fixture
def runner(tmp_path: Path):
    r = Runner(tmp_path)
    try:
        yield r
    finally:
        r.close()


def assert_all_gone(procs: list[psutil.Process]) -> None:
    # kill_tree has already waited for them; a short poll absorbs the kernel's bookkeeping.
    wait_until(lambda: not alive(procs), 5, message=lambda: f"still alive: {alive(procs)}")


# ------------------------------------------------------------------------------ what is captured


def test_success_captures_exit_code_and_stdout_tail(runner):
    o = runner.run("echo hello world")
    assert (o.status, o.exit_code, o.error) == ("success", 0, "")
    assert o.stdout_tail == "hello world\n"
    assert o.stderr_tail == ""
    assert o.end_time >= o.start_time > 0


def test_nonzero_exit_is_a_failure_with_its_code_and_stderr(runner):
    o = runner.run("echo out; echo oops >&2; exit 3")
    assert (o.status, o.exit_code) == ("failure", 3)
    assert o.error == "exit code 3"
    assert o.stdout_tail == "out\n" and o.stderr_tail == "oops\n"


def test_argv_list_runs_without_a_shell(runner):
    o = runner.run([sys.executable, "-c", "import sys; print(sys.argv[1])", "a b; $HOME"])
    assert o.status == "success" and o.stdout_tail == "a b; $HOME\n"


def test_task_environment_and_cwd(runner, tmp_path):
    (tmp_path / "cwd").mkdir()
    o = runner.run('echo "$DTF_TASK_ID $DTF_ATTEMPT $EXTRA"; pwd', task_id="task-42", env={"EXTRA": "x1"},
                   cwd=str(tmp_path / "cwd"))
    assert o.stdout_tail.splitlines() == ["task-42 1 x1", str(tmp_path / "cwd")]


def test_stdout_tail_keeps_only_the_last_bytes(runner):
    o = runner.run(f"{PY} -c \"print('a' * 5000 + 'END')\"", tail_bytes=100)
    assert len(o.stdout_tail) == 100
    assert o.stdout_tail.endswith("END\n")


def test_metrics_from_result_file(runner):
    o = runner.run("""echo '{"latency_ms": 1.5, "ops": 200, "ok": true, "name": "x"}' > "$DTF_RESULT_FILE" """)
    assert o.status == "success"
    assert o.metrics == {"latency_ms": 1.5, "ops": 200.0}
    assert "non-numeric metrics ignored: ok, name" in o.error  # the engineer learns what was dropped


def test_no_result_file_means_no_metrics_and_no_error(runner):
    o = runner.run("true")
    assert (o.status, o.metrics, o.error) == ("success", {}, "")


def test_non_json_result_file_gives_a_clear_error(runner):
    o = runner.run("""echo 'latency=3' > "$DTF_RESULT_FILE" """)
    assert o.metrics == {}
    assert "DTF_RESULT_FILE is not valid JSON" in o.error


def test_result_file_that_is_not_an_object_gives_a_clear_error(runner):
    o = runner.run("""echo '[1, 2]' > "$DTF_RESULT_FILE" """)
    assert o.metrics == {}
    assert "DTF_RESULT_FILE must hold a JSON object" in o.error


def test_missing_program_fails_the_way_a_shell_reports_it(runner):
    o = runner.run("/nonexistent/dtf-binary --flag")
    assert (o.status, o.exit_code, o.error) == ("failure", 127, "exit code 127")
    assert "/nonexistent/dtf-binary" in o.stderr_tail and "not found" in o.stderr_tail


def test_argv_list_naming_a_missing_program_cannot_start(runner):
    o = runner.run(["/nonexistent/dtf-binary", "--flag"])
    assert o.status == "failure" and o.exit_code is None
    assert o.error.startswith("cannot start") and "/nonexistent/dtf-binary" in o.error


def test_missing_working_directory_cannot_start(runner, tmp_path):
    o = runner.run("true", cwd=str(tmp_path / "no-such-dir"))
    assert o.status == "failure" and o.exit_code is None
    assert "no-such-dir" in o.error


@pytest.mark.parametrize(("command", "code", "out"), [
    ("exit 7", 7, ""),  # shell builtins have no shell syntax to give them away
    ("cd /", 0, ""),
    ("echo plain words", 0, "plain words\n"),
])
def test_builtins_and_plain_commands(runner, command, code, out):
    o = runner.run(command)
    assert (o.exit_code, o.stdout_tail) == (code, out)


def test_missing_command_parameter(runner):
    o = runner.run("")
    assert o.status == "failure" and "no 'command' parameter" in o.error


# A plain command's words, and the characters that separate them (shlex's own separators).
_PLAIN = st.text(alphabet=st.sampled_from(list("ab-_./:+,@\u00e9\u00a0\x0c \t\r")), max_size=40)


@given(_PLAIN)
def test_a_plain_command_splits_as_shlex_splits_it(command):
    assert _argv(command) == (shlex.split(command), False)


def test_a_4_mb_command_splits_in_linear_time():
    # A complexity check, not a benchmark: shlex took minutes on this; the budget is generous.
    words = "x" * 4_000_000, ("ab " * 1_400_000)
    for command in words:
        t0 = time.perf_counter()
        argv, shell = _argv(command)
        elapsed = time.perf_counter() - t0
        assert not shell and argv == command.split()
        assert elapsed < 2.0, f"splitting {len(command)} characters took {elapsed:.2f} s"


@pytest.mark.parametrize("command", [
    "echo " + "x" * MAX_COMMAND_BYTES,
    ["echo", "x" * (MAX_COMMAND_BYTES // 2), "y" * (MAX_COMMAND_BYTES // 2)],
    "echo " + "\u00e9" * (MAX_COMMAND_BYTES // 2),  # fewer characters than the limit, more bytes
])
def test_a_command_over_the_limit_is_refused_naming_it(runner, tmp_path, command):
    o = runner.run(command)
    assert o.status == "failure" and o.exit_code is None
    assert f"over the limit of {MAX_COMMAND_BYTES} bytes" in o.error


def test_a_command_at_the_limit_is_not_refused_for_its_size():
    assert _too_long("x" * MAX_COMMAND_BYTES) == ""
    assert _too_long(["x" * (MAX_COMMAND_BYTES - 1), "y"]) == ""


def test_task_files_stay_until_cleanup_then_go(runner, tmp_path):
    run = runner.start("""echo '{"x": 1}' > "$DTF_RESULT_FILE"; echo hi; echo oops >&2""")
    runner.outcome()
    # The agent streams the last bytes after the outcome; only then does it clean up.
    files = run.log_files()
    assert files["stdout"].read_bytes() == b"hi\n" and files["stderr"].read_bytes() == b"oops\n"
    run.cleanup()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("task-")]


def test_log_files_exist_from_the_start(runner, tmp_path):
    run = runner.start("sleep 0.2")
    assert all(p.exists() for p in run.log_files().values())
    runner.outcome()


def test_the_shell_is_the_one_configured(runner, tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on this machine")
    # [[ ]] is bash syntax: /bin/sh (dash) refuses it.
    o = runner.run('[[ -n "$BASH_VERSION" ]] && echo "bash $BASH_VERSION"', shell=bash)
    assert o.status == "success" and o.stdout_tail.startswith("bash ")
    o = runner.run("exit 7", shell=bash)  # a builtin without shell syntax also goes to the chosen shell
    assert o.exit_code == 7


def test_prepare_runs_before_the_command_and_may_refuse(runner, tmp_path):
    def prepare(spec: RunSpec) -> RunSpec:
        (tmp_path / "prepared").write_text("yes")
        return msgspec.structs.replace(spec, parameters={**spec.parameters, "cwd": str(tmp_path)})

    o = runner.run("cat prepared", prepare=prepare)
    assert o.status == "success" and o.stdout_tail == "yes"

    def refuse(spec: RunSpec) -> RunSpec:
        raise RuntimeError("bundle sha256-00 is not on the coordinator")

    o = runner.run("echo never", prepare=refuse)
    assert o.status == "failure" and o.error == "cannot prepare the task: bundle sha256-00 is not on the coordinator"


# ------------------------------------------------------------------------------ killing trees


def test_timeout_kills_the_whole_process_tree(runner):
    run = runner.start("sleep 301 & sleep 301 & wait", timeout=1.5)
    sleepers = runner.tree(run, "sleep 301", 2)
    shell = psutil.Process(run.proc.pid)
    o = runner.outcome()
    assert o.status == "failure"
    assert o.error.startswith("timed out after 1.5 s")
    assert o.end_time - o.start_time < 10
    assert_all_gone([shell, *sleepers])


def test_default_timeout_applies_when_the_task_has_none(runner):
    run = runner.start("sleep 302 & wait", default_timeout=1.0)
    sleepers = runner.tree(run, "sleep 302", 1)
    o = runner.outcome()
    assert o.status == "failure" and o.error.startswith("timed out after 1 s")
    assert_all_gone(sleepers)


def test_timeout_also_kills_children_that_left_the_process_group(runner):
    # setsid puts a child in a session of its own, out of reach of the group kill.
    run = runner.start("setsid sleep 303 & sleep 304 & wait", timeout=1.5)
    escaped = runner.tree(run, "sleep 303", 1)
    stayed = runner.tree(run, "sleep 304", 1)
    assert os.getpgid(escaped[0].pid) != os.getpgid(run.proc.pid)
    o = runner.outcome()
    assert o.error.startswith("timed out")
    assert_all_gone(escaped + stayed)


def test_cancel_kills_the_whole_process_tree(runner):
    run = runner.start("sleep 305 & sleep 305 & wait")
    sleepers = runner.tree(run, "sleep 305", 2)
    shell = psutil.Process(run.proc.pid)
    run.cancel()
    o = runner.outcome()
    assert (o.status, o.error) == ("failure", "cancelled")
    assert_all_gone([shell, *sleepers])


def test_cancel_also_kills_children_that_left_the_process_group(runner):
    run = runner.start("setsid sleep 306 & sleep 307 & wait")
    escaped = runner.tree(run, "sleep 306", 1)
    stayed = runner.tree(run, "sleep 307", 1)
    run.cancel()
    o = runner.outcome()
    assert o.error == "cancelled"
    assert_all_gone(escaped + stayed)


def test_cancel_of_a_task_that_ignores_sigterm(runner):
    # The shell traps TERM and keeps waiting; the runner must escalate to SIGKILL.
    run = runner.start("trap '' TERM; sleep 308 & wait; sleep 308")
    sleepers = runner.tree(run, "sleep 308", 1)
    shell = psutil.Process(run.proc.pid)
    run.cancel()
    o = runner.outcome(timeout=20)
    assert o.error == "cancelled"
    assert_all_gone([shell, *sleepers])


def test_background_children_of_a_finished_command_are_killed(runner):
    # The command exits at once but leaves a child in its group behind.
    run = runner.start("sleep 309 & echo started")
    o = runner.outcome()
    assert o.status == "success" and o.stdout_tail == "started\n"
    assert run.proc is not None
    leftovers = [pr for pr in psutil.process_iter(["cmdline"]) if pr.info["cmdline"] == ["sleep", "309"]]
    runner.seen.extend(leftovers)
    assert_all_gone(leftovers)


def test_cancel_before_start_does_not_run_the_command(runner, tmp_path):
    marker = tmp_path / "ran"
    spec = RunSpec(task_id="early", parameters={"command": f"touch {marker}"})
    done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    run = CommandRun(spec, tmp_path, done.put)
    run.cancel()
    run.start()
    o = done.get(timeout=10)
    assert o.error == "cancelled" and o.status == "failure"
    assert not marker.exists()


# ------------------------------------------------------------------------------ the agent's loop
# A real Agent against a fake coordinator: a ROUTER socket driven by the test.


class FakeCoordinator:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = make_socket(self.ctx, zmq.ROUTER)
        self.endpoint = f"tcp://127.0.0.1:{bind(self.sock, '127.0.0.1', 0)}"
        self.identity = b""

    def recv(self, kind: type[T], timeout: float = 10) -> T:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise AssertionError(f"fake coordinator: no {kind.__name__} within {timeout:g} s")
            self.identity, frame = self.sock.recv_multipart()
            msg = p.decode(frame)
            if isinstance(msg, kind):
                return msg

    def recv_all(self, until: type[T], count: int = 1, timeout: float = 10) -> list[tuple[float, p.Message]]:
        """Every message, with the time it was received, up to the ``count``-th of type ``until``."""
        deadline = time.monotonic() + timeout
        seen: list[tuple[float, p.Message]] = []
        while sum(isinstance(m, until) for _t, m in seen) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise AssertionError(f"fake coordinator: {count} {until.__name__} not seen within {timeout:g} s; "
                                     f"saw {[type(m).__name__ for _t, m in seen]}")
            self.identity, frame = self.sock.recv_multipart()
            seen.append((time.monotonic(), p.decode(frame)))
        return seen

    def send(self, msg: p.Message) -> None:
        self.sock.send_multipart([self.identity, p.encode(msg)])

    def welcome(self, heartbeat_interval: float) -> p.Register:
        """Take the agent's Register and answer it; the Register is returned."""
        reg = self.recv(p.Register)
        self.send(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id=reg.worker_id,
                            heartbeat_interval=heartbeat_interval))
        return reg

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def fake_coordinator():
    fc = FakeCoordinator()
    try:
        yield fc
    finally:
        fc.close()


@pytest.fixture
def agent_on(tmp_path):
    started: list[tuple[Agent, threading.Thread]] = []

    def start(endpoint: str, **kw: Any) -> Agent:
        settings = AgentSettings(**{"address": endpoint, "worker_id": "unit-agent",
                                    "work_dir": str(tmp_path / "work"), **kw})
        agent = Agent(settings)
        t = threading.Thread(target=agent.run, daemon=True)
        t.start()
        started.append((agent, t))
        return agent

    try:
        yield start
    finally:
        for agent, t in started:
            agent.stop()
            t.join(15)
            assert not t.is_alive(), "agent loop did not stop"


def test_agent_heartbeats_at_the_interval_the_coordinator_asks_for(fake_coordinator, agent_on):
    # The agent's own interval is long; the Welcome's short one must take effect at once, not
    # after the first long wait (a coordinator with a short timeout would think it dead).
    agent_on(fake_coordinator.endpoint, heartbeat_interval=30.0)
    reg = fake_coordinator.recv(p.Register)
    assert reg.protocol_version == p.PROTOCOL_VERSION and reg.worker_id == "unit-agent"
    fake_coordinator.send(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id="unit-agent",
                                    heartbeat_interval=0.2))
    # At the agent's own interval the first would come after 30 s, past this deadline.
    for _ in range(3):
        fake_coordinator.recv(p.Heartbeat, timeout=5)


def test_reassigned_running_task_reports_under_the_newest_attempt(fake_coordinator, agent_on, tmp_path):
    agent_on(fake_coordinator.endpoint, resend_interval=30.0)
    fake_coordinator.welcome(heartbeat_interval=5.0)
    gate = tmp_path / "gate"
    spec = RunSpec(task_id="t-re", parameters={"command": f"while [ ! -e {gate} ]; do sleep 0.02; done; echo ok"},
                    attempt=1)
    fake_coordinator.send(p.Assign(tasks=[spec]))
    assert fake_coordinator.recv(p.TaskStarted).task_ids == ["t-re"]
    # The coordinator took this agent for lost, requeued the task and gave it back as attempt 2
    # while attempt 1 still runs: the agent must not start it twice, nor report attempt 1 (which
    # the coordinator would drop as stale, leaving the task running for ever).
    fake_coordinator.send(p.Assign(tasks=[msgspec.structs.replace(spec, attempt=2)]))
    assert fake_coordinator.recv(p.TaskStarted).task_ids == ["t-re"]
    gate.touch()
    results = fake_coordinator.recv(p.Results).results
    assert [(r.task_id, r.attempt, r.status, r.stdout_tail) for r in results] == [("t-re", 2, "success", "ok\n")]
    fake_coordinator.send(p.ResultAck(result_ids=[results[0].result_id]))


def test_unacknowledged_results_are_resent_with_the_same_id(fake_coordinator, agent_on):
    agent_on(fake_coordinator.endpoint, resend_interval=0.3)
    fake_coordinator.welcome(heartbeat_interval=5.0)
    fake_coordinator.send(p.Assign(tasks=[RunSpec(task_id="n1", type="noop")]))
    first = fake_coordinator.recv(p.Results).results
    again = fake_coordinator.recv(p.Results, timeout=5).results
    assert [r.result_id for r in again] == [r.result_id for r in first]
    assert first[0].status == "success" and first[0].task_id == "n1"


def test_a_restarted_coordinator_gets_one_register_that_names_unacknowledged_results(fake_coordinator, agent_on):
    # A long retry pause: a second Register here would come from the Refused frames, not from a
    # retry racing the Welcome on a slow machine.
    agent_on(fake_coordinator.endpoint, resend_interval=30.0, register_retry_min=30.0)
    fake_coordinator.welcome(heartbeat_interval=0.2)
    fake_coordinator.send(p.Assign(tasks=[RunSpec(task_id="n1", type="noop")]))
    (held,) = fake_coordinator.recv(p.Results).results  # not acknowledged: the coordinator "restarts"
    # A restarted coordinator answers each frame the agent queued while it was away.
    for _ in range(5):
        fake_coordinator.send(p.Refused(reason="unknown agent; register first", fatal=False, reregister=True))
    reg = fake_coordinator.recv(p.Register)
    assert reg.finished == ["n1"], "the held result's task must be named, or it would run again elsewhere"
    fake_coordinator.send(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id="unit-agent",
                                    heartbeat_interval=0.2))
    # Frames from one agent arrive in order: every Register it sent comes before its next heartbeat.
    seen: list[p.Message] = []
    while not any(isinstance(m, p.Heartbeat) for m in seen):
        fake_coordinator.sock.poll(5000)
        fake_coordinator.identity, frame = fake_coordinator.sock.recv_multipart()
        seen.append(p.decode(frame))
    assert not any(isinstance(m, p.Register) for m in seen), f"a second Register: {seen}"
    resent = [r for m in seen if isinstance(m, p.Results) for r in m.results]
    assert [r.result_id for r in resent] == [held.result_id], "the held result is resent after the Welcome"



# ------------------------------------------------------------------ registration, contact, spool


def _messages(caplog: pytest.LogCaptureFixture, level: int, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and needle in r.getMessage()]


def test_register_backs_off_warns_once_and_says_when_the_coordinator_is_reached(fake_coordinator, agent_on,
                                                                               caplog):
    caplog.set_level(logging.INFO, logger="dtf_agent")
    agent_on(fake_coordinator.endpoint, register_retry_min=0.05, register_retry_max=0.4, unreachable_after=0.5)
    seen = fake_coordinator.recv_all(p.Register, count=8)
    regs = [(t, m) for t, m in seen if isinstance(m, p.Register)]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(regs)]
    # Once a connection has gone unanswered for a while, each retry is on a new connection, made
    # a moment after the old one is dropped.
    assert gaps[0] < 0.2 and max(gaps) <= 0.4 * 1.25 + _REATTACH_PAUSE + 0.2, f"pauses {gaps}"
    assert min(gaps[-3:]) >= 0.4 * 0.75 - 0.05, f"pauses {gaps}: they double up to the longest"
    incarnations = {m.incarnation for _t, m in regs}
    assert len(incarnations) == 1 and len(next(iter(incarnations))) == 16, "one incarnation per agent"
    warned = _messages(caplog, logging.WARNING, "does not answer")
    assert len(warned) == 1, f"said once, not per retry: {warned}"
    assert fake_coordinator.endpoint in warned[0] and "dtf serve" in warned[0] and "firewall" in warned[0]
    port = fake_coordinator.endpoint.rsplit(":", 1)[1]
    assert f"port {port}" in warned[0]
    fake_coordinator.send(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id="unit-agent",
                                    heartbeat_interval=5.0))
    wait_until(lambda: _messages(caplog, logging.INFO, "reachable again"), 10)


def test_a_coordinator_that_stops_answering_is_registered_with_again(fake_coordinator, agent_on, caplog):
    caplog.set_level(logging.INFO, logger="dtf_agent")
    agent = agent_on(fake_coordinator.endpoint, resend_interval=30.0, unreachable_after=0.5)
    first = fake_coordinator.welcome(heartbeat_interval=0.1)
    wait_until(lambda: agent.registered, 10)
    fake_coordinator.send(p.Assign(tasks=[RunSpec(task_id="n1", type="noop")]))
    (held,) = fake_coordinator.recv(p.Results).results
    # No ack, nothing at all: the coordinator is gone. The agent registers again (same incarnation,
    # the result named) and says so once.
    again = fake_coordinator.recv(p.Register, timeout=10)
    assert again.incarnation == first.incarnation and again.finished == ["n1"]
    assert not agent.registered
    assert len(_messages(caplog, logging.WARNING, "stopped answering")) == 1
    fake_coordinator.send(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id="unit-agent",
                                    heartbeat_interval=5.0))
    resent = fake_coordinator.recv(p.Results).results
    assert [r.result_id for r in resent] == [held.result_id]
    wait_until(lambda: _messages(caplog, logging.INFO, "reachable again"), 10)
    fake_coordinator.send(p.ResultAck(result_ids=[held.result_id]))


def test_an_idle_agent_does_not_take_a_quiet_coordinator_for_gone(fake_coordinator, agent_on, caplog):
    # The coordinator never speaks unasked: only an answer owed and not given is silence.
    caplog.set_level(logging.INFO, logger="dtf_agent")
    agent_on(fake_coordinator.endpoint, unreachable_after=0.2)
    fake_coordinator.welcome(heartbeat_interval=0.05)
    seen = fake_coordinator.recv_all(p.Heartbeat, count=20)  # 1 s: five times the silence limit
    assert not [m for _t, m in seen if isinstance(m, p.Register)]
    assert not _messages(caplog, logging.WARNING, "answer")


def test_a_held_result_is_resent_under_the_new_attempt_and_its_task_not_run_again(fake_coordinator, agent_on,
                                                                                 tmp_path):
    spool = str(tmp_path / "spool")
    first = agent_on(fake_coordinator.endpoint, resend_interval=30.0, spool_dir=spool)
    reg1 = fake_coordinator.welcome(heartbeat_interval=5.0)
    marker = tmp_path / "runs.txt"
    fake_coordinator.send(p.Assign(tasks=[RunSpec(task_id="c1", parameters={"command": f"echo run >> {marker}"})]))
    (held,) = fake_coordinator.recv(p.Results).results
    first.stop()
    wait_until(lambda: first.spool._lock_fd is None, 15)  # the loop has ended and let the spool go
    second = agent_on(fake_coordinator.endpoint, resend_interval=30.0, spool_dir=spool)
    assert list(second.unacked) == [held.result_id]
    reg2 = fake_coordinator.welcome(heartbeat_interval=5.0)
    assert reg2.finished == ["c1"] and reg2.incarnation != reg1.incarnation
    assert [r.result_id for r in fake_coordinator.recv(p.Results).results] == [held.result_id]
    fake_coordinator.send(p.Assign(tasks=[RunSpec(task_id="c1", parameters={"command": f"echo run >> {marker}"},
                                                  attempt=2)]))
    (again,) = fake_coordinator.recv(p.Results).results
    assert (again.result_id, again.attempt, again.stdout_tail) == (held.result_id, 2, held.stdout_tail)
    assert marker.read_text() == "run\n", "the task ran again"
    assert second.completed == 0
    fake_coordinator.send(p.ResultAck(result_ids=[held.result_id]))
    wait_until(lambda: not second.unacked and len(second.spool) == 0, 10)


def test_a_second_agent_with_the_same_worker_id_is_refused(fake_coordinator, agent_on, tmp_path):
    agent_on(fake_coordinator.endpoint)
    with pytest.raises(SpoolLocked, match=f"pid {os.getpid()}"):
        Agent(AgentSettings(address=fake_coordinator.endpoint, worker_id="unit-agent",
                            work_dir=str(tmp_path / "work2")))


def test_an_agent_takes_the_routing_id_the_coordinator_gives_it(fake_coordinator, agent_on):
    # An agent naming its own routing id (its worker id, as agents once did) let any peer that
    # named itself the same take over its route, and the tasks sent on it. The coordinator's
    # ROUTER gives each connection an id of its own: 5 bytes, the first one zero.
    agent_on(fake_coordinator.endpoint)
    reg = fake_coordinator.recv(p.Register, timeout=15)
    assert reg.worker_id == "unit-agent"
    ident = fake_coordinator.identity
    assert len(ident) == 5 and ident[0] == 0 and ident != b"unit-agent", ident
