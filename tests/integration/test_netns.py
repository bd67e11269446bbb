"""Several hosts on one LAN (issue 9), each a network namespace joined to one bridge.

Host 0 runs `dtf serve` bound to its own address; hosts 1..3 run agents that find it by mDNS on
their own address (never on the machine's real interfaces). Every host has its own $DTF_HOME:
different machines do not share one. Every `dtf` command for the coordinator runs inside host 0.
A capture on the bridge records every frame, so the tests can say what is visible on the wire:
in insecure mode a task's command line is (the control that proves the capture works); in
secure mode it must not be.

Needs root and the `ip` tool; skipped otherwise. `python -m tests.netns clean` removes the
namespaces of a crashed run.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.helpers import dtf_command, read_coordinator_json, wait_until
from tests.netns import Capture, Lab

_WHY_NOT = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")]

FREE_PORTS = ["--port", "0", "--agent-port", "0", "--events-port", "0"]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(4, tmp_path / "lab") as lab:
        yield lab


class Net:
    """The lab seen from the test: the coordinator in host 0 and `dtf` commands against it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.serve: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # log name -> process

    def start_serve(self, *flags: str) -> dict[str, Any]:
        lab = self.lab
        argv = dtf_command("dtf") + ["serve", "--host", lab.address(0), *FREE_PORTS, *flags]
        self.serve = self.procs["serve"] = proc = lab.popen(0, argv, name="serve")

        def coordinator_json_written() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"dtf serve exited with {proc.returncode}\n{lab.log('serve')}")
            info = read_coordinator_json(lab.home(0))
            return info if info and info.get("pid") == proc.pid else None

        self.info = wait_until(coordinator_json_written, 30, message=lambda: lab.log("serve"))
        return self.info

    def agent(self, host: int, *flags: str, name: str | None = None) -> subprocess.Popen[bytes]:
        """`dtf-agent FLAGS` in ``host``; tasks there can read which host they ran on."""
        argv = dtf_command("dtf-agent") + ["--slots", "1", *flags]
        env = self.lab.env(host, {"DTF_LAB_HOST": f"h{host}"})
        name = name or f"agent-h{host}"
        self.procs[name] = proc = self.lab.popen(host, argv, env, name=name)
        return proc

    def fingerprint(self, name: str) -> str:
        """The key fingerprint an agent logged at start ("this agent's key: SHA256:...")."""
        def logged() -> str | None:
            found = re.search(r"this agent's key: (SHA256:\S+)", self.lab.log(name, tail=100_000))
            return found.group(1) if found else None

        return wait_until(logged, 30, message=lambda: self.lab.log(name))

    def agents(self) -> list[dict[str, Any]]:
        return list(self.dtf_json("agents"))

    def check_running(self, *names: str) -> None:
        """Fail at once, with its log, when a process that should run has exited."""
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{self.lab.log(name)}")

    def dtf(self, *args: str, host: int = 0, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.lab.run(host, dtf_command("dtf") + list(args), None, timeout=timeout)

    def dtf_ok(self, *args: str, host: int = 0) -> str:
        out = self.dtf(*args, host=host)
        assert out.returncode == 0, f"dtf {' '.join(args)} in h{host}: rc {out.returncode}\n{out.stdout}{out.stderr}"
        return out.stdout

    def dtf_json(self, *args: str) -> Any:
        return json.loads(self.dtf_ok(*args, "--json"))

    def workers(self) -> dict[str, str]:
        return {w["worker_id"]: w["status"] for w in self.dtf_json("workers")}

    def wait_online(self, *names: str, timeout: float = 60) -> None:
        seen: dict[str, str] = {}

        def online() -> bool:
            self.check_running("serve", *names)
            seen.clear()
            seen.update(self.workers())
            return all(seen.get(n) in ("online", "busy") for n in names)

        wait_until(online, timeout, interval=0.2,
                   message=lambda: f"wanted {names} online, workers: {seen}\n{self.lab.logs()}")

    def ran_on(self, task_id: str) -> str:
        """The host a task said it ran on (its command echoes ``host=$DTF_LAB_HOST``)."""
        found = set(re.findall(r"host=(h\d+)", self.dtf_ok("results", "--task", task_id, "--format", "json")))
        return ",".join(sorted(found)) or "?"

    def submit(self, command: str, *flags: str) -> list[str]:
        return self.dtf_ok("submit", "--command", command, *flags, "--json").split()

    def tasks(self) -> dict[str, dict[str, Any]]:
        return {t["task_id"]: t for t in self.dtf_json("tasks", "--limit", "1000")}

    def wait_done(self, task_ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}

        def finished() -> bool:
            seen.update(self.tasks())
            return all(seen.get(t, {}).get("status") in ("completed", "failed", "cancelled") for t in task_ids)

        wait_until(finished, timeout, interval=0.2, message=lambda: (
            "tasks: " + repr({t: (seen.get(t, {}).get("status"), seen.get(t, {}).get("why")) for t in task_ids})
            + "\n" + self.lab.logs()))
        return {t: seen[t] for t in task_ids}


def marker() -> str:
    return f"MARKER-{secrets.token_hex(8)}"




def test_insecure_lan_agents_find_the_coordinator_and_commands_cross_the_wire_in_clear(lab: Lab) -> None:
    net = Net(lab)  # `dtf` in host 0 shares the coordinator's home: it follows its --insecure
    cap: Capture = lab.capture()
    net.start_serve("--insecure")
    assert net.info["agent_endpoint"].startswith(f"tcp://{lab.address(0)}:")
    agents = {f"agent-h{h}": h for h in (1, 2, 3)}
    for name, h in agents.items():
        # No --coordinator and a home of its own: mDNS on this host's address is the only way.
        net.agent(h, "--insecure", "--worker-id", name, "--mdns-interface", lab.address(h))
    net.wait_online(*agents)

    # One task pinned to each agent, each with a marker of its own: every host's link is checked.
    markers = {name: marker() for name in agents}
    ids = {name: net.submit(f"echo {markers[name]} host=$DTF_LAB_HOST", "--worker", name)[0] for name in agents}
    done = net.wait_done(list(ids.values()))
    for name, tid in ids.items():
        assert done[tid]["status"] == "completed", done[tid]
        assert done[tid]["worker_id"] == name
        assert net.ran_on(tid) == f"h{agents[name]}", done[tid]

    cap.sync()
    wire = cap.bytes()
    for name, m in markers.items():
        assert m.encode() in wire, f"{name}'s marker {m} is not in the capture ({len(wire)} bytes)"


def _token(text: str) -> str:
    found = re.search(r"\bdtf1-\S+", text)
    assert found, f"no dtf1- token in {text!r}"
    return found.group(0)


@pytest.mark.slow
def test_secure_lan(lab: Lab) -> None:
    net = Net(lab)
    cap = lab.capture()
    net.start_serve()  # secure by default: CURVE on every socket
    markers: list[str] = []

    def run_marked(*flags: str) -> tuple[str, str]:
        m = marker()
        markers.append(m)
        return net.submit(f"echo {m} host=$DTF_LAB_HOST", *flags)[0], m

    # 1. An agent with a one-use token is accepted without a click.
    token = _token(net.dtf_ok("token", "create", "--uses", "1"))
    net.agent(1, "--join", token, "--worker-id", "agent-h1", "--mdns-interface", lab.address(1))
    net.wait_online("agent-h1")

    # 2. An agent that found the coordinator by mDNS, with no token, waits for approval.
    net.agent(2, "--worker-id", "agent-h2", "--mdns-interface", lab.address(2))

    def pending_h2() -> dict[str, Any] | None:
        net.check_running("serve", "agent-h1", "agent-h2")
        for row in net.agents():
            if row["name"] == "agent-h2" and row["state"] == "pending":
                return row
        return None

    row = wait_until(pending_h2, 60, interval=0.2, message=lab.logs)
    assert {"name", "state", "fingerprint", "hostname", "address"} <= set(row)
    assert row["fingerprint"] == net.fingerprint("agent-h2"), row
    waiting_tid, _ = run_marked("--worker", "agent-h2")
    # While it waits, agent-h1 runs several tasks to the end: agent-h2 had every chance to get one.
    busy = [run_marked()[0] for _ in range(3)]
    done = net.wait_done(busy)
    assert all(t["status"] == "completed" and t["worker_id"] == "agent-h1" for t in done.values()), done
    assert net.tasks()[waiting_tid]["status"] == "pending", "a pending agent got a task"

    # 3. Accepted by name, it gets its task.
    net.dtf_ok("agents", "accept", "agent-h2")
    got = net.wait_done([waiting_tid])[waiting_tid]
    assert got["status"] == "completed" and got["worker_id"] == "agent-h2" and net.ran_on(waiting_tid) == "h2", got

    # 4. A rogue in host 3 with a key of its own claims agent-h1's name: it gets nothing.
    net.agent(3, "--worker-id", "agent-h1", "--mdns-interface", lab.address(3), name="rogue-h3")

    rogue_fp, real_fp = net.fingerprint("rogue-h3"), net.fingerprint("agent-h1")
    assert rogue_fp != real_fp

    def rogue_reached_the_coordinator() -> bool:
        # Listed (pending, rejected ...), or named (short fingerprint) in the coordinator's log, or
        # sent away.
        net.check_running("serve", "agent-h1", "agent-h2")
        return (rogue_fp in json.dumps(net.agents()) or rogue_fp[:19] in lab.log("serve", tail=100_000)
                or net.procs["rogue-h3"].poll() is not None)

    wait_until(rogue_reached_the_coordinator, 60, interval=0.2, message=lab.logs)
    pinned = [run_marked("--worker", "agent-h1")[0] for _ in range(5)]
    done = net.wait_done(pinned)
    for t in done.values():
        assert t["status"] == "completed" and t["worker_id"] == "agent-h1", t
        assert net.ran_on(t["task_id"]) == "h1", f"the rogue in h3 ran a task meant for agent-h1: {t}"
    accepted = [r for r in net.agents() if r["name"] == "agent-h1" and r["state"] == "accepted"]
    assert [r["fingerprint"] for r in accepted] == [real_fp], accepted
    net.check_running("agent-h1")

    # 5. A viewer on another host may read but not submit: the refusal names the role needed.
    key = lab.workdir / "viewer1.key"
    net.dtf_ok("clients", "add", "viewer1", "--role", "viewer", "--output", str(key))
    endpoint = net.info["client_endpoint"]
    read = net.dtf("--key", str(key), "tasks", "--coordinator", endpoint, "--json", host=2)
    assert read.returncode == 0, read.stdout + read.stderr
    m = marker()
    markers.append(m)
    refused = net.dtf("--key", str(key), "submit", "--coordinator", endpoint, "--command", f"echo {m}", host=2)
    assert refused.returncode != 0, refused.stdout
    assert "operator" in refused.stdout + refused.stderr, refused.stdout + refused.stderr

    # 6. Nothing of it was readable on the wire.
    cap.sync()
    wire = cap.bytes()
    assert len(wire) > 10_000, f"the capture saw almost nothing ({len(wire)} bytes)"
    leaked = [m for m in markers if m.encode() in wire]
    assert not leaked, f"visible on the wire: {leaked}"
