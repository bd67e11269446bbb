"""Issue 9 on loopback: every refusal of the secure coordinator, through real CURVE sockets.

Fake agents are real DEALER sockets with keys of their own (tests/helpers.py); "stranger" ones
come without the home's enrollment secret, as an agent on another machine would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from dtf_agent import keys
from dtf_agent import protocol as p
from dtf_agent.transport import CurveClient, make_socket
from dtf_gui.client import Client, ClientError, Credentials
from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.server import Coordinator
from tests.helpers import FakeAgent, ProcessTracker, WaitTimeout, dtf_command, wait_until


def _register(agent: FakeAgent, slots: int = 1) -> p.Register:
    return p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id=agent.worker_id, hostname="fakehost",
                      slots=slots, incarnation="i1")


def _answer(agent: FakeAgent, msg: p.Register, kinds: tuple[type, ...], timeout: float = 10.0) -> Any:
    """Send the Register until one of ``kinds`` answers (the first may go out before the handshake)."""
    def answered() -> Any:
        agent.send(msg)
        for kind in kinds:
            try:
                return agent.recv(kind, timeout=0.3)
            except WaitTimeout:
                continue
        return None

    return wait_until(answered, timeout)


def _submit(coord: Coordinator, **extra: Any) -> str:
    return str(coord.request("create_task", {"type": "noop", **extra})["task_id"])


def _client(coord: Coordinator, role: str, name: str) -> Client:
    made = coord.request("add_client", {"name": name, "role": role})
    kf = keys.KeyFile(**made["key_file"])
    return Client(coord.endpoint("clients"), timeout=5.0,
                  credentials=Credentials(kf.public, kf.secret, kf.coordinator_key, name=name))


def test_a_pending_agent_gets_no_task_until_accepted(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    stranger = FakeAgent(coord.endpoint("agents"), "stranger-1", stranger=True)
    try:
        pending = _answer(stranger, _register(stranger), (p.Pending,))
        assert pending.fingerprint == keys.fingerprint(stranger.key)
        tid = _submit(coord)
        rows = {a["name"]: a for a in coord.request("list_agents")}
        assert rows["stranger-1"]["state"] == "pending"
        assert rows["stranger-1"]["fingerprint"] == keys.fingerprint(stranger.key)
        assert "stranger-1" not in {w["worker_id"] for w in coord.request("list_workers")}
        with pytest.raises(WaitTimeout):
            stranger.recv(p.Assign, timeout=1.5)  # a pending key is given nothing
        assert coord.request("get_task", {"task_id": tid})["status"] == "pending"
        # Accepted: it is told at once, registers, and gets the task.
        assert coord.request("accept_agents", {"agents": ["stranger-1"]}) == {"accepted": ["stranger-1"]}
        nudge = stranger.recv(p.Refused, timeout=5)
        assert nudge.reregister and not nudge.fatal
        stranger.send(_register(stranger))
        stranger.recv(p.Welcome, timeout=5)
        assert [t.task_id for t in stranger.recv(p.Assign, timeout=5).tasks] == [tid]
    finally:
        stranger.close()


def test_accept_by_fingerprint_prefix_and_reject(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    a = FakeAgent(coord.endpoint("agents"), "lab-a", stranger=True)
    b = FakeAgent(coord.endpoint("agents"), "lab-b", stranger=True)
    try:
        _answer(a, _register(a), (p.Pending,))
        _answer(b, _register(b), (p.Pending,))
        prefix = keys.fingerprint(a.key)[:20]
        assert coord.request("accept_agents", {"agents": [prefix]}) == {"accepted": ["lab-a"]}
        assert coord.request("reject_agents", {"agents": ["lab-b"]}) == {"rejected": ["lab-b"]}
        states = {r["name"]: r["state"] for r in coord.request("list_agents")}
        assert states == {"lab-a": "accepted", "lab-b": "rejected"}
        # A rejected key is refused at the next Register, and cannot even connect again.
        refused = _answer(b, _register(b), (p.Refused,))
        assert refused.fatal and "rejected" in refused.reason
        with pytest.raises(ApiError, match="no agent 'nobody'"):
            coord.request("accept_agents", {"agents": ["nobody"]})
        with pytest.raises(ApiError, match="too short|no agent"):
            coord.request("accept_agents", {"agents": ["SHA256:ab"]})
    finally:
        a.close()
        b.close()


def test_a_second_key_claiming_an_accepted_name_is_refused_and_logged(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    victim = FakeAgent(coord.endpoint("agents"), "victim")
    rogue_ctx = zmq.Context()
    try:
        victim.register_until_welcomed(_register(victim))
        # The rogue: its own key, the victim's name, even the home's enrollment secret.
        me = keys.generate("agent", "victim")
        server = keys.read_key_file(coord.home / keys.COORDINATOR_KEY).public
        sock = make_socket(rogue_ctx, zmq.DEALER, curve=CurveClient(me.public, me.secret, server))
        sock.connect(coord.endpoint("agents"))
        secret = keys.read_secret(coord.home / keys.LOCAL_SECRET) or ""
        reg = p.encode(p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="victim", hostname="evil",
                                  join=secret, incarnation="x"))

        def refused() -> p.Refused | None:
            sock.send(reg)
            if sock.poll(300):
                msg = p.decode(sock.recv())
                return msg if isinstance(msg, p.Refused) else None
            return None

        answer = wait_until(refused, 10)
        assert answer.fatal and "belongs to another agent's key" in answer.reason
        # Tasks pinned to the victim still go to the victim's connection only.
        tid = _submit(coord, requirements={"worker": "victim"})
        assert [t.task_id for t in victim.recv(p.Assign, timeout=5).tasks] == [tid]
        assert not sock.poll(500)
        sock.close(linger=0)
        events = coord.request("list_security_events", {"limit": 50})
        assert any(e["what"] == "name_refused" and e["subject"] == "victim" for e in events), events
    finally:
        victim.close()
        rogue_ctx.term()


def test_a_result_for_a_task_of_another_agent_is_refused(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    a = FakeAgent(coord.endpoint("agents"), "agent-a")
    b = FakeAgent(coord.endpoint("agents"), "agent-b")
    try:
        a.register_until_welcomed(_register(a))
        b.register_until_welcomed(_register(b))
        tid = _submit(coord, requirements={"worker": "agent-a"})
        spec = a.recv(p.Assign, timeout=5).tasks[0]
        forged = p.ResultRecord(result_id="forged-1", task_id=tid, status="success", attempt=spec.attempt,
                                metrics={"score": 1.0})
        b.send(p.Results(results=[forged]))
        wait_until(lambda: any(e["what"] == "result_refused"
                               for e in coord.request("list_security_events", {"limit": 50})), 10)
        assert coord.request("get_task", {"task_id": tid})["status"] in ("assigned", "running")
        assert coord.request("list_results", {"task_id": tid}) == []
        # The real one is taken.
        a.send(p.Results(results=[p.ResultRecord(result_id="real-1", task_id=tid, status="success",
                                                 attempt=spec.attempt)]))
        wait_until(lambda: coord.request("get_task", {"task_id": tid})["status"] == "completed", 10)
        assert [r["worker_id"] for r in coord.request("list_results", {"task_id": tid})] == ["agent-a"]
    finally:
        a.close()
        b.close()


def test_roles_viewer_reads_operator_submits_admin_enrolls(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    viewer = _client(coord, "viewer", "v1")
    operator = _client(coord, "operator", "o1")
    try:
        assert viewer.call("whoami")["role"] == "viewer"
        assert viewer.call("get_status")["coordinator_id"]
        with pytest.raises(ClientError, match="create_task needs the operator role.*'v1' has the viewer role"):
            viewer.call("create_task", {"type": "noop"})
        with pytest.raises(ClientError, match="cancel_task needs the operator role"):
            viewer.call("cancel_task", {"task_id": "x"})
        tid = operator.call("create_task", {"type": "noop"})["task_id"]
        assert viewer.call("get_task", {"task_id": tid})["task_id"] == tid
        with pytest.raises(ClientError, match="create_token needs the admin role"):
            operator.call("create_token", {"uses": 1})
        with pytest.raises(ClientError, match="accept_agents needs the admin role"):
            operator.call("accept_agents", {"all_pending": True})
        # A typo is still a typo, whatever the role.
        with pytest.raises(ClientError, match="unknown operation"):
            viewer.call("create_taks", {})
        # The local admin key of the home works without being named.
        with Client(coord.endpoint("clients"), timeout=5.0) as admin:
            assert admin.call("whoami")["role"] == "admin"
            assert admin.call("create_token", {"uses": 1})["token"].startswith("dtf1-")
        # A removed client is cut off.
        coord.request("remove_client", {"name": "v1"})
        with pytest.raises(ClientError, match="not \\(or no longer\\) known"):
            viewer.call("get_status")
    finally:
        viewer.close()
        operator.close()


def test_an_unknown_client_key_gets_no_answer(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    me = keys.generate("client", "stranger")
    server = keys.read_key_file(coord.home / keys.COORDINATOR_KEY).public
    with Client(coord.endpoint("clients"), timeout=1.5,
                credentials=Credentials(me.public, me.secret, server, name="stranger")) as c:
        with pytest.raises(ClientError, match="no answer.*refuses unknown keys"):
            c.call("ping")
    with Client(coord.endpoint("clients"), timeout=1.5, credentials=None) as plain:
        with pytest.raises(ClientError, match="No client key was used"):
            plain.call("ping")
    wait_until(lambda: any(e["what"] == "handshake_refused"
                           for e in coord.request("list_security_events", {"limit": 50})), 10)


def test_the_events_port_serves_known_keys_only(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator(server={"event_interval": 0.05})
    ctx = zmq.Context()
    try:
        made = coord.request("add_client", {"name": "watcher", "role": "viewer"})
        kf = keys.KeyFile(**made["key_file"])
        good = make_socket(ctx, zmq.SUB, curve=CurveClient(kf.public, kf.secret, kf.coordinator_key))
        anon = make_socket(ctx, zmq.SUB)
        for s in (good, anon):
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(coord.endpoint("events"))
        wait_until(lambda: good.poll(200), 10)  # stats go out every event_interval
        assert isinstance(p.decode(good.recv_multipart()[-1]), p.EventBatch)
        assert not anon.poll(1000)
    finally:
        ctx.destroy(linger=0)


def test_tokens_enroll_once_and_expire(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator()
    t = coord.request("create_token", {"uses": 1, "ttl": 600, "tags": ["lab-3"]})
    token = keys.decode_token(t["token"])
    assert token.key == keys.read_key_file(coord.home / keys.COORDINATOR_KEY).public
    assert t["command"] == f"dtf-agent --join {t['token']}"
    first = FakeAgent(coord.endpoint("agents"), "joiner-1", stranger=True)
    second = FakeAgent(coord.endpoint("agents"), "joiner-2", stranger=True)
    try:
        first.join = second.join = token.secret
        _answer(first, _register(first), (p.Welcome,))
        row = {r["name"]: r for r in coord.request("list_agents")}["joiner-1"]
        assert row["state"] == "accepted" and row["how"].startswith("token")
        assert "lab-3" in coord.request("get_worker", {"worker_id": "joiner-1"})["tags"]
        refused = _answer(second, _register(second), (p.Refused,))
        assert refused.fatal and "no uses left" in refused.reason
        with pytest.raises(ApiError, match="uses must be|invalid arguments"):
            coord.request("create_token", {"uses": 0})
    finally:
        first.close()
        second.close()


def test_the_config_secrets_token_never_runs_out(coordinator: Callable[..., Coordinator]) -> None:
    with pytest.raises(ApiError, match="security.enrollment_token is not set"):
        coordinator().request("create_token", {"from_config": True})
    with pytest.raises(ApiError, match="shorter than 16"):
        coordinator(security={"enrollment_token": "short"}).request("create_token", {"from_config": True})
    coord = coordinator(security={"enrollment_token": "a-long-shared-secret-of-the-lab"})
    t = coord.request("create_token", {"from_config": True})
    token = keys.decode_token(t["token"])
    assert token.key == keys.read_key_file(coord.home / keys.COORDINATOR_KEY).public
    assert token.secret == "a-long-shared-secret-of-the-lab" and t["expires"] is None
    # More agents than any made token allows (uses=1 here would refuse the second): all let in.
    agents = [FakeAgent(coord.endpoint("agents"), f"pod-{i}", stranger=True) for i in range(3)]
    try:
        for a in agents:
            a.join = token.secret
            _answer(a, _register(a), (p.Welcome,))
        states = {r["name"]: r["state"] for r in coord.request("list_agents")}
        assert all(states[f"pod-{i}"] == "accepted" for i in range(3))
    finally:
        for a in agents:
            a.close()


def test_insecure_mode_accepts_everyone_and_says_so(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator(security={"insecure": True})
    agent = FakeAgent(coord.endpoint("agents"), "plain", insecure=True)
    try:
        agent.register_until_welcomed(_register(agent))
        assert coord.request("whoami")["insecure"] is True
        with Client(coord.endpoint("clients"), timeout=5.0, credentials=None) as c:
            assert c.call("whoami")["role"] == "admin"
        with pytest.raises(ApiError, match="runs --insecure"):
            coord.request("create_token", {"uses": 1})
    finally:
        agent.close()


def test_a_revoked_agent_is_cut_off_and_its_task_requeued(coordinator: Callable[..., Coordinator],
                                                          procs: ProcessTracker, dtf_env: dict[str, str]) -> None:
    coord = coordinator()
    agent = procs.start("agent", [*dtf_command("dtf-agent"), "--coordinator", coord.endpoint("agents"),
                                  "--worker-id", "doomed", "--slots", "1"], env=dtf_env)
    wait_until(lambda: any(w["worker_id"] == "doomed" and w["status"] != "offline"
                           for w in coord.request("list_workers")), 30)
    tid = coord.request("create_task", {"command": "sleep 60"})["task_id"]
    wait_until(lambda: coord.request("get_task", {"task_id": tid})["status"] == "running", 20)
    assert coord.request("revoke_agents", {"agents": ["doomed"]}) == {"revoked": ["doomed"]}
    wait_until(lambda: agent.poll() is not None, 20)  # told it was revoked: it stops
    assert agent.returncode == 2
    assert "revoked" in procs.log("agent")
    task = coord.request("get_task", {"task_id": tid})
    assert task["status"] == "pending", task
    assert {r["name"]: r["state"] for r in coord.request("list_agents")}["doomed"] == "revoked"
    # Started again, it cannot get back in.
    again = procs.start("agent-again", [*dtf_command("dtf-agent"), "--coordinator", coord.endpoint("agents"),
                                        "--worker-id", "doomed", "--slots", "1"], env=dtf_env)
    wait_until(lambda: "does not answer" in procs.log("agent-again") or again.poll() is not None, 30)
    assert coord.request("get_task", {"task_id": tid})["status"] == "pending"


def test_an_agent_refuses_a_coordinator_without_the_pinned_key(coordinator: Callable[..., Coordinator],
                                                              procs: ProcessTracker, dtf_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    coord = coordinator()
    other = keys.generate("coordinator", "impostor").public
    env = {**dtf_env, "DTF_HOME": str(tmp_path / "elsewhere")}  # another machine: not this home
    agent = procs.start("agent", [*dtf_command("dtf-agent"), "--coordinator", coord.endpoint("agents"),
                                  "--coordinator-key", other, "--worker-id", "careful"], env=env)
    wait_until(lambda: "does not answer" in procs.log("agent"), 30)
    assert agent.poll() is None
    assert "careful" not in {w["worker_id"] for w in coord.request("list_workers")}
    assert "careful" not in {a["name"] for a in coord.request("list_agents")}
    pin = keys.read_pin(tmp_path / "elsewhere" / "agent" / "careful" / "coordinator.pin")
    assert pin is not None and pin.key == other
    # The coordinator saw the knock fail, and says so (throttled) in the security log.
    assert coord.counters.failed_handshakes > 0
    assert any(e["what"] == "handshake_failed" and e["subject"] == "agent port"
               for e in coord.request("list_security_events", {"limit": 50}))


def test_an_agent_joins_with_a_token_and_pins_the_key(coordinator: Callable[..., Coordinator],
                                                     procs: ProcessTracker, dtf_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    coord = coordinator()
    token = coord.request("create_token", {"uses": 1})["token"]
    home = tmp_path / "lab-machine"
    env = {**dtf_env, "DTF_HOME": str(home)}
    procs.start("agent", [*dtf_command("dtf-agent"), "--join", token, "--worker-id", "joined"], env=env)
    wait_until(lambda: any(w["worker_id"] == "joined" and w["status"] != "offline"
                           for w in coord.request("list_workers")), 30)
    # The agent pins the key when it reads the coordinator's Welcome, which the coordinator sent
    # as it listed the worker online: a moment later, on the agent's side.
    pin_path = home / "agent" / "joined" / "coordinator.pin"
    wait_until(lambda: keys.read_pin(pin_path) is not None, 10)
    pin = keys.read_pin(pin_path)
    assert pin is not None and pin.how == "token"
    assert pin.fingerprint == coord.info()["fingerprint"]
    tid = coord.request("create_task", {"command": "echo hello"})["task_id"]
    wait_until(lambda: coord.request("get_task", {"task_id": tid})["status"] == "completed", 20)
    # The secret key never leaves its file; the file is the owner's only.
    key_file = home / "agent" / "joined" / "agent.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert keys.read_key_file(key_file).secret not in procs.log("agent")


def test_a_peer_naming_itself_after_an_agent_cannot_speak_for_it(coordinator: Callable[..., Coordinator]) -> None:
    # Agents once named their own ZeroMQ routing id after their worker id, and a peer reusing it
    # took over the route. Now the coordinator's socket names each connection; a frame counts
    # only for the worker that registered on that connection, with that key.
    coord = coordinator()
    victim = FakeAgent(coord.endpoint("agents"), "victim2")
    ctx = zmq.Context()
    try:
        victim.register_until_welcomed(_register(victim))
        tid = _submit(coord, requirements={"worker": "victim2"})
        spec = victim.recv(p.Assign, timeout=5).tasks[0]
        me = keys.generate("agent", "x")
        sock = make_socket(ctx, zmq.DEALER, identity=b"victim2",
                           curve=CurveClient(me.public, me.secret, coord.trust.server.public))
        sock.connect(coord.endpoint("agents"))
        forged = p.encode(p.Results(results=[p.ResultRecord(result_id="forged-2", task_id=tid, status="failure",
                                                            attempt=spec.attempt)]))
        sock.send(forged)
        answer = wait_until(lambda: sock.poll(300) and p.decode(sock.recv()), 10)
        assert isinstance(answer, p.Refused) and answer.reregister  # unknown here: register first
        assert coord.request("get_task", {"task_id": tid})["status"] in ("assigned", "running")
        assert coord.request("list_results", {"task_id": tid}) == []
        sock.close(linger=0)
    finally:
        victim.close()
        ctx.destroy(linger=0)


def test_rate_limits_refuse_with_the_limit_named(coordinator: Callable[..., Coordinator]) -> None:
    coord = coordinator(security={"requests_per_s": 5.0})
    with _client(coord, "operator", "busy") as c:
        started = time.monotonic()
        with pytest.raises(ClientError, match="rate limit.*5 requests/s"):
            for _ in range(100):
                c.call("ping")
        assert time.monotonic() - started < 5
