"""The wire protocol: every message round-trips; bad frames are refused, counted, and never stop
the coordinator's loop (checked against a real coordinator thread over real loopback sockets)."""

from __future__ import annotations

import threading
import typing
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from dtf_agent import protocol as p
from dtf_agent.agent import Agent, AgentSettings
from dtf_gui.client import Client, ClientError
from tests.helpers import FakeAgent, wait_until

# ------------------------------------------------------------------------------ round trips

SPEC = p.RunSpec(task_id="t-1", type="command", parameters={"command": "echo hi", "env": {"A": "1"}},
                  timeout=2.5, attempt=3)
RECORD = p.ResultRecord(
    result_id="w-1-7", task_id="t-1", status="partial", start_time=10.0, end_time=12.5, execution_time=2.5,
    exit_code=-9, error="timed out", metrics={"latency_ms": 1.25, "n": 3.0}, stdout_tail="out\n",
    stderr_tail="err\n", hardware_metrics={"cpu_percent": 50.0}, test_id="bench-a", attempt=2,
)

# One instance of every message, with every field away from its default so a field that is
# lost on the way shows up as an inequality.
SAMPLES: list[p.Message] = [
    p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="w1", hostname="lab-3", agent_version="0.1",
               slots=4, capabilities={"cpu_count": 8, "gpus": [{"name": "x", "memory_gb": 8.0}]},
               tags=["gpu"], groups=["lab"], running=["t-0"]),
    p.Heartbeat(cpu_percent=12.5, memory_percent=40.0, disk_percent=70.25, running=["t-1", "t-2"]),
    p.TaskStarted(task_ids=["t-1", "t-2"], time=1700000000.5),
    p.Results(results=[RECORD, p.ResultRecord(result_id="w-1-8", task_id="t-2", status="success")]),
    p.Goodbye(reason="agent stopping"),
    p.LogChunk(task_id="t1", attempt=2, stream="stderr", offset=4096, data=b"\xff partial utf-8 \xe2\x82", eof=True),
    p.Progress(task_id="t1", done=3, failed=1, total=10, current="tests/test_a.py::test_b[x-1]"),
    p.FetchBundle(digest="sha256-" + "0" * 64, offset=4 * 1024 * 1024),
    p.BundleChunk(digest="sha256-" + "0" * 64, offset=0, total=3, data=b"abc"),
    p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id="w1", heartbeat_interval=0.5, coordinator_id="c1"),
    p.Refused(reason="protocol version 9 is not supported", fatal=False, reregister=True),
    p.Pending(reason="waits for acceptance", fingerprint="SHA256:abc", retry_after=5.0),
    p.Assign(tasks=[SPEC, p.RunSpec(task_id="t-2", type="noop")]),
    p.Cancel(task_ids=["t-1"]),
    p.ResultAck(result_ids=["w-1-7", "w-1-8"]),
    p.Request(req_id=42, op="create_task", args={"command": ["sh", "-c", "true"], "priority": 9},
              protocol_version=p.PROTOCOL_VERSION),
    p.Reply(req_id=42, ok=False, data={"task_ids": ["a", "b"]}, error="refused"),
    p.EventBatch(events=[p.Event(kind="task", data={"task_id": "t-1", "status": "running"}, time=5.0),
                         p.Event(kind="stats", data={"tasks": {"pending": 1}})], seq=7),
]


def test_every_message_type_has_a_sample():
    union = set(typing.get_args(p.Message))
    assert union == {type(m) for m in SAMPLES}, "add a sample for each new message type"


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_message_round_trips(msg: p.Message):
    frame = p.encode(msg)
    assert isinstance(frame, bytes)
    back = p.decode(frame)
    assert type(back) is type(msg)
    assert back == msg
    # memoryview frames (zero-copy receives) decode the same.
    assert p.decode(memoryview(frame)) == msg


def test_defaults_are_left_out_of_the_frame_and_come_back():
    small = p.Heartbeat()
    assert len(p.encode(small)) < 20  # omit_defaults: a bare heartbeat is a tiny frame
    assert p.decode(p.encode(small)) == small


finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=40)


@given(
    rid=text, tid=text, status=st.sampled_from(p.RESULT_STATUSES), exit_code=st.none() | st.integers(-255, 255),
    metrics=st.dictionaries(text, finite, max_size=5), tail=st.text(max_size=300), attempt=st.integers(1, 10**6),
    times=st.tuples(finite, finite, finite),
)
def test_results_round_trip_for_any_values(rid, tid, status, exit_code, metrics, tail, attempt, times):
    rec = p.ResultRecord(result_id=rid, task_id=tid, status=status, start_time=times[0], end_time=times[1],
                         execution_time=times[2], exit_code=exit_code, metrics=metrics, stdout_tail=tail,
                         attempt=attempt)
    msg = p.Results(results=[rec])
    assert p.decode(p.encode(msg)) == msg


# ------------------------------------------------------------------------------ bad frames, locally


@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_protocol_error(frame: bytes):
    try:
        msg = p.decode(frame)
    except p.ProtocolError:
        return
    assert isinstance(msg, typing.get_args(p.Message))


def test_unknown_type_tag_is_refused():
    with pytest.raises(p.ProtocolError, match="bogus"):
        p.decode(msgspec.msgpack.encode({"type": "bogus", "reason": "x"}))


def test_frame_without_type_tag_is_refused():
    with pytest.raises(p.ProtocolError, match="type"):
        p.decode(msgspec.msgpack.encode({"reason": "x"}))


@pytest.mark.parametrize(("fields", "where"), [
    ({"type": "register", "protocol_version": "one", "worker_id": "w", "hostname": "h"}, "protocol_version"),
    ({"type": "register", "protocol_version": 1, "worker_id": 5, "hostname": "h"}, "worker_id"),
    ({"type": "register", "protocol_version": 1, "hostname": "h"}, "worker_id"),  # missing
    ({"type": "heartbeat", "cpu_percent": "busy"}, "cpu_percent"),
    ({"type": "results", "results": [{"result_id": "r", "task_id": "t", "status": "success",
                                      "metrics": {"x": "fast"}}]}, "metrics"),
    ({"type": "assign", "tasks": "t-1"}, "tasks"),
])
def test_wrong_field_types_are_refused_naming_the_field(fields: dict[str, Any], where: str):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(msgspec.msgpack.encode(fields))
    assert where in str(info.value)


def test_version_problem():
    for good in range(p.MIN_COMPATIBLE_VERSION, p.PROTOCOL_VERSION + 1):
        assert p.version_problem(good) is None
    for bad, upgrade in ((p.MIN_COMPATIBLE_VERSION - 1, "upgrade the agent"),
                         (p.PROTOCOL_VERSION + 1, "upgrade the coordinator")):
        reason = p.version_problem(bad)
        assert reason is not None
        # Both versions, and which side is the old one: the reader may be on either side.
        assert f"the agent speaks protocol {bad}" in reason
        assert f"this coordinator speaks {p.PROTOCOL_VERSION}" in reason
        assert upgrade in reason
    newer = p.version_problem(p.PROTOCOL_VERSION + 1, peer="coordinator", this="agent")
    assert newer is not None and "upgrade the agent" in newer


@pytest.mark.parametrize(("reason", "version", "says"), [
    # A coordinator that names both versions: the reason stands as it is.
    (p.version_problem(p.PROTOCOL_VERSION + 1) or "", p.PROTOCOL_VERSION, None),
    # A release before Refused carried a version: the coordinator is the older side.
    ("protocol version 9 is not supported: this side speaks 1..2; upgrade the older side", 0,
     "upgrade the coordinator"),
    # Not about versions at all.
    ("this agent's key was revoked", 0, None),
])
def test_an_agent_names_both_versions_when_refused_for_its_protocol(reason: str, version: int, says: str | None):
    from dtf_agent.agent import _with_versions

    shown = _with_versions(p.Refused(reason=reason, protocol_version=version))
    assert shown.startswith(reason)
    if says is None:
        assert shown == reason
    else:
        assert says in shown


