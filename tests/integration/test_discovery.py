"""mDNS on loopback: an agent with no coordinator address finds `dtf serve` by itself.

zeroconf is bound to 127.0.0.1 on both sides (the coordinator advertises on the address it is
bound to; the agent is told to browse there), never to every interface."""

from __future__ import annotations

import os

from dtf_agent import discovery
from tests.helpers import dtf_command, wait_until


def test_agent_without_an_address_finds_the_coordinator_over_mdns(serve, tmp_path):
    name = f"dtf-test-{os.getpid()}-{tmp_path.name[-12:]}"
    s = serve(f"server:\n  service_name: {name}\n")
    # The agent lives in a DTF home of its own: no coordinator.json to shortcut discovery.
    agent_home = tmp_path / "agent-home"
    agent_home.mkdir()
    (agent_home / "worker.yaml").write_text(f"coordinator:\n  service_name: {name}\n", encoding="utf-8")
    s.tracker.start("mdns-agent", dtf_command("dtf-agent") + ["--worker-id", "found-me", "--slots", "1",
                                                             "--mdns-interface", "127.0.0.1"],
                    {**s.env, "DTF_HOME": str(agent_home)})
    s.wait_workers_online("found-me", timeout=30)
    tid = s.call("create_task", {"command": "echo discovered"})["task_id"]
    assert s.wait_task_status(tid, "completed")["worker_id"] == "found-me"


def test_advertisement_carries_the_endpoints(coordinator):
    name = f"dtf-adv-{os.getpid()}"
    coord = coordinator(server={"advertise": True, "service_name": name})
    ad = wait_until(lambda: discovery.find_coordinator(["127.0.0.1"], timeout=3.0, name=name), 20)
    assert ad.agent_endpoint == coord.endpoint("agents")
    assert ad.client_port == coord.ports["clients"] and ad.events_port == coord.ports["events"]
    assert ad.coordinator_id == coord.s.coordinator_id
    assert ad.protocol_version >= 1


def test_bind_address_decides_where_mdns_runs() -> None:
    assert discovery.interfaces_for_bind("127.0.0.1", []) == ["127.0.0.1"]
    assert discovery.interfaces_for_bind("0.0.0.0", []) == []
    assert discovery.interfaces_for_bind("0.0.0.0", ["10.9.0.1"]) == ["10.9.0.1"]
