"""Every ZeroMQ socket DTF opens is made here, so limits (and, later, CURVE keys) are set in one place.

libzmq sockets are not thread-safe: whoever calls these functions owns the socket, uses it from
that thread only and closes it there.
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from dtf_agent.protocol import DEFAULT_MAX_MESSAGE_SIZE


def make_socket(
    ctx: zmq.Context[Any],
    kind: int,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    identity: bytes | None = None,
    linger_ms: int = 0,
    hwm: int = 100_000,
) -> zmq.Socket[Any]:
    """A socket with DTF's limits applied.

    ZMQ_MAXMSGSIZE makes libzmq drop a peer that sends an oversize frame before Python ever
    allocates it. The high-water marks are generous because a window of in-flight tasks is
    bounded by the scheduler, not by libzmq silently dropping frames.
    """
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
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
