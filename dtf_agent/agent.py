"""The agent: connect, register, heartbeat, run tasks, report results until acknowledged.

One thread owns the DEALER socket and runs :meth:`Agent.run`. Task runners finish on their own
threads; they hand outcomes over through an :class:`~dtf_agent.inbox.Inbox` whose pipe the
zmq.Poller watches, so the socket is only ever touched by the loop thread.

Every result is journalled in the agent's spool (:mod:`dtf_agent.spool`) before it is sent, and
leaves it only when the coordinator acknowledges it: an agent killed and started again sends what
it held, and never runs a task again whose result it holds.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec
import zmq

from dtf_agent import __version__, hardware, tracing
from dtf_agent import protocol as p
from dtf_agent.inbox import Inbox
from dtf_agent.runners.command import DEFAULT_SHELL, CommandRun, Outcome
from dtf_agent.spool import Spool, default_spool_dir
from dtf_agent.transport import CurveClient, hostname, make_socket

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

# Between dropping a connection that brought no answer and making the next: time for the
# coordinator to see the first one close (milliseconds on a LAN).
_REATTACH_PAUSE = 0.5

# Plain ints: pyzmq's enum wrappers cost more than the check itself on this hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _with_versions(msg: p.Refused) -> str:
    """A refusal's reason, with both protocol versions when it is about them.

    A coordinator that sends its version (since protocol 3) names both in the reason already. One
    that does not is of an older release, and its reason names only this agent's version and says
    "upgrade the older side": that side is the coordinator."""
    if msg.protocol_version or "protocol" not in msg.reason:
        return msg.reason
    return (f"{msg.reason} (this agent speaks protocol {p.PROTOCOL_VERSION}; the coordinator is of an older "
            f"release: upgrade the coordinator, or run an agent of its release)")


@dataclass
class AgentSettings:
    address: str
    worker_id: str
    slots: int = 1
    tags: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    heartbeat_interval: float = 5.0
    resend_interval: float = 5.0
    # Pauses between Registers while no Welcome comes: doubling from the first to the last, each
    # varied at random by a quarter, so that agents restarted together do not retry together.
    register_retry_min: float = 0.5
    register_retry_max: float = 10.0
    # Seconds without an answer before a warning says what to check (once per outage).
    unreachable_after: float = 5.0
    default_timeout: float | None = None
    tail_bytes: int = 4096
    # What runs a command with shell syntax (execution.shell).
    shell: str = DEFAULT_SHELL
    # Output streamed to the coordinator per task stream: the first half and the newest half; a
    # task that writes faster than the link takes loses the middle (said in the log), not the end.
    max_log_bytes: int = 64 * 1024 * 1024
    # Seconds between two looks at running tasks' output (and progress).
    log_interval: float = 0.5
    # Bundles (suites shipped by `dtf pytest` / `dtf submit --bundle`), kept by digest. None:
    # <DTF home>/agent/<worker id>/cache.
    cache_dir: str | None = None
    cache_max_bytes: int = 2 * 1024**3
    work_dir: str | None = None
    # None: <DTF home>/agent/<worker id>/spool
    spool_dir: str | None = None
    max_message_size: int = p.DEFAULT_MAX_MESSAGE_SIZE
    # CURVE keys (ours, and the coordinator's we trust); None talks plain text (--insecure).
    curve: CurveClient | None = None
    # A join secret (token, the home's local secret): a new key is accepted without a click.
    join: str = field(default="", repr=False)  # a secret: never in a repr
    # Called once with the Welcome when the coordinator's key was not pinned yet (trust on first use).
    on_first_welcome: Callable[[p.Welcome], None] | None = None
    # Announce this agent with mDNS on these addresses ([] all interfaces; None not at all), so that
    # the window lists it before it is enrolled. Name, key fingerprint, slots and tags only.
    advertise_on: list[str] | None = None


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.s = settings
        # First: a second agent with this worker id must fail here (SpoolLocked), before it has
        # made anything that would need cleaning up.
        spool_dir = Path(settings.spool_dir).expanduser() if settings.spool_dir else default_spool_dir(
            settings.worker_id)
        self.spool = Spool(spool_dir)
        # New at every start: the coordinator tells a reconnect (same incarnation) from a restart.
        self.incarnation = os.urandom(8).hex()
        self._stop = threading.Event()
        # Outcomes of tasks, and work other threads hand back to the loop (a bundle checked).
        self._done: Inbox[Outcome | Callable[[], None]] = Inbox()
        self._checkers: list[threading.Thread] = []
        self.registered = False
        self.fatal_error: str | None = None
        self.running: dict[str, Run] = {}
        # Output streaming: task id -> stream -> bytes of its file sent so far; the last progress sent.
        self._log_sent: dict[str, dict[str, int]] = {}
        self._progress_sent: dict[str, tuple[int, int, int, str]] = {}
        self._next_pump = time.monotonic()
        # Bundles: tasks that wait for theirs (digest -> specs), and the bytes of each one being fetched.
        self._bundle_cache: Any = None
        self._awaiting: dict[str, list[p.RunSpec]] = {}
        self._fetching: dict[str, bytearray] = {}
        self._fetch_asked: dict[str, float] = {}
        # Tasks that ended while the coordinator was away: their output is sent (and their files
        # removed) once registered again.
        self._unsent_logs: list[Run] = []
        self._stopping_ids: set[str] = set()
        # result_id -> (record, when last sent); mirrors the spool's pending results.
        self.unacked: dict[str, tuple[p.ResultRecord, float]] = {}
        # task_id -> result_id of the unacknowledged result: such a task is never run again.
        self._held: dict[str, str] = {}
        # Tracing (dtf[otel] and OTEL_* set; see tracing.py), None when off: each task's run span
        # (task id -> span, from its start to its outcome) and each result's (result id -> span,
        # journalled and sent until acknowledged). Every span is ended, at the latest at stop.
        self._tracer = tracing.setup("dtf-agent")
        self._run_spans: dict[str, Span] = {}
        self._result_spans: dict[str, Span] = {}
        for rec in self.spool.pending():
            self._hold(rec, float("-inf"))  # sent after the Welcome
        if self.unacked:
            log.info("%d unacknowledged result(s) in the spool %s will be sent again", len(self.unacked),
                     self.spool.path)
        self._spool_failing = False
        self._outbox: list[p.ResultRecord] = []
        self._volatile: list[p.ResultRecord] = []  # no-op results: sent, never journalled
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
        now = time.monotonic()
        # Registration and contact: see run(). Initial values so that handlers may run before it.
        self._next_register = now
        self._register_delay = settings.register_retry_min
        self._contact_lost_at = now  # since when this agent has been trying to register
        self._connected_at = now  # since when the current connection has gone without an answer
        self._warned_at: float | None = None  # a warning was given in this outage
        self._pending_said = False  # our key waits for acceptance, and we said so
        self._owed_since: float | None = None  # first frame sent that awaits an answer, none since
        self._drops = 0
        self._detached = False  # between two connections: see _detach
        self._handlers: dict[type, Callable[[Any], None]] = {
            p.Welcome: self._on_welcome,
            p.Refused: self._on_refused,
            p.Pending: self._on_pending,
            p.Assign: self._on_assign,
            p.Cancel: self._on_cancel,
            p.ResultAck: self._on_ack,
            p.BundleChunk: self._on_bundle_chunk,
        }
        self._runners: dict[str, Callable[[p.RunSpec], None]] = {
            "noop": self._run_noop,
            "command": self._run_command,
            "pytest": self._run_pytest,
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
        self._ctx = zmq.Context()
        advertiser = self._advertise()
        # No identity of our own: the coordinator's socket gives each connection one, so no peer can
        # take over another's route by naming itself after it.
        self.sock = make_socket(self._ctx, zmq.DEALER, max_message_size=self.s.max_message_size, curve=self.s.curve)
        self.sock.connect(self.s.address)
        self._detached = False
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._done.fileno(), zmq.POLLIN)
        now = time.monotonic()
        # Attributes, not locals: a coordinator that asks us to register again brings the next
        # Register forward, and the Welcome restarts the heartbeat with the coordinator's interval.
        self._lose_contact(now)
        self._next_heartbeat = now + self.s.heartbeat_interval
        next_resend = now + self.s.resend_interval
        log.info("agent %s (incarnation %s) connecting to %s with %d slot(s)", self.s.worker_id, self.incarnation,
                 self.s.address, self.s.slots)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                owed = self._owed_since
                if self.registered and owed is not None and now - owed > self._silence_limit():
                    self._lose_contact(now, silent_for=now - owed)
                if not self.registered:
                    if now >= self._next_register and not self._detached \
                            and now - self._connected_at >= self._stale_after():
                        self._detach(now)
                    if now >= self._next_register:
                        if self._detached:
                            self._attach(now)
                        self._send(self._register_msg())
                        self._owe(now)
                        self._next_register = now + self._register_delay * random.uniform(0.75, 1.25)
                        self._register_delay = min(2 * self._register_delay, self.s.register_retry_max)
                    if (self._warned_at is None and not self._pending_said
                            and now - self._contact_lost_at >= self.s.unreachable_after):
                        self._warn_unreachable(now, now - self._contact_lost_at)
                if self.registered and now >= self._next_heartbeat:
                    self._send(self._heartbeat_msg())
                    self._next_heartbeat = now + self.s.heartbeat_interval
                if now >= next_resend:
                    self._resend_unacked(now)
                    next_resend = now + self.s.resend_interval
                timeout_ms = max(0, int((self._next_wake(next_resend) - time.monotonic()) * 1000)) + 1
                for s, _ in poller.poll(timeout_ms):
                    if s is self.sock:
                        self._drain_socket()
                    else:
                        self._done.clear_wake()
                self._collect_done()
                if (self.running or self._fetching or self._unsent_logs) and time.monotonic() >= self._next_pump:
                    self._pump_all()
                self._flush()
                if self.fatal_error:
                    return 2
        finally:
            if advertiser is not None:
                advertiser.close()
            self._shutdown()
            self.sock.close(linger=200)
            self._ctx.term()
            self._done.close()
            self.spool.close()
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
        return 0

    def _advertise(self) -> Any:
        if self.s.advertise_on is None or self.s.curve is None:
            return None
        from dtf_agent import discovery
        from dtf_agent.keys import fingerprint

        try:
            return discovery.AgentAdvertiser(
                name=self.s.worker_id, fingerprint=fingerprint(self.s.curve.public), slots=self.s.slots,
                tags=self.s.tags, addresses=self.s.advertise_on or discovery.local_ipv4_addresses(),
                interfaces=self.s.advertise_on)
        except (OSError, ValueError, RuntimeError) as exc:  # mDNS is a convenience: the agent works without it
            log.warning("could not announce this agent with mDNS (%s: %s); it works without", type(exc).__name__, exc)
            return None

    def _next_wake(self, next_resend: float) -> float:
        if self.registered:
            wake = min(self._next_heartbeat, next_resend)
            if self.running or self._fetching or self._unsent_logs:
                wake = min(wake, self._next_pump)
            if self._owed_since is not None:
                wake = min(wake, self._owed_since + self._silence_limit())
            return wake
        wake = min(self._next_register, next_resend)
        if self._warned_at is None:
            wake = min(wake, self._contact_lost_at + self.s.unreachable_after)
        return wake

    # -- contact with the coordinator ----------------------------------------------------------

    def _silence_limit(self) -> float:
        # The coordinator never speaks unasked, so silence counts only while an answer is owed
        # (an ack of results sent): an idle agent re-registering every few intervals would make
        # the coordinator churn. Not below unreachable_after: a coordinator busy committing for a
        # second is slow, not gone.
        return max(3 * self.s.heartbeat_interval, self.s.unreachable_after)

    def _owe(self, now: float) -> None:
        if self._owed_since is None:
            self._owed_since = now

    def _stale_after(self) -> float:
        return self.s.unreachable_after / 2

    def _detach(self, now: float) -> None:
        """Drop a connection that brought no answer; a new one is made a moment later (_attach).

        A ROUTER that still holds this worker id for an earlier connection (this agent before a
        restart, or one the network left half-open) refuses the new one without a word, and goes
        on ignoring it for as long as it stays up, even once the old one is gone: only a new
        connection gets through. Not at once: the coordinator must see this one close first, or
        it refuses the next one for the same reason. Frames queued here are dropped with it (no
        pile of stale Registers reaches the coordinator); whatever matters goes again after the
        Welcome."""
        log.debug("no answer on the connection to %s: reconnecting", self.s.address)
        self.sock.disconnect(self.s.address)
        self._detached = True
        self._next_register = now + _REATTACH_PAUSE

    def _attach(self, now: float) -> None:
        self.sock.connect(self.s.address)
        self._detached = False
        self._connected_at = now

    def _lose_contact(self, now: float, silent_for: float | None = None) -> None:
        """Register again from now on, backing off from the shortest pause."""
        self.registered = False
        self._next_register = now
        self._register_delay = self.s.register_retry_min
        self._contact_lost_at = now
        self._owed_since = None
        # Measured from now when the coordinator has just spoken on this connection (it restarted
        # and asks us to register again); a silent one may itself be the trouble: a new one at once.
        self._connected_at = now if silent_for is None else float("-inf")
        if silent_for is not None:
            self._warn_unreachable(now, silent_for, silent=True)

    def _warn_unreachable(self, now: float, waited: float, *, silent: bool = False) -> None:
        # Once per outage: the Welcome that ends it says so at INFO.
        self._warned_at = now - waited
        what = ("stopped answering" if silent else "does not answer")
        log.warning(
            "the coordinator at %s %s (nothing for %.0f s). Check that `dtf serve` or the DTF window is running "
            "there, that %s is its agent port, that no firewall blocks it, and that --coordinator or "
            "coordinator.address in worker.yaml names it. Retrying in the background, backing off to about "
            "every %.0f s; said once.",
            self.s.address, what, waited, _port_of(self.s.address), self.s.register_retry_max)
        if self.s.curve is not None:
            from dtf_agent.keys import fingerprint

            log.warning("this agent only talks to the coordinator key %s: a coordinator there with another key, "
                        "or one started with --insecure, never answers it (start the agent with --insecure for an "
                        "insecure coordinator; --join TOKEN or --coordinator-key for another key)",
                        fingerprint(self.s.curve.server_key))

    def _send(self, msg: p.Message) -> bool:
        """Queue a frame for the coordinator; False when it could not be (sent again later, or not needed)."""
        if self._detached:
            return False  # between two connections (_detach): sent again, or not needed, after the Welcome
        try:
            self.sock.send(p.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            # Once until a frame goes through again: a coordinator away for long fills the queue,
            # and every frame after that would say the same.
            self._drops += 1
            if self._drops == 1:
                log.warning("%s not sent: no connection to the coordinator yet, or its send queue is full (it "
                            "will be sent again); further drops are not logged until frames go through",
                            type(msg).__name__)
            return False
        if self._drops:
            log.info("send queue drained; %d frame(s) had been dropped", self._drops)
            self._drops = 0
        return True

    def _drain_socket(self) -> None:
        sock = self.sock
        # Ask the socket whether a frame is waiting rather than recv until zmq.Again: an
        # exception per wake-up is a measurable share of a no-op task's cost.
        events = cast(Callable[[int], int], sock.getsockopt)  # EVENTS is an int option
        while events(_EVENTS) & _POLLIN:
            frame = sock.recv(copy=True)
            self._owed_since = None  # any frame, even a bad one, shows the coordinator is there
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
            tags=list(self.s.tags), groups=list(self.s.groups), incarnation=self.incarnation,
            running=self._running_ids(), finished=sorted(self._held), join=self.s.join,
            attempts={**{tid: self.unacked[rid][0].attempt for tid, rid in self._held.items() if rid in self.unacked},
                      **{s.task_id: s.attempt for specs in self._awaiting.values() for s in specs},
                      **{tid: run.spec.attempt for tid, run in self.running.items()}},
        )

    def _heartbeat_msg(self) -> p.Heartbeat:
        m = hardware.live_metrics(str(self.work_dir))
        # Tasks whose results await their ack count as held too: the coordinator requeues a task
        # its worker stops listing, and a result in flight is not a task the agent lost.
        running = self._running_ids()
        held = [*running, *(t for t in self._held if t not in self.running)]
        return p.Heartbeat(cpu_percent=m["cpu_percent"], memory_percent=m["memory_percent"],
                           disk_percent=m["disk_percent"], running=held[:p.MAX_LIST],
                           gpu_percent=m.get("gpu_percent"), gpu_memory_percent=m.get("gpu_memory_percent"))

    # -- handlers: one per message type ------------------------------------------------------

    def _on_welcome(self, msg: p.Welcome) -> None:
        # Only a coordinator too old for this agent is refused here. A newer one that welcomes it has
        # checked this agent's version already: it serves the versions before its own.
        problem = (p.version_problem(msg.protocol_version, peer="coordinator", this="agent")
                   if msg.protocol_version < p.MIN_COMPATIBLE_VERSION else None)
        if problem:
            log.error("%s", problem)
            self.fatal_error = problem
            self.stop()
            return
        now = time.monotonic()
        self.registered = True
        if self._pending_said:
            log.info("accepted by the coordinator")
            self._pending_said = False
        if self.s.on_first_welcome is not None:
            first, self.s.on_first_welcome = self.s.on_first_welcome, None
            first(msg)
        self._register_delay = self.s.register_retry_min
        self.s.heartbeat_interval = msg.heartbeat_interval
        # The first heartbeat was scheduled with this agent's own interval (5 s by default); a
        # coordinator with a shorter timeout would mark a healthy agent offline before it came.
        self._next_heartbeat = now + msg.heartbeat_interval
        if self._warned_at is not None:
            log.info("the coordinator at %s is reachable again (after %.0f s); registered as %s", self.s.address,
                     now - self._warned_at, msg.worker_id)
            self._warned_at = None
        else:
            log.info("registered with coordinator %s as %s", msg.coordinator_id, msg.worker_id)
        # Results the coordinator may not have seen (it restarted, or we reconnected) go again now.
        self._resend_unacked(float("inf"))
        for digest in list(self._fetching):  # and bundle requests it may never have answered
            self._fetch(digest)

    def _on_pending(self, msg: p.Pending) -> None:
        """Our key waits for the admin: not an outage (no warning about reachability), no tasks.
        Register again now and then; at once when the coordinator says we were accepted."""
        now = time.monotonic()
        self.registered = False
        self._owed_since = None
        self._contact_lost_at = now
        self._next_register = now + max(1.0, min(msg.retry_after, 30.0))
        # This connection answers: the next Register goes on it, not on a new one (see _detach).
        self._connected_at = self._next_register
        self._register_delay = self.s.register_retry_min
        if not self._pending_said:
            self._pending_said = True
            log.warning("waiting for acceptance: %s", msg.reason)

    def _on_refused(self, msg: p.Refused) -> None:
        if msg.reregister and not self.registered:
            if self._pending_said:
                self._next_register = time.monotonic()  # accepted while pending: register now
            return
        if msg.reregister:
            # A restarted coordinator answers every frame we queued while it was away with this:
            # register once (now, from the loop), not once per frame. Each extra Register would
            # look to it like this agent restarting, and cost the tasks we run a "worker lost".
            if self.registered:
                self._lose_contact(time.monotonic())
            return
        reason = _with_versions(msg)
        log.error("coordinator refused this agent: %s", reason)
        if msg.fatal:
            self.fatal_error = reason
            self.stop()

    def _on_assign(self, msg: p.Assign) -> None:
        if msg.acks:
            self._acked(msg.acks)
        for spec in msg.tasks:
            rid = self._held.get(spec.task_id)
            if rid is not None:
                # Its result is in the spool, unacknowledged: the coordinator never stored it (a
                # restart, a lost ack) and assigns the task anew. Not run again; the result goes
                # under this attempt, the only one the coordinator will store.
                rec = self.unacked[rid][0]
                if rec.attempt != spec.attempt:
                    rec = msgspec.structs.replace(rec, attempt=spec.attempt)
                self._outbox.append(rec)
                continue
            run = self.running.get(spec.task_id)
            if run is not None:
                # Already on it: the assignment was resent, or the coordinator took this agent for
                # lost and dispatched the task to it again. Report under the newest attempt, or the
                # coordinator drops the result as stale and the task never finishes.
                if spec.attempt > run.spec.attempt:
                    with run.spec_lock:
                        run.spec = msgspec.structs.replace(run.spec, attempt=spec.attempt)
                    self._log_sent[spec.task_id] = {}  # the new attempt's log starts from the beginning
                    self._started.append(spec.task_id)
                continue
            waiting = self._waiting_spec(spec.task_id)
            if waiting is not None:
                # Still fetching its bundle: one run, under the newest attempt.
                digest, i = waiting
                if spec.attempt > self._awaiting[digest][i].attempt:
                    self._awaiting[digest][i] = spec
                    self._started.append(spec.task_id)
                continue
            runner = self._runners.get(spec.type)
            if self._tracer is not None:
                self._trace_run(spec)
            if runner is None:
                self._report(spec, Outcome(spec.task_id, "failure", time.time(), time.time(),
                                           error=f"this agent cannot run task type {spec.type!r}"))
                continue
            runner(spec)

    def _on_cancel(self, msg: p.Cancel) -> None:
        for task_id in msg.task_ids:
            if log.isEnabledFor(logging.DEBUG):  # a cancelled run is thousands of these
                log.debug("task %s: cancelled by the coordinator", task_id, extra={"task_id": task_id})
            run = self.running.get(task_id)
            if run is not None:
                run.cancel()
                continue
            for specs in self._awaiting.values():
                for spec in specs:
                    if spec.task_id == task_id:
                        specs.remove(spec)
                        self._report(spec, Outcome(task_id, "failure", time.time(), time.time(), error="cancelled"))
                        break

    def _on_ack(self, msg: p.ResultAck) -> None:
        self._acked(msg.result_ids)

    # -- results and the spool ----------------------------------------------------------------

    # -- tracing (only while self._tracer is set) ----------------------------------------------

    def _trace_run(self, spec: p.RunSpec) -> None:
        assert self._tracer is not None
        old = self._run_spans.pop(spec.task_id, None)
        if old is not None:  # not expected: a task runs once at a time here
            tracing.end_span(old, "superseded by a new run of the task")
        self._run_spans[spec.task_id] = tracing.start_span(
            self._tracer, "dtf.run", spec.trace or None, kind="consumer",
            attributes={"dtf.task_id": spec.task_id, "dtf.task_type": spec.type, "dtf.attempt": spec.attempt,
                        "dtf.worker_id": self.s.worker_id})

    def _end_run(self, task_id: str, why: str) -> None:
        span = self._run_spans.pop(task_id, None)
        if span is not None:
            tracing.end_span(span, why)

    def _trace_result(self, spec: p.RunSpec, result_id: str, status: str, error: str,
                      exit_code: int | None) -> dict[str, str]:
        """The run span ends with the outcome; the result span starts (ended by its ack). Returns
        the result span's context, which the result carries to the coordinator."""
        assert self._tracer is not None
        run = self._run_spans.pop(spec.task_id, None)
        if run is not None:
            tracing.end_span(run, None if status == "success" else (error or status),
                             {"dtf.status": status, "dtf.exit_code": exit_code})
        elif not spec.trace:
            return {}  # a task this process never saw start (nothing to hang a span from)
        span = tracing.start_span(self._tracer, "dtf.result", run if run is not None else (spec.trace or None),
                                  kind="producer", attributes={"dtf.task_id": spec.task_id, "dtf.result_id": result_id,
                                                               "dtf.attempt": spec.attempt, "dtf.status": status})
        old = self._result_spans.pop(result_id, None)
        if old is not None:
            tracing.end_span(old)
        self._result_spans[result_id] = span
        return tracing.context_of(span)

    def _end_traces(self) -> None:
        """At stop: what is still open ends, saying why (a result stays in the spool for the next start)."""
        for task_id in list(self._run_spans):
            self._end_run(task_id, "the agent stopped before the task ended")
        spans, self._result_spans = self._result_spans, {}
        for span in spans.values():
            tracing.end_span(span, attributes={"dtf.acknowledged": False})
        tracing.flush()

    def _hold(self, rec: p.ResultRecord, sent: float) -> None:
        self.unacked[rec.result_id] = (rec, sent)
        self._held[rec.task_id] = rec.result_id

    def _acked(self, result_ids: list[str]) -> None:
        if self._result_spans:
            for rid in result_ids:
                span = self._result_spans.pop(rid, None)
                if span is not None:
                    tracing.end_span(span, attributes={"dtf.acknowledged": True})
        for rid in result_ids:
            entry = self.unacked.pop(rid, None)
            if entry is not None and self._held.get(entry[0].task_id) == rid:
                del self._held[entry[0].task_id]
        try:
            self.spool.ack(result_ids)
        except (OSError, ValueError) as exc:
            # Only costs a resend after a restart, which the coordinator recognises.
            log.warning("cannot record an acknowledgement in the result spool %s: %s", self.spool.path, exc)

    def _journal(self, records: list[p.ResultRecord]) -> None:
        """Results on disk before they are sent. A spool that fails (disk full) does not stop the
        results: they go out anyway and stay in memory until acknowledged, as before spools."""
        try:
            self.spool.append(records)
        except (OSError, ValueError) as exc:
            if not self._spool_failing:
                log.error("cannot write the result spool %s (%s): results are sent but not kept on disk until "
                          "it works again", self.spool.path, exc)
            self._spool_failing = True
        else:
            if self._spool_failing:
                log.info("the result spool %s works again", self.spool.path)
            self._spool_failing = False

    # -- runners ------------------------------------------------------------------------------

    def _run_noop(self, spec: p.RunSpec) -> None:
        # The framework's own overhead is what a no-op measures: straight to a result record. It
        # is not journalled (no fsync): running a no-op again after a crash costs nothing and
        # gives the same result, so the spool's promise is kept without paying for it.
        now = time.time()
        rid = f"{self._rid_prefix}{next(self._rid_counter)}"
        trace = self._trace_result(spec, rid, "success", "", 0) if self._tracer is not None else {}
        self._volatile.append(p.ResultRecord(
            result_id=rid, task_id=spec.task_id, status="success",
            start_time=now, end_time=now, exit_code=0, attempt=spec.attempt,
            test_id=str(spec.parameters.get("test_id", "")) if spec.parameters else "", trace=trace))
        self.completed += 1

    def _run_command(self, spec: p.RunSpec) -> None:
        self._start(spec, CommandRun)

    def _run_pytest(self, spec: p.RunSpec) -> None:
        self._start(spec, _pytest_run())

    def _start(self, spec: p.RunSpec, kind: Callable[..., Run]) -> None:
        """Start a task now, or once its bundle is here (fetched from the coordinator, see _fetch)."""
        digest = spec.parameters.get("bundle") if spec.parameters else None
        prepare = None
        cleanup: list[Path] = []  # what preparing the task makes, removed with the task's files
        if digest:
            from dtf_agent.runners import bundles

            if not isinstance(digest, str) or not bundles.DIGEST_RE.fullmatch(digest):
                self._report(spec, Outcome(spec.task_id, "failure", time.time(), time.time(),
                                           error=f"parameter 'bundle' is not a bundle digest: {str(digest)[:80]!r}"))
                return
            if not self._cache().has(digest):
                self._awaiting.setdefault(digest, []).append(spec)
                self._started.append(spec.task_id)
                self._fetch(digest)
                return
            prepare = self._bundle_preparer(digest, cleanup)
        try:
            run = kind(spec, self.work_dir, self._finished, tail_bytes=self.s.tail_bytes,
                       default_timeout=self.s.default_timeout, prepare=prepare,
                       **({"shell": self.s.shell} if kind is CommandRun else {}))
        except OSError as exc:  # the work dir went away (a /tmp cleaner), the disk is full...
            self._report(spec, Outcome(spec.task_id, "failure", time.time(), time.time(),
                                       error=f"cannot start the task in {self.work_dir}: {exc}"))
            return
        run.extra_cleanup = cleanup
        self.running[spec.task_id] = run
        self._log_sent[spec.task_id] = {}
        if spec.task_id not in self._started:
            self._started.append(spec.task_id)
        run.start()
        if log.isEnabledFor(logging.DEBUG):  # per task: the hot path stays quiet at INFO
            log.debug("task %s (attempt %d): started", spec.task_id, spec.attempt,
                      extra={"task_id": spec.task_id, "attempt": spec.attempt})

    def _waiting_spec(self, task_id: str) -> tuple[str, int] | None:
        """(digest, index) of a task that waits for its bundle, or None."""
        for digest, specs in self._awaiting.items():
            for i, s in enumerate(specs):
                if s.task_id == task_id:
                    return digest, i
        return None

    def _running_ids(self) -> list[str]:
        """Tasks this agent holds: running, or waiting for their bundle."""
        waiting = [s.task_id for specs in self._awaiting.values() for s in specs]
        return [*self.running, *waiting][:p.MAX_LIST]

    # -- bundles --------------------------------------------------------------------------------

    def _cache(self) -> Any:
        if self._bundle_cache is None:
            from dtf_agent.paths import dtf_home
            from dtf_agent.runners.bundles import BundleCache

            root = Path(self.s.cache_dir).expanduser() if self.s.cache_dir else (
                dtf_home() / "agent" / self.s.worker_id / "cache")
            self._bundle_cache = BundleCache(root, self.s.cache_max_bytes)
        return self._bundle_cache

    def _fetch(self, digest: str) -> None:
        """Ask for the next piece of a bundle; one request in flight per bundle (the answer asks the next)."""
        buf = self._fetching.setdefault(digest, bytearray())
        self._fetch_asked[digest] = time.monotonic()
        self._send(p.FetchBundle(digest=digest, offset=len(buf)))

    def _on_bundle_chunk(self, msg: p.BundleChunk) -> None:
        buf = self._fetching.get(msg.digest)
        if buf is None or msg.offset != len(buf):
            return  # not asked for, or an answer to a request made again: the other answer counts
        if msg.error:
            self._bundle_failed(msg.digest, f"the coordinator cannot give bundle {msg.digest}: {msg.error}")
            return
        limit = self.s.cache_max_bytes
        if msg.total > limit or len(buf) + len(msg.data) > max(msg.total, 0):
            self._bundle_failed(msg.digest, f"bundle {msg.digest} is {msg.total} bytes, more than this agent's "
                                            f"cache takes ({limit} bytes, execution.cache_max_bytes)")
            return
        buf += msg.data
        if len(buf) < msg.total and msg.data:
            self._fetch(msg.digest)
            return
        del self._fetching[msg.digest]
        self._fetch_asked.pop(msg.digest, None)
        # Checking a bundle reads all of it (seconds for a big one): on a thread, so that heartbeats
        # and results go on meanwhile; the tasks start when it hands the verdict back.
        t = threading.Thread(target=self._check_bundle, args=(msg.digest, bytes(buf)),
                             name=f"bundle-check-{msg.digest[7:19]}", daemon=True)
        self._checkers = [c for c in self._checkers if c.is_alive()] + [t]
        t.start()

    def _check_bundle(self, digest: str, data: bytes) -> None:
        """On its own thread: verify and cache the bundle, then hand the outcome to the loop."""
        from dtf_agent.runners.bundles import BundleError

        try:
            self._cache().put(digest, data)
            why = ""
        except (BundleError, OSError) as exc:
            why = f"bundle {digest} from the coordinator is unusable: {exc}"
        except Exception as exc:  # a bug: said, and the tasks that waited fail with it, nothing hangs
            log.exception("checking bundle %s failed", digest)
            why = f"checking bundle {digest} failed: {type(exc).__name__}: {exc}"
        self._done.put(lambda: self._bundle_checked(digest, why))

    def _bundle_checked(self, digest: str, why: str) -> None:
        if why:
            self._bundle_failed(digest, why)
            return
        for spec in self._awaiting.pop(digest, []):
            self._start(spec, CommandRun if spec.type == "command" else _pytest_run())

    def _bundle_failed(self, digest: str, why: str) -> None:
        log.error("%s", why)
        self._fetching.pop(digest, None)
        self._fetch_asked.pop(digest, None)
        for spec in self._awaiting.pop(digest, []):
            self._report(spec, Outcome(spec.task_id, "failure", time.time(), time.time(), error=why))

    def _refetch_stalled(self, now: float) -> None:
        """A request or its answer lost in a reconnect: ask again for what is still missing."""
        for digest, asked in list(self._fetch_asked.items()):
            if now - asked > 10.0:
                self._fetch(digest)

    def _bundle_preparer(self, digest: str, cleanup: list[Path]) -> Callable[[p.RunSpec], p.RunSpec]:
        """What the task's own thread does before it starts: unpack the bundle into a directory of the
        task's own (and make the bundle's virtual environment when it asks for one)."""
        cache = self._cache()

        def prepare(spec: p.RunSpec) -> p.RunSpec:
            params = dict(spec.parameters)
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in spec.task_id[:40])
            dest = self.work_dir / f"bundle-{safe}-{os.urandom(4).hex()}"
            cleanup.append(dest)
            cache.unpack(digest, dest)
            sub = str(params.get("cwd") or ".")
            cwd = (dest / sub).resolve()
            if not cwd.is_relative_to(dest.resolve()):
                raise ValueError(f"cwd {sub!r} is outside the bundle")
            params["cwd"] = str(cwd)
            env = {str(k): str(v) for k, v in (params.get("env") or {}).items()}
            requirements = params.get("requirements")
            if requirements:
                venv = cache.venv(digest, str(requirements))
                params["python"] = str(venv / "bin" / "python")
                env["VIRTUAL_ENV"] = str(venv)
                env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"
            params["env"] = env
            return msgspec.structs.replace(spec, parameters=params)

        return prepare

    # -- output streaming -----------------------------------------------------------------------

    def _pump_all(self) -> None:
        self._next_pump = time.monotonic() + self.s.log_interval
        if not self.registered:
            return  # sent from where it stopped once registered again; the files keep it all
        self._refetch_stalled(time.monotonic())
        for run in list(self.running.values()):
            self._pump(run, final=False)
        unsent, self._unsent_logs = self._unsent_logs, []
        for run in unsent:
            self._last_of(run)

    def _pump(self, run: Run, *, final: bool) -> None:
        """Send what a task wrote since the last look: at most a megabyte a stream a turn while it runs
        (the loop has others to serve), everything at the end. Past the first half of
        max_log_bytes, a backlog over the other half is skipped: the coordinator sees the gap by the
        offsets and marks it."""
        task_id, attempt = run.spec.task_id, run.spec.attempt
        sent = self._log_sent.setdefault(task_id, {})
        half = max(1, self.s.max_log_bytes // 2)
        for stream, path in run.log_files().items():
            pos = sent.get(stream, 0)
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if pos >= half and size - pos > half:
                        pos = size - half
                    budget = size - pos if final else p.MAX_LOG_CHUNK
                    fh.seek(pos)
                    while budget > 0 and pos < size:
                        data = fh.read(min(p.MAX_LOG_CHUNK, budget, size - pos))
                        if not data or not self._send(p.LogChunk(task_id=task_id, attempt=attempt,
                                                                 stream=stream,  # type: ignore[arg-type]
                                                                 offset=pos, data=data)):
                            break
                        pos += len(data)
                        budget -= len(data)
            except OSError as exc:
                log.debug("cannot read the %s of task %s: %s", stream, task_id, exc)
            sent[stream] = pos
            if final:
                self._send(p.LogChunk(task_id=task_id, attempt=attempt, stream=stream,  # type: ignore[arg-type]
                                      offset=pos, eof=True))
        progress = run.progress()
        if progress is not None and progress != self._progress_sent.get(task_id):
            done, failed, total, current = progress
            if self._send(p.Progress(task_id=task_id, attempt=attempt, done=done, failed=failed, total=total,
                                     current=current[:p.MAX_NODEID])):
                self._progress_sent[task_id] = progress

    def _last_of(self, run: Run) -> None:
        """The rest of a finished task's output, then its files go."""
        self._pump(run, final=True)
        self._log_sent.pop(run.spec.task_id, None)
        self._progress_sent.pop(run.spec.task_id, None)
        run.cleanup()

    def _collect_done(self) -> None:
        for outcome in self._done.take():
            if not isinstance(outcome, Outcome):
                outcome()  # handed back by another thread, to run here
                continue
            run = self.running.pop(outcome.task_id, None)
            if run is not None:
                if self.registered:
                    self._last_of(run)  # before its result: same socket, in order
                else:
                    self._unsent_logs.append(run)
            if outcome.task_id in self._stopping_ids and outcome.error == "cancelled":
                if self._tracer is not None:
                    self._end_run(outcome.task_id, "cancelled: the agent is stopping (the task runs elsewhere)")
                continue
            spec = run.spec if run else p.RunSpec(task_id=outcome.task_id)
            self._report(spec, outcome)

    def _report(self, spec: p.RunSpec, o: Outcome) -> None:
        rid = f"{self._rid_prefix}{next(self._rid_counter)}"
        trace = self._trace_result(spec, rid, o.status, o.error, o.exit_code) if self._tracer is not None else {}
        rec = p.ResultRecord(
            result_id=rid, task_id=o.task_id, status=o.status,
            start_time=o.start_time, end_time=o.end_time, execution_time=max(0.0, o.end_time - o.start_time),
            exit_code=o.exit_code, error=o.error, metrics=o.metrics, stdout_tail=o.stdout_tail,
            stderr_tail=o.stderr_tail, test_id=str(spec.parameters.get("test_id", "")), attempt=spec.attempt,
            tests=[msgspec.convert(t, p.TestOutcome) for t in o.tests], units=o.units,
            directions=o.directions,  # type: ignore[arg-type]
            trace=trace,
        )
        self._outbox.append(rec)
        self.completed += 1
        # A failure at INFO, with its ids; a success only at DEBUG (the hot path).
        level = logging.DEBUG if o.status == "success" else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "task %s (attempt %d): %s in %.2f s%s", o.task_id, spec.attempt, o.status,
                    rec.execution_time, f" ({o.error})" if o.error else "",
                    extra={"task_id": o.task_id, "attempt": spec.attempt})

    def _flush(self, *, send: bool = True) -> None:
        """One frame per loop turn for everything that happened in it, and one fsync."""
        if self._started:
            if send:
                self._send(p.TaskStarted(task_ids=self._started, time=time.time()))
            self._started = []
        if self._outbox or self._volatile:
            if self._outbox:
                self._journal(self._outbox)
            batch = self._outbox + self._volatile if self._volatile else self._outbox
            self._outbox, self._volatile = [], []
            now = time.monotonic()
            for rec in batch:
                self._hold(rec, now)
            if send:
                for i in range(0, len(batch), p.MAX_RESULTS):
                    self._send(p.Results(results=batch[i:i + p.MAX_RESULTS]))
                self._owe(now)

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
            self._owe(t)

    def _shutdown(self) -> None:
        # Tasks killed because the agent stops are not the test's failure: they are not reported
        # (Goodbye tells the coordinator to run them elsewhere); what finished before is.
        self._stopping_ids = set(self.running)
        for run in list(self.running.values()):
            run.cancel()
        for run in list(self.running.values()):
            run.join(timeout=10)
        for checker in self._checkers:
            checker.join(timeout=30)
        self._collect_done()
        for run in self._unsent_logs:  # the coordinator stayed away: the result tails are what it gets
            run.cleanup()
        self._unsent_logs = []
        # Journalled even when the coordinator is away: they are sent after the next start.
        self._flush(send=self.registered)
        if self.registered:
            self._send(p.Goodbye(reason="agent stopping"))
        if self._tracer is not None:
            self._end_traces()


class Run(Protocol):
    """What the agent needs of a running task, whatever its type (command.CommandRun, pytest_run.PytestRun)."""

    spec: p.RunSpec
    spec_lock: threading.Lock
    extra_cleanup: list[Path]

    def start(self) -> None: ...
    def cancel(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def log_files(self) -> dict[str, Path]: ...
    def progress(self) -> tuple[int, int, int, str] | None: ...
    def cleanup(self) -> None: ...


def _pytest_run() -> Callable[..., Run]:
    # Imported for pytest shards only: a plain agent never pays for it.
    from dtf_agent.runners.pytest_run import PytestRun

    return PytestRun


def _port_of(address: str) -> str:
    """How the warning names the port: 'port 8081' for tcp://host:8081, else the address."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and "://" in host:
        return f"port {port}"
    return address
