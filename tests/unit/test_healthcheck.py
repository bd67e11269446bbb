"""dtf_agent.healthcheck: the agent container's health check reads the kernel's TCP tables."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dtf_agent import healthcheck

# Real lines of /proc/net/tcp and /proc/net/tcp6 (trimmed after the inode): one ESTABLISHED (01) to
# port 8081 (1F91), one LISTEN (0A) on 8081, one TIME_WAIT (06) to 8082 (1F92).
TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1683
   1: 0100007F:E962 0A000005:1F91 01 00000000:00000000 00:00000000 00000000  1000        0 1684
   2: 0100007F:E963 0100007F:1F92 06 00000000:00000000 03:0000113D 00000000     0        0 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:1F90 01 00000000:00000000
"""


def test_established_remote_ports_reads_both_tables_and_only_established() -> None:
    assert healthcheck.established_remote_ports([TCP4, TCP6]) == {0x1F91, 0x1F90}


@pytest.mark.parametrize(("address", "port"), [
    (None, 8081), ("", 8081), ("tcp://dtf-coordinator:9001", 9001), ("tcp://[fd00::1]:8081", 8081)])
def test_agent_port(address: str | None, port: int) -> None:
    assert healthcheck.agent_port(address) == port


@pytest.mark.parametrize("address", ["tcp://dtf-coordinator", "tcp://host:port", "tcp://host:70000"])
def test_agent_port_refuses_an_endpoint_without_a_port(address: str) -> None:
    with pytest.raises(ValueError, match="tcp://HOST:8081"):
        healthcheck.agent_port(address)


def test_unhealthy_until_connected_then_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    """Against this machine's own /proc/net/tcp: a real listener on loopback, then a real connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        endpoint = f"tcp://127.0.0.1:{port}"
        assert healthcheck.main(["--coordinator", endpoint]) == 1  # listening is not connected
        assert f"agent port {port}" in capsys.readouterr().err
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            with accepted:
                assert healthcheck.main(["--coordinator", endpoint]) == 0
                assert f"connected to the coordinator's agent port {port}" in capsys.readouterr().out


def test_port_from_dtf_coordinator_and_a_bad_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(TCP4)
    monkeypatch.setenv("DTF_COORDINATOR", "tcp://dtf-coordinator:8081")
    assert healthcheck.main([], tables=[table]) == 0
    monkeypatch.setenv("DTF_COORDINATOR", "tcp://dtf-coordinator:8082")  # only a TIME_WAIT there
    assert healthcheck.main([], tables=[table]) == 1
    monkeypatch.setenv("DTF_COORDINATOR", "dtf-coordinator")
    assert healthcheck.main([], tables=[table]) == 1


def test_unreadable_tables_are_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["--coordinator", "tcp://h:8081"], tables=[tmp_path / "missing"]) == 1
    assert "cannot read /proc/net/tcp" in capsys.readouterr().err


def test_runs_as_a_module_without_the_coordinator_installed() -> None:
    """The image runs `python -m dtf_agent.healthcheck`: it must not import dtf_gui (absent there)."""
    code = ("import sys, runpy; sys.argv = ['x', '--coordinator', 'tcp://h:1'];\n"
            "try:\n runpy.run_module('dtf_agent.healthcheck', run_name='__main__')\n"
            "except SystemExit as e:\n print('exit', e.code, sorted(m for m in sys.modules if m.startswith('dtf_gui')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "exit 1 []"
