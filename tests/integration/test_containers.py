"""installers/docker, run: the images' configuration and entrypoint here, the images themselves in Docker.

The first test needs no Docker: it runs what the images run (`dtf serve` with the coordinator
image's coordinator.yaml, configured by environment; the agent through agent-entrypoint.sh with the
agent image's worker.yaml) as two "containers" with homes of their own, on loopback, and walks the
enrollment the READMEs describe: a token from `dtf token create`, the agent joining with
DTF_JOIN_TOKEN, a task run, the agent restarted without the token (its pin in the home is enough),
a stranger without one refused at once, and both health checks.

The second builds both images and runs a coordinator and an agent container with a task, when a
Docker daemon is reachable (`docker info`); it is skipped, with the reason, where none is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ProcessTracker, cli, dtf_command, read_coordinator_json, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "installers" / "docker"
UID = "10001"


def _worker(env: dict[str, str], worker_id: str) -> dict[str, Any] | None:
    out = cli(env, "workers", "--json")
    assert out.returncode == 0, out.stderr
    return next((w for w in json.loads(out.stdout) if w["worker_id"] == worker_id), None)


def _online(env: dict[str, str], worker_id: str) -> dict[str, Any] | None:
    w = _worker(env, worker_id)
    return w if w and w["status"] in ("online", "busy") else None


def _healthcheck(endpoint: str) -> int:
    return subprocess.run([sys.executable, "-m", "dtf_agent.healthcheck"], env={**os.environ, "DTF_COORDINATOR": endpoint},
                          capture_output=True, text=True, timeout=30, check=False).returncode


def test_image_config_and_entrypoint_enroll_an_agent_with_a_token(procs: ProcessTracker, tmp_path: Path) -> None:
    coord_home, agent_home = tmp_path / "coordinator-volume", tmp_path / "agent-volume"
    coord_home.mkdir()
    agent_home.mkdir()
    # The coordinator image's CMD with its coordinator.yaml; loopback and free ports by environment
    # (the image's default, 0.0.0.0, is for the container's own network namespace only).
    coord_env = {**os.environ, "DTF_HOME": str(coord_home), "PYTHONUNBUFFERED": "1", "DTF_HOST": "127.0.0.1",
                 "DTF_PORT": "0", "DTF_AGENT_PORT": "0", "DTF_EVENTS_PORT": "0", "DTF_METRICS_PORT": "0"}
    serve = procs.start("coordinator", dtf_command("dtf") + ["serve", "--config", str(DOCKER / "coordinator.yaml")],
                        coord_env)

    def started() -> dict[str, Any] | None:
        assert serve.poll() is None, procs.log("coordinator")
        info = read_coordinator_json(coord_home)
        return info if info and info.get("pid") == serve.pid else None

    info = wait_until(started, 30, message=lambda: procs.log("coordinator"))
    assert not info["insecure"] and info["agent_endpoint"].startswith("tcp://127.0.0.1:")
    # The image's HEALTHCHECK.
    assert cli(coord_env, "status", "--timeout-s", "10").returncode == 0
    # README: TOKEN=$(docker exec dtf-coordinator dtf token create --uses 10 --ttl 1h | head -1)
    made = cli(coord_env, "token", "create", "--uses", "10", "--ttl", "1h")
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[0]

    # The agent image's entrypoint, its worker.yaml and the variables the manifests set; the
    # coordinator by a host name, as agents in a cluster name its Service.
    by_name = info["agent_endpoint"].replace("tcp://127.0.0.1:", "tcp://localhost:")
    wrapper = tmp_path / "dtf-agent"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(f"'{w}'" for w in dtf_command("dtf-agent")) + ' "$@"\n')
    wrapper.chmod(0o755)
    agent_env = {"PATH": os.environ["PATH"], "DTF_HOME": str(agent_home), "PYTHONUNBUFFERED": "1",
                 "DTF_AGENT": str(wrapper), "DTF_CONFIG": str(DOCKER / "worker.yaml"),
                 "DTF_COORDINATOR": by_name, "DTF_JOIN_TOKEN": token, "DTF_WORKER_ID": "pod-agent",
                 "DTF_SLOTS": "2", "DTF_TAGS": "kubernetes", "DTF_TAG_NODE": "node-a", "DTF_TAG_ZONE": ""}
    entrypoint = ["/bin/sh", str(DOCKER / "agent-entrypoint.sh")]
    agent = procs.start("agent", entrypoint, agent_env)
    worker = wait_until(lambda: _online(coord_env, "pod-agent"), 30, message=procs.logs)
    assert sorted(worker["tags"]) == ["kubernetes", "node=node-a"] and worker["slots"] == 2
    assert (agent_home / "agent" / "pod-agent" / "coordinator.pin").exists(), "the token's key is pinned"
    assert wait_until(lambda: _healthcheck(by_name) == 0, 15), "the agent's health check"

    # A task on that node, as `dtf submit --tag node=...` in the README.
    ran = cli(coord_env, "submit", "--command", "echo ran-in-the-agent", "--tag", "node=node-a", "--wait", "--json",
              "--wait-timeout", "60", timeout=90)
    assert ran.returncode == 0, ran.stdout + ran.stderr + procs.logs()
    (task,) = json.loads(ran.stdout)
    assert task["status"] == "completed" and task["worker_id"] == "pod-agent"
    # DTF_METRICS_PORT turned the metrics endpoint on (the Kubernetes ConfigMap sets 9464).
    metrics = read_coordinator_json(coord_home)["metrics_endpoint"]
    with urllib.request.urlopen(metrics, timeout=10) as reply:
        assert "dtf_tasks" in reply.read().decode()

    # A restarted container keeps its volume: no token needed any more (the pin is in the home).
    assert procs.stop(agent) == 0
    wait_until(lambda: not _online(coord_env, "pod-agent"), 60, message=procs.logs)
    wait_until(lambda: _healthcheck(by_name) == 1, 15)
    again = {k: v for k, v in agent_env.items() if k != "DTF_JOIN_TOKEN"}
    procs.start("agent-again", entrypoint, again)
    wait_until(lambda: _online(coord_env, "pod-agent"), 30, message=procs.logs)

    # A fresh volume and no token: worker.yaml's trust: pinned stops it at once, saying what to pass.
    stranger_home = tmp_path / "stranger-volume"
    stranger_home.mkdir()
    stranger = {**again, "DTF_HOME": str(stranger_home), "DTF_WORKER_ID": "stranger"}
    out = subprocess.run(entrypoint, env=stranger, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "pinned" in out.stderr and "--join" in out.stderr, out.stderr
    assert _worker(coord_env, "stranger") is None


# -- the images, in Docker ------------------------------------------------------------------------------


def _docker_problem() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    try:
        out = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                             timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"no Docker daemon is reachable (`docker info`: {why})"
    return None


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture
def docker_names() -> Iterator[dict[str, str]]:
    """Names of this test's images, containers, network and volumes; all removed afterwards."""
    problem = _docker_problem()
    if problem:
        pytest.skip(f"{problem}: the images are linted and checked by tests/unit/test_installers.py only")
    run = uuid.uuid4().hex[:8]
    names = {"coordinator_image": f"dtf-coordinator:test-{run}", "agent_image": f"dtf-agent:test-{run}",
             "network": f"dtf-test-{run}", "coordinator": f"dtf-coordinator-{run}", "agent": f"dtf-agent-{run}",
             "coordinator_volume": f"dtf-coordinator-{run}", "agent_volume": f"dtf-agent-{run}"}
    try:
        yield names
    finally:
        docker("rm", "-f", names["agent"], names["coordinator"], check=False)
        docker("network", "rm", names["network"], check=False)
        docker("volume", "rm", names["agent_volume"], names["coordinator_volume"], check=False)
        docker("image", "rm", names["agent_image"], names["coordinator_image"], check=False)


