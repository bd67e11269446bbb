"""Every message that crosses the wire, in one place, for both sides.

Frames are msgpack-encoded msgspec Structs of one tagged union (the tag field is ``type``).
There is exactly one decode entry point, :func:`decode`; it either returns a typed message or
raises :class:`ProtocolError`, so a loop can drop and count a bad frame and carry on.

Versioning: ``PROTOCOL_VERSION`` is an integer carried by ``Register`` (agents), ``Request``
(clients), ``Welcome`` and ``Refused`` (the coordinator). A peer outside
``MIN_COMPATIBLE_VERSION..PROTOCOL_VERSION`` is refused at first contact with a reason that names
both versions and the side to upgrade, instead of failing later on a message it cannot parse.
The rules for a change:
- a new optional field, with a default, that an older peer may ignore keeps the version (msgspec
  ignores fields it does not know, and a missing one takes its default);
- a new message, or a field a peer must understand, raises ``PROTOCOL_VERSION``, and the
  coordinator keeps serving agents of the version before it (tests/integration/
  test_protocol_versions.py runs the previous version's agent, its own code from the history);
- ``MIN_COMPATIBLE_VERSION`` rises only when an old peer can no longer be served at all.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Final, Literal, Union

import msgspec

PROTOCOL_VERSION = 3
# The oldest peer version this side still speaks; bump when a change is not backwards compatible.
MIN_COMPATIBLE_VERSION = 1

# Frames above this are refused by libzmq itself (ZMQ_MAXMSGSIZE) before they reach Python.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

# The one vocabulary of statuses: the scheduler, the coordinator, the store, the CLI and the window
# all import these names rather than spelling the strings again.
PENDING: Final = "pending"
ASSIGNED: Final = "assigned"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
TaskStatus = Literal["pending", "assigned", "running", "completed", "failed", "cancelled"]
TASK_STATUSES: tuple[TaskStatus, ...] = (PENDING, ASSIGNED, RUNNING, COMPLETED, FAILED, CANCELLED)
TERMINAL_STATUSES: frozenset[str] = frozenset({COMPLETED, FAILED, CANCELLED})

ONLINE: Final = "online"
OFFLINE: Final = "offline"
BUSY: Final = "busy"
WORKER_STATUSES = (ONLINE, OFFLINE, BUSY, "error")

RESULT_STATUSES = ("success", "failure", "partial")

# Bounds on what a peer may send. Every frame is untrusted: a value outside its range is refused
# at decode with the field named, never kept, so one peer cannot grow the coordinator's memory or
# poison a database write with a number SQLite cannot hold.
MAX_ID = 200                  # task, worker and result ids, incarnations
MAX_NAME = 255                # host names, tags, groups
MAX_LIST = 100_000            # task ids in one frame (running, finished, started, cancel, acks)
MAX_TAGS = 256
MAX_TEXT = 1024 * 1024        # error texts and output tails
MAX_METRICS = 10_000          # metrics in one result
MAX_RESULTS = 10_000          # results in one frame
MAX_REGISTER_BYTES = 256 * 1024  # a whole Register (capabilities included)
MAX_TIMEOUT = 366 * 86400.0   # a year; finite, so "no timeout" is spelled None, never NaN or inf
MAX_PRIORITY = 1_000_000      # |priority|: far inside SQLite's 64-bit integers
MAX_COMMAND = 1024 * 1024     # bytes of a command line: refused by the API, and by the agent before it splits one
MAX_LOG_CHUNK = 1024 * 1024   # bytes of output in one LogChunk
MAX_BUNDLE_CHUNK = 4 * 1024 * 1024  # bytes of a bundle in one BundleChunk (or one put_bundle request)
MAX_NODEID = 4096             # a pytest node id (parametrised ids grow long)
MAX_OFFSET = 2**62

Id = Annotated[str, msgspec.Meta(max_length=MAX_ID)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
IdList = Annotated[list[Id], msgspec.Meta(max_length=MAX_LIST)]
NameList = Annotated[list[Name], msgspec.Meta(max_length=MAX_TAGS)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Attempt = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
# A finite float: NaN and infinities are refused (they compare false with every bound).
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
Metrics = Annotated[dict[Annotated[str, msgspec.Meta(max_length=MAX_NAME)], float],
                    msgspec.Meta(max_length=MAX_METRICS)]


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol."""


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    pass


# ---------------------------------------------------------------------------------------------
# Payload records (not messages on their own)


# W3C trace context (``traceparent``, ``tracestate``) of a task's trace when the sender traces
# (dtf[otel], see tracing.py); a receiver that does not trace, or an older one, ignores it.
TraceContext = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=8)]


