"""A client of the coordinator's API (used by the CLI, scripts and tests).

One DEALER socket, owned by the thread that created the Client.

Imported by every `dtf` client command, so it stays light: ZeroMQ and the wire protocol only
(no numpy, scipy, Qt, SQLite layer or coordinator code).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import zmq

from dtf_agent import protocol as p
from dtf_agent.transport import make_socket

ENDPOINT_FORM = "tcp://HOST:PORT"
# HOST: a name, an IPv4 address or an IPv6 address (bracketed or not); PORT: 1..65535.
_ENDPOINT_RE = re.compile(r"tcp://(?P<host>\[[0-9A-Za-z:.%]+\]|[^\s/\[\]*]+):(?P<port>[0-9]{1,5})")


class ClientError(Exception):
    """The coordinator refused the request, or did not answer."""


class EndpointError(ClientError):
    """The coordinator's address is not of the form tcp://HOST:PORT (a usage error, not a failure
    of the coordinator)."""


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` when it reads tcp://HOST:PORT, else EndpointError naming it and the expected form."""
    m = _ENDPOINT_RE.fullmatch(endpoint)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise EndpointError(f"bad coordinator address {endpoint!r}: expected {ENDPOINT_FORM} "
                            "(for example tcp://127.0.0.1:8080)")
    return endpoint


class Client:
    def __init__(self, endpoint: str, *, timeout: float = 30.0, ctx: zmq.Context[Any] | None = None) -> None:
        self.endpoint = check_endpoint(endpoint)
        self.timeout = timeout
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = make_socket(self.ctx, zmq.DEALER)
        try:
            self.sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise EndpointError(f"cannot connect to {endpoint!r}: {exc}; expected {ENDPOINT_FORM}") from None
        self._ids = itertools.count(1)

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Run one API operation and return its data; raises ClientError with the coordinator's reason."""
        req_id = next(self._ids)
        self.sock.send(p.encode(p.Request(req_id=req_id, op=op, args=args or {})))
        wait_ms = int((self.timeout if timeout is None else timeout) * 1000)
        while True:
            if not self.sock.poll(wait_ms):
                raise ClientError(
                    f"no answer from the coordinator at {self.endpoint} within {wait_ms / 1000:g} s "
                    "(is `dtf serve` or the window running?)"
                )
            try:
                reply = p.decode(self.sock.recv())
            except p.ProtocolError as exc:
                raise ClientError(f"unreadable reply from {self.endpoint}: {exc}") from None
            if not isinstance(reply, p.Reply) or reply.req_id != req_id:
                continue  # a late answer to an earlier request that timed out
            if not reply.ok:
                raise ClientError(reply.error)
            return reply.data

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