def _health(container: str) -> str:
    return docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_images_build_and_run_a_task(docker_names: dict[str, str]) -> None:
    n = docker_names
    for which in ("coordinator", "agent"):
        docker("build", "-f", str(DOCKER / f"{which}.Dockerfile"), "-t", n[f"{which}_image"], str(ROOT), timeout=1200)
        config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", n[f"{which}_image"]).stdout)
        assert config["User"] == f"{UID}:{UID}" and config["Healthcheck"]["Test"][0] == "CMD"
        assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"] and config["StopSignal"] == "SIGTERM"
        assert "/var/lib/dtf" in config["Volumes"]
    docker("network", "create", n["network"])
    # No port is published: the agent reaches the coordinator over the test's own Docker network.
    docker("run", "-d", "--name", n["coordinator"], "--network", n["network"], "--network-alias", "dtf-coordinator",
           "-v", f"{n['coordinator_volume']}:/var/lib/dtf", n["coordinator_image"])

    def coordinator_up() -> bool:
        return docker("exec", n["coordinator"], "dtf", "status", check=False).returncode == 0

    wait_until(coordinator_up, 120, interval=1.0,
               message=lambda: docker("logs", n["coordinator"], check=False).stderr[-3000:])
    made = docker("exec", n["coordinator"], "dtf", "token", "create", "--uses", "2", "--ttl", "10m")
    token = made.stdout.splitlines()[0]
    docker("run", "-d", "--name", n["agent"], "--hostname", "container-agent", "--network", n["network"],
           "-v", f"{n['agent_volume']}:/var/lib/dtf", "-e", "DTF_COORDINATOR=tcp://dtf-coordinator:8081",
           "-e", f"DTF_JOIN_TOKEN={token}", "-e", "DTF_TAG_NODE=docker", n["agent_image"])

    def agent_online() -> bool:
        out = docker("exec", n["coordinator"], "dtf", "workers", "--json", check=False)
        rows = json.loads(out.stdout) if out.returncode == 0 else []
        return any(r["status"] in ("online", "busy") and "node=docker" in r["tags"] for r in rows)

    wait_until(agent_online, 120, interval=1.0, message=lambda: docker("logs", n["agent"], check=False).stderr[-3000:])
    ran = docker("exec", n["coordinator"], "dtf", "submit", "--command", "id -u", "--tag", "node=docker", "--wait",
                 "--json", "--wait-timeout", "120", timeout=180)
    (task,) = json.loads(ran.stdout)
    assert task["status"] == "completed", task
    # Non-root in both, tini as PID 1 in both.
    for which in ("coordinator", "agent"):
        assert docker("exec", n[which], "id", "-u").stdout.strip() == UID
        assert docker("exec", n[which], "cat", "/proc/1/comm").stdout.strip() == "tini"
    # Both health checks pass (the first runs one interval, 30 s, after the start).
    wait_until(lambda: _health(n["coordinator"]) == "healthy" and _health(n["agent"]) == "healthy", 180,
               interval=2.0, message=lambda: f"coordinator {_health(n['coordinator'])}, agent {_health(n['agent'])}")
    # tini passes SIGTERM on: the agent stops by itself, well before docker's 10 s and its SIGKILL (137).
    docker("stop", n["agent"], timeout=60)
    assert docker("inspect", "--format", "{{.State.ExitCode}}", n["agent"]).stdout.strip() == "0"
