"""The one-file agent bundle (`make dist-agent`, installers/pyinstaller/) on a machine with no Python.

Built by the Makefile's own recipe (rebuilt only when the agent's sources changed), then started
twice against a real `dtf serve` on loopback (one agent joining with a token, one finding it by
mDNS), each with an environment in which no Python can be found: an empty PATH directory, no
PYTHONPATH, a working directory and home of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ProcessTracker, Serve, wait_until

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "dist" / "dtf-agent"
ARCHIVE_VIEWER = ROOT / ".venv-dist" / "bin" / "pyi-archive_viewer"
MAX_BUNDLE_BYTES = 40 * 1024 * 1024
# Never in the agent's bundle: the window's and the coordinator's weight, and the suite's own pytest.
FORBIDDEN = ("numpy", "scipy", "PySide6", "shiboken6", "pyqtgraph", "sqlite_utils", "dtf_gui", "pytest", "_pytest")


def _build() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(["make", "--no-print-directory", "dist-agent"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=540, check=False)
    assert done.returncode == 0, f"make dist-agent failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _archive_names(bundle: Path) -> set[str]:
    """Every name in the bundle: the files it unpacks and the modules in its PYZ archive."""
    listing = subprocess.run([str(ARCHIVE_VIEWER), "--recursive", "--brief", str(bundle)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    return {line.strip() for line in listing.splitlines() if line.strip()}


def _roots(names: set[str]) -> set[str]:
    """The top-level package of each name: 'zmq' for zmq.backend and for zmq/backend/x.so."""
    return {re.split(r"[./]", n, maxsplit=1)[0] for n in names}


def _start_bundle(procs: ProcessTracker, machine: Path, worker_id: str, args: list[str], *,
                  worker_yaml: str = "") -> subprocess.Popen[bytes]:
    """The bundled agent on a "machine" of its own: a home and a working directory under ``machine``,
    PATH an empty directory (no Python to be found), no PYTHONPATH, nothing of the venv's."""
    no_python = machine / "bin"
    no_python.mkdir(parents=True)
    home = machine / "dtf"
    home.mkdir()
    if worker_yaml:
        (home / "worker.yaml").write_text(worker_yaml, encoding="utf-8")
    # Spans as JSON lines on stderr: the bundle carries OpenTelemetry (dtf[otel]) for the agent's part of a trace.
    env = {"PATH": str(no_python), "HOME": str(machine), "DTF_HOME": str(home), "LANG": "C.UTF-8",
           "OTEL_TRACES_EXPORTER": "console"}
    with open(procs.log_dir / f"{worker_id}.log", "wb") as out:  # the child keeps its own copy
        proc = subprocess.Popen([str(BUNDLE), "--worker-id", worker_id, *args], cwd=machine, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    procs.procs.append((worker_id, proc))  # stopped with its whole tree at teardown, pass or fail
    return proc


@pytest.mark.slow  # builds the bundle when the agent changed (about a minute on two cores)
@pytest.mark.timeout(600)
def test_the_agent_bundle_runs_tasks_without_python(tmp_path: Path, serve: Callable[..., Serve],
                                                    procs: ProcessTracker) -> None:
    _build()
    size = BUNDLE.stat().st_size
    assert size <= MAX_BUNDLE_BYTES, f"dist/dtf-agent is {size / 2**20:.1f} MB, over the 40 MB goal"
    names = _archive_names(BUNDLE)
    roots = _roots(names)
    # pynvml: the gpu extra, for the GPU inventory (a bundle cannot be given it later).
    assert {"dtf_agent", "zmq", "zeroconf", "msgspec", "psutil", "yaml", "pynvml", "opentelemetry"} <= roots, sorted(
        roots)
    assert "dtf_agent.runners.command" in names and "dtf_agent/runners/pytest_plugin.py" in names
    assert not roots & set(FORBIDDEN), f"in the agent bundle: {sorted(roots & set(FORBIDDEN))}"

    # mDNS on (loopback only, below) under a name of this test's own: zeroconf is what a bundle
    # most easily loses (compiled modules imported from compiled modules).
    name = f"dtf-bundle-{os.getpid()}-{tmp_path.name[-12:]}"
    s = serve(f"server:\n  service_name: {name}\n")
    token = s.call("create_token", {"uses": 1})["token"]
    bundled = _start_bundle(procs, tmp_path / "machine", "bundled",
                            ["--coordinator", s.agent_endpoint, "--join", token, "--slots", "2"])
    # Another machine that knows no address: it finds the coordinator by mDNS and waits to be accepted.
    found = _start_bundle(procs, tmp_path / "other", "found-me", ["--mdns-interface", "127.0.0.1"],
                          worker_yaml=f"coordinator:\n  service_name: {name}\n")
    pending = wait_until(lambda: [a for a in s.call("list_agents") if a["name"] == "found-me"
                                  and a["state"] == "pending"], 30, message=procs.logs)
    assert s.call("accept_agents", {"agents": [pending[0]["fingerprint"]]}) == {"accepted": ["found-me"]}
    s.wait_workers_online("bundled", "found-me", timeout=30)

    # A command task through the bundle's runner: output and a metric from $DTF_RESULT_FILE. Its
    # programs load the machine's libraries: the linker path the bootloader set for the bundle's
    # own is not passed on (the agent was started without one).
    metric = ("""echo "bundled-output lib=[$LD_LIBRARY_PATH]"; """
              """echo '{"ops": 12, "latency_ms": 2.5}' > "$DTF_RESULT_FILE" """)
    command = s.call("create_task", {"command": metric, "test_id": "bundle"})["task_id"]

    # pytest shards: the bundle is no interpreter. Without one it says so; with one named (here
    # $DTF_PYTHON in the task's environment) the shard runs there, with the plugin the bundle carries.
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_it.py").write_text("def test_one():\n    assert 1 + 1 == 2\n", encoding="utf-8")
    shard = {"tests": ["test_it.py::test_one"], "cwd": str(suite)}
    refused = s.call("create_task", {"type": "pytest", "parameters": shard, "retry_limit": 0})["task_id"]
    ran = s.call("create_task", {"type": "pytest", "retry_limit": 0,
                                 "parameters": {**shard, "env": {"DTF_PYTHON": sys.executable}}})["task_id"]

    done = s.wait_task_status(command, "completed", "failed", timeout=30)
    assert done["status"] == "completed", done
    (result,) = done["result_list"]
    assert result["worker_id"] in ("bundled", "found-me") and result["exit_code"] == 0
    assert "bundled-output lib=[]" in result["raw_data"]["stdout_tail"]
    assert result["metrics"] == {"ops": 12.0, "latency_ms": 2.5}
    # The agent's spans of the task (this coordinator does not trace: the run span is their root).
    spans = [json.loads(line) for line in procs.log(result["worker_id"], tail=10**6).splitlines()
             if line.startswith('{"name": ')]
    [run] = [sp for sp in spans if sp["name"] == "dtf.run" and sp["attributes"].get("dtf.task_id") == command]
    assert any(sp["name"] == "dtf.result" and sp["parent_id"] == run["context"]["span_id"] for sp in spans), spans

    failed = s.wait_task_status(refused, "completed", "failed", timeout=30)
    assert failed["status"] == "failed", failed
    why = failed["error"] + "".join((r["raw_data"] or {}).get("stderr_tail", "") for r in failed["result_list"])
    assert "no Python interpreter" in why and "DTF_PYTHON" in why, why

    passed = s.wait_task_status(ran, "completed", "failed", timeout=60)
    assert passed["status"] == "completed", passed

    for agent, worker_id in ((bundled, "bundled"), (found, "found-me")):
        assert procs.stop(agent) == 0, procs.log(worker_id)
