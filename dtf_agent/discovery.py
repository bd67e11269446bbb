"""mDNS/DNS-SD (python-zeroconf): where to knock. The key, not the advertisement, decides whom to trust.

Used by both sides. The coordinator advertises ``_dtf._tcp.local.`` (its endpoints, its public
key and fingerprint); agents advertise ``_dtf-agent._tcp.local.`` (name, fingerprint, slots,
tags) so that the coordinator's window can list agents seen on the LAN. Nothing secret is ever
put in a TXT record: public keys and fingerprints are public.

An advertisement is untrusted input: anyone on the LAN can send one, with any name and any key.
So an ad says where a coordinator *claims* to be; :func:`choose_coordinator` picks one by the
pinned fingerprint (or, for an agent that pins nothing yet, by name, or because it is the only
one) and refuses to guess among several. The CURVE handshake then proves the coordinator holds
the secret half of the key the agent chose. Every TXT field read is checked (type, length,
range); a malformed ad is ignored, never raised about.

zeroconf runs its own threads and calls listeners on them; our listeners only hand data over
(through a queue, or into a dict under a lock) and touch nothing else. Every Zeroconf instance
and thread made here has an owner that closes it. Which interfaces mDNS uses is always explicit:
a coordinator bound to 127.0.0.1 advertises on 127.0.0.1 only, and tests pass 127.0.0.1 (or
addresses in network namespaces they created), never every interface.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from dtf_agent import __version__, keys
from dtf_agent.protocol import PROTOCOL_VERSION

__all__ = [
    "AGENT_TYPE", "COORDINATOR_TYPE", "Advertiser", "AgentAd", "AgentAdvertiser", "AgentBrowser", "CoordinatorAd",
    "browse_coordinators", "choose_coordinator", "find_coordinator", "interfaces_for_bind",
    "local_ipv4_addresses",
]

log = logging.getLogger(__name__)

COORDINATOR_TYPE = "_dtf._tcp.local."
AGENT_TYPE = "_dtf-agent._tcp.local."

# The agent advertisement's SRV port. DNS-SD needs a port, but nothing listens behind an agent ad
# (agents dial out to the coordinator); 9 is the "discard" port, a value zeroconf accepts and that
# no reader should ever use.
AGENT_AD_PORT = 9

MAX_COORDINATOR_ADS = 256  # what one browse keeps; more is a flood, not a LAN
MAX_AGENT_ADS = 1000  # what an AgentBrowser keeps
MAX_ADDRESSES = 16  # addresses kept per ad
MAX_NAME_BYTES = 200  # a display name in TXT (a TXT string holds 255 bytes, "name=" included)
MAX_TAGS = 64
MAX_TAG_CHARS = 64
MAX_SLOTS = 100_000
_LABEL_BYTES = 63  # one DNS label: the instance name
_RESOLVE_MS = 3000

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_DIGITS = re.compile(r"[0-9]{1,9}")
_COORDINATOR_ID = re.compile(r"[0-9A-Za-z_.:-]{0,64}")


def _zeroconf(interfaces: Sequence[str]) -> Zeroconf:
    """An empty list means every interface (the LAN default); otherwise exactly these addresses."""
    if interfaces:
        return Zeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
    return Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)


def interfaces_for_bind(host: str, configured: Sequence[str]) -> list[str]:
    """Where a coordinator bound to ``host`` should advertise: the configured interfaces, else the
    bound address itself (127.0.0.1 stays on loopback), else every interface (0.0.0.0)."""
    if configured:
        return list(configured)
    if host in ("0.0.0.0", "*", ""):
        return []
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return [socket.gethostbyname(host)]


def local_ipv4_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (what a coordinator bound to 0.0.0.0 advertises)."""
    import ifaddr  # zeroconf's own dependency

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out


