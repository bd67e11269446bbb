"""A client of the coordinator's API (used by the CLI, scripts and tests).

One DEALER socket, owned by the thread that created the Client.

Imported by every `dtf` client command, so it stays light: ZeroMQ and the wire protocol only
(no numpy, scipy, Qt, SQLite layer or coordinator code).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from dtf_agent import keys
from dtf_agent import protocol as p
from dtf_agent.transport import CurveClient, make_socket

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


@dataclass(frozen=True)
class Credentials:
    """A client key and the coordinator key it expects: what a CURVE connection needs."""

    public: str
    secret: str
    server_key: str
    name: str = ""
    source: str = ""  # the file it came from, for messages
    endpoint: str = ""
    events_endpoint: str = ""

    def curve(self) -> CurveClient:
        return CurveClient(self.public, self.secret, self.server_key)

    def __repr__(self) -> str:
        return f"Credentials(name={self.name!r}, source={self.source!r})"  # never the secret


def _home() -> Path:
    from dtf_agent.paths import dtf_home

    return dtf_home()


def find_credentials(key_file: str | None = None, home: Path | None = None) -> Credentials | None:
    """The client key to use: ``key_file`` (``--key``), else $DTF_CLIENT_KEY, else the admin key of
    this home (made by the coordinator that runs from it: a local `dtf` needs nothing typed).
    None when there is none (an insecure coordinator needs none). Raises keys.KeyFileError naming
    the file when a named one cannot be used."""
    named = key_file or os.environ.get("DTF_CLIENT_KEY") or None
    home = home or _home()
    path = Path(named).expanduser() if named else home / keys.ADMIN_KEY
    if not named and not path.exists():
        return None
    kf = keys.read_key_file(path)
    if kf.kind != "client":
        raise keys.KeyFileError(f"{path} holds a {kf.kind} key, not a client key (make one with "
                                "`dtf clients add NAME --role ROLE`)")
    server_key = kf.coordinator_key
    if not server_key:
        try:
            server_key = keys.read_key_file(home / keys.COORDINATOR_KEY).public
        except keys.KeyFileError:
            raise keys.KeyFileError(f"{path} names no coordinator key, and this home has none "
                                    f"({home / keys.COORDINATOR_KEY})") from None
    return Credentials(kf.public, kf.secret, server_key, name=kf.name, source=str(path), endpoint=kf.endpoint,
                       events_endpoint=kf.events_endpoint)


def _local_insecure(endpoint: str) -> bool:
    """Is ``endpoint`` this home's coordinator, and does it run --insecure (so no key is wanted)?"""
    from dtf_agent.paths import read_coordinator_file

    info = read_coordinator_file() or {}
    return bool(info.get("insecure")) and endpoint in (info.get("client_endpoint"), info.get("events_endpoint"))


class Client:
    def __init__(self, endpoint: str, *, timeout: float = 30.0, ctx: zmq.Context[Any] | None = None,
                 credentials: Credentials | None | str = "auto") -> None:
        """``credentials``: "auto" finds them (:func:`find_credentials`); None connects in plain text
        (to an --insecure coordinator)."""
        self.endpoint = check_endpoint(endpoint)
        self.timeout = timeout
        if credentials == "auto":
            credentials = None if _local_insecure(endpoint) else find_credentials()
        self.credentials = credentials if isinstance(credentials, Credentials) else None
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = make_socket(self.ctx, zmq.DEALER,
                                curve=self.credentials.curve() if self.credentials else None)
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
                    f"(is `dtf serve` or the window running? {self._key_hint()})"
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

    def _key_hint(self) -> str:
        # A CURVE handshake that fails is silence on the client's side: say which key was tried.
        c = self.credentials
        if c is None:
            return ("No client key was used: a secure coordinator answers only a known key; pass --key FILE "
                    "or set DTF_CLIENT_KEY")
        return (f"The client key {c.name!r} from {c.source} was used, expecting the coordinator key "
                f"{keys.short(keys.fingerprint(c.server_key))}: the coordinator refuses unknown keys, and an "
                "--insecure one refuses every key")

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
