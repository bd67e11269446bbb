"""`dtf-agent install-service` and `dtf install-service`: the units they write (hardened, restarted
with backoff, the running executable in ExecStart), checked by systemd-analyze where it is installed;
the join token kept out of the unit; what they say and do where systemd does not run.

This machine has no running systemd (a container), so enabling is tested as failing clearly; a test
that would reload a real systemd is skipped where one runs."""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dtf_agent import service
from tests.helpers import dtf_command

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "installers" / "systemd"
ME = pwd.getpwuid(os.geteuid()).pw_name
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package `systemd`): the units cannot be verified here")


def run(program: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dtf_command(program) + list(args), capture_output=True, text=True, timeout=120,
                          check=False, env=env)


def install(program: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(program, "install-service", *args, env=env)


def keys(unit: str) -> dict[str, list[str]]:
    """section.key -> values, in order (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in unit.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def one(unit: dict[str, list[str]], key: str) -> str:
    values = unit.get(key)
    assert values and len(values) == 1, (key, values)
    return values[0]


def dry_run(program: str, *args: str) -> str:
    out = install(program, "--dry-run", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ------------------------------------------------------------------------------ the units


def test_the_agent_system_unit_is_hardened_and_starts_this_agent() -> None:
    text = dry_run("dtf-agent", "--", "--tags", "gpu,big", "--log-format", "json")
    u = keys(text)
    # The executable that runs now (this venv's console script), with the flags given after --.
    assert one(u, "Service.ExecStart").split() == [dtf_command("dtf-agent")[0], "--tags", "gpu,big",
                                                   "--log-format", "json"]
    assert os.path.isabs(one(u, "Service.ExecStart").split()[0])
    expected = {
        "Service.User": "dtf",
        "Service.Environment": "DTF_HOME=/var/lib/dtf",
        "Service.EnvironmentFile": "-/etc/dtf/dtf-agent.env",
        "Service.StateDirectory": "dtf",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "read-only",
        "Service.PrivateTmp": "yes",
        "Service.Restart": "on-failure",
        "Service.RestartSec": "5",
        "Service.RestartSteps": "8",
        "Service.RestartMaxDelaySec": "300",
        "Service.RestartPreventExitStatus": "2",
        "Service.KillMode": "mixed",
        "Service.LimitNOFILE": "65536",
        "Unit.StartLimitIntervalSec": "0",
        "Install.WantedBy": "multi-user.target",
    }
    assert {k: one(u, k) for k in expected} == expected
    # Tasks run in this sandbox: nothing that would close /dev (GPUs, serial ports) to them.
    for key in ("PrivateDevices", "ProtectClock", "DevicePolicy", "DeviceAllow", "RestrictAddressFamilies",
                "SystemCallArchitectures", "DynamicUser"):
        assert f"Service.{key}" not in u, key
    # How to give tasks the machine's /tmp is said in the unit itself.
    assert "PrivateTmp=no" in text and "systemctl edit dtf-agent" in text


def test_the_coordinator_unit_runs_dtf_serve_with_more_locked_away() -> None:
    u = keys(dry_run("dtf", "--", "--host", "0.0.0.0", "--log-format", "json"))
    assert one(u, "Service.ExecStart").split() == [dtf_command("dtf")[0], "serve", "--host", "0.0.0.0",
                                                   "--log-format", "json"]
    for key, value in {"User": "dtf", "StateDirectory": "dtf", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "PrivateDevices": "yes", "ProtectClock": "yes",
                       "RestrictNamespaces": "yes", "CapabilityBoundingSet": "",
                       "RestartPreventExitStatus": "2", "Restart": "on-failure"}.items():
        assert one(u, f"Service.{key}") == value, key
    assert "Service.KillMode" not in u  # one process: the default control-group stop


def test_user_units_run_as_you_with_your_home(dtf_home: Path) -> None:
    for program in ("dtf-agent", "dtf"):
        u = keys(dry_run(program, "--user"))
        assert "Service.User" not in u and "Service.StateDirectory" not in u
        # A user's manager cannot set up the mount sandbox without user namespaces: left out.
        assert "Service.ProtectSystem" not in u and "Service.PrivateTmp" not in u
        assert one(u, "Service.Environment") == f"DTF_HOME={dtf_home}"
        assert one(u, "Service.NoNewPrivileges") == "yes"
        assert one(u, "Install.WantedBy") == "default.target"
        assert "Unit.After" not in u  # network-online.target is the system manager's


def test_an_executable_path_and_flags_that_need_quoting(tmp_path: Path) -> None:
    spec = service.UnitSpec(kind="agent", exec_start=("/opt/lab tools/dtf-agent", "--tags", "a$b%c", 'say "hi"'),
                            writable=("/srv/lab data", "-/home/x"))
    u = keys(service.render_unit(spec))
    assert one(u, "Service.ExecStart") == '"/opt/lab tools/dtf-agent" --tags a$$b%%c "say \\"hi\\""'
    assert u["Service.ReadWritePaths"] == ['"/srv/lab data"', "-/home/x"]


def test_the_shipped_units_are_what_install_service_writes() -> None:
    """installers/systemd/ holds the units for an install in /usr/local/bin; regenerate them with
    `dtf-agent install-service --dry-run --exec /usr/local/bin/dtf-agent > installers/systemd/dtf-agent.service`
    (and `dtf install-service --dry-run --exec /usr/local/bin/dtf > installers/systemd/dtf-serve.service`)."""
    for program, name in (("dtf-agent", "dtf-agent"), ("dtf", "dtf-serve")):
        written = dry_run(program, "--exec", f"/usr/local/bin/{program}")
        assert (SHIPPED / f"{name}.service").read_text(encoding="utf-8") == written, name


@needs_analyze
@pytest.mark.parametrize("program", ["dtf-agent", "dtf"])
@pytest.mark.parametrize("user", [False, True])
def test_systemd_analyze_verifies_the_units(program: str, user: bool, tmp_path: Path) -> None:
    name = "dtf-agent" if program == "dtf-agent" else "dtf-serve"
    unit = tmp_path / f"{name}.service"
    unit.write_text(dry_run(program, *(["--user"] if user else [])), encoding="utf-8")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))  # a user manager's directory, for --user
    out = subprocess.run([SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    complaints = [line for line in out.stderr.splitlines() if str(unit) in line or "rror" in line]
    if _systemd_version() < 254:
        # The backoff keys came with 254; older versions say they ignore them, as the unit's comment says.
        complaints = [c for c in complaints if not re.search(r"Unknown key '(RestartSteps|RestartMaxDelaySec)'", c)]
    assert complaints == [], out.stderr


@needs_analyze
@pytest.mark.parametrize(("program", "most"), [("dtf-agent", 6.0), ("dtf", 4.0)])
def test_systemd_analyze_rates_the_exposure(program: str, most: float, tmp_path: Path) -> None:
    """The unshipped unit of before rated 9.6 (UNSAFE); the agent keeps what tasks need (devices,
    namespaces, address families), the coordinator gives up nearly everything."""
    name = "dtf-agent" if program == "dtf-agent" else "dtf-serve"
    unit = tmp_path / f"{name}.service"
    unit.write_text(dry_run(program), encoding="utf-8")
    out = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", str(unit)], capture_output=True,
                         text=True, timeout=120, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= most, out.stdout


def _systemd_version() -> int:
    assert SYSTEMD_ANALYZE is not None
    first = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True, timeout=60,
                           check=False).stdout.split()
    return int(first[1]) if len(first) > 1 and first[1].isdigit() else 0


# ------------------------------------------------------------------------------ installing


def test_written_but_not_enabled_without_systemctl(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path / "empty-bin"))  # no systemctl, no useradd
    out = install("dtf-agent", "--unit-dir", str(tmp_path / "units"), "--run-as", ME,
                  "--env-file", str(tmp_path / "agent.env"), env=env)
    assert out.returncode == 1, out.stderr
    unit = tmp_path / "units" / "dtf-agent.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert keys(unit.read_text())["Service.ExecStart"][0].split()[0] == dtf_command("dtf-agent")[0]
    assert "no systemctl" in out.stderr
    assert "systemctl daemon-reload && sudo systemctl enable --now dtf-agent" in out.stderr


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"),
                    reason="systemd runs on this machine: the test would reload its manager (it is for machines "
                           "without one, such as this project's containers)")
@pytest.mark.skipif(shutil.which("systemctl") is None, reason="no systemctl here (Debian package `systemd`)")
def test_where_systemd_does_not_run_the_unit_is_written_and_the_command_printed(tmp_path: Path) -> None:
    out = install("dtf", "--unit-dir", str(tmp_path), "--run-as", ME, "--env-file", str(tmp_path / "x.env"))
    assert out.returncode == 1
    assert (tmp_path / "dtf-serve.service").exists()
    assert "not enabled" in out.stderr and "systemd is not running here" in out.stderr, out.stderr
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now dtf-serve" in out.stderr


def test_no_enable_writes_and_says_how(tmp_path: Path) -> None:
    out = install("dtf", "--no-enable", "--user", "--unit-dir", str(tmp_path), "--env-file", str(tmp_path / "e"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dtf-serve.service").exists()
    assert "systemctl --user daemon-reload && systemctl --user enable --now dtf-serve" in out.stderr


def test_the_join_token_goes_to_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    from dtf_agent import keys as dtf_keys

    token = dtf_keys.encode_token(dtf_keys.Token(key=dtf_keys.generate("coordinator", "c").public,
                                                 addresses=["tcp://lab:8081"], secret=dtf_keys.new_secret(), name="c"))
    env_file = tmp_path / "etc" / "dtf-agent.env"
    out = install("dtf-agent", "--no-enable", "--unit-dir", str(tmp_path), "--run-as", ME, "--join", token,
                  "--env-file", str(env_file))
    assert out.returncode == 0, out.stderr
    assert env_file.read_text() == f"DTF_JOIN_TOKEN={token}\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    unit = (tmp_path / "dtf-agent.service").read_text()
    assert token not in unit and one(keys(unit), "Service.EnvironmentFile") == f"-{env_file}"
    # After --, where it would land in the unit, it is refused.
    out = install("dtf-agent", "--dry-run", "--", "--join", token)
    assert out.returncode == 2 and "--join TOKEN" in out.stderr and token not in out.stdout
    # A token cut short in the copy is refused now, not at the service's first start (exit 2, no restart).
    out = install("dtf-agent", "--no-enable", "--unit-dir", str(tmp_path / "bad"), "--join", token[:-8])
    assert out.returncode == 2 and "--join" in out.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("program", ["dtf-agent", "dtf"])
def test_a_bad_flag_for_the_program_is_refused_at_install(program: str, tmp_path: Path) -> None:
    out = install(program, "--unit-dir", str(tmp_path / "units"), "--run-as", ME, "--", "--hots", "0.0.0.0")
    assert out.returncode == 2
    assert "--hots" in out.stderr and "flags after --" in out.stderr
    assert not (tmp_path / "units").exists()


def test_config_is_made_absolute_and_must_exist(tmp_path: Path) -> None:
    cfg = tmp_path / "worker.yaml"
    cfg.write_text("worker:\n  tags: [a]\n")
    out = subprocess.run(dtf_command("dtf-agent") + ["install-service", "--dry-run", "--config", "worker.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert one(keys(out.stdout), "Service.ExecStart").split()[1:] == ["--config", str(cfg)]
    out = install("dtf-agent", "--dry-run", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "missing.yaml: no such file" in out.stderr


def test_another_run_as_user_gets_a_writable_home() -> None:
    u = keys(dry_run("dtf-agent", "--run-as", "nobody"))
    assert one(u, "Service.User") == "nobody"
    assert u["Service.ReadWritePaths"] == [f"-{pwd.getpwnam('nobody').pw_dir}"]


# ------------------------------------------------------------------------------ the executable, the user


def test_the_command_is_the_running_bundle_script_or_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "dist" / "dtf-agent"))
    assert service.own_command("dtf-agent", "dtf_agent.cli") == [str(tmp_path / "dist" / "dtf-agent")]
    monkeypatch.delattr(sys, "frozen")
    script = tmp_path / "venv" / "bin" / "dtf-agent"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "install-service"])
    assert service.own_command("dtf-agent", "dtf_agent.cli") == [str(script)]
    # `python -m dtf_agent.cli` with no script beside this interpreter: the module.
    monkeypatch.setattr(sys, "argv", ["/src/dtf_agent/cli.py", "install-service"])
    monkeypatch.setattr(sys, "executable", str(tmp_path / "py" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert service.own_command("dtf-agent", "dtf_agent.cli") == [str(tmp_path / "py" / "python3"), "-m",
                                                                  "dtf_agent.cli"]


def test_run_with_python_m_the_unit_still_names_an_executable() -> None:
    out = subprocess.run([sys.executable, "-m", "dtf_agent.cli", "install-service", "--dry-run"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    first = one(keys(out.stdout), "Service.ExecStart").split()[0]
    assert os.path.isabs(first) and os.access(first, os.X_OK)


def test_an_executable_the_service_user_cannot_reach_is_warned_about(tmp_path: Path) -> None:
    # pytest's own temporary directories are private to their owner: this one is not, so the only
    # directory the service user cannot enter is the one the test means.
    base = Path(tempfile.mkdtemp(prefix="dtf-service-test-", dir="/tmp"))
    try:
        base.chmod(0o755)
        check_private_executable(base, tmp_path)
    finally:
        shutil.rmtree(base)


def check_private_executable(base: Path, tmp_path: Path) -> None:
    private = base / "private"
    private.mkdir(mode=0o700)
    exe = private / "dtf-agent"
    shutil.copy(dtf_command("dtf-agent")[0], exe)
    exe.chmod(0o755)
    assert service.access_problem(str(exe), "nobody") == (
        f"nobody cannot enter {private} (mode drwx------, owner uid {os.geteuid()})")
    cfg = private / "worker.yaml"
    cfg.write_text("worker:\n  tags: [a]\n")
    out = install("dtf-agent", "--no-enable", "--unit-dir", str(tmp_path / "u"), "--run-as", "nobody",
                  "--exec", str(exe), "--env-file", str(tmp_path / "e"), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "warning: nobody cannot enter" in out.stderr and "203/EXEC" in out.stderr
    assert f"warning: nobody cannot enter {private}" in out.stderr.split("203/EXEC", 1)[1], out.stderr
    assert "configuration error" in out.stderr
    assert service.access_problem(dtf_command("dtf-agent")[0], "root") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd needs root, even on a copy of /etc")
def test_the_service_user_is_created_when_missing(tmp_path: Path) -> None:
    """On a copy of /etc (useradd --prefix), so the machine's users stay as they are."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if os.path.exists(f"/etc/{name}"):
            shutil.copy(f"/etc/{name}", etc / name)
    user = "dtf-svc-test"
    assert service.ensure_user(user, service.STATE_DIR, root=tmp_path) is True
    line = next(x for x in (etc / "passwd").read_text().splitlines() if x.startswith(f"{user}:"))
    fields = line.split(":")
    assert fields[5] == "/var/lib/dtf" and fields[6].endswith(("nologin", "false"))
    assert int(fields[2]) < 1000  # a system user
    assert any(x.startswith(f"{user}:") for x in (etc / "group").read_text().splitlines())
    assert service.ensure_user(user, service.STATE_DIR, root=tmp_path) is False
    with pytest.raises(KeyError):
        pwd.getpwnam(user)  # the machine's own users are untouched


def test_the_parser_takes_everything_after_the_double_dash() -> None:
    ap = argparse.ArgumentParser()
    service.add_install_args(ap, "serve")
    args = ap.parse_args(["--user", "--", "--host", "0.0.0.0", "--no-mdns"])
    assert args.user and args.program_args == ["--host", "0.0.0.0", "--no-mdns"]
