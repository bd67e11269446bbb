"""A stand-in coordinator for window tests that need a given role, key or set of agents: the same face
as the in-process and remote coordinators (start, stop, endpoint, request, event sinks), answering
from dicts and feeding events to the bridge's sink as the coordinator's thread does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtf_agent import protocol as p
from dtf_agent.keys import fingerprint, generate
from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.trust import role_allows, role_needed


def agent(name: str, state: str = "pending", *, host: str | None = None, address: str = "192.0.2.10",
          key: str | None = None) -> dict[str, Any]:
    public = key or generate("agent", name).public
    now = time.time()
    return {"name": name, "state": state, "fingerprint": fingerprint(public), "hostname": host or f"{name}.lab",
            "address": address, "first_seen": now - 60, "last_seen": now, "how": "asked", "online": True}


class FakeCoordinator:
    def __init__(self, sinks: list[Callable[[list[p.Event]], None]], *, role: str = "admin",
                 insecure: bool = False, agents: list[dict[str, Any]] | None = None) -> None:
        self.sinks = sinks
        key = generate("coordinator", "fake").public
        self.identity = {"role": role, "name": f"{role}-key", "insecure": insecure, "coordinator_key": key,
                         "fingerprint": "" if insecure else fingerprint(key), "coordinator_id": "c0ffee"}
        self.agents = {a["fingerprint"]: a for a in agents or []}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.running = False

    def start(self) -> FakeCoordinator:
        self.running = True
        return self

    def stop(self) -> None:
        self.running = False

    @property
    def is_running(self) -> bool:
        return self.running

    def endpoint(self, which: str) -> str:
        return {"agents": "tcp://127.0.0.1:8081", "clients": "tcp://127.0.0.1:8080",
                "events": "tcp://127.0.0.1:8082"}[which]

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink([p.Event(kind=kind, data=data, time=time.time())])

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        args = args or {}
        self.calls.append((op, args))
        if not role_allows(self.identity["role"], op):
            raise ApiError(f"{op} needs the {role_needed(op)} role; the client key {self.identity['name']!r} "
                           f"has the {self.identity['role']} role")
        if op == "whoami":
            return dict(self.identity)
        if op in ("list_tasks", "list_workers", "seen_agents", "list_security_events"):
            return []
        if op == "get_status":
            return {"tasks": {}, "workers_online": 0}
        if op == "list_agents":
            return list(self.agents.values())
        if op in ("accept_agents", "reject_agents", "revoke_agents"):
            state = {"accept_agents": "accepted", "reject_agents": "rejected", "revoke_agents": "revoked"}[op]
            chosen = [a for a in self.agents.values()
                      if a["fingerprint"] in args.get("agents", ()) or a["name"] in args.get("agents", ())
                      or (args.get("all_pending") and a["state"] == "pending")]
            for a in chosen:
                a["state"] = state
                self.emit("enrollment", dict(a))
                self.emit("security", {"what": f"agent {state}", "subject": a["name"],
                                       "detail": a["fingerprint"], "time": time.time()})
            return {state: [a["name"] for a in chosen]}
        if op == "create_token":
            token = "dtf1-" + os.urandom(30).hex()
            return {"token": token, "command": f"dtf-agent --join {token}",
                    "expires": time.time() + args["ttl"], "uses": args["uses"]}
        raise ApiError(f"unknown operation {op!r}")


def fake_bridge(cls: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """A started bridge over a fake coordinator (``cls``, default FakeCoordinator) made with ``kwargs``."""
    from dtf_gui.ui.bridge import CoordinatorBridge

    made: list[Any] = []

    def make(sinks: list[Callable[[list[p.Event]], None]]) -> Any:
        made.append((cls or FakeCoordinator)(sinks, **kwargs))
        return made[0]

    bridge = CoordinatorBridge(make)
    bridge.start()
    return bridge, made[0]


def screenshot(widget: Any, name: str) -> Path | None:
    """The widget rendered offscreen (the render is checked); saved as a PNG for a person to look at
    only when $DTF_SHOTS names a folder, so a test run writes nothing outside its temporary paths."""
    image = widget.grab()
    assert not image.isNull(), name
    folder = os.environ.get("DTF_SHOTS")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert image.save(str(path)), path
    return path
