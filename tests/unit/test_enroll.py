"""enroll.plan: which coordinator key an agent trusts, and where it knocks (no mDNS needed here)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import msgspec
import pytest

from dtf_agent import enroll, keys
from dtf_agent import protocol as p
from dtf_agent.config import WorkerConfig


def _plan(home: Path, cfg: WorkerConfig | None = None, **kw: object) -> enroll.Plan | None:
    args: dict[str, object] = {"home": home, "worker_id": "w1", "cfg": cfg or WorkerConfig(), "address": None,
                               "join_token": None, "coordinator_key": None, "coordinator_name": None,
                               "interfaces": ["127.0.0.1"], "insecure": False, "stop": threading.Event()}
    args.update(kw)
    return enroll.plan(**args)  # type: ignore[arg-type]


def test_a_token_brings_the_key_the_address_and_the_secret(tmp_path: Path) -> None:
    server = keys.generate("coordinator", "lab").public
    token = keys.encode_token(keys.Token(key=server, addresses=["tcp://10.9.0.1:8081"], secret="s" * 20, name="lab"))
    plan = _plan(tmp_path, join_token=token)
    assert plan is not None and plan.curve is not None
    assert (plan.address, plan.curve.server_key, plan.join, plan.how) == ("tcp://10.9.0.1:8081", server, "s" * 20,
                                                                          "token")
    assert plan.on_first_welcome is not None  # pinned once accepted (see below)
    plan.on_first_welcome(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id="w1", heartbeat_interval=1.0))
    pin = keys.read_pin(tmp_path / "agent" / "w1" / "coordinator.pin")
    assert pin is not None and (pin.key, pin.how) == (server, "token")
    # Started again without the token, it trusts the pin (and the address it had).
    again = _plan(tmp_path, address="tcp://10.9.0.1:8081")
    assert again is not None and again.curve is not None and again.curve.server_key == server
    assert again.how == "pinned" and again.join == ""
    # Its own key is the same at every start.
    assert again.curve.public == plan.curve.public


def test_a_damaged_token_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(enroll.EnrollError, match="not a DTF join token"):
        _plan(tmp_path, join_token="dtf2-nope")


def test_the_home_of_a_coordinator_on_this_machine_is_trusted(tmp_path: Path) -> None:
    server = keys.load_or_create(tmp_path / keys.COORDINATOR_KEY, "coordinator", "lab")
    secret = keys.read_secret(tmp_path / keys.LOCAL_SECRET, create=True)
    plan = _plan(tmp_path, address="tcp://127.0.0.1:9999")
    assert plan is not None and plan.curve is not None
    assert (plan.curve.server_key, plan.join, plan.how) == (server.public, secret, "local home")


def test_a_public_key_flag_is_pinned_and_a_strict_agent_refuses_first_use(tmp_path: Path) -> None:
    server = keys.generate("coordinator", "lab").public
    plan = _plan(tmp_path, address="tcp://10.9.0.1:8081", coordinator_key=server)
    assert plan is not None and plan.curve is not None and plan.curve.server_key == server and plan.how == "flag"
    strict = msgspec.convert({"coordinator": {"trust": "pinned"}}, WorkerConfig)
    with pytest.raises(enroll.EnrollError, match="trust is 'pinned' and no coordinator key is known"):
        _plan(tmp_path / "other", strict, address="tcp://10.9.0.1:8081")


def test_insecure_needs_no_key(tmp_path: Path) -> None:
    plan = _plan(tmp_path, address="tcp://10.9.0.1:8081", insecure=True)
    assert plan is not None and plan.curve is None and plan.how == "insecure"
    assert not (tmp_path / "agent").exists(), "no key made for a plain-text agent"


def test_of_a_tokens_addresses_the_reachable_one_is_taken() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]  # bound, never listening: refused
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            live = srv.getsockname()[1]
            got = enroll._reachable([f"tcp://127.0.0.1:{dead}", f"tcp://127.0.0.1:{live}"])
    assert got == f"tcp://127.0.0.1:{live}"
    assert enroll._reachable(["tcp://127.0.0.1:1"]) == "tcp://127.0.0.1:1"  # one: no probing


def test_a_fingerprint_prefix_is_not_enough_to_pin(tmp_path: Path) -> None:
    fp = keys.fingerprint(keys.generate("coordinator", "lab").public)
    with pytest.raises(enroll.EnrollError, match="a prefix is not enough"):
        _plan(tmp_path, coordinator_key=fp[:20])


def test_a_token_is_pinned_only_once_the_join_worked(tmp_path: Path) -> None:
    server = keys.generate("coordinator", "lab").public
    token = keys.encode_token(keys.Token(key=server, addresses=["tcp://10.9.0.1:8081"], secret="s" * 20))
    plan = _plan(tmp_path, join_token=token)
    assert plan is not None and plan.on_first_welcome is not None
    pin_path = tmp_path / "agent" / "w1" / "coordinator.pin"
    assert not pin_path.exists()
    assert "s" * 20 not in repr(plan)
    plan.on_first_welcome(p.Welcome(protocol_version=p.PROTOCOL_VERSION, worker_id="w1", heartbeat_interval=1.0))
    pin = keys.read_pin(pin_path)
    assert pin is not None and (pin.key, pin.how, pin.endpoint) == (server, "token", "tcp://10.9.0.1:8081")


def test_a_stale_insecure_coordinator_file_does_not_downgrade_a_pinned_agent(tmp_path: Path) -> None:
    server = keys.generate("coordinator", "lab").public
    keys.write_pin(tmp_path / "agent" / "w1" / "coordinator.pin", server, "token", endpoint="tcp://127.0.0.1:8081")
    (tmp_path / "coordinator.json").write_text(
        '{"insecure": true, "pid": 1, "agent_endpoint": "tcp://127.0.0.1:8081"}')
    plan = _plan(tmp_path, address="tcp://127.0.0.1:8081")
    assert plan is not None and plan.curve is not None and plan.curve.server_key == server


def test_a_token_in_worker_yaml_works_like_join(tmp_path: Path) -> None:
    server = keys.generate("coordinator", "lab").public
    token = keys.encode_token(keys.Token(key=server, addresses=["tcp://10.9.0.1:8081"], secret="t" * 20))
    cfg = msgspec.convert({"coordinator": {"enrollment_token": token}}, WorkerConfig)
    plan = _plan(tmp_path, cfg)
    assert plan is not None and plan.curve is not None
    assert (plan.curve.server_key, plan.join, plan.how) == (server, "t" * 20, "token")
