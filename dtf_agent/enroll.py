"""How an agent finds its coordinator and decides to trust it.

mDNS only says where to knock; the key decides. The coordinator key an agent trusts comes, in this
order, from:
1. a join token (``--join``): it carries the key, the addresses and a one-time secret;
2. ``--coordinator-key`` / worker.yaml ``coordinator.fingerprint``: a public key, or a fingerprint
   that an advertisement (or the local home) must then show a matching key for;
3. the agent's pin (``<home>/agent/<worker id>/coordinator.pin``), written the first time it was
   accepted;
4. this machine's coordinator, found through the same ``$DTF_HOME`` (coordinator.json): its key,
   and the home's local enrollment secret so the agent is accepted without a click;
5. trust on first use: the key of the one coordinator mDNS shows (or the one named), pinned when
   that coordinator accepts the agent, and logged with its fingerprint. ``coordinator.trust:
   pinned`` forbids this step.

The CURVE handshake then proves that the coordinator holds the secret of the key used: a
lookalike that advertises our coordinator's key cannot complete it, and one that advertises its
own key does not match the pin.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dtf_agent import discovery, keys
from dtf_agent import protocol as p
from dtf_agent.config import WorkerConfig
from dtf_agent.paths import read_coordinator_file
from dtf_agent.transport import CurveClient

log = logging.getLogger(__name__)

_BROWSE_ROUND = 5.0


class EnrollError(Exception):
    """The agent cannot decide whom to trust; the message says what to pass."""


@dataclass
class Plan:
    """What the agent connects with."""

    address: str
    curve: CurveClient | None
    join: str = field(default="", repr=False)  # a secret: never in a repr
    on_first_welcome: Callable[[p.Welcome], None] | None = None
    how: str = ""
    browsed: bool = False  # found through mDNS: the agent announces itself there too


def _is_key(text: str) -> bool:
    try:
        keys.fingerprint(text)
    except ValueError:
        return False
    return len(text) == 40


def plan(*, home: Path, worker_id: str, cfg: WorkerConfig, address: str | None, join_token: str | None,
         coordinator_key: str | None, coordinator_name: str | None, interfaces: list[str], insecure: bool,
         stop: threading.Event) -> Plan | None:
    """Where to connect and with which keys; None when told to stop while looking. Raises EnrollError."""
    local = read_coordinator_file(home) or {}
    trusts_a_key = bool(join_token or coordinator_key or cfg.coordinator.fingerprint or cfg.coordinator.enrollment_token
                        or cfg.coordinator.trust == "pinned"
                        or (keys.agent_dir(home, worker_id) / "coordinator.pin").exists())
    if local.get("insecure") and not trusts_a_key and _alive(local.get("pid")) and \
            (address or cfg.coordinator.address or local.get("agent_endpoint")) == local.get("agent_endpoint"):
        # This home's coordinator runs --insecure (and still runs: a file left by a crash does not
        # count): it has no key to trust. Never for an agent that trusts a key already.
        insecure = True
    if insecure or cfg.coordinator.insecure:
        addr = address or cfg.coordinator.address or _local_endpoint(home)
        if not addr:
            ad = _look(interfaces, coordinator_name, None, stop)
            if ad is None:
                return None
            addr = ad.agent_endpoint
        log.warning("INSECURE: plain-text connection to %s; anyone on the path reads the commands", addr)
        return Plan(addr, None, how="insecure")
    adir = keys.agent_dir(home, worker_id)
    me = keys.load_or_create(adir / "agent.key", "agent", worker_id)
    pin_path = adir / "coordinator.pin"
    pin = keys.read_pin(pin_path)
    token_text = join_token or cfg.coordinator.enrollment_token or None
    wanted = coordinator_key or cfg.coordinator.fingerprint or None

    def curve(server_key: str) -> CurveClient:
        return CurveClient(me.public, me.secret, server_key)

    log.info("this agent's key: %s", keys.fingerprint(me.public))
    join = ""
    if join_token and not join_token.strip().startswith(keys.TOKEN_PREFIX):
        raise EnrollError(f"--join: {_token_problem(join_token)}")
    if token_text and not token_text.startswith(keys.TOKEN_PREFIX):
        # A plain shared secret (the coordinator's security.enrollment_token): it names no key.
        join, token_text = token_text, None
    if token_text:
        try:
            token = keys.decode_token(token_text)
        except keys.TokenError as exc:
            raise EnrollError(str(exc)) from None
        if pin is not None and pin.key != token.key:
            log.warning("the join token names coordinator key %s; this agent had pinned %s: the token wins (it was "
                        "given on purpose)", keys.fingerprint(token.key), pin.fingerprint)
        addr = address or cfg.coordinator.address or _reachable(token.addresses)
        log.info("joining coordinator %s (key %s) at %s with a token", token.name or "?",
                 keys.fingerprint(token.key), addr)

        def pin_on_join(w: p.Welcome) -> None:  # only once the join worked: a bad token leaves a good pin
            keys.write_pin(pin_path, token.key, "token", name=token.name, endpoint=addr)

        return Plan(addr, curve(token.key), join=token.secret, how="token", on_first_welcome=pin_on_join)
    if wanted:
        if not _is_key(wanted) and len(wanted.strip().removeprefix("SHA256:")) != 43:
            raise EnrollError(f"--coordinator-key {wanted!r}: give the coordinator's whole public key (40 characters) "
                              "or its whole fingerprint (SHA256: and 43 characters), as `dtf serve` prints it; a "
                              "prefix is not enough to pin")
        if _is_key(wanted):
            if pin is not None and pin.key != wanted:
                log.warning("--coordinator-key replaces the pinned coordinator key %s", pin.fingerprint)
            addr = address or cfg.coordinator.address or (pin.endpoint if pin and pin.key == wanted else "") \
                or _local_endpoint(home, wanted)
            if not addr:
                ad = _look(interfaces, coordinator_name, keys.fingerprint(wanted), stop)
                if ad is None:
                    return None
                addr = ad.agent_endpoint
            keys.write_pin(pin_path, wanted, "flag", endpoint=addr)
            return Plan(addr, curve(wanted), join=join or _local_join(home, wanted), how="flag")
        # A fingerprint: the key itself must come from somewhere that shows it, and match.
        local = read_coordinator_file(home) or {}
        local_key = str(local.get("public_key") or "")
        if local_key and keys.matches(keys.fingerprint(local_key), wanted):
            addr = address or cfg.coordinator.address or str(local.get("agent_endpoint") or "")
            keys.write_pin(pin_path, local_key, "flag", endpoint=addr)
            return Plan(addr, curve(local_key), join=join or _local_join(home, local_key), how="flag")
        if pin is None or not keys.matches(pin.fingerprint, wanted):  # else the pin below has the whole key
            ad = _look(interfaces, coordinator_name, wanted, stop)
            if ad is None:
                return None
            keys.write_pin(pin_path, ad.public_key, "flag", name=ad.name, endpoint=ad.agent_endpoint)
            return Plan(address or ad.agent_endpoint, curve(ad.public_key), join=join, how="flag", browsed=True)
    if pin is not None:
        addr = address or cfg.coordinator.address or ""
        local = read_coordinator_file(home) or {}
        if not addr and local.get("public_key") == pin.key:
            addr = str(local.get("agent_endpoint") or "")
        if not addr:
            # A pinned agent finds its coordinator again by key, wherever it moved; with no ad for
            # it (no multicast here), it tries the address it had last.
            ad = _look(interfaces, coordinator_name, pin.fingerprint, stop, rounds=1 if pin.endpoint else 0)
            if ad is not None:
                addr = ad.agent_endpoint
            elif stop.is_set():
                return None
            else:
                addr = pin.endpoint
                log.info("no mDNS ad carries the pinned key: trying the address it had last, %s", addr)
        log.info("trusting the pinned coordinator key %s (%s, %s)", pin.fingerprint, pin.how, pin_path)
        moved = None
        if addr != pin.endpoint:
            known = pin

            def moved(w: p.Welcome) -> None:  # an ad says where; only the handshake says it is the one
                keys.write_pin(pin_path, known.key, known.how, name=known.name, endpoint=addr)

        return Plan(addr, curve(pin.key), join=join or _local_join(home, pin.key), how="pinned",
                    on_first_welcome=moved)
    home_key = _home_key(home)
    addr = address or cfg.coordinator.address or _local_endpoint(home)
    if home_key and addr:
        # A coordinator runs (or ran) from this very home: same user, same machine; its key is
        # here, and so is the secret that enrolls us without a click.
        log.info("using the coordinator key of this home (%s): %s", home, keys.fingerprint(home_key))
        return Plan(addr, curve(home_key), join=join or _local_join(home, home_key), how="local home")
    if cfg.coordinator.trust == "pinned":
        raise EnrollError("coordinator.trust is 'pinned' and no coordinator key is known: pass --join TOKEN (from "
                          "`dtf token create`) or --coordinator-key KEY_OR_FINGERPRINT")
    addr = address or cfg.coordinator.address or ""
    ad = _look(interfaces, coordinator_name, None, stop, near=addr)
    if ad is None:
        return None
    if not ad.public_key:
        raise EnrollError(f"the coordinator {ad.describe()} runs --insecure: start this agent with --insecure too "
                          "(plain text), or secure the coordinator")
    chosen_addr = addr or ad.agent_endpoint
    if join:
        log.warning("the enrollment secret of worker.yaml is not sent to a coordinator trusted on first use; give "
                    "its key (--coordinator-key) to use it")

    def pin_on_acceptance(w: p.Welcome) -> None:
        keys.write_pin(pin_path, ad.public_key, "first use", name=ad.name, endpoint=chosen_addr)
        log.warning("trusting coordinator %s on first use: key %s, pinned in %s (as SSH's known_hosts)",
                    ad.name, ad.fingerprint, pin_path)

    log.info("found coordinator %s; it has not been trusted before: its key %s is pinned once it accepts this "
             "agent", ad.describe(), ad.fingerprint)
    return Plan(chosen_addr, curve(ad.public_key), on_first_welcome=pin_on_acceptance, how="first use",
                browsed=True)


def _token_problem(text: str) -> str:
    try:
        keys.decode_token(text)
    except keys.TokenError as exc:
        return str(exc)
    return ""


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    import os

    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _reachable(addresses: list[str], timeout: float = 1.0) -> str:
    """The first of a token's addresses that accepts a TCP connection (a coordinator bound to
    every interface names them all, and not every one is reachable from here); the first when
    none does (the agent then retries it as usual)."""
    if len(addresses) < 2:
        return addresses[0]
    import socket

    for a in addresses:
        host, _, port = a.split("//")[-1].rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return a
        except (OSError, ValueError):
            continue
    return addresses[0]


def _local_endpoint(home: Path, key: str | None = None) -> str:
    local = read_coordinator_file(home) or {}
    if key is not None and local.get("public_key") != key:
        return ""
    return str(local.get("agent_endpoint") or "")


def _home_key(home: Path) -> str:
    """The public key of the coordinator that keeps its keys in this home, if one does."""
    try:
        return keys.read_key_file(home / keys.COORDINATOR_KEY).public
    except keys.KeyFileError:
        return ""


def _local_join(home: Path, server_key: str) -> str:
    """The home's local enrollment secret, when that home's coordinator is the one we trust."""
    if _home_key(home) != server_key:
        return ""
    return keys.read_secret(home / keys.LOCAL_SECRET) or ""


def _look(interfaces: list[str], name: str | None, fingerprint: str | None, stop: threading.Event, *,
          near: str = "", rounds: int = 0) -> discovery.CoordinatorAd | None:
    """Browse mDNS until the rule of discovery.choose_coordinator picks one (or ``rounds`` rounds
    of a few seconds, when not 0); say what was found while it does not (several coordinators
    and nothing to choose by: none is picked)."""
    where = ", ".join(interfaces) or "all interfaces"
    what = f"the coordinator with key {fingerprint}" if fingerprint else (
        f"the coordinator named {name!r}" if name else "a coordinator")
    log.info("looking for %s with mDNS on %s", what, where)
    said = ""
    done = 0
    while not stop.is_set() and not (rounds and done >= rounds):
        done += 1
        ads = discovery.browse_coordinators(interfaces, timeout=_BROWSE_ROUND)
        if near:
            # An address was given: only the coordinator advertised at that address (and port) may
            # lend its key; an ad of another coordinator never stands in for it.
            host, _, port = near.split("//")[-1].rpartition(":")
            ads = [a for a in ads if host.strip("[]") in (a.address, *a.addresses) and str(a.agent_port) == port]
            if not ads:
                if said != "near":
                    log.warning("no coordinator key is known for %s and no mDNS ad shows one there: pass --join "
                                "TOKEN (from `dtf token create` on the coordinator) or --coordinator-key KEY; still "
                                "looking", near)
                    said = "near"
                continue
        ad, message = discovery.choose_coordinator(ads, pinned_fingerprint=fingerprint, name=name)
        if ad is not None:
            log.info("%s", message)
            return ad
        if message != said:
            log.warning("%s; still looking", message)
            said = message
    return None
