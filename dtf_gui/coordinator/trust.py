"""Who may talk to this coordinator: agent enrollment, client roles, join tokens, the security log.

Owned by the coordinator's loop thread, and does no socket I/O: the loop asks it about every key
that knocks (:meth:`Trust.authenticate`, the ZAP handler's verdict), about every Register
(:meth:`Trust.register`), and about every client request (:meth:`Trust.allowed`); it answers with
verdicts, and writes its tables through the store like every other row.

An agent's identity is its CURVE public key, not the name it gives: a name belongs to the first key
accepted under it, and another key claiming it is refused and logged. A new key is *pending* until
an admin accepts it, or until it presents a join secret: a token made by `dtf token create`, the
token in coordinator.yaml, or the local secret in this coordinator's home (agents started by the
same user from the same home are trusted without a click).

With ``insecure`` (plain sockets) there are no keys to check: every agent is welcome and every
client is an admin, as before this module existed; the coordinator says so loudly at start.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dtf_agent import keys
from dtf_agent import protocol as p
from dtf_gui.coordinator.events import EventHub
from dtf_gui.coordinator.store import Store

log = logging.getLogger(__name__)

PENDING, ACCEPTED, REJECTED, REVOKED = "pending", "accepted", "rejected", "revoked"
AGENT_STATES = (PENDING, ACCEPTED, REJECTED, REVOKED)
ROLES = keys.ROLES  # viewer < operator < admin

# The least role each operation needs; an operation not named here needs admin.
VIEWER_OPS = frozenset({"ping", "whoami", "get_task", "list_tasks", "list_workers", "get_worker", "list_results",
                        "get_status", "wait", "list_agents", "seen_agents", "list_security_events", "get_log",
                        "list_runs", "get_run", "run_tests", "task_progress", "test_durations", "compare_runs",
                        "metric_info", "task_page", "task_positions", "series_catalog", "metric_series",
                        "run_report", "export_rows", "list_alerts", "throughput_history", "list_findings"})
OPERATOR_OPS = frozenset({"create_task", "create_tasks", "cancel_task", "assign_task", "unassign_task",
                          "retry_task", "set_priority", "aggregate_results", "get_result_anomalies",
                          "get_comparison_report", "create_run", "finish_run", "mark_flaky", "bundle_missing",
                          "put_bundle", "declare_metrics", "ack_alerts", "mute_alert", "drain_worker",
                          "resume_worker", "cancel_tasks", "retry_tasks", "assign_tasks"})
MAX_PENDING = 1000  # pending keys kept at once: strangers knocking must not grow memory without end
MAX_TOKEN_USES = 10_000
MAX_TOKEN_TTL = 366 * 86400.0
_THROTTLE = 5.0  # seconds between two log lines of a throttled kind
# The security events that turn someone away (the others record a decision that let someone in,
# or an admin's change): what monitoring counts as refusals, throttled or not.
REFUSALS = frozenset({"handshake_refused", "handshake_failed", "name_refused", "join_refused", "pending_full",
                      "agent_refused", "result_refused", "rate_limited", "refused"})


def role_needed(op: str) -> str:
    if op in VIEWER_OPS:
        return "viewer"
    if op in OPERATOR_OPS:
        return "operator"
    return "admin"


def role_allows(role: str, op: str) -> bool:
    return ROLES.index(role) >= ROLES.index(role_needed(op))


@dataclasses.dataclass
class AgentKey:
    key: str
    name: str
    state: str
    fingerprint: str
    hostname: str = ""
    address: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    how: str = ""  # manual, token, local, config token, first contact (insecure)
    tags: str = ""  # comma-joined: the tags of the token it joined with, added to its own

    def row(self) -> tuple[Any, ...]:
        return (self.key, self.name, self.state, self.fingerprint, self.hostname, self.address, self.first_seen,
                self.last_seen, self.how, self.tags)

    def summary(self, online: bool = False) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "fingerprint": self.fingerprint, "hostname": self.hostname,
                "address": self.address, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "how": self.how, "online": online}


@dataclasses.dataclass
class ClientKey:
    key: str
    name: str
    role: str
    fingerprint: str
    created: float
    removed: bool = False

    def row(self) -> tuple[Any, ...]:
        return (self.key, self.name, self.role, self.fingerprint, self.created, int(self.removed))


@dataclasses.dataclass
class TokenRow:
    id: str
    secret_hash: str
    uses_left: int
    expires: float
    tags: list[str]
    created: float

    def row(self) -> tuple[Any, ...]:
        return (self.id, self.secret_hash, self.uses_left, self.expires, ",".join(self.tags), self.created)


@dataclasses.dataclass(frozen=True)
class _Join:
    how: str
    problem: str = ""
    tags: tuple[str, ...] = ()
    token: TokenRow | None = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a Register gets: ``welcome`` (register it), ``pending`` (wait for an admin), or a refusal."""

    kind: str  # welcome, pending, refuse
    reason: str = ""
    fatal: bool = False
    tags: tuple[str, ...] = ()  # a token's tags, added to the worker's own