# ------------------------------------------------------------------------------ a real coordinator

BAD_AGENT_FRAMES: list[bytes] = [
    b"",  # empty
    b"\xc1\xc1\xc1 not msgpack",  # 0xc1 is never valid msgpack
    msgspec.msgpack.encode([1, 2, 3]),  # valid msgpack, not a message
    msgspec.msgpack.encode({"type": "bogus"}),  # unknown tag
    msgspec.msgpack.encode({"type": "heartbeat", "cpu_percent": "busy"}),  # wrong field type
    # A well-formed message that only the coordinator sends: no agent handler for it.
    p.encode(p.Welcome(protocol_version=1, worker_id="x", heartbeat_interval=1.0)),
]


@pytest.fixture
def coord(coordinator):
    # The protocol's framing and refusals, under the encryption (test_security.py has CURVE's own).
    return coordinator(security={"insecure": True})


def _agent(coord: Any, name: str = "fake-1") -> FakeAgent:
    return FakeAgent(coord.endpoint("agents"), name)


def test_bad_agent_frames_are_dropped_counted_and_the_loop_keeps_serving(coord):
    fake = _agent(coord)
    try:
        before = coord.counters.bad_frames
        for frame in BAD_AGENT_FRAMES:
            fake.send_raw(frame)
        fake.send_raw(b"part one", b"part two")  # two frames where the protocol has one
        # The same connection is still served: frames on it are handled in order, so by the time
        # the Welcome comes back every bad frame before it has been looked at.
        fake.register()
        welcome = fake.recv(p.Welcome)
        assert welcome.worker_id == "fake-1"
        assert coord.counters.bad_frames - before == len(BAD_AGENT_FRAMES) + 1
        assert coord.counters.loop_errors == 0
        assert coord.is_running
    finally:
        fake.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_random_frames_are_counted_exactly_by_a_real_coordinator(coord, frames: list[bytes]):
    handled = {p.Register, p.Heartbeat, p.TaskStarted, p.Results, p.Goodbye}
    expected_bad = 0
    for frame in frames:
        try:
            expected_bad += type(p.decode(frame)) not in handled
        except p.ProtocolError:
            expected_bad += 1
    fake = _agent(coord, "fuzz")
    try:
        before = coord.counters.bad_frames
        for frame in frames:
            fake.send_raw(frame)
        fake.register()
        fake.recv(p.Welcome)
        assert coord.counters.bad_frames - before == expected_bad
        assert coord.counters.loop_errors == 0
    finally:
        fake.close()


def test_bad_client_frames_are_counted_and_requests_still_answered(coord):
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(coord.endpoint("clients"))
    try:
        before = coord.counters.bad_frames
        frames = [b"\xc1junk", msgspec.msgpack.encode({"type": "nope"}),
                  p.encode(p.Heartbeat())]  # a valid message, but not a client request
        for frame in frames:
            raw.send(frame)
        raw.send(p.encode(p.Request(req_id=1, op="ping")))
        # An undecodable frame is answered with an error naming the problem (a client learns at
        # once instead of timing out); a valid non-request is dropped.
        errors = []
        for _ in range(2):
            assert raw.poll(10_000), "no error reply to a bad frame"
            bad = p.decode(raw.recv())
            assert isinstance(bad, p.Reply) and not bad.ok and bad.error.startswith("bad request:")
            errors.append(bad)
        assert raw.poll(10_000), "no reply to a valid request after bad frames"
        reply = p.decode(raw.recv())
        assert isinstance(reply, p.Reply) and reply.ok and reply.req_id == 1
        assert reply.data["protocol_version"] == p.PROTOCOL_VERSION
        assert coord.counters.bad_frames - before == len(frames)
    finally:
        raw.close()
        ctx.term()