class RunSpec(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What an agent needs to run one task (the scheduler's TaskSpec is what it needs to place one)."""

    task_id: Id
    type: Name = "command"  # command | noop | python | pytest
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: Timeout | None = None
    attempt: Attempt = 1
    # The task's trace, when the coordinator traces: the agent's run span joins it (its dispatch
    # span is the parent). Older agents ignore it.
    trace: TraceContext = msgspec.field(default_factory=dict)


# What one test of a pytest shard came to. "crashed": the pytest process died while it ran;
# "flaky": failed, then passed when run again (set by whoever reran it, never by an agent).
TestOutcomeName = Literal["passed", "failed", "skipped", "error", "xfailed", "xpassed", "crashed", "flaky"]
TEST_OUTCOMES: tuple[str, ...] = ("passed", "failed", "skipped", "error", "xfailed", "xpassed", "crashed", "flaky")
# Outcomes that make a run fail (pytest's own rule: errors and failures; a crash is a failure).
FAILING_OUTCOMES: frozenset[str] = frozenset({"failed", "error", "crashed"})
Direction = Literal["higher", "lower"]


class TestOutcome(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One test's outcome inside a pytest shard's result."""

    nodeid: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NODEID)]
    outcome: TestOutcomeName
    duration: Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMEOUT)] = 0.0
    longrepr: Text = ""
    output: Text = ""
    # Numbers measured by this test (a pytest-benchmark test's stats), stored as its row's metrics.
    metrics: Metrics = msgspec.field(default_factory=dict)


class ResultRecord(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One attempt's outcome. ``result_id`` is chosen by the agent so a resend is recognisable."""

    result_id: Id
    task_id: Id
    status: Literal["success", "failure", "partial"]
    start_time: Finite = 0.0
    end_time: Finite = 0.0
    execution_time: Finite = 0.0
    exit_code: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31)] | None = None
    error: Text = ""
    metrics: Metrics = msgspec.field(default_factory=dict)
    stdout_tail: Text = ""
    stderr_tail: Text = ""
    hardware_metrics: Metrics = msgspec.field(default_factory=dict)
    test_id: Name = ""
    attempt: Attempt = 1
    # Per-test outcomes of a pytest shard (each becomes a result row of its own, test_id = node id).
    tests: Annotated[list[TestOutcome], msgspec.Meta(max_length=MAX_LIST)] = msgspec.field(default_factory=list)
    # What the task declared about its metrics (its result file's "units" and "directions").
    units: Annotated[dict[Name, Name], msgspec.Meta(max_length=MAX_METRICS)] = msgspec.field(default_factory=dict)
    directions: Annotated[dict[Name, Direction], msgspec.Meta(max_length=MAX_METRICS)] = msgspec.field(
        default_factory=dict)
    # The agent's result span, when it traces: the coordinator's stored span is its child. An older
    # coordinator ignores it (unknown fields are), an older agent sends none (stored then hangs
    # from the task's own trace context).
    trace: TraceContext = msgspec.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Agent -> coordinator


class Register(_Msg, tag="register"):
    """First contact, and every reconnect. The whole frame is bounded (MAX_REGISTER_BYTES): the
    coordinator keeps capabilities for as long as the worker is known."""

    protocol_version: int
    worker_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
    hostname: Name
    agent_version: Name = ""
    slots: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1
    capabilities: Annotated[dict[str, Any], msgspec.Meta(max_length=256)] = msgspec.field(default_factory=dict)
    tags: NameList = msgspec.field(default_factory=list)
    groups: NameList = msgspec.field(default_factory=list)
    # New at every start of the agent process. The same incarnation registering again is the same
    # agent reconnecting (its tasks stay on it); a new one is an agent that restarted, and what it
    # held and no longer lists goes back to the queue.
    incarnation: Id = ""
    # Tasks this agent is still running, so a restarted coordinator can pick them up again.
    running: IdList = msgspec.field(default_factory=list)
    # Tasks whose results this agent holds unacknowledged (its spool; it resends them after the
    # Welcome): the coordinator keeps them on this agent instead of running them again elsewhere.
    finished: IdList = msgspec.field(default_factory=list)
    # The attempt each of those tasks was given: a coordinator that restarted before it stored an
    # assignment learns the attempt from the agent that runs it, so no attempt number is reused.
    attempts: Annotated[dict[Id, Attempt], msgspec.Meta(max_length=MAX_LIST)] = msgspec.field(
        default_factory=dict)
    # A join secret (from a token, coordinator.yaml or the coordinator's home): a new key that
    # presents a valid one is accepted without an admin's click. Travels only inside CURVE.
    join: Annotated[str, msgspec.Meta(max_length=256)] = ""


class Heartbeat(_Msg, tag="heartbeat"):
    cpu_percent: Finite = 0.0
    memory_percent: Finite = 0.0
    disk_percent: Finite = 0.0
    running: IdList = msgspec.field(default_factory=list)
    # Since protocol 3 (ignored by older coordinators): the busiest GPU's utilisation and memory use,
    # absent on machines without one.
    gpu_percent: Finite | None = None
    gpu_memory_percent: Finite | None = None


class TaskStarted(_Msg, tag="task_started"):
    task_ids: IdList
    time: Finite = 0.0


class Results(_Msg, tag="results"):
    results: Annotated[list[ResultRecord], msgspec.Meta(max_length=MAX_RESULTS)]


class LogChunk(_Msg, tag="log"):
    """Output of a running task, streamed while it runs. ``offset`` is where ``data`` starts in the
    task's stream: a gap (the agent skipped output it could not keep up with, or a chunk lost in a
    reconnect) is visible as such, and a resent chunk is recognised. ``eof``: the stream ended."""

    task_id: Id
    attempt: Attempt = 1
    stream: Literal["stdout", "stderr"] = "stdout"
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] = 0
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_LOG_CHUNK)] = b""
    eof: bool = False


