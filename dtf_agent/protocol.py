"""Every message that crosses the wire, in one place, for both sides.

Frames are msgpack-encoded msgspec Structs of one tagged union (the tag field is ``type``).
There is exactly one decode entry point, :func:`decode`; it either returns a typed message or
raises :class:`ProtocolError`, so a loop can drop and count a bad frame and carry on.

Versioning: ``PROTOCOL_VERSION`` is an integer carried by ``Register`` (agents) and ``Request``
(clients). A peer whose major protocol differs is refused at first contact with a readable reason
instead of failing later on some message it cannot parse.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Union

import msgspec

PROTOCOL_VERSION = 1
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


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol."""


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    pass


# ---------------------------------------------------------------------------------------------
# Payload records (not messages on their own)


class RunSpec(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What an agent needs to run one task (the scheduler's TaskSpec is what it needs to place one)."""

    task_id: str
    type: str = "command"  # command | noop | python | pytest
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float | None = None
    attempt: int = 1


class ResultRecord(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One attempt's outcome. ``result_id`` is chosen by the agent so a resend is recognisable."""

    result_id: str
    task_id: str
    status: str  # success | failure | partial
    start_time: float = 0.0
    end_time: float = 0.0
    execution_time: float = 0.0
    exit_code: int | None = None
    error: str = ""
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    stdout_tail: str = ""
    stderr_tail: str = ""
    hardware_metrics: dict[str, float] = msgspec.field(default_factory=dict)
    test_id: str = ""
    attempt: int = 1


# ---------------------------------------------------------------------------------------------
# Agent -> coordinator


class Register(_Msg, tag="register"):
    protocol_version: int
    worker_id: str
    hostname: str
    agent_version: str = ""
    slots: int = 1
    capabilities: dict[str, Any] = msgspec.field(default_factory=dict)
    tags: list[str] = msgspec.field(default_factory=list)
    groups: list[str] = msgspec.field(default_factory=list)
    # Tasks this agent is still running, so a restarted coordinator can pick them up again.
    running: list[str] = msgspec.field(default_factory=list)
    # Tasks whose results this agent holds unacknowledged (it resends them after the Welcome): a
    # restarted coordinator keeps them on this agent instead of running them again elsewhere.
    finished: list[str] = msgspec.field(default_factory=list)


class Heartbeat(_Msg, tag="heartbeat"):
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    disk_percent: float = 0.0
    running: list[str] = msgspec.field(default_factory=list)


class TaskStarted(_Msg, tag="task_started"):
    task_ids: list[str]
    time: float = 0.0


class Results(_Msg, tag="results"):
    results: list[ResultRecord]


class Goodbye(_Msg, tag="goodbye"):
    reason: str = ""


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


class Assign(_Msg, tag="assign"):
    tasks: list[RunSpec]
    # Results acknowledged in the same frame: with one task in flight the next assignment and
    # the ack of the last result travel together (one wake-up of the agent instead of two).
    acks: list[str] = msgspec.field(default_factory=list)


class Cancel(_Msg, tag="cancel"):
    task_ids: list[str]


class ResultAck(_Msg, tag="result_ack"):
    result_ids: list[str]


# ---------------------------------------------------------------------------------------------
# Clients (CLI, scripts, the window) -> coordinator, and back


class Request(_Msg, tag="request"):
    """A client API call. ``op`` names the operation (create_task, get_task, list_tasks, ...);
    ``args`` are validated against that operation's own Struct by the coordinator."""

    req_id: int
    op: str
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
    Welcome,
    Refused,
    Assign,
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


def version_problem(peer_version: int) -> str | None:
    """Why a peer speaking ``peer_version`` cannot talk to us, or None when it can."""
    if peer_version < MIN_COMPATIBLE_VERSION or peer_version > PROTOCOL_VERSION:
        return (
            f"protocol version {peer_version} is not supported: this side speaks "
            f"{MIN_COMPATIBLE_VERSION}..{PROTOCOL_VERSION}; upgrade the older side"
        )
    return None