# -- what an advertisement says ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CoordinatorAd:
    """One coordinator advertisement, checked field by field. ``fingerprint`` is computed here from
    ``public_key`` (an advertised ``fp`` that disagrees makes the ad malformed); both are "" for a
    coordinator that runs --insecure. ``name`` is the display name; ``instance`` the mDNS instance
    name (unique per coordinator: display name and a fingerprint prefix)."""

    name: str
    instance: str
    address: str
    agent_port: int
    client_port: int
    events_port: int
    coordinator_id: str
    protocol_version: int
    public_key: str = ""
    fingerprint: str = ""
    addresses: tuple[str, ...] = ()

    @property
    def agent_endpoint(self) -> str:
        return f"tcp://{self.address}:{self.agent_port}"

    @property
    def client_endpoint(self) -> str | None:
        """The client API's endpoint, or None when the ad does not say."""
        return f"tcp://{self.address}:{self.client_port}" if self.client_port else None

    @property
    def events_endpoint(self) -> str | None:
        return f"tcp://{self.address}:{self.events_port}" if self.events_port else None

    def describe(self) -> str:
        """One line for lists and logs: name, instance, short fingerprint, agent endpoint."""
        key = keys.short(self.fingerprint) if self.fingerprint else "no key (insecure)"
        return f"{self.name!r} [{self.instance}] {key} at {self.agent_endpoint}"


@dataclass(frozen=True, kw_only=True)
class AgentAd:
    """One agent advertisement seen by :class:`AgentBrowser`. ``seen_at`` is wall-clock time (for
    display) of when the ad appeared or last changed (mDNS refreshes of an unchanged ad are silent)."""

    name: str
    fingerprint: str
    slots: int
    tags: tuple[str, ...]
    addresses: tuple[str, ...]
    instance: str
    seen_at: float
    protocol_version: int = 0


def _txt(info: ServiceInfo) -> dict[str, str]:
    """The TXT record as text. A key or value that is not text is left out (a field we cannot read
    is a field absent); keys are case-insensitive (RFC 6763 6.4)."""
    out: dict[str, str] = {}
    for k, v in info.properties.items():
        if not isinstance(k, bytes) or not (v is None or isinstance(v, bytes)):
            continue
        try:
            key = k.decode("ascii").lower()
            value = "" if v is None else v.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.setdefault(key, value)
    return out


class _Malformed(ValueError):
    pass


def _number(txt: Mapping[str, str], key: str, lo: int, hi: int, default: int | None = None) -> int:
    text = txt.get(key, "")
    if not text and default is not None:
        return default
    if not _DIGITS.fullmatch(text) or not lo <= int(text) <= hi:
        raise _Malformed(f"{key}={text[:20]!r}")
    return int(text)


def _display_name(text: str) -> str:
    if not text or len(text.encode("utf-8")) > 255 or not text.isprintable():
        raise _Malformed(f"name={text[:40]!r}")
    return text


def _instance_of(service_name: str, type_: str) -> str:
    if not service_name.lower().endswith("." + type_.lower()):
        raise _Malformed(f"service name {service_name[:80]!r}")
    return service_name[: -len(type_) - 1]


def _addresses(info: ServiceInfo) -> tuple[str, ...]:
    return tuple(info.parsed_addresses(IPVersion.V4Only)[:MAX_ADDRESSES])


def _coordinator_ad(service_name: str, info: ServiceInfo) -> CoordinatorAd:
    """Raises _Malformed on anything that is not a well-formed coordinator ad."""
    instance = _instance_of(service_name, COORDINATOR_TYPE)
    addresses = _addresses(info)
    if not addresses:
        raise _Malformed("no IPv4 address")
    if not isinstance(info.port, int) or not 1 <= info.port <= 65535:
        raise _Malformed(f"port {info.port!r}")
    txt = _txt(info)
    key = txt.get("key", "")
    advertised_fp = txt.get("fp", "")
    fp = ""
    if key:
        if len(key) != 40:
            raise _Malformed("key is not 40 characters")
        try:
            fp = keys.fingerprint(key)
        except (ValueError, KeyError, struct.error):  # pyzmq's z85: a character outside Z85, a group > 32 bits
            raise _Malformed("key is not a Z85 public key") from None
        if advertised_fp and advertised_fp != fp:
            raise _Malformed("fp does not belong to key")
    elif advertised_fp:
        raise _Malformed("fp without key")
    coordinator_id = txt.get("id", "")
    if not _COORDINATOR_ID.fullmatch(coordinator_id):
        raise _Malformed(f"id={coordinator_id[:40]!r}")
    name = txt.get("name") or re.sub(r" \[[^\]]*\](-[0-9]+)?$", "", instance) or instance
    return CoordinatorAd(
        name=_display_name(name), instance=instance, address=addresses[0], addresses=addresses,
        agent_port=info.port, client_port=_number(txt, "clients", 0, 65535, 0),
        events_port=_number(txt, "events", 0, 65535, 0), coordinator_id=coordinator_id,
        protocol_version=_number(txt, "v", 0, 1_000_000, 0), public_key=key, fingerprint=fp)


