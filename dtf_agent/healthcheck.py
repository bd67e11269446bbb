"""`python -m dtf_agent.healthcheck`: is this container's agent connected to its coordinator?

The agent image's HEALTHCHECK and the Kubernetes agents' readiness probe run it inside the agent's
network namespace (its container or pod), where the agent is the only process with a connection to
the coordinator's agent port. Healthy means a TCP connection to that port is ESTABLISHED, read from
``/proc/net/tcp`` and ``/proc/net/tcp6``: no import of the agent, no socket of its own, no message
to the coordinator (a probe every few seconds on every agent must cost it nothing).

What it cannot tell: an agent that is connected but waits for the coordinator's admin to accept
its key is "healthy" too (its log says it waits). An agent whose key is refused exits, so its
container stops or restarts instead. A coordinator that is down makes every agent unhealthy,
which is why the Kubernetes manifests use this for readiness, never for liveness: restarting the
agents would not bring the coordinator back, and would kill their running tasks. And a task of the
agent's own that holds a connection to some other service on the same port number counts too:
the check reads ports, not processes.

The port is the one of ``--coordinator`` (default ``$DTF_COORDINATOR``, as the image's entrypoint
reads it), else the coordinator's default agent port, 8081.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

DEFAULT_AGENT_PORT = 8081
PROC_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"  # the kernel's TCP_ESTABLISHED, as /proc/net/tcp spells a socket's state


def agent_port(address: str | None) -> int:
    """The port of a ``tcp://HOST:PORT`` agent endpoint (the default port for none); ValueError
    naming the address when it has no port."""
    if not address:
        return DEFAULT_AGENT_PORT
    _, colon, port = address.strip().rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not an agent endpoint like tcp://HOST:8081 (no port at its end)")
    return int(port)


def established_remote_ports(tables: Iterable[str]) -> set[int]:
    """The remote ports of the ESTABLISHED connections in ``/proc/net/tcp``-style tables (IPv4 and
    IPv6 alike: the port is the 4 hex digits after the address's last colon)."""
    ports: set[int] = set()
    for table in tables:
        for line in table.splitlines()[1:]:  # the first line names the columns
            fields = line.split()
            if len(fields) < 4 or fields[3] != _ESTABLISHED:
                continue
            _, _, port = fields[2].rpartition(":")
            try:
                ports.add(int(port, 16))
            except ValueError:
                continue
    return ports


def _read_tables(paths: Iterable[Path]) -> list[str]:
    tables = []
    for path in paths:
        try:
            tables.append(path.read_text(encoding="ascii", errors="replace"))
        except OSError:
            continue  # no IPv6 in this namespace: /proc/net/tcp6 is absent
    return tables


def main(argv: list[str] | None = None, *, tables: Iterable[Path] = PROC_TCP) -> int:
    ap = argparse.ArgumentParser(prog="python -m dtf_agent.healthcheck",
                                 description="Exit 0 when a TCP connection to the coordinator's agent port "
                                             "is established in this network namespace, else 1.")
    ap.add_argument("--coordinator", metavar="tcp://HOST:PORT", default=os.environ.get("DTF_COORDINATOR") or None,
                    help="the agent endpoint the agent connects to (default: $DTF_COORDINATOR, else port "
                         f"{DEFAULT_AGENT_PORT})")
    args = ap.parse_args(argv)
    try:
        port = agent_port(args.coordinator)
    except ValueError as exc:
        print(f"healthcheck: --coordinator / $DTF_COORDINATOR: {exc}", file=sys.stderr)
        return 1  # Docker reserves 2 ("do not use"): unhealthy, with the reason
    read = _read_tables(tables)
    if not read:
        print("unhealthy: cannot read /proc/net/tcp (not Linux, or /proc is not mounted): the connection "
              "cannot be checked", file=sys.stderr)
        return 1
    if port in established_remote_ports(read):
        print(f"healthy: connected to the coordinator's agent port {port}")
        return 0
    print(f"unhealthy: no established connection to the coordinator's agent port {port} (the coordinator is "
          "down or unreachable, or the agent has not connected yet: see its log)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