class Progress(_Msg, tag="progress"):
    """How far a running task is (a pytest shard: tests done of total, failures so far)."""

    task_id: Id
    attempt: Attempt = 1
    done: Count = 0
    failed: Count = 0
    total: Count = 0
    current: Annotated[str, msgspec.Meta(max_length=MAX_NODEID)] = ""


class FetchBundle(_Msg, tag="fetch_bundle"):
    """The agent asks for a piece of a bundle it has not cached (one request in flight per bundle)."""

    digest: Name
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] = 0


class Goodbye(_Msg, tag="goodbye"):
    reason: Annotated[str, msgspec.Meta(max_length=4096)] = ""


# ---------------------------------------------------------------------------------------------
# Coordinator -> agent


class Welcome(_Msg, tag="welcome"):
    protocol_version: int
    worker_id: str
    heartbeat_interval: float
    coordinator_id: str = ""


class Refused(_Msg, tag="refused"):
    """First contact refused (incompatible version, unknown key...). ``fatal`` agents stop retrying."""

    reason: str
    fatal: bool = True
    # Set when the coordinator simply does not know this peer (e.g. after a restart): register again.
    reregister: bool = False
    # The refusing coordinator's own protocol version (0 from coordinators before it was sent), so the
    # agent can say both versions even when the reason came from an older release.
    protocol_version: int = 0


class Pending(_Msg, tag="pending"):
    """The agent's key is not accepted yet: it gets no task. It registers again now and then, and
    at once when the coordinator says so (a Refused with ``reregister``, sent on acceptance)."""

    reason: str
    fingerprint: str = ""
    retry_after: float = 5.0


class Assign(_Msg, tag="assign"):
    tasks: list[RunSpec]
    # Results acknowledged in the same frame: with one task in flight the next assignment and
    # the ack of the last result travel together (one wake-up of the agent instead of two).
    acks: list[str] = msgspec.field(default_factory=list)


class BundleChunk(_Msg, tag="bundle_chunk"):
    """A piece of a bundle (answer to FetchBundle); ``error`` when the coordinator has no such bundle."""

    digest: Name
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] = 0
    total: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] = 0
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_BUNDLE_CHUNK)] = b""
    error: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class Cancel(_Msg, tag="cancel"):
    task_ids: IdList


class ResultAck(_Msg, tag="result_ack"):
    result_ids: IdList


# ---------------------------------------------------------------------------------------------
# Clients (CLI, scripts, the window) -> coordinator, and back


class Request(_Msg, tag="request"):
    """A client API call. ``op`` names the operation (create_task, get_task, list_tasks, ...);
    ``args`` are validated against that operation's own Struct by the coordinator."""

    req_id: int
    op: Name
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    protocol_version: int = PROTOCOL_VERSION


class Reply(_Msg, tag="reply"):
    req_id: int
    ok: bool = True
    data: Any = None
    error: str = ""


class Event(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One thing that happened, for the window and for subscribed clients."""

    kind: str  # task, worker, result, log, stats
    data: dict[str, Any]
    time: float = 0.0


class EventBatch(_Msg, tag="events"):
    events: list[Event]
    seq: int = 0


Message = Union[  # noqa: UP007 - msgspec needs a real Union object at runtime here
    Register,
    Heartbeat,
    TaskStarted,
    Results,
    Goodbye,
    LogChunk,
    Progress,
    FetchBundle,
    Welcome,
    Refused,
    Pending,
    Assign,
    BundleChunk,
    Cancel,
    ResultAck,
    Request,
    Reply,
    EventBatch,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    """Serialise one message for the wire."""
    return _encoder.encode(msg)


def decode(frame: bytes | memoryview) -> Message:
    """The only way a frame becomes a message. Raises ProtocolError for anything else."""
    try:
        return _decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(str(exc)) from None


def version_problem(peer_version: int, *, peer: str = "agent", this: str = "coordinator") -> str | None:
    """Why a ``peer`` speaking ``peer_version`` cannot talk to ``this`` side, or None when it can.

    The reason names both versions and which side to upgrade: the operator reading it on the
    refused side may not know which of the two is the old one."""
    if MIN_COMPATIBLE_VERSION <= peer_version <= PROTOCOL_VERSION:
        return None
    both = (f"protocol version {peer_version} is not supported: the {peer} speaks protocol {peer_version}, "
            f"this {this} speaks {PROTOCOL_VERSION} and accepts {MIN_COMPATIBLE_VERSION}..{PROTOCOL_VERSION}")
    if peer_version > PROTOCOL_VERSION:
        return f"{both}; upgrade the {this} to a release that speaks protocol {peer_version}, or run an older {peer}"
    return f"{both}; upgrade the {peer} to this {this}'s release"