def _tags(text: str) -> tuple[str, ...]:
    tags = tuple(t.strip() for t in text.split(",") if t.strip())
    if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_CHARS or not t.isprintable() for t in tags):
        raise _Malformed(f"tags={text[:40]!r}")
    return tags


def _agent_ad(service_name: str, info: ServiceInfo, seen_at: float) -> AgentAd:
    """Raises _Malformed on anything that is not a well-formed agent ad."""
    instance = _instance_of(service_name, AGENT_TYPE)
    txt = _txt(info)
    fp = txt.get("fp", "")
    if not _FINGERPRINT.fullmatch(fp):
        raise _Malformed(f"fp={fp[:60]!r}")
    return AgentAd(name=_display_name(txt.get("name", "")), fingerprint=fp,
                   slots=_number(txt, "slots", 1, MAX_SLOTS), tags=_tags(txt.get("tags", "")),
                   addresses=_addresses(info), instance=instance, seen_at=seen_at,
                   protocol_version=_number(txt, "v", 0, 1_000_000, 0))


# -- advertising ---------------------------------------------------------------------------------------


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never in the middle of a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def _printable(text: str) -> str:
    """What readers accept as a name: control characters become spaces."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _label(text: str) -> str:
    # DNS-SD instance names may hold spaces, but not dots (they would split the name).
    return text.replace(".", "-")[:60] or "dtf"


def _server(tag: str) -> str:
    """The host name an ad's address records go under: this host's, plus the ad's own tag. Two ads
    from different addresses under one host name (a coordinator and an agent in two network
    namespaces of one machine, or machines cloned with one hostname) would otherwise answer for
    each other, and a browser could dial the agent's address for the coordinator."""
    tag = "".join(c for c in tag if c.isalnum())[:12] or "dtf"
    return f"{_label(socket.gethostname())[:40]}-{tag}.local."


def instance_name(name: str, tag: str) -> str:
    """``"{name} [{tag}]"``, the display name cut so that the whole fits one DNS label (63 bytes).
    The tag (a fingerprint prefix) makes it unique per key even for same-named coordinators on one
    host."""
    suffix = f" [{tag}]"
    return _clip(_label(name), _LABEL_BYTES - len(suffix.encode("utf-8"))).rstrip() + suffix


def _fp_tag(public_key: str) -> str:
    return keys.fingerprint(public_key).removeprefix("SHA256:")[:8]


class _Registration:
    """One DNS-SD service, registered on a thread of its own that this object owns (probing takes a
    moment): ``close`` unregisters, closes zeroconf and joins the thread."""

    def __init__(self, info: ServiceInfo, interfaces: Sequence[str], thread_name: str) -> None:
        self.interfaces = list(interfaces)
        self.info = info
        self._stop = threading.Event()
        self.registered = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    @property
    def instance(self) -> str:
        """The instance name as registered (zeroconf appends ``-2`` if the name was taken)."""
        return self.info.name[: -len(self.info.type) - 1]

    def _run(self) -> None:
        try:
            zc = _zeroconf(self.interfaces)
        except OSError as exc:
            self.error = exc
            log.error("mDNS: cannot advertise on %s: %s", self.interfaces or "all interfaces", exc)
            return
        try:
            zc.register_service(self.info, allow_name_change=True)
            self.registered.set()
            log.info("mDNS: advertising %s on %s", self.info.name, self.interfaces or "all interfaces")
            self._stop.wait()
            zc.unregister_service(self.info)
        except Exception as exc:
            self.error = exc
            log.exception("mDNS: advertising %s failed", self.info.name)
        finally:
            zc.close()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


