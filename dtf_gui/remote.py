"""A coordinator elsewhere, with the face of the in-process one (`dtf-gui --connect`).

:class:`RemoteCoordinator` offers what the window's bridge uses of :class:`~dtf_gui.coordinator.server.Coordinator`:
``start``/``stop``, ``request(op, args, timeout)`` and event batches delivered to sinks (lists of
:class:`~dtf_agent.protocol.Event`, as the coordinator's EventHub hands them over), so the window's
code is the same whether its coordinator runs in its own process or on a lab server.

One thread owns both sockets: a DEALER to the client port (requests and replies, several in
flight) and a SUB on the events port. Any other thread asks through :meth:`RemoteCoordinator.request`,
which hands the call to that thread (an :class:`~dtf_agent.inbox.Inbox`) and waits on a Future.
Sinks run on that thread: they must hand over, not work (the bridge emits one queued Qt signal).

Qt-free: it is tested without a display, like the coordinator.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import zmq

from dtf_agent import keys
from dtf_agent import protocol as p
from dtf_agent.inbox import Inbox
from dtf_agent.transport import CurveClient, make_socket
from dtf_gui.client import Credentials, EndpointError, check_endpoint, find_credentials

log = logging.getLogger(__name__)

__all__ = ["RESYNC", "RemoteCoordinator", "RemoteError"]

EventSink = Callable[[list[p.Event]], None]

# The kind of a synthetic event a sink gets when batches were lost (the SUB socket dropped some, or
# the coordinator restarted): whoever shows a view of the coordinator should reload it.
RESYNC = "resync"
_POLL_MS = 500
_MAX_REPLY = 4 * p.DEFAULT_MAX_MESSAGE_SIZE


class RemoteError(Exception):
    """The remote coordinator refused a request, did not answer, or cannot be reached; the message
    says which, for the engineer."""


class RemoteCoordinator:
    """Start with :meth:`start`; stop with :meth:`stop` (the owning thread closes its sockets)."""

    def __init__(self, endpoint: str, *, credentials: Credentials | None = None, events_endpoint: str = "",
                 event_sinks: list[EventSink] | None = None, connect_timeout: float = 10.0) -> None:
        try:
            self.client_endpoint = check_endpoint(endpoint)
        except EndpointError as exc:
            raise RemoteError(str(exc)) from None
        self.credentials = credentials
        self.events_endpoint = events_endpoint
        self.sinks: list[EventSink] = list(event_sinks or [])
        self.connect_timeout = connect_timeout
        self.ports: dict[str, int] = {}
        self.status: dict[str, Any] = {}  # get_status's answer at start
        self.batches = 0
        self.missed_batches = 0
        self.inbox: Inbox[Callable[[], None]] = Inbox()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        # Everything below belongs to the owning thread.
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Future[p.Reply], float]] = {}
        self._ctx: zmq.Context[Any] | None = None
        self._dealer: zmq.Socket[Any] | None = None
        self._sub: zmq.Socket[Any] | None = None
        self._poller = zmq.Poller()
        self._last_seq = 0

    @classmethod
    def open(cls, endpoint: str | None, key_file: str | None = None, *,
             event_sinks: list[EventSink] | None = None, connect_timeout: float = 10.0) -> RemoteCoordinator:
        """From what a person types: ``endpoint`` (may be None when the key file names one) and a client
        key file (None: $DTF_CLIENT_KEY, else this home's admin key, else plain text). Not started."""
        try:
            creds = find_credentials(key_file)
        except keys.KeyFileError as exc:
            raise RemoteError(str(exc)) from None
        typed = endpoint
        endpoint = endpoint or (creds.endpoint if creds else "")
        if not endpoint:
            raise RemoteError("no coordinator address: give tcp://HOST:PORT (the key file names none)")
        # The key file's events address goes with its own client address. One typed over it (a
        # port-forward, a NAT, a pod's address the desk cannot reach) is how this desk reaches the
        # coordinator: events come the same way, on the port the coordinator reports (start()).
        events = creds.events_endpoint if creds and (not typed or typed == creds.endpoint) else ""
        return cls(endpoint, credentials=creds, events_endpoint=events,
                   event_sinks=event_sinks, connect_timeout=connect_timeout)

    # -- lifecycle (any thread) -------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> RemoteCoordinator:
        """Connect, ask get_status (which proves the coordinator answers this key and names its
        events port), subscribe to events. Raises RemoteError saying what is wrong."""
        self._thread = threading.Thread(target=self._thread_main, name="dtf-remote", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._startup_error is not None:
            self.stop()
            raise RemoteError(f"cannot open sockets to {self.client_endpoint}: {self._startup_error}")
        try:
            self.status = self.request("get_status", timeout=self.connect_timeout) or {}
        except RemoteError as exc:
            self.stop()
            raise RemoteError(f"{exc}{self._key_hint()}") from None
        self.ports = {str(k): int(v) for k, v in (self.status.get("ports") or {}).items()}
        if not self.events_endpoint and "events" in self.ports:
            self.events_endpoint = self._same_host(self.ports["events"])
        if self.events_endpoint:
            opened: Future[None] = Future()
            self.inbox.put(lambda: self._open_sub(opened))
            try:
                opened.result(timeout)
            except (FutureTimeout, zmq.ZMQError) as exc:
                self.stop()
                raise RemoteError(f"cannot subscribe to events at {self.events_endpoint}: {exc}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.inbox.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("remote coordinator thread did not stop within %.0f s", timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def endpoint(self, which: str) -> str:
        """The coordinator's address for ``which`` (clients, events, agents), as seen from here."""
        if which == "clients":
            return self.client_endpoint
        if which == "events" and self.events_endpoint:
            return self.events_endpoint
        if which in self.ports:
            return self._same_host(self.ports[which])
        return ""

    def _same_host(self, port: int) -> str:
        return re.sub(r":[0-9]+$", f":{port}", self.client_endpoint)

    def _key_hint(self) -> str:
        c = self.credentials
        if c is None:
            return (" (no client key was used: a secure coordinator answers only keys it knows; give one with "
                    "--key FILE, made by `dtf clients add NAME --role ROLE`)")
        try:
            expected = keys.short(keys.fingerprint(c.server_key))
        except ValueError:
            expected = "?"
        return (f" (the client key {c.name!r} from {c.source} was used, expecting the coordinator key {expected}; "
                "a coordinator refuses keys it does not know, and an --insecure one refuses every key)")

    # -- requests (any thread) -----------------------------------------------------------------------

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """One client-API operation; returns its data, raises RemoteError with the coordinator's reason
        (or when it does not answer in time)."""
        if not self.is_running:
            raise RemoteError(f"not connected to the coordinator at {self.client_endpoint}")
        fut: Future[p.Reply] = Future()
        req = p.Request(req_id=0, op=op, args=args or {})
        self.inbox.put(lambda: self._send(req, fut, time.monotonic() + timeout))
        try:
            reply = fut.result(timeout)
        except FutureTimeout:
            raise RemoteError(f"no answer from the coordinator at {self.client_endpoint} to {op} within "
                              f"{timeout:g} s") from None
        if not reply.ok:
            raise RemoteError(reply.error)
        return reply.data

    # -- the owning thread -------------------------------------------------------------------------

    def _thread_main(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        self._ctx = ctx
        try:
            try:
                self._dealer = make_socket(ctx, zmq.DEALER, max_message_size=_MAX_REPLY, curve=self._curve())
                self._dealer.connect(self.client_endpoint)
                self._poller.register(self._dealer, zmq.POLLIN)
                self._poller.register(self.inbox.fileno(), zmq.POLLIN)
            except (zmq.ZMQError, ValueError) as exc:
                self._startup_error = exc
                return
            finally:
                self._ready.set()
            self._loop()
        except BaseException:
            log.exception("remote coordinator: the connection thread died")
            raise
        finally:
            for sock in (self._dealer, self._sub):
                if sock is not None:
                    sock.close(linger=0)
            self._fail_pending("the connection to the coordinator was closed")
            self.inbox.close()
            ctx.term()

    def _curve(self) -> CurveClient | None:
        return self.credentials.curve() if self.credentials is not None else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready = dict(self._poller.poll(_POLL_MS))
            if self.inbox.fileno() in ready:
                self.inbox.clear_wake()
            for call in self.inbox.take():
                call()
            if self._dealer in ready:
                self._drain_replies()
            if self._sub is not None and self._sub in ready:
                self._drain_events()
            self._expire()

    def _open_sub(self, done: Future[None]) -> None:
        try:
            assert self._ctx is not None
            sub = make_socket(self._ctx, zmq.SUB, max_message_size=_MAX_REPLY, curve=self._curve())
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(self.events_endpoint)
        except zmq.ZMQError as exc:
            done.set_exception(exc)
            return
        self._sub = sub
        self._poller.register(sub, zmq.POLLIN)
        done.set_result(None)

    def _send(self, req: p.Request, fut: Future[p.Reply], deadline: float) -> None:
        assert self._dealer is not None
        req_id = next(self._ids)
        self._pending[req_id] = (fut, deadline)
        try:
            self._dealer.send(p.encode(p.Request(req_id=req_id, op=req.op, args=req.args)), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            del self._pending[req_id]
            fut.set_result(p.Reply(req_id=req_id, ok=False, error=f"cannot send to the coordinator: {exc}"))

    def _drain_replies(self) -> None:
        assert self._dealer is not None
        while True:
            try:
                frame = self._dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = p.decode(frame)
            except p.ProtocolError as exc:
                log.warning("remote coordinator: unreadable reply dropped: %s", exc)
                continue
            if not isinstance(reply, p.Reply):
                continue
            entry = self._pending.pop(reply.req_id, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(reply)  # else: a late answer to a request that timed out

    def _drain_events(self) -> None:
        assert self._sub is not None
        while True:
            try:
                frame = self._sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                batch = p.decode(frame)
            except p.ProtocolError as exc:
                log.warning("remote coordinator: unreadable event batch dropped: %s", exc)
                continue
            if not isinstance(batch, p.EventBatch):
                continue
            self.batches += 1
            events = list(batch.events)
            if self._last_seq and batch.seq != self._last_seq + 1:
                # Lost batches (a slow reader past the high-water mark) or a restarted coordinator
                # (its count starts again): the view is stale, whoever shows it reloads it.
                self.missed_batches += max(0, batch.seq - self._last_seq - 1)
                events.insert(0, p.Event(kind=RESYNC, data={"last_seq": self._last_seq, "seq": batch.seq},
                                         time=time.time()))
            self._last_seq = batch.seq
            for sink in self.sinks:
                try:
                    sink(events)
                except Exception:
                    log.exception("remote coordinator: an event sink failed")

    def _expire(self) -> None:
        """Forget requests whose callers stopped waiting (their answer, if it comes, is dropped)."""
        if not self._pending:
            return
        now = time.monotonic()
        for req_id in [r for r, (_, deadline) in self._pending.items() if deadline < now]:
            fut, _ = self._pending.pop(req_id)
            if not fut.done():
                fut.set_result(p.Reply(req_id=req_id, ok=False, error="no answer in time"))

    def _fail_pending(self, why: str) -> None:
        for req_id, (fut, _) in self._pending.items():
            if not fut.done():
                fut.set_result(p.Reply(req_id=req_id, ok=False, error=why))
        self._pending.clear()
