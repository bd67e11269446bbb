"""The client API's trust operations: who am I, enrollment, tokens, client keys, the security log.

A table of its own next to api.py's task operations (ClientApi merges it): the rules are in
trust.py, and what must happen on the wire (disconnecting a revoked agent, telling a pending one
it was accepted) is asked of the loop through :class:`TrustCommands`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

import msgspec

from dtf_agent import protocol as p
from dtf_gui.coordinator.trust import ROLES, ClientKey, Trust, token_args_problem

MAX_SELECT = 10_000


class ApiRefusal(Exception):
    """Raised for a refused request; api.py turns it into its ApiError."""


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NoArgs(_Args):
    pass


class SelectAgents(_Args):
    agents: Annotated[list[p.Name], msgspec.Meta(max_length=MAX_SELECT)] = msgspec.field(default_factory=list)
    all_pending: bool = False


class TokenArgs(_Args):
    uses: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    ttl: Annotated[float, msgspec.Meta(gt=0, le=366 * 86400.0)] = 3600.0
    tags: p.NameList = msgspec.field(default_factory=list)
    # The token of security.enrollment_token instead of a new one (uses, ttl and tags do not apply).
    from_config: bool = False


class TokenRef(_Args):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ClientArgs(_Args):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")]
    role: str = "viewer"


class ClientRef(_Args):
    name: p.Name


class SecurityArgs(_Args):
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


class TrustCommands(Protocol):
    """What the trust operations ask of the coordinator's loop."""

    def agents_accepted(self, keys: list[str]) -> None:
        """Tell these agents, if connected and waiting, to register now."""
        ...

    def agents_revoked(self, keys: list[str], what: str = "revoked") -> None:
        """Cut these agents off at once (told why: revoked or rejected); their tasks go back to the queue."""
        ...

    def agent_endpoints(self) -> list[str]:
        """Where agents reach this coordinator (for tokens)."""
        ...

    def client_endpoints(self) -> tuple[str, str]:
        """(client API, events) endpoints, for client key files."""
        ...

    def online_workers(self) -> set[str]: ...

    def seen_agents(self) -> list[dict[str, Any]]:
        """Agents mDNS shows on the LAN (not enrolled, or not yet)."""
        ...


class TrustApi:
    def __init__(self, trust: Trust, commands: TrustCommands, caller: Callable[[], ClientKey],
                 load_events: Callable[[int], list[dict[str, Any]]], coordinator_id: str = "") -> None:
        self.trust = trust
        self.coordinator_id = coordinator_id
        self.commands = commands
        self.caller = caller
        self.load_events = load_events
        self.ops: dict[str, tuple[type[Any], Callable[[Any], Any]]] = {
            "whoami": (NoArgs, self.whoami),
            "list_agents": (NoArgs, self.list_agents),
            "accept_agents": (SelectAgents, self.accept_agents),
            "reject_agents": (SelectAgents, self.reject_agents),
            "revoke_agents": (SelectAgents, self.revoke_agents),
            "create_token": (TokenArgs, self.create_token),
            "list_tokens": (NoArgs, self.list_tokens),
            "revoke_token": (TokenRef, self.revoke_token),
            "add_client": (ClientArgs, self.add_client),
            "remove_client": (ClientRef, self.remove_client),
            "list_clients": (NoArgs, self.list_clients),
            "seen_agents": (NoArgs, self.seen_agents),
            "list_security_events": (SecurityArgs, self.list_security_events),
        }

    def _secure(self, what: str) -> None:
        if self.trust.insecure:
            raise ApiRefusal(f"{what}: this coordinator runs --insecure (every agent is accepted, there are no "
                             "keys); restart it without --insecure")

    def whoami(self, _: NoArgs) -> dict[str, Any]:
        return self.trust.whoami(self.caller(), self.coordinator_id)

    def list_agents(self, _: NoArgs) -> list[dict[str, Any]]:
        return self.trust.list_agents(self.commands.online_workers())

    def _select(self, a: SelectAgents, states: tuple[str, ...]) -> list[Any]:
        if not a.agents and not a.all_pending:
            raise ApiRefusal("name agents (by name or fingerprint), or ask for all pending ones")
        try:
            found = self.trust.select(a.agents, all_pending=a.all_pending, states=states)
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None
        return found

    def accept_agents(self, a: SelectAgents) -> dict[str, Any]:
        self._secure("accept")
        found = self._select(a, ("pending", "rejected", "revoked"))
        try:
            names = self.trust.accept(found)
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None
        self.commands.agents_accepted([x.key for x in found])
        return {"accepted": names}

    def reject_agents(self, a: SelectAgents) -> dict[str, Any]:
        self._secure("reject")
        found = self._select(a, ("pending",))
        names = self.trust.reject(found)
        self.commands.agents_revoked([x.key for x in found], "rejected")
        return {"rejected": names}

    def revoke_agents(self, a: SelectAgents) -> dict[str, Any]:
        self._secure("revoke")
        found = self._select(a, ("accepted", "pending"))
        names = self.trust.revoke(found)
        self.commands.agents_revoked([x.key for x in found])
        return {"revoked": names}

    def create_token(self, a: TokenArgs) -> dict[str, Any]:
        self._secure("token create")
        if a.from_config:
            try:
                return self.trust.config_join_token(self.commands.agent_endpoints())
            except ValueError as exc:
                raise ApiRefusal(str(exc)) from None
        problem = token_args_problem(a.uses, a.ttl)
        if problem:
            raise ApiRefusal(problem)
        return self.trust.create_token(a.uses, a.ttl, a.tags, self.commands.agent_endpoints())

    def list_tokens(self, _: NoArgs) -> list[dict[str, Any]]:
        return self.trust.list_tokens()

    def revoke_token(self, a: TokenRef) -> dict[str, Any]:
        try:
            return {"revoked": self.trust.revoke_token(a.id)}
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None

    def add_client(self, a: ClientArgs) -> dict[str, Any]:
        self._secure("clients add")
        if a.role not in ROLES:
            raise ApiRefusal(f"unknown role {a.role!r}: one of {', '.join(ROLES)}")
        endpoint, events = self.commands.client_endpoints()
        try:
            kf = self.trust.add_client(a.name, a.role, endpoint, events)
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None
        return {"key_file": msgspec.to_builtins(kf), "fingerprint": self.trust.clients[kf.public].fingerprint}

    def remove_client(self, a: ClientRef) -> dict[str, Any]:
        try:
            return {"removed": self.trust.remove_client(a.name)}
        except ValueError as exc:
            raise ApiRefusal(str(exc)) from None

    def list_clients(self, _: NoArgs) -> list[dict[str, Any]]:
        return self.trust.list_clients()

    def seen_agents(self, _: NoArgs) -> list[dict[str, Any]]:
        enrolled = {a.fingerprint for a in self.trust.agents.values() if a.state != "pending"}
        return [a for a in self.commands.seen_agents() if a.get("fingerprint") not in enrolled]

    def list_security_events(self, a: SecurityArgs) -> list[dict[str, Any]]:
        return self.load_events(a.limit)