class Advertiser(_Registration):
    """Announces one coordinator: its endpoints, display name, public key and fingerprint.

    The instance name is ``"{name} [{fp8}]"`` with the first 8 characters of the fingerprint (for
    an insecure coordinator, of its coordinator id), so two coordinators with one display name on
    one host stay two ads. ``public_key`` is the Z85 CURVE public key, "" under --insecure."""

    def __init__(self, *, name: str, addresses: Sequence[str], interfaces: Sequence[str], agent_port: int,
                 client_port: int, events_port: int, coordinator_id: str, public_key: str = "") -> None:
        name = _printable(name) or "dtf"
        properties = {"v": str(PROTOCOL_VERSION), "id": coordinator_id, "clients": str(client_port),
                      "events": str(events_port), "name": _clip(name, MAX_NAME_BYTES)}
        if public_key:
            properties["key"] = public_key
            properties["fp"] = keys.fingerprint(public_key)  # ValueError for a key that is not one
            tag = _fp_tag(public_key)
        else:
            tag = coordinator_id[:8] or "insecure"
        info = ServiceInfo(
            COORDINATOR_TYPE, f"{instance_name(name, tag)}.{COORDINATOR_TYPE}",
            addresses=[socket.inet_aton(a) for a in addresses],
            port=agent_port, server=_server(tag), properties=properties,
        )
        super().__init__(info, interfaces, "dtf-mdns-advertiser")


class AgentAdvertiser(_Registration):
    """Announces one agent so that coordinators can list it: name, fingerprint, slots, tags and the
    protocol version (``v``) and DTF version (``version``). Nothing secret. The SRV port is
    :data:`AGENT_AD_PORT` (9), which nothing uses: agents dial out, nobody dials an agent."""

    def __init__(self, *, name: str, fingerprint: str, slots: int, tags: Sequence[str], addresses: Sequence[str],
                 interfaces: Sequence[str]) -> None:
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise ValueError(f"not a key fingerprint: {fingerprint[:60]!r}")
        name = _printable(name) or "dtf-agent"
        tags = [t.strip() for t in tags]
        tags = [t for t in tags if t and "," not in t and t.isprintable() and len(t) <= MAX_TAG_CHARS][:MAX_TAGS]
        joined = ""
        for tag in tags:  # what fits one TXT string ("tags=" and 250 bytes)
            longer = f"{joined},{tag}" if joined else tag
            if len(longer.encode("utf-8")) > 250:
                log.warning("mDNS: agent tags cut to fit the advertisement: %s", joined)
                break
            joined = longer
        properties = {"name": _clip(name, MAX_NAME_BYTES), "fp": fingerprint,
                      "slots": str(max(1, min(slots, MAX_SLOTS))), "tags": joined, "v": str(PROTOCOL_VERSION),
                      "version": __version__}
        info = ServiceInfo(
            AGENT_TYPE, f"{instance_name(name, fingerprint.removeprefix('SHA256:')[:8])}.{AGENT_TYPE}",
            addresses=[socket.inet_aton(a) for a in addresses], port=AGENT_AD_PORT,
            server=_server(fingerprint.removeprefix("SHA256:")[:8]), properties=properties,
        )
        super().__init__(info, interfaces, "dtf-mdns-agent-advertiser")


# -- browsing --------------------------------------------------------------------------------------------


