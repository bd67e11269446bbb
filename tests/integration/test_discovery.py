"""mDNS on loopback: an agent with no coordinator address finds `dtf serve` by itself; ads carry the
coordinator's key, and the key (not the name or the address) decides which one an agent takes;
coordinators see the agents that advertise; malformed ads are ignored.

zeroconf is bound to 127.0.0.1 on both sides (the coordinator advertises on the address it is
bound to; the agent is told to browse there), never to every interface."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable, Iterator

import pytest
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from dtf_agent import discovery, keys
from tests.helpers import cli, dtf_command, wait_until


def test_agent_without_an_address_finds_the_coordinator_over_mdns(serve, tmp_path):
    # Another machine's agent: no address, no key, no token. It finds the coordinator by mDNS,
    # waits as pending until the admin accepts it, and then pins the key it was accepted under.
    name = f"dtf-test-{os.getpid()}-{tmp_path.name[-12:]}"
    s = serve(f"server:\n  service_name: {name}\n")
    agent_home = tmp_path / "agent-home"  # a home of its own: no coordinator.json, no keys to shortcut
    agent_home.mkdir()
    (agent_home / "worker.yaml").write_text(f"coordinator:\n  service_name: {name}\n", encoding="utf-8")
    s.tracker.start("mdns-agent", dtf_command("dtf-agent") + ["--worker-id", "found-me", "--slots", "1",
                                                             "--mdns-interface", "127.0.0.1"],
                    {**s.env, "DTF_HOME": str(agent_home)})
    pending = wait_until(lambda: [a for a in s.call("list_agents") if a["name"] == "found-me"
                                  and a["state"] == "pending"], 30, message=lambda: s.tracker.log("mdns-agent"))
    assert "found-me" not in {w["worker_id"] for w in s.call("list_workers")}
    pin = agent_home / "agent" / "found-me" / "coordinator.pin"
    assert not pin.exists(), "pinned before any coordinator accepted it"
    assert s.call("accept_agents", {"agents": [pending[0]["fingerprint"]]}) == {"accepted": ["found-me"]}
    s.wait_workers_online("found-me", timeout=30)
    tid = s.call("create_task", {"command": "echo discovered"})["task_id"]
    assert s.wait_task_status(tid, "completed")["worker_id"] == "found-me"
    pinned = keys.read_pin(pin)
    assert pinned is not None and pinned.how == "first use"
    assert pinned.fingerprint == s.info["fingerprint"]
    assert "on first use" in s.tracker.log("mdns-agent")


def test_advertisement_carries_the_endpoints(coordinator):
    name = f"dtf-adv-{os.getpid()}"
    coord = coordinator(server={"advertise": True, "service_name": name})
    ad = wait_until(lambda: discovery.find_coordinator(["127.0.0.1"], timeout=3.0, name=name), 20)
    assert ad.agent_endpoint == coord.endpoint("agents")
    assert ad.client_port == coord.ports["clients"] and ad.events_port == coord.ports["events"]
    assert ad.coordinator_id == coord.s.coordinator_id
    assert ad.protocol_version >= 1
    # The ad carries the coordinator's public key (what an agent pins) and names its instance by it.
    assert not coord.insecure
    key = coord.trust.server.public
    assert ad.public_key == key and ad.fingerprint == keys.fingerprint(key)
    assert ad.name == name and ad.instance == f"{name} [{ad.fingerprint.removeprefix('SHA256:')[:8]}]"


def test_bind_address_decides_where_mdns_runs() -> None:
    assert discovery.interfaces_for_bind("127.0.0.1", []) == ["127.0.0.1"]
    assert discovery.interfaces_for_bind("0.0.0.0", []) == []
    assert discovery.interfaces_for_bind("0.0.0.0", ["10.9.0.1"]) == ["10.9.0.1"]


# -- issue 9: the key decides, mDNS only says where to knock -------------------------------------------
# Other test runs on this host may advertise on 127.0.0.1 at the same time: every check looks only at
# the ads with this test's own (unique) names and keys.

LOOPBACK = ["127.0.0.1"]


def _unique(tmp_path, what: str) -> str:
    return f"dtf-{what}-{os.getpid()}-{tmp_path.name[-10:]}"


@pytest.fixture
def advertise() -> Iterator[Callable[..., discovery.Advertiser]]:
    """Factory for coordinator advertisers on 127.0.0.1 (fake ports: nothing dials them); all closed."""
    made: list[discovery.Advertiser] = []

    def start(name: str, public_key: str = "", coordinator_id: str = "c0ffee00",
              agent_port: int = 18081) -> discovery.Advertiser:
        adv = discovery.Advertiser(name=name, addresses=LOOPBACK, interfaces=LOOPBACK, agent_port=agent_port,
                                   client_port=18080, events_port=18082, coordinator_id=coordinator_id,
                                   public_key=public_key)
        made.append(adv)
        return adv

    yield start
    for adv in made:
        adv.close()
        assert adv.error is None, adv.error


@pytest.fixture
def raw_zeroconf() -> Iterator[Zeroconf]:
    """A bare Zeroconf on 127.0.0.1, for registering ads by hand (malformed ones)."""
    zc = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    yield zc
    zc.unregister_all_services()
    zc.close()


def _register_all(zc: Zeroconf, infos: list[ServiceInfo]) -> None:
    """Register several services at once (probing runs concurrently) and return once all are announced."""
    async def register() -> None:
        announced = [await zc.async_register_service(info) for info in infos]
        await asyncio.gather(*announced)

    assert zc.loop is not None
    asyncio.run_coroutine_threadsafe(register(), zc.loop).result(30)


def _mine(name: str, timeout: float = 1.5) -> Callable[[], list[discovery.CoordinatorAd]]:
    def coordinators_named() -> list[discovery.CoordinatorAd]:
        return [a for a in discovery.browse_coordinators(LOOPBACK, timeout) if a.name == name]
    return coordinators_named


def _key() -> str:
    return keys.generate("coordinator", "test").public


def test_two_coordinators_with_one_name_on_one_host_are_two_ads(advertise, tmp_path):
    name = _unique(tmp_path, "twin")
    key_a, key_b = _key(), _key()
    advertise(name, key_a, agent_port=18181)
    advertise(name, key_b, agent_port=18182)
    ads = wait_until(lambda: len(found := _mine(name)()) == 2 and found, 30)
    assert len({a.instance for a in ads}) == 2
    by_key = {a.public_key: a for a in ads}
    assert set(by_key) == {key_a, key_b}
    for key, ad in by_key.items():
        assert ad.fingerprint == keys.fingerprint(key)
        assert ad.instance == f"{name} [{ad.fingerprint.removeprefix('SHA256:')[:8]}]"
        assert ad.address == "127.0.0.1" and ad.client_endpoint == "tcp://127.0.0.1:18080"
    assert {a.agent_port for a in ads} == {18181, 18182}

    # Nothing to decide between them: none is chosen, both are listed with how to pick.
    chosen, message = discovery.choose_coordinator(ads, name=name)
    assert chosen is None
    assert keys.short(ads[0].fingerprint) in message and keys.short(ads[1].fingerprint) in message
    assert "--coordinator-name NAME" in message and "--coordinator-key FINGERPRINT" in message
    # The pin decides, whatever name the agent was given; so does the instance name.
    pin_b = keys.fingerprint(key_b)
    assert discovery.choose_coordinator(ads, pinned_fingerprint=pin_b, name="another name")[0] == by_key[key_b]
    assert discovery.choose_coordinator(ads, name=by_key[key_a].instance)[0] == by_key[key_a]
    # find_coordinator (the wrapper) with a pin returns that one, early.
    found = wait_until(lambda: discovery.find_coordinator(LOOPBACK, 10.0, pinned_fingerprint=pin_b), 30)
    assert found.public_key == key_b


def test_a_pinned_agent_refuses_a_lookalike_and_takes_the_one_named(advertise, tmp_path):
    name, other = _unique(tmp_path, "lab"), _unique(tmp_path, "bench")
    pinned, lookalike_key = _key(), _key()
    advertise(name, lookalike_key)  # same display name as the pinned coordinator, another key
    advertise(other, _key())
    lookalikes = wait_until(_mine(name), 30)
    pin = keys.fingerprint(pinned)
    chosen, message = discovery.choose_coordinator(lookalikes, pinned_fingerprint=pin, name=name)
    assert chosen is None and f"no coordinator with the pinned key {pin}" in message
    # Unpinned, a name picks the one ad with that name.
    def both() -> list[discovery.CoordinatorAd]:
        ads = [a for a in discovery.browse_coordinators(LOOPBACK, 1.5) if a.name in (name, other)]
        return ads if len({a.name for a in ads}) == 2 else []

    mine = wait_until(both, 30)
    assert discovery.choose_coordinator(mine, name=other)[0].name == other
    assert discovery.choose_coordinator(mine)[0] is None
    # The real one appears later (at another address/port): the pin finds it.
    advertise(f"{name} moved", pinned, agent_port=18999)
    found = wait_until(lambda: discovery.find_coordinator(LOOPBACK, 10.0, name=name, pinned_fingerprint=pin), 30)
    assert found.public_key == pinned and found.agent_port == 18999 and found.name == f"{name} moved"


def test_an_insecure_coordinator_is_named_by_its_id(advertise, tmp_path):
    name = _unique(tmp_path, "insecure")
    advertise(name, "", coordinator_id="0badf00d")
    (ad,) = wait_until(_mine(name), 30)
    assert ad.instance == f"{name} [0badf00d]" and ad.public_key == "" and ad.fingerprint == ""
    assert discovery.choose_coordinator([ad])[0] == ad
    assert discovery.choose_coordinator([ad], pinned_fingerprint=keys.fingerprint(_key()))[0] is None


def test_an_agent_ad_is_seen_by_the_agent_browser(tmp_path):
    name = _unique(tmp_path, "rig")
    fp = keys.fingerprint(keys.generate("agent", name).public)
    browser = discovery.AgentBrowser(LOOPBACK)
    try:
        adv = discovery.AgentAdvertiser(name=name, fingerprint=fp, slots=3, tags=["gpu", "linux"],
                                        addresses=LOOPBACK, interfaces=LOOPBACK)
        try:
            (ad,) = wait_until(lambda: [a for a in browser.snapshot_threadsafe() if a.fingerprint == fp], 30)
            assert (ad.name, ad.slots, ad.tags, ad.addresses) == (name, 3, ("gpu", "linux"), ("127.0.0.1",))
            assert ad.instance == f"{name} [{fp.removeprefix('SHA256:')[:8]}]" and ad.seen_at > 0
        finally:
            adv.close()
            assert adv.error is None, adv.error
        # Unregistering says goodbye: the browser forgets it.
        wait_until(lambda: not [a for a in browser.snapshot_threadsafe() if a.fingerprint == fp], 30)
    finally:
        browser.close()
    browser.close()  # idempotent


def test_malformed_ads_are_ignored(raw_zeroconf, tmp_path):
    name = _unique(tmp_path, "bad")
    good_fp = keys.fingerprint(_key())
    good = {"name": name, "fp": good_fp, "slots": "2", "tags": "a"}
    # One of each kind of fault here (every field's checks are unit tests: tests/unit/test_discovery_choose.py).
    bad_agents = [
        {**good, "fp": "SHA256:not-a-fingerprint"},
        {**good, "fp": keys.fingerprint(_key()), "slots": "lots", "tags": ",".join(["t"] * 100)},
    ]
    key = _key()
    bad_coordinators = [
        {"name": name, "key": key, "fp": keys.fingerprint(_key())},  # an fp that is not its key's
    ]

    def info(type_: str, i: int, props: dict[str, str]) -> ServiceInfo:
        return ServiceInfo(type_, f"{name} {i}.{type_}", addresses=[socket.inet_aton("127.0.0.1")],
                           port=9 if type_ == discovery.AGENT_TYPE else 18081, server=f"{name}.local.",
                           properties=props)

    browser = discovery.AgentBrowser(LOOPBACK)
    try:
        # The malformed ones first (registration returns once announced), then a good one: once the
        # good one is seen, the bad ones have been heard and must not be there.
        _register_all(raw_zeroconf, [info(discovery.AGENT_TYPE, i, props) for i, props in enumerate(bad_agents)]
                      + [info(discovery.COORDINATOR_TYPE, i, props) for i, props in enumerate(bad_coordinators)])
        _register_all(raw_zeroconf, [info(discovery.AGENT_TYPE, 99, good),
                                     info(discovery.COORDINATOR_TYPE, 99, {"name": name, "key": key})])
        seen = wait_until(lambda: [a for a in browser.snapshot_threadsafe() if a.name == name], 30)
        assert [a.fingerprint for a in seen] == [good_fp]
        (coordinator,) = wait_until(_mine(name, timeout=3.0), 30)
        assert coordinator.instance == f"{name} 99" and coordinator.fingerprint == keys.fingerprint(key)
    finally:
        browser.close()


def test_the_agent_browser_keeps_at_most_max_ads(raw_zeroconf, tmp_path):
    name = _unique(tmp_path, "many")
    browser = discovery.AgentBrowser(LOOPBACK, max_ads=2)
    try:
        _register_all(raw_zeroconf, [ServiceInfo(
            discovery.AGENT_TYPE, f"{name} {i}.{discovery.AGENT_TYPE}", addresses=[socket.inet_aton("127.0.0.1")],
            port=9, server=f"{name}.local.",
            properties={"name": f"{name} {i}", "fp": keys.fingerprint(_key()), "slots": "1"}) for i in range(4)])
        # Four new ads, room for two: at least two are dropped (more if other runs advertise too).
        wait_until(lambda: browser.dropped >= 2, 30)
        assert len(browser.snapshot_threadsafe()) <= 2
    finally:
        browser.close()


def test_dtf_agents_seen_lists_agents_on_the_lan_not_enrolled(serve, dtf_env, tmp_path):
    s = serve()
    fp = keys.fingerprint(keys.generate("agent", "x").public)
    name = f"lonely-{os.getpid()}-{tmp_path.name[-8:]}"
    ad = discovery.AgentAdvertiser(name=name, fingerprint=fp, slots=3, tags=["gpu"], addresses=["127.0.0.1"],
                                   interfaces=["127.0.0.1"])
    try:
        def listed():
            out = cli(dtf_env, "agents", "--seen", "--json")
            assert out.returncode == 0, out.stderr
            return [a for a in json.loads(out.stdout)["seen"] if a["name"] == name]

        (row,) = wait_until(listed, 30)
        assert (row["fingerprint"], row["slots"], row["tags"]) == (fp, 3, ["gpu"])
        assert name not in {a["name"] for a in s.call("list_agents")}  # seen, not enrolled
        table = cli(dtf_env, "agents", "--seen").stdout
        assert "Seen on the LAN (mDNS), not enrolled:" in table and name in table
    finally:
        ad.close()
