"""choose_coordinator, and the reading of advertisements: pure functions, no network.

The rule (issue 9): mDNS only says where to knock, the key decides. A pinned agent takes only an
ad with its pinned key, whatever its name or address; an unpinned one takes the ad it was named,
or the only one; with several and nothing to decide it takes none and says how to pick."""

from __future__ import annotations

import socket

import pytest
from zeroconf import ServiceInfo

from dtf_agent import discovery, keys
from dtf_agent.discovery import AGENT_TYPE, COORDINATOR_TYPE, CoordinatorAd, choose_coordinator


def _key() -> str:
    return keys.generate("coordinator", "test").public


def _ad(name: str, key: str = "", address: str = "10.0.0.1", port: int = 8081, tag: str = "") -> CoordinatorAd:
    fp = keys.fingerprint(key) if key else ""
    tag = tag or (fp.removeprefix("SHA256:")[:8] if fp else "c0ffee00")
    return CoordinatorAd(name=name, instance=discovery.instance_name(name, tag), address=address,
                         addresses=(address,), agent_port=port, client_port=8080, events_port=8082,
                         coordinator_id="c0ffee00", protocol_version=1, public_key=key, fingerprint=fp)


def test_the_only_ad_is_chosen() -> None:
    ad = _ad("lab", _key())
    chosen, message = choose_coordinator([ad])
    assert chosen == ad
    assert keys.short(ad.fingerprint) in message and ad.agent_endpoint in message


def test_none_found() -> None:
    assert choose_coordinator([]) == (None, "no coordinator found with mDNS")
    chosen, message = choose_coordinator([], name="lab")
    assert chosen is None and "no coordinator named 'lab'" in message
    pin = keys.fingerprint(_key())
    chosen, message = choose_coordinator([], pinned_fingerprint=pin)
    assert chosen is None and "no coordinator found" in message and pin in message


def test_several_without_name_or_pin_none_is_chosen_and_all_are_listed() -> None:
    a, b = _ad("lab", _key(), "10.0.0.1"), _ad("lab", _key(), "10.0.0.2")
    c = _ad("insecure one", address="10.0.0.3")
    chosen, message = choose_coordinator([a, b, c])
    assert chosen is None
    assert "3 coordinators" in message
    for ad in (a, b):
        assert keys.short(ad.fingerprint) in message and ad.agent_endpoint in message and ad.instance in message
    assert "'insecure one'" in message and "insecure" in message and c.agent_endpoint in message
    assert "--coordinator-name NAME" in message and "--coordinator-key FINGERPRINT" in message


def test_a_name_picks_by_display_name_or_instance() -> None:
    a, b = _ad("lab", _key(), "10.0.0.1"), _ad("bench", _key(), "10.0.0.2")
    assert choose_coordinator([a, b], name="bench")[0] == b
    assert choose_coordinator([a, b], name=a.instance)[0] == a
    chosen, message = choose_coordinator([a, b], name="nope")
    assert chosen is None and "no coordinator named 'nope'" in message and a.agent_endpoint in message


def test_a_name_shared_by_two_decides_nothing() -> None:
    a, b = _ad("lab", _key(), "10.0.0.1"), _ad("lab", _key(), "10.0.0.2")
    chosen, message = choose_coordinator([a, b], name="lab")
    assert chosen is None
    assert "2 coordinators named 'lab'" in message
    assert keys.short(a.fingerprint) in message and keys.short(b.fingerprint) in message
    assert "--coordinator-key FINGERPRINT" in message
    # ... and each instance name still picks its own.
    assert choose_coordinator([a, b], name=b.instance)[0] == b


def test_a_pin_picks_its_key_whatever_the_name_or_address() -> None:
    key = _key()
    moved = _ad("renamed lab", key, address="192.168.7.7", port=9999)
    other = _ad("lab", _key())
    pin = keys.fingerprint(key)
    assert choose_coordinator([other, moved], pinned_fingerprint=pin)[0] == moved
    assert choose_coordinator([other, moved], pinned_fingerprint=pin, name="lab")[0] == moved
    assert choose_coordinator([other, moved], pinned_fingerprint=keys.short(pin, 8))[0] == moved
    assert choose_coordinator([other, moved], pinned_fingerprint=pin.removeprefix("SHA256:")[:10])[0] == moved


def test_a_pin_refuses_a_lookalike_with_another_key() -> None:
    pin = keys.fingerprint(_key())
    lookalike = _ad("lab", _key())
    insecure = _ad("lab")
    chosen, message = choose_coordinator([lookalike, insecure], pinned_fingerprint=pin, name="lab")
    assert chosen is None
    assert f"no coordinator with the pinned key {pin}" in message
    assert keys.short(lookalike.fingerprint) in message  # what was refused is shown


def test_a_pin_too_short_to_name_a_key_picks_nothing() -> None:
    ad = _ad("lab", _key())
    chosen, message = choose_coordinator([ad], pinned_fingerprint=ad.fingerprint[:10])  # "SHA256:" + 3
    assert chosen is None and "too short" in message


