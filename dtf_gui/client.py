"""A client of the coordinator's API (used by the CLI, scripts and tests).

One DEALER socket, owned by the thread that created the Client.
"""

from __future__ import annotations

import itertools
from typing import Any

import zmq

from dtf_agent import protocol as p
from dtf_agent.transport import make_socket


class ClientError(Exception):
    """The coordinator refused the request, or did not answer."""


class Client:
    def __init__(self, endpoint: str, *, timeout: float = 30.0, ctx: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = make_socket(self.ctx, zmq.DEALER)
        self.sock.connect(endpoint)
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