def _browse(interfaces: Sequence[str], timeout: float,
            until: Callable[[CoordinatorAd], bool] | None = None) -> list[CoordinatorAd]:
    """Coordinator ads seen within ``timeout`` (or until one satisfies ``until``), by instance."""
    events: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        # zeroconf's thread: hand the name over, nothing else.
        events.put((name, state_change is ServiceStateChange.Removed))

    found: dict[str, CoordinatorAd] = {}
    deadline = time.monotonic() + timeout
    zc = _zeroconf(interfaces)
    try:
        browser = ServiceBrowser(zc, COORDINATOR_TYPE, handlers=[on_change])
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    service_name, removed = events.get(timeout=left)
                except queue.Empty:
                    break
                slot = service_name.lower()  # DNS names are case-insensitive
                if removed:
                    found.pop(slot, None)
                    continue
                if slot not in found and len(found) >= MAX_COORDINATOR_ADS:
                    continue
                resolve_ms = int(min(_RESOLVE_MS, max(250.0, left * 1000)))
                info = zc.get_service_info(COORDINATOR_TYPE, service_name, timeout=resolve_ms)
                if info is None:
                    continue
                try:
                    ad = _coordinator_ad(service_name, info)
                except _Malformed as exc:
                    log.info("mDNS: ignoring the malformed coordinator ad %r: %s", service_name[:80], exc)
                    found.pop(slot, None)
                    continue
                found[slot] = ad
                if until is not None and until(ad):
                    break
        finally:
            browser.cancel()
    finally:
        zc.close()
    return sorted(found.values(), key=lambda a: (a.name, a.instance))


def browse_coordinators(interfaces: Sequence[str], timeout: float) -> list[CoordinatorAd]:
    """Every well-formed coordinator ad seen within ``timeout`` seconds (always the whole timeout:
    a second coordinator may answer late), one per instance, sorted by name. Nothing here is
    trusted yet: pass the list to :func:`choose_coordinator`."""
    return _browse(interfaces, timeout)


def choose_coordinator(ads: Sequence[CoordinatorAd], *, pinned_fingerprint: str | None = None,
                       name: str | None = None) -> tuple[CoordinatorAd | None, str]:
    """Which advertised coordinator to use, and a message saying why (or why none). No I/O.

    - With ``pinned_fingerprint`` (a whole fingerprint or a prefix of at least 8 characters, see
      :func:`keys.matches`): only an ad whose key matches, whatever its name or address (a pinned
      agent finds its coordinator again after its address changed). ``name`` only breaks a tie
      between ads carrying that same key. An ad with another key is never chosen.
    - Else with ``name``: only ads whose display name or instance name is ``name``.
    - Else the only ad there is. Several candidates and nothing to decide: none is chosen, and the
      message lists them and says how to pick (--coordinator-name / --coordinator-key).
    """
    ads = sorted(ads, key=lambda a: (a.name, a.instance))

    def listing(items: Sequence[CoordinatorAd]) -> str:
        return "".join(f"\n  {a.describe()}" for a in items)

    how = ("pick one with --coordinator-name NAME or --coordinator-key FINGERPRINT "
           "(or give its address with --coordinator tcp://HOST:PORT)")
    if pinned_fingerprint is not None:
        pin = pinned_fingerprint.strip()
        if len(pin.removeprefix("SHA256:")) < keys.MIN_PREFIX:
            return None, (f"the coordinator fingerprint {pin!r} is too short: give at least {keys.MIN_PREFIX} "
                          "characters after SHA256:")
        keyed = [a for a in ads if a.fingerprint and keys.matches(a.fingerprint, pin)]
        if not keyed:
            if not ads:
                return None, f"no coordinator found with mDNS (none with the pinned key {pin})"
            return None, (f"no coordinator with the pinned key {pin} found; refusing the {len(ads)} found with "
                          f"other keys (or none):{listing(ads)}")
        if name is not None and len(keyed) > 1:
            keyed = [a for a in keyed if name in (a.name, a.instance)] or keyed
        chosen = keyed[0]
        others = f" ({len(keyed) - 1} more ad(s) carry the same key)" if len(keyed) > 1 else ""
        return chosen, f"found the pinned coordinator {chosen.describe()}{others}"
    candidates = [a for a in ads if name in (a.name, a.instance)] if name is not None else list(ads)
    if len(candidates) == 1:
        chosen = candidates[0]
        return chosen, f"found coordinator {chosen.describe()}"
    if not candidates:
        if name is None:
            return None, "no coordinator found with mDNS"
        if not ads:
            return None, f"no coordinator named {name!r} found with mDNS (none found at all)"
        return None, f"no coordinator named {name!r} found with mDNS; found only:{listing(ads)}"
    named = f" named {name!r}" if name is not None else ""
    return None, (f"{len(candidates)} coordinators{named} found with mDNS; not choosing one blindly, "
                  f"{how}:{listing(candidates)}")


