"""Every ZeroMQ socket DTF opens is made here, so limits and CURVE keys are set in one place.

A coordinator socket is a CURVE server (:class:`CurveServer`): libzmq asks the ZAP handler in the
same context (the coordinator's loop) about every connecting key, under the socket's ZAP domain,
and stamps each message with the key as its "User-Id". Agents and clients are CURVE clients
(:class:`CurveClient`): the handshake fails unless the server holds the secret of the key they
expect, so a pinned key is all the trust an agent needs. ``curve=None`` is a plain socket
(``--insecure``).

libzmq sockets are not thread-safe: whoever calls these functions owns the socket, uses it from
that thread only and closes it there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import zmq

from dtf_agent.protocol import DEFAULT_MAX_MESSAGE_SIZE


@dataclass(frozen=True)
class CurveServer:
    secret: str  # Z85
    domain: str  # ZAP domain: which door the key knocks at (agents, clients, events)

    def __repr__(self) -> str:
        return f"CurveServer(domain={self.domain!r})"  # never the secret, not even in a traceback


@dataclass(frozen=True)
class CurveClient:
    public: str  # Z85, ours
    secret: str  # Z85, ours
    server_key: str  # Z85, the coordinator's public key: the handshake proves the server holds it

    def __repr__(self) -> str:
        return f"CurveClient(public={self.public!r}, server_key={self.server_key!r})"


def make_socket(
    ctx: zmq.Context[Any],
    kind: int,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    identity: bytes | None = None,
    linger_ms: int = 0,
    hwm: int = 100_000,
    curve: CurveServer | CurveClient | None = None,
) -> zmq.Socket[Any]:
    """A socket with DTF's limits applied.

    ZMQ_MAXMSGSIZE makes libzmq drop a peer that sends an oversize frame before Python ever
    allocates it. The high-water marks are generous because a window of in-flight tasks is
    bounded by the scheduler, not by libzmq silently dropping frames.
    """
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if isinstance(curve, CurveServer):
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret.encode("ascii"))
        sock.setsockopt(zmq.ZAP_DOMAIN, curve.domain.encode("ascii"))
        # Without a ZAP handler libzmq would let every key in; with this set, it refuses them all.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    elif isinstance(curve, CurveClient):
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_key.encode("ascii"))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public.encode("ascii"))
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret.encode("ascii"))
    if max_message_size > 0:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        # A reply to a peer that has gone away should fail loudly in our counters, not vanish.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if kind in (zmq.DEALER, zmq.ROUTER):
        # Reconnect promptly: a lab machine rebooting should be back within seconds.
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
    return sock


def bind(sock: zmq.Socket[Any], host: str, port: int) -> int:
    """Bind to host:port (port 0 picks a free one) and return the port actually bound."""
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{host}")
    sock.bind(f"tcp://{host}:{port}")
    return port


def hostname() -> str:
    # socket is imported here, not at the top: a client command (`dtf status`) never needs it.
    import socket

    return os.environ.get("DTF_HOSTNAME") or socket.gethostname()