def test_two_ads_with_the_pinned_key_the_name_breaks_the_tie() -> None:
    key = _key()
    a, b = _ad("lab", key, "10.0.0.1", tag="aaaaaaaa"), _ad("lab2", key, "10.0.0.2", tag="bbbbbbbb")
    pin = keys.fingerprint(key)
    chosen, message = choose_coordinator([b, a], pinned_fingerprint=pin)
    assert chosen == a and "1 more" in message  # deterministic: by name
    assert choose_coordinator([a, b], pinned_fingerprint=pin, name="lab2")[0] == b


def test_instance_names_fit_one_dns_label_and_keep_the_tag() -> None:
    assert discovery.instance_name("lab", "AbCd/+12") == "lab [AbCd/+12]"
    long = discovery.instance_name("é" * 100, "AbCd1234")
    assert len(long.encode("utf-8")) <= 63 and long.endswith(" [AbCd1234]")
    assert "." not in discovery.instance_name("lab.example.com", "x")


# -------------------------------------------------------------------------- reading an ad (untrusted)


def _info(type_: str, instance: str, properties: dict[bytes, bytes | None], port: int = 8081) -> ServiceInfo:
    return ServiceInfo(type_, f"{instance}.{type_}", addresses=[socket.inet_aton("10.0.0.5")], port=port,
                       server="host.local.", properties=properties)


def test_a_coordinator_ad_is_read_and_its_fingerprint_computed_here() -> None:
    key = _key()
    ad = discovery._coordinator_ad(f"lab [x].{COORDINATOR_TYPE}", _info(COORDINATOR_TYPE, "lab [x]", {
        b"v": b"1", b"id": b"c0ffee00", b"clients": b"8080", b"events": b"8082", b"name": b"lab",
        b"key": key.encode(), b"fp": keys.fingerprint(key).encode()}))
    assert (ad.name, ad.instance, ad.public_key, ad.fingerprint) == ("lab", "lab [x]", key, keys.fingerprint(key))
    assert ad.agent_endpoint == "tcp://10.0.0.5:8081" and ad.client_endpoint == "tcp://10.0.0.5:8080"
    # An ad without a name field (an older coordinator) is named after its instance.
    old = discovery._coordinator_ad(f"lab [c0ffee00].{COORDINATOR_TYPE}",
                                    _info(COORDINATOR_TYPE, "lab [c0ffee00]", {b"v": b"1"}))
    assert old.name == "lab" and old.fingerprint == "" and old.client_endpoint is None


@pytest.mark.parametrize("props", [
    {b"key": b"too short"},
    {b"key": b"#" * 40},  # 40 Z85 characters whose groups overflow 32 bits
    {b"key": b"\"" * 40},  # 40 characters, not Z85
    {b"fp": b"SHA256:" + b"A" * 43},  # a fingerprint without a key
    {b"clients": b"99999"},
    {b"clients": b"-1"},
    {b"v": "\u00b2".encode()},  # a superscript two: a digit to str.isdigit, not to int()
    {b"v": b"1" * 12},
    {b"name": b"\x1b[31mred"},
    {b"name": b"a\nb"},
    {b"id": b"a b c"},
])
def test_a_malformed_coordinator_ad_is_refused(props: dict[bytes, bytes | None]) -> None:
    with pytest.raises(discovery._Malformed):
        discovery._coordinator_ad(f"lab [x].{COORDINATOR_TYPE}", _info(COORDINATOR_TYPE, "lab [x]", props))


def test_a_coordinator_ad_whose_fp_is_not_its_keys_is_refused() -> None:
    props = {b"key": _key().encode(), b"fp": keys.fingerprint(_key()).encode()}
    with pytest.raises(discovery._Malformed, match="fp does not belong"):
        discovery._coordinator_ad(f"lab [x].{COORDINATOR_TYPE}", _info(COORDINATOR_TYPE, "lab [x]", props))


def test_an_agent_ad_is_read_and_checked() -> None:
    fp = keys.fingerprint(_key())
    good = {b"name": b"rig-1", b"fp": fp.encode(), b"slots": b"4", b"tags": b"gpu, linux,,", b"v": b"1"}
    ad = discovery._agent_ad(f"rig-1 [x].{AGENT_TYPE}", _info(AGENT_TYPE, "rig-1 [x]", good, port=9), 5.0)
    assert (ad.name, ad.fingerprint, ad.slots, ad.tags, ad.addresses, ad.instance, ad.seen_at) == (
        "rig-1", fp, 4, ("gpu", "linux"), ("10.0.0.5",), "rig-1 [x]", 5.0)
    bad_values: list[dict[bytes, bytes | None]] = [
        {b"fp": b"SHA256:short"}, {b"fp": None}, {b"slots": b"0"}, {b"slots": b"lots"}, {b"slots": b"9" * 30},
        {b"name": b""}, {b"name": b"\xff\xfe"}, {b"tags": ",".join(["t"] * 100).encode()},
        {b"tags": b"x" * 100},
    ]
    for bad in bad_values:
        with pytest.raises(discovery._Malformed):
            discovery._agent_ad(f"rig-1 [x].{AGENT_TYPE}", _info(AGENT_TYPE, "rig-1 [x]", {**good, **bad}, 9), 5.0)


def test_an_agent_advertiser_refuses_what_is_not_a_fingerprint() -> None:
    with pytest.raises(ValueError):
        discovery.AgentAdvertiser(name="x", fingerprint="not one", slots=1, tags=[], addresses=["127.0.0.1"],
                                  interfaces=["127.0.0.1"])
