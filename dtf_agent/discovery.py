"""mDNS/DNS-SD (python-zeroconf): the coordinator advertises itself, agents find it.

Used by both sides. zeroconf runs its own threads and calls listeners on them; our listeners only
hand the service name over through a queue and touch nothing else. Which interfaces mDNS uses is
always explicit: a coordinator bound to 127.0.0.1 advertises on 127.0.0.1 only, and tests pass
127.0.0.1 (or addresses in network namespaces they created), never every interface.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from dtf_agent.protocol import PROTOCOL_VERSION

log = logging.getLogger(__name__)

COORDINATOR_TYPE = "_dtf._tcp.local."
AGENT_TYPE = "_dtf-agent._tcp.local."


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


@dataclass(frozen=True)
class CoordinatorAd:
    name: str
    address: str
    agent_port: int
    client_port: int
    events_port: int
    coordinator_id: str
    protocol_version: int

    @property
    def agent_endpoint(self) -> str:
        return f"tcp://{self.address}:{self.agent_port}"


def local_ipv4_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (what a coordinator bound to 0.0.0.0 advertises)."""
    import ifaddr  # zeroconf's own dependency

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out


class Advertiser:
    """Announces one coordinator. Registration (probing) takes a moment, so it runs on a thread
    of its own that this object owns: ``close`` unregisters, closes zeroconf and joins it."""

    def __init__(self, *, name: str, addresses: Sequence[str], interfaces: Sequence[str], agent_port: int,
                 client_port: int, events_port: int, coordinator_id: str) -> None:
        self.interfaces = list(interfaces)
        self.info = ServiceInfo(
            COORDINATOR_TYPE, f"{_label(name)}.{COORDINATOR_TYPE}",
            addresses=[socket.inet_aton(a) for a in addresses],
            port=agent_port, server=f"{_label(socket.gethostname())}.local.",
            properties={"v": str(PROTOCOL_VERSION), "id": coordinator_id, "clients": str(client_port),
                        "events": str(events_port)},
        )
        self._stop = threading.Event()
        self.registered = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dtf-mdns-advertiser", daemon=True)
        self._thread.start()

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
            log.exception("mDNS: advertising failed")
        finally:
            zc.close()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def _label(text: str) -> str:
    # DNS-SD instance names may hold spaces, but not dots (they would split the name).
    return text.replace(".", "-")[:60] or "dtf"


def find_coordinator(interfaces: Sequence[str], timeout: float, name: str | None = None) -> CoordinatorAd | None:
    """Browse for a coordinator until ``timeout``; ``name`` picks one instance when a LAN has several."""
    names: queue.SimpleQueue[str] = queue.SimpleQueue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        # zeroconf's thread: hand the name over, nothing else.
        if state_change is not ServiceStateChange.Removed:
            names.put(name)

    zc = _zeroconf(interfaces)
    browser = ServiceBrowser(zc, COORDINATOR_TYPE, handlers=[on_change])
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                found = names.get(timeout=left)
            except queue.Empty:
                return None
            if name is not None and found != f"{_label(name)}.{COORDINATOR_TYPE}":
                continue
            info = zc.get_service_info(COORDINATOR_TYPE, found, timeout=3000)
            ad = _ad(found, info) if info else None
            if ad is not None:
                return ad
    finally:
        browser.cancel()
        zc.close()


def _ad(name: str, info: ServiceInfo) -> CoordinatorAd | None:
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses or not info.port:
        return None
    props = {k.decode(): (v.decode() if v else "") for k, v in info.properties.items()}
    try:
        return CoordinatorAd(name=name, address=addresses[0], agent_port=info.port,
                             client_port=int(props.get("clients") or 0), events_port=int(props.get("events") or 0),
                             coordinator_id=props.get("id", ""), protocol_version=int(props.get("v") or 0))
    except ValueError:
        log.warning("mDNS: ignoring %s with malformed properties %s", name, props)
        return None