def test_client_with_incompatible_version_gets_a_readable_refusal(coord):
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(coord.endpoint("clients"))
    try:
        raw.send(p.encode(p.Request(req_id=5, op="ping", protocol_version=p.PROTOCOL_VERSION + 1)))
        assert raw.poll(10_000)
        reply = p.decode(raw.recv())
        assert isinstance(reply, p.Reply) and not reply.ok
        assert f"protocol version {p.PROTOCOL_VERSION + 1} is not supported" in reply.error
    finally:
        raw.close()
        ctx.term()
    with Client(coord.endpoint("clients"), timeout=10) as c:
        with pytest.raises(ClientError, match="unknown operation 'fly'"):
            c.call("fly")
        with pytest.raises(ClientError, match="invalid arguments"):
            c.call("get_task", {"task_id": 7, "extra": 1})
        assert c.call("ping")["coordinator_id"] == coord.s.coordinator_id


@pytest.mark.parametrize("version", [p.PROTOCOL_VERSION + 1, p.MIN_COMPATIBLE_VERSION - 1])
def test_register_with_incompatible_version_is_refused_with_a_reason(coord, version: int):
    fake = _agent(coord, f"old-agent-{version}")
    try:
        fake.register(protocol_version=version)
        refused = fake.recv(p.Refused)
        assert refused.fatal and not refused.reregister
        assert f"protocol version {version} is not supported" in refused.reason
        assert "upgrade" in refused.reason
        # The refused agent is not a worker; the loop carries on for the next one.
        good = _agent(coord, "good-agent")
        try:
            good.register()
            good.recv(p.Welcome)
        finally:
            good.close()
        with Client(coord.endpoint("clients"), timeout=10) as c:
            ids = {w["worker_id"] for w in c.call("list_workers")}
        assert f"old-agent-{version}" not in ids and "good-agent" in ids
    finally:
        fake.close()


class _FutureAgent(Agent):
    """A real agent that claims a protocol version the coordinator does not speak."""

    def _register_msg(self) -> p.Register:
        return msgspec.structs.replace(super()._register_msg(), protocol_version=p.PROTOCOL_VERSION + 1)


def test_real_agent_stops_with_the_refusal_reason(coord, tmp_path):
    agent = _FutureAgent(AgentSettings(address=coord.endpoint("agents"), worker_id="future",
                                       work_dir=str(tmp_path / "work")))
    code: list[int] = []
    t = threading.Thread(target=lambda: code.append(agent.run()), daemon=True)
    t.start()
    try:
        t.join(15)
        assert not t.is_alive(), "a refused agent must stop, not retry forever"
    finally:
        agent.stop()
        t.join(5)
    assert code == [2]
    assert agent.fatal_error and f"protocol version {p.PROTOCOL_VERSION + 1}" in agent.fatal_error


def test_oversize_frame_is_refused_by_libzmq_and_the_loop_keeps_serving(coordinator):
    limit = 64 * 1024
    coord = coordinator(server={"max_message_size": limit})
    big = _agent(coord, "big")
    monitor = big.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    try:
        big.register()
        big.recv(p.Welcome)
        frames_before = coord.counters.frames_in

        big.send(p.Heartbeat(running=["x" * 1000] * (4 * limit // 1000)))  # ~4x the limit

        # ZMQ_MAXMSGSIZE: libzmq drops the connection of a peer that sends an oversize frame.
        def disconnected() -> bool:
            while monitor.poll(50):
                if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    return True
            return False

        wait_until(disconnected, 10)
        # The frame never reached Python: nothing was decoded, nothing was handled.
        assert coord.counters.frames_in == frames_before
        assert coord.counters.loop_errors == 0

        # Another peer is served at once...
        other = _agent(coord, "other")
        try:
            other.register()
            assert other.recv(p.Welcome).worker_id == "other"
        finally:
            other.close()

        # ...and the offender itself, once its DEALER has reconnected, with frames under the limit.
        def welcomed_again() -> bool:
            big.register()
            try:
                big.recv(p.Welcome, timeout=0.5)
            except AssertionError:
                return False
            return True

        wait_until(welcomed_again, 15)
        assert coord.is_running
    finally:
        big.sock.disable_monitor()
        monitor.close(linger=0)
        big.close()