def find_coordinator(interfaces: Sequence[str], timeout: float, name: str | None = None, *,
                     pinned_fingerprint: str | None = None) -> CoordinatorAd | None:
    """:func:`browse_coordinators` then :func:`choose_coordinator`; kept for callers that want only
    the ad. With a pin it returns as soon as the pinned key is seen; otherwise it browses the whole
    ``timeout`` (a lookalike may answer late). When several were found and none chosen, the reason
    is logged as a warning. New callers should use the two functions and show the message."""
    until = None
    if pinned_fingerprint is not None:
        pin = pinned_fingerprint

        def until(ad: CoordinatorAd) -> bool:
            return bool(ad.fingerprint) and keys.matches(ad.fingerprint, pin)

    ads = _browse(interfaces, timeout, until)
    ad, message = choose_coordinator(ads, pinned_fingerprint=pinned_fingerprint, name=name)
    if ad is None and ads:
        log.warning("mDNS: %s", message)
    return ad


class AgentBrowser:
    """The coordinator's view of the agents advertising on the LAN.

    zeroconf's browser thread calls :meth:`_on_change_zeroconf_thread`, which resolves the ad and
    stores it into a dict under a lock, nothing else. The owner reads with
    :meth:`snapshot_threadsafe` and stops it with :meth:`close`. At most ``max_ads`` are kept (a new
    one beyond that is ignored and counted in ``dropped``); malformed ads are ignored."""

    def __init__(self, interfaces: Sequence[str], *, max_ads: int = MAX_AGENT_ADS,
                 resolve_timeout: float = 1.5) -> None:
        self.interfaces = list(interfaces)
        self._max_ads = max_ads
        self._resolve_ms = int(resolve_timeout * 1000)
        self._lock = threading.Lock()
        self._ads: dict[str, AgentAd] = {}  # lower-cased service name -> ad; under _lock
        self._dropped = 0  # under _lock
        self._closed = threading.Event()
        self._zc = _zeroconf(self.interfaces)
        try:
            self._browser = ServiceBrowser(self._zc, AGENT_TYPE, handlers=[self._on_change_zeroconf_thread])
        except BaseException:
            self._zc.close()
            raise

    def _on_change_zeroconf_thread(self, zeroconf: Zeroconf, service_type: str, name: str,
                                   state_change: ServiceStateChange) -> None:
        # zeroconf's browser thread: resolve, then hand over under the lock. Never raises.
        slot = name.lower()
        try:
            if state_change is ServiceStateChange.Removed or self._closed.is_set():
                with self._lock:
                    self._ads.pop(slot, None)
                return
            with self._lock:
                if slot not in self._ads and len(self._ads) >= self._max_ads:
                    self._dropped += 1
                    return
            info = zeroconf.get_service_info(AGENT_TYPE, name, timeout=self._resolve_ms)
            ad = _agent_ad(name, info, time.time()) if info is not None else None
        except _Malformed as exc:
            log.debug("mDNS: ignoring the malformed agent ad %r: %s", name[:80], exc)
            ad = None
        except Exception:  # zeroconf closing under us, or an ad that breaks parsing
            log.debug("mDNS: ignoring the agent ad %r", name[:80], exc_info=True)
            return
        with self._lock:
            if ad is None:
                self._ads.pop(slot, None)
            elif slot in self._ads or len(self._ads) < self._max_ads:
                self._ads[slot] = ad
            else:
                self._dropped += 1

    def snapshot_threadsafe(self) -> list[AgentAd]:
        """The agents seen now (any thread), sorted by name."""
        with self._lock:
            ads = list(self._ads.values())
        return sorted(ads, key=lambda a: (a.name, a.instance))

    @property
    def dropped(self) -> int:
        """Ads ignored because ``max_ads`` were already kept."""
        with self._lock:
            return self._dropped

    def close(self) -> None:
        """Stop browsing (joins zeroconf's browser thread) and close zeroconf. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._browser.cancel()
        finally:
            self._zc.close()

    def __enter__(self) -> AgentBrowser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
