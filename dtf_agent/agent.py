"""The agent: connect, register, heartbeat, run tasks, report results until acknowledged.

One thread owns the DEALER socket and runs :meth:`Agent.run`. Task runners finish on their own
threads; they hand outcomes over through an :class:`~dtf_agent.inbox.Inbox` whose pipe the
zmq.Poller watches, so the socket is only ever touched by the loop thread.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgspec
import zmq

from dtf_agent import __version__, hardware
from dtf_agent import protocol as p
from dtf_agent.inbox import Inbox
from dtf_agent.runners.command import CommandRun, Outcome
from dtf_agent.transport import hostname, make_socket

log = logging.getLogger(__name__)

# Plain ints: pyzmq's enum wrappers cost more than the check itself on this hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


@dataclass
class AgentSettings:
    address: str
    worker_id: str
    slots: int = 1
    tags: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    heartbeat_interval: float = 5.0
    resend_interval: float = 5.0
    register_retry: float = 2.0
    default_timeout: float | None = None
    tail_bytes: int = 4096
    work_dir: str | None = None
    max_message_size: int = p.DEFAULT_MAX_MESSAGE_SIZE


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.s = settings
        self._stop = threading.Event()
        self._done: Inbox[Outcome] = Inbox()
        self.registered = False
        self.fatal_error: str | None = None
        self.running: dict[str, CommandRun] = {}
        self._stopping_ids: set[str] = set()
        self.unacked: dict[str, tuple[p.ResultRecord, float]] = {}
        self._outbox: list[p.ResultRecord] = []
        self._started: list[str] = []
        self.bad_frames = 0
        self.completed = 0
        # Unique across restarts of this agent, cheap per result.
        self._rid_prefix = f"{settings.worker_id}-{os.urandom(4).hex()}-"
        self._rid_counter = itertools.count(1)
        self._own_work_dir = settings.work_dir is None
        self.work_dir = Path(settings.work_dir or tempfile.mkdtemp(prefix="dtf-agent-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.capabilities = hardware.detect_capabilities(str(self.work_dir))
        self._handlers: dict[type, Callable[[Any], None]] = {
            p.Welcome: self._on_welcome,
            p.Refused: self._on_refused,
            p.Assign: self._on_assign,
            p.Cancel: self._on_cancel,
            p.ResultAck: self._on_ack,
        }
        self._runners: dict[str, Callable[[p.RunSpec], None]] = {
            "noop": self._run_noop,
            "command": self._run_command,
        }

    # -- called from any thread --------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._done.wake()

    def _finished(self, outcome: Outcome) -> None:
        """Runner threads land here: hand over and wake the loop, touch nothing else."""
        self._done.put(outcome)

    # -- the loop (owns the socket) -------------------------------------------------------------

    def run(self) -> int:
        """Run until stop(); returns a process exit code."""
        ctx = zmq.Context()
        sock = make_socket(ctx, zmq.DEALER, identity=self.s.worker_id.encode(),
                           max_message_size=self.s.max_message_size)
        sock.connect(self.s.address)
        self.sock = sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._done.fileno(), zmq.POLLIN)
        now = time.monotonic()
        # Attributes, not locals: a coordinator that asks us to register again brings the next
        # Register forward, and the Welcome restarts the heartbeat with the coordinator's interval.
        self._next_register = now
        self._next_heartbeat = now + self.s.heartbeat_interval
        next_resend = now + self.s.resend_interval
        log.info("agent %s connecting to %s with %d slot(s)", self.s.worker_id, self.s.address, self.s.slots)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if not self.registered and now >= self._next_register:
                    self._send(self._register_msg())
                    self._next_register = now + self.s.register_retry
                if self.registered and now >= self._next_heartbeat:
                    self._send(self._heartbeat_msg())
                    self._next_heartbeat = now + self.s.heartbeat_interval
                if now >= next_resend:
                    self._resend_unacked(now)
                    next_resend = now + self.s.resend_interval
                deadline = min(self._next_heartbeat if self.registered else self._next_register, next_resend)
                timeout_ms = max(0, int((deadline - time.monotonic()) * 1000)) + 1
                for s, _ in poller.poll(timeout_ms):
                    if s is sock:
                        self._drain_socket()
                    else:
                        self._done.clear_wake()
                self._collect_done()
                self._flush()
                if self.fatal_error:
                    return 2
        finally:
            self._shutdown()
            sock.close(linger=200)
            ctx.term()
            self._done.close()
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
        return 0

    def _send(self, msg: p.Message) -> None:
        try:
            self.sock.send(p.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("send queue full; %s dropped (it will be resent)", type(msg).__name__)

    def _drain_socket(self) -> None:
        sock = self.sock
        # Ask the socket whether a frame is waiting rather than recv until zmq.Again: an
        # exception per wake-up is a measurable share of a no-op task's cost.
        events = cast(Callable[[int], int], sock.getsockopt)  # EVENTS is an int option
        while events(_EVENTS) & _POLLIN:
            frame = sock.recv(copy=True)
            try:
                msg = p.decode(frame)
                handler = self._handlers[type(msg)]
            except (p.ProtocolError, KeyError) as exc:
                self.bad_frames += 1
                log.warning("dropped a bad frame from the coordinator (%s); %d so far", exc, self.bad_frames)
                continue
            handler(msg)

    def _register_msg(self) -> p.Register:
        return p.Register(
            protocol_version=p.PROTOCOL_VERSION, worker_id=self.s.worker_id, hostname=hostname(),
            agent_version=__version__, slots=self.s.slots, capabilities=self.capabilities,
            tags=list(self.s.tags), groups=list(self.s.groups), running=list(self.running),
            finished=sorted({rec.task_id for rec, _sent in self.unacked.values()}),
        )

    def _heartbeat_msg(self) -> p.Heartbeat:
        m = hardware.live_metrics(str(self.work_dir))
        return p.Heartbeat(cpu_percent=m["cpu_percent"], memory_percent=m["memory_percent"],
                           disk_percent=m["disk_percent"], running=list(self.running))

    # -- handlers: one per message type ------------------------------------------------------

    def _on_welcome(self, msg: p.Welcome) -> None:
        self.registered = True
        self.s.heartbeat_interval = msg.heartbeat_interval
        # The first heartbeat was scheduled with this agent's own interval (5 s by default); a
        # coordinator with a shorter timeout would mark a healthy agent offline before it came.
        self._next_heartbeat = time.monotonic() + msg.heartbeat_interval
        log.info("registered with coordinator %s as %s", msg.coordinator_id, msg.worker_id)
        # Results the coordinator may not have seen (it restarted, or we reconnected) go again now.
        self._resend_unacked(float("inf"))

    def _on_refused(self, msg: p.Refused) -> None:
        if msg.reregister:
            # A restarted coordinator answers every frame we queued while it was away with this:
            # register once (now, from the loop), not once per frame. Each extra Register would
            # look to it like this agent restarting, and cost the tasks we run a "worker lost".
            if self.registered:
                self.registered = False
                self._next_register = time.monotonic()
            return
        log.error("coordinator refused this agent: %s", msg.reason)
        if msg.fatal:
            self.fatal_error = msg.reason
            self.stop()

    def _on_assign(self, msg: p.Assign) -> None:
        for rid in msg.acks:
            self.unacked.pop(rid, None)
        for spec in msg.tasks:
            run = self.running.get(spec.task_id)
            if run is not None:
                # Already on it: the assignment was resent, or the coordinator took this agent for
                # lost and dispatched the task to it again. Report under the newest attempt, or the
                # coordinator drops the result as stale and the task never finishes.
                if spec.attempt > run.spec.attempt:
                    run.spec = msgspec.structs.replace(run.spec, attempt=spec.attempt)
                    self._started.append(spec.task_id)
                continue
            runner = self._runners.get(spec.type)
            if runner is None:
                self._report(spec, Outcome(spec.task_id, "failure", time.time(), time.time(),
                                           error=f"this agent cannot run task type {spec.type!r}"))
                continue
            runner(spec)

    def _on_cancel(self, msg: p.Cancel) -> None:
        for task_id in msg.task_ids:
            run = self.running.get(task_id)
            if run is not None:
                run.cancel()

    def _on_ack(self, msg: p.ResultAck) -> None:
        for rid in msg.result_ids:
            self.unacked.pop(rid, None)

    # -- runners ------------------------------------------------------------------------------

    def _run_noop(self, spec: p.RunSpec) -> None:
        # The framework's own overhead is what a no-op measures: straight to a result record.
        now = time.time()
        self._outbox.append(p.ResultRecord(
            result_id=f"{self._rid_prefix}{next(self._rid_counter)}", task_id=spec.task_id, status="success",
            start_time=now, end_time=now, exit_code=0, attempt=spec.attempt,
            test_id=str(spec.parameters.get("test_id", "")) if spec.parameters else ""))
        self.completed += 1

    def _run_command(self, spec: p.RunSpec) -> None:
        run = CommandRun(spec, self.work_dir, self._finished, tail_bytes=self.s.tail_bytes,
                         default_timeout=self.s.default_timeout)
        self.running[spec.task_id] = run
        self._started.append(spec.task_id)
        run.start()

    def _collect_done(self) -> None:
        for outcome in self._done.take():
            run = self.running.pop(outcome.task_id, None)
            if outcome.task_id in self._stopping_ids and outcome.error == "cancelled":
                continue
            spec = run.spec if run else p.RunSpec(task_id=outcome.task_id)
            self._report(spec, outcome)

    def _report(self, spec: p.RunSpec, o: Outcome) -> None:
        rec = p.ResultRecord(
            result_id=f"{self._rid_prefix}{next(self._rid_counter)}", task_id=o.task_id, status=o.status,
            start_time=o.start_time, end_time=o.end_time, execution_time=max(0.0, o.end_time - o.start_time),
            exit_code=o.exit_code, error=o.error, metrics=o.metrics, stdout_tail=o.stdout_tail,
            stderr_tail=o.stderr_tail, test_id=str(spec.parameters.get("test_id", "")), attempt=spec.attempt,
        )
        self._outbox.append(rec)
        self.completed += 1

    def _flush(self) -> None:
        """One frame per loop turn for everything that happened in it."""
        if self._started:
            self._send(p.TaskStarted(task_ids=self._started, time=time.time()))
            self._started = []
        if self._outbox:
            now = time.monotonic()
            for rec in self._outbox:
                self.unacked[rec.result_id] = (rec, now)
            self._send(p.Results(results=self._outbox))
            self._outbox = []

    def _resend_unacked(self, now: float) -> None:
        if not self.registered or not self.unacked:
            return
        due = [rec for rec, sent in self.unacked.values() if now - sent >= self.s.resend_interval]
        if due:
            log.info("resending %d unacknowledged result(s)", len(due))
            t = time.monotonic()
            for rec in due:
                self.unacked[rec.result_id] = (rec, t)
            for i in range(0, len(due), 1000):
                self._send(p.Results(results=due[i:i + 1000]))

    def _shutdown(self) -> None:
        # Tasks killed because the agent stops are not the test's failure: they are not reported
        # (Goodbye tells the coordinator to run them elsewhere); what finished before is.
        self._stopping_ids = set(self.running)
        for run in list(self.running.values()):
            run.cancel()
        for run in list(self.running.values()):
            run.join(timeout=10)
        self._collect_done()
        if self.registered:
            self._flush()
            self._send(p.Goodbye(reason="agent stopping"))