class Trust:
    def __init__(self, store: Store, hub: EventHub, home: Path, *, insecure: bool, coordinator_name: str,
                 config_token: str | None = None) -> None:
        self.store = store
        self.hub = hub
        self.home = home
        self.insecure = insecure
        self.config_token = config_token or None
        self._quiet_until: dict[str, tuple[float, int]] = {}  # what -> (until, held back)
        # Told of every refusal (a kind of REFUSALS), before throttling: the metrics count them.
        self.on_refusal: Callable[[str], None] | None = None
        self._announced: set[str] = set()  # pending keys already logged as waiting (this run)
        self.agents: dict[str, AgentKey] = {}
        self.names: dict[str, str] = {}  # name -> key of the agent accepted under it
        self.clients: dict[str, ClientKey] = {}
        self.tokens: dict[str, TokenRow] = {}  # secret hash -> token
        if insecure:
            # No key files are made: their presence is how local agents and clients tell that this
            # home's coordinator wants CURVE. What uses the keys is refused while insecure.
            self.server = keys.generate("coordinator", coordinator_name)
            self.admin = keys.generate("client", "admin", role="admin", coordinator_key=self.server.public)
            self.local_secret = ""
        else:
            self.server = keys.load_or_create(home / keys.COORDINATOR_KEY, "coordinator", coordinator_name)
            self.admin = keys.load_or_create(home / keys.ADMIN_KEY, "client", "admin", role="admin",
                                             coordinator_key=self.server.public)
            self.local_secret = keys.read_secret(home / keys.LOCAL_SECRET, create=True) or ""
        self.fingerprint = keys.fingerprint(self.server.public)
        for r in store.load_rows("agent_keys"):
            a = AgentKey(**{**r, "tags": r["tags"] or ""})
            self.agents[a.key] = a
            if a.state == ACCEPTED:
                self.names[a.name] = a.key
        for r in store.load_rows("client_keys"):
            c = ClientKey(**{**r, "removed": bool(r["removed"])})
            self.clients[c.key] = c
        now = time.time()
        for r in store.load_rows("tokens"):
            t = TokenRow(**{**r, "tags": [x for x in (r["tags"] or "").split(",") if x]})
            if t.uses_left > 0 and t.expires > now:
                self.tokens[t.secret_hash] = t
        # The home's admin key is always an admin: it is how the local `dtf` reaches this coordinator.
        self.clients[self.admin.public] = ClientKey(self.admin.public, "admin (local)", "admin",
                                                    keys.fingerprint(self.admin.public), now)

    # -- the ZAP handler's verdict (the loop thread, at every handshake) -------------------------

    def authenticate(self, domain: str, address: str, key: str) -> tuple[bool, str]:
        """May ``key`` (Z85) connect on ``domain`` (agents, clients, events)? (allowed, why not)."""
        if domain == "agents":
            a = self.agents.get(key)
            if a is not None and a.state in (REJECTED, REVOKED):
                self.security("handshake_refused", a.name, f"{a.state} agent key {keys.short(a.fingerprint)} "
                              f"from {address}", throttle=True)
                return False, f"agent key {a.state}"
            if a is None and self.pending_full():
                # A stranger's Register could not be kept anyway, unless it carries a join secret;
                # a token's agent waits until the admin makes room (reject --all-pending).
                self.security("handshake_refused", address, f"new agent key {_fp(key)}: {MAX_PENDING} agents "
                              "already wait for acceptance", throttle=True)
                return False, "too many agents pending"
            return True, ""  # a stranger may knock: its Register makes it pending
        c = self.clients.get(key)
        if c is not None and not c.removed:
            return True, ""
        self.security("handshake_refused", address, f"unknown client key {_fp(key)} on the {domain} port",
                      throttle=True)
        return False, "unknown client key"

    # -- agents ----------------------------------------------------------------------------------

    def register(self, key: str, msg: p.Register, address: str) -> Verdict:
        """A Register that came with ``key`` from ``address``."""
        if self.insecure:
            return Verdict("welcome")
        now = time.time()
        name = msg.worker_id
        a = self.agents.get(key)
        if a is not None and a.state in (REJECTED, REVOKED):
            return Verdict("refuse", f"this agent's key ({keys.short(a.fingerprint)}) was {a.state} by the "
                                     "coordinator's admin", fatal=True)
        holder = self.names.get(name)
        if holder is not None and holder != key:
            fp = self.agents[holder].fingerprint
            self.security("name_refused", name, f"a second key {_fp(key)} from {address} claimed the name of the "
                          f"accepted agent {name} (key {keys.short(fp)})", throttle=True)
            return Verdict("refuse", f"the name {name!r} belongs to another agent's key ({keys.short(fp)}); this "
                                     f"agent's key is {_fp(key)}. Choose another --worker-id, or revoke the other "
                                     f"agent first (`dtf agents revoke {name}`)", fatal=True)
        if a is not None and a.state == ACCEPTED and a.name != name:
            return Verdict("refuse", f"this agent's key is enrolled as {a.name!r}, not {name!r}: start it with "
                                     f"--worker-id {a.name}, or revoke it and enroll it again", fatal=True)
        join: _Join | None = None
        if (a is None or a.state == PENDING) and msg.join:
            # Checked before anything is kept: a stranger with a wrong secret leaves no row behind.
            join = self._check_join(msg.join)
            if join.problem:
                self.security("join_refused", name, f"{_fp(key)} from {address}: {join.problem}", throttle=True)
                return Verdict("refuse", f"join refused: {join.problem}", fatal=True)
        if a is None:
            if join is None and self.pending_full():
                self.security("pending_full", name, f"{_fp(key)} from {address}: {MAX_PENDING} agents already wait",
                              throttle=True)
                return Verdict("refuse", "too many agents are waiting for acceptance; ask the admin", fatal=False)
            a = AgentKey(key, name, PENDING, keys.fingerprint(key), first_seen=now)
            self.agents[key] = a
        changed = (a.name, a.hostname, a.address) != (name, msg.hostname, address) or now - a.last_seen > 60
        a.name, a.hostname, a.address, a.last_seen = name, msg.hostname, address, now
        if a.state == PENDING and join is not None:
            self._use(join, a)
            a.tags = ",".join(join.tags)
            self._set(a, ACCEPTED, join.how)
        if a.state == PENDING:
            if key not in self._announced:
                self._announced.add(key)
                self.security("agent_pending", name, f"new agent key {a.fingerprint} from {address} ({msg.hostname})"
                              f" waits for acceptance: `dtf agents accept {name}`", throttle=True)
                changed = True
            if changed:  # a waiting agent asks again every few seconds: a row per ask would be noise
                self._put(a)
            return Verdict("pending", f"this agent (key {a.fingerprint}) waits for the coordinator's admin to accept "
                                      f"it: `dtf agents accept {name}` there, or join with a token")
        if changed:
            self._put(a)
        return Verdict("welcome", tags=tuple(t for t in a.tags.split(",") if t))

    def pending_full(self) -> bool:
        return sum(1 for x in self.agents.values() if x.state == PENDING) >= MAX_PENDING

    def _check_join(self, secret: str) -> _Join:
        """What a join secret is worth (nothing is used up yet)."""
        if self.local_secret and keys.same_secret(secret, self.local_secret):
            return _Join("local")
        if self.config_token and keys.same_secret(secret, self.config_token):
            return _Join("config token")
        t = self.tokens.get(keys.secret_hash(secret))
        if t is None:
            return _Join("", "unknown token (made by another coordinator, revoked, or mistyped)")
        if t.expires <= time.time():
            return _Join("", f"the token {t.id} expired")
        if t.uses_left <= 0:
            return _Join("", f"the token {t.id} has no uses left")
        return _Join(f"token {t.id}", tags=tuple(t.tags), token=t)

    def _use(self, join: _Join, a: AgentKey) -> None:
        t = join.token
        if t is None:
            return
        t.uses_left -= 1  # kept at 0 (until a restart) so that a late comer hears "no uses left"
        self.store.put_row("tokens", t.row())
        self.security("token_used", a.name, f"token {t.id} enrolled {a.fingerprint} ({t.uses_left} use(s) left)")

    def key_of(self, name: str) -> str | None:
        return self.names.get(name)

    def select(self, given: Iterable[str], *, all_pending: bool = False, states: Iterable[str] = AGENT_STATES
               ) -> list[AgentKey]:
        """Agents named by name or fingerprint (prefix); ApiError-worthy ValueError when one names
        none or several."""
        wanted = set(states)
        found: dict[str, AgentKey] = {}
        if all_pending:
            found.update((a.key, a) for a in self.agents.values() if a.state == PENDING)
        for g in given:
            hits = [a for a in self.agents.values() if a.state in wanted and (a.name == g or keys.matches(a.fingerprint, g))]
            by_name = [a for a in hits if a.name == g]
            if len(by_name) > 1:
                # One name, several keys: a stranger copying a name must not ride on the accept.
                raise ValueError(f"{len(by_name)} keys go by the name {g!r} "
                                 f"({', '.join(keys.short(a.fingerprint) for a in by_name)}): name one by fingerprint")
            hits = by_name or hits
            if not hits:
                raise ValueError(f"no agent {g!r} (name or fingerprint) in the states {'/'.join(sorted(wanted))}")
            if len(hits) > 1:
                raise ValueError(f"{g!r} matches {len(hits)} agents: give more of the fingerprint")
            found[hits[0].key] = hits[0]
        return list(found.values())

    def accept(self, agents: list[AgentKey]) -> list[str]:
        """All or none: a name another key holds, or two keys of one name in the batch (a stranger
        copying a waiting agent's name, hoping for --all-pending), refuses the whole batch."""
        by_name: dict[str, list[AgentKey]] = {}
        for a in agents:
            by_name.setdefault(a.name, []).append(a)
            holder = self.names.get(a.name)
            if holder is not None and holder != a.key:
                raise ValueError(f"the name {a.name!r} belongs to another accepted agent "
                                 f"({keys.short(self.agents[holder].fingerprint)}): revoke it first")
        for name, same in by_name.items():
            if len(same) > 1:
                raise ValueError(f"{len(same)} keys go by the name {name!r} "
                                 f"({', '.join(keys.short(a.fingerprint) for a in same)}): accept one by fingerprint "
                                 "(check it against the one its agent logged), reject the others; nothing accepted")
        for a in agents:
            self._set(a, ACCEPTED, "manual")
        return [a.name for a in agents]

    def reject(self, agents: list[AgentKey]) -> list[str]:
        for a in agents:
            self._set(a, REJECTED, a.how)
        return [a.name for a in agents]

    def revoke(self, agents: list[AgentKey]) -> list[str]:
        for a in agents:
            self._set(a, REVOKED, a.how)
        return [a.name for a in agents]

    def _set(self, a: AgentKey, state: str, how: str) -> None:
        old = a.state
        a.state, a.how = state, how
        if state == ACCEPTED:
            self.names[a.name] = a.key
        elif self.names.get(a.name) == a.key:
            del self.names[a.name]
        self._put(a)
        if old != state:
            self.security(f"agent_{state}", a.name, f"{a.fingerprint} ({how or 'by the admin'})")

    def _put(self, a: AgentKey) -> None:
        self.store.put_row("agent_keys", a.row())
        self.hub.add("enrollment", a.summary())

    def list_agents(self, online: set[str]) -> list[dict[str, Any]]:
        order = {s: i for i, s in enumerate(AGENT_STATES)}
        rows = sorted(self.agents.values(), key=lambda a: (order.get(a.state, 9), a.name))
        return [a.summary(a.state == ACCEPTED and a.name in online) for a in rows]

    def is_accepted(self, key: str) -> bool:
        a = self.agents.get(key)
        return a is not None and a.state == ACCEPTED

    # -- tokens and clients ---------------------------------------------------------------------

    def create_token(self, uses: int, ttl: float, tags: list[str], addresses: list[str]) -> dict[str, Any]:
        now = time.time()
        secret = keys.new_secret()
        t = TokenRow(keys.secret_hash(secret)[:12], keys.secret_hash(secret), uses, now + ttl, list(tags), now)
        self.tokens[t.secret_hash] = t
        self.store.put_row("tokens", t.row())
        text = keys.encode_token(keys.Token(key=self.server.public, addresses=addresses, secret=secret,
                                            name=self.server.name))
        self.security("token_created", t.id, f"{uses} use(s), expires in {ttl:.0f} s"
                      + (f", tags {', '.join(tags)}" if tags else ""))
        return {"token": text, "command": f"dtf-agent --join {text}", "expires": t.expires, "uses": uses,
                "id": t.id, "fingerprint": self.fingerprint}

    def config_join_token(self, addresses: list[str]) -> dict[str, Any]:
        """A join token whose secret is security.enrollment_token: for agents that come and go by the
        dozen (a Kubernetes Deployment), it never expires and has no use limit; changing the secret
        in coordinator.yaml (and restarting) ends it. It still names this coordinator's key, so an
        agent joining with it pins that key instead of trusting the first coordinator it meets."""
        if not self.config_token or len(self.config_token) < MIN_CONFIG_TOKEN:
            raise ValueError("security.enrollment_token is " + ("not set" if not self.config_token else
                             f"shorter than {MIN_CONFIG_TOKEN} characters") + " in coordinator.yaml: set it to a "
                             "long random secret (e.g. `openssl rand -hex 24`), restart, and ask again")
        text = keys.encode_token(keys.Token(key=self.server.public, addresses=addresses, secret=self.config_token,
                                            name=self.server.name))
        self.security("token_created", "config", "from security.enrollment_token: no expiry, no use limit")
        return {"token": text, "command": f"dtf-agent --join {text}", "expires": None, "uses": None,
                "id": "config", "fingerprint": self.fingerprint}

    def list_tokens(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"id": t.id, "uses_left": t.uses_left, "expires": t.expires, "tags": t.tags, "created": t.created,
                 "valid": t.uses_left > 0 and t.expires > now}
                for t in sorted(self.tokens.values(), key=lambda t: t.created)]

    def revoke_token(self, token_id: str) -> str:
        hits = [t for t in self.tokens.values() if t.id == token_id]
        if not hits:
            raise ValueError(f"no token {token_id!r} (`dtf token list` shows them)")
        for t in hits:
            t.uses_left = 0
            self.store.put_row("tokens", t.row())
            del self.tokens[t.secret_hash]
            self.security("token_revoked", t.id, "no agent can join with it any more")
        return token_id

    def add_client(self, name: str, role: str, endpoint: str, events_endpoint: str) -> keys.KeyFile:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        if any(c.name == name and not c.removed for c in self.clients.values()):
            raise ValueError(f"a client named {name!r} exists already: remove it first, or choose another name")
        kf = keys.generate("client", name, role=role, coordinator_key=self.server.public, endpoint=endpoint,
                           events_endpoint=events_endpoint)
        c = ClientKey(kf.public, name, role, keys.fingerprint(kf.public), time.time())
        self.clients[c.key] = c
        self.store.put_row("client_keys", c.row())
        self.security("client_added", name, f"role {role}, key {c.fingerprint}")
        return kf

    def remove_client(self, name: str) -> str:
        hits = [c for c in self.clients.values() if c.name == name and not c.removed and c.key != self.admin.public]
        if not hits:
            raise ValueError(f"no client named {name!r}")
        for c in hits:
            c.removed = True
            self.store.put_row("client_keys", c.row())
            self.security("client_removed", name, c.fingerprint)
        return name

    def list_clients(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "role": c.role, "fingerprint": c.fingerprint, "created": c.created}
                for c in sorted(self.clients.values(), key=lambda c: c.name) if not c.removed]

    def client(self, key: str) -> ClientKey | None:
        """The client a request came from (by the key its connection proved); None when unknown."""
        if self.insecure:
            return _INSECURE_CLIENT
        c = self.clients.get(key)
        return None if c is None or c.removed else c

    def whoami(self, c: ClientKey, coordinator_id: str = "") -> dict[str, Any]:
        return {"role": c.role, "name": c.name, "insecure": self.insecure, "coordinator_id": coordinator_id,
                "coordinator_key": "" if self.insecure else self.server.public,
                "fingerprint": "" if self.insecure else self.fingerprint}

    # -- the security log ------------------------------------------------------------------------

    def security(self, what: str, subject: str, detail: str, *, throttle: bool = False) -> None:
        """One security decision: logged, stored as an event (kind security_WHAT), shown live. A
        stream of the same kind (a stranger knocking in a loop) is throttled in all three."""
        if self.on_refusal is not None and what in REFUSALS:
            self.on_refusal(what)
        if throttle:
            mono = time.monotonic()
            until, held = self._quiet_until.get(what, (0.0, 0))
            if mono < until:
                self._quiet_until[what] = (until, held + 1)
                return
            self._quiet_until[what] = (mono + _THROTTLE, 0)
            if held:
                detail += f" (and {held} more like it in the last {_THROTTLE:.0f} s)"
        log.warning("security: %s %s: %s", what, subject, detail)
        now = time.time()
        self.store.put_event(f"security_{what}", subject[:200], {"detail": detail[:2000]}, when=now)
        self.hub.add("security", {"what": what, "subject": subject[:200], "detail": detail[:2000], "time": now})


_INSECURE_CLIENT = ClientKey("", "anyone (insecure)", "admin", "", 0.0)


def _fp(key: str) -> str:
    try:
        return keys.short(keys.fingerprint(key))
    except ValueError:
        return repr(key[:40])


# A shared secret that never expires must not be guessable.
MIN_CONFIG_TOKEN = 16


def token_args_problem(uses: int, ttl: float) -> str | None:
    if not 1 <= uses <= MAX_TOKEN_USES:
        return f"uses must be 1..{MAX_TOKEN_USES}, not {uses}"
    if not 0 < ttl <= MAX_TOKEN_TTL:
        return f"ttl must be more than 0 and at most {MAX_TOKEN_TTL:.0f} s, not {ttl:g}"
    return None


__all__ = ["ACCEPTED", "PENDING", "REFUSALS", "REJECTED", "REVOKED", "AgentKey", "ClientKey", "Trust", "Verdict",
           "role_allows", "role_needed"]
