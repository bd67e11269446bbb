"""`dtf-agent install-service` and `dtf install-service`: a hardened systemd unit for the agent or for
`dtf serve`, written, then enabled and started.

The agent's package holds it (the agent must not import ``dtf_gui``); ``dtf_gui/cli.py`` calls
:func:`main` with ``kind="serve"``. Standard library only.

Choices (the units carry the why as comments, for the engineer who reads them):

- A dedicated system user ``dtf`` (home ``/var/lib/dtf``, no login shell), made with ``useradd
  --system`` when missing, rather than ``DynamicUser=``. A test machine's tasks run as the agent's
  user: an engineer gives it groups (``usermod -aG video,render,dialout dtf`` for GPUs and serial
  ports), ssh keys to reach a device under test, files with a stable owner; a dynamic UID changes
  its meaning between installs and has no passwd entry where nss-systemd is not installed (Debian
  does not install libnss-systemd by default), which breaks tools that ask who they run as. The
  agent and a coordinator on the same machine share the user and ``/var/lib/dtf`` (as the window
  and its local agent share a home), so that agent joins with the home's key without a token.
  DynamicUser= with the same StateDirectory= remains a reasonable choice for a coordinator alone:
  a drop-in (``DynamicUser=yes``) makes it one.
- ``ProtectSystem=strict``: everything but ``/var/lib/dtf`` (``StateDirectory=``, writable under
  strict without a ReadWritePaths= line) is read-only, for the agent and for its tasks, which run
  inside the same sandbox. ``ProtectHome=read-only``: tasks may read a checkout under /home but not
  write there; the ``dtf`` user's own home is the writable state directory, and another
  ``--run-as`` user's home is made writable for it. ``PrivateTmp=yes``: tasks get a /tmp of their
  own, emptied when the service stops. Tasks that must share the machine's /tmp (an X server's
  socket in /tmp/.X11-unix, a daemon's socket, files left for another program) need a drop-in
  ``PrivateTmp=no``; one that writes elsewhere, ``ReadWritePaths=`` (or ``--writable PATH``).
  The agent gets no device, clock, namespace, address family or architecture restrictions: tasks
  use GPUs, serial ports, CAN and raw sockets, containers and 32-bit binaries (ProtectClock= and
  PrivateDevices= would close /dev to them). The coordinator runs no tasks and gets all of those.
- Restart on failure with backoff: ``RestartSec=5`` growing to 5 minutes over 8 restarts
  (``RestartSteps=``/``RestartMaxDelaySec=``, systemd >= 254; older systemd logs "Unknown key" for
  them, ignores them and restarts every 5 s), never given up (``StartLimitIntervalSec=0``); exit 2
  (a refusal by the coordinator or a configuration error) is not restarted.
- A join token never goes in the unit (units are world-readable and ``systemctl show`` prints
  Environment=): ``--join`` writes it to ``/etc/dtf/<unit>.env`` (mode 0600, read by systemd as
  root), which the unit names with ``EnvironmentFile=-``.
- ``--user`` units run as you from ``~/.config/systemd/user`` with your DTF home; the mount
  sandboxing (ProtectSystem=, PrivateTmp=, ...) is left out of them, because a user's service
  manager can set it up only with unprivileged user namespaces, and the unit must start everywhere.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["KINDS", "SERVICE_USER", "STATE_DIR", "UnitSpec", "add_install_args", "ensure_user", "main",
           "own_command", "render_unit", "unit_spec", "user_unit_dir", "write_private", "write_unit"]

SERVICE_USER = "dtf"
STATE_DIR = "/var/lib/dtf"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_ENV_DIR = Path("/etc/dtf")
EXIT_NO_SYSTEMD = 1

KINDS = {
    # kind: (unit name, program, module run with -m when no script is found, words after the program)
    "agent": ("dtf-agent", "dtf-agent", "dtf_agent.cli", ()),
    "serve": ("dtf-serve", "dtf", "dtf_gui.cli", ("serve",)),
}


def user_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or os.path.expanduser("~/.config")
    return Path(base) / "systemd" / "user"


def user_env_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or os.path.expanduser("~/.config")
    return Path(base) / "dtf"


def own_command(program: str, module: str) -> list[str]:
    """How to start this same program again from a unit: the PyInstaller bundle itself, the console
    script that runs now (a venv's bin/, /usr/local/bin ...), else ``python -m module``.

    Absolute, but symlinks are kept: /usr/local/bin/dtf-agent pointing into a venv still works after
    the venv is rebuilt elsewhere and the link moved."""
    if getattr(sys, "frozen", False):
        return [os.path.abspath(sys.executable)]
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and not argv0.endswith(".py") and os.path.basename(argv0) == program:
        path = argv0 if os.sep in argv0 else shutil.which(argv0)
        if path and os.access(path, os.X_OK):
            return [os.path.abspath(path)]
    found = shutil.which(program)
    if found and os.path.dirname(os.path.abspath(found)) == os.path.dirname(os.path.abspath(sys.executable)):
        return [os.path.abspath(found)]   # this interpreter's own script, as in a venv run with -m
    return [os.path.abspath(sys.executable), "-m", module]


# -- the unit text --------------------------------------------------------------------------------


def _escape(text: str) -> str:
    # Specifiers (%) apply in every value; $ expands environment variables in ExecStart.
    return text.replace("%", "%%")


def _exec_word(word: str) -> str:
    word = _escape(word).replace("$", "$$")
    if word and not any(c in word for c in ' \t\n"\'\\;'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _assignment(value: str) -> str:
    value = _escape(value)
    if not any(c in value for c in ' \t"\'\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class UnitSpec:
    kind: str                     # "agent" or "serve"
    exec_start: tuple[str, ...]
    user_mode: bool = False
    run_as: str = SERVICE_USER    # system units only
    home: str = STATE_DIR         # DTF_HOME
    env_file: str = ""
    writable: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return KINDS[self.kind][0]


_AGENT_HEAD = """\
# {name}.service: the DTF agent on a test machine (written by `dtf-agent install-service`).
# Change it with a drop-in (`{sudo}systemctl {user}edit {name}`), not here: install-service rewrites this file.
# Tasks run inside this sandbox. In the drop-in's [Service] section:
#   tasks need the machine's /tmp (an X server's socket, a daemon's socket, files left for others): PrivateTmp=no
#   tasks write outside {home}: ReadWritePaths=/srv/lab-data
#   tasks use sudo or setuid programs: NoNewPrivileges=no and RestrictSUIDSGID=no
#   tasks use GPUs or serial ports: SupplementaryGroups=video render dialout
# Logs: journalctl -u {name} (JSON lines with `-- --log-format json` at install: journalctl -o cat | jq).
"""

_SERVE_HEAD = """\
# {name}.service: the DTF coordinator, `dtf serve`, headless (written by `dtf install-service`).
# Change it with a drop-in (`{sudo}systemctl {user}edit {name}`), not here: install-service rewrites this file.
# Agents on other machines need it on the LAN: `dtf install-service -- --host 0.0.0.0`, or server.host in
# {home}/coordinator.yaml. Backups kept outside {home} need ReadWritePaths= in a drop-in.
# Logs: journalctl -u {name} (JSON lines with `-- --log-format json` at install: journalctl -o cat | jq).
"""


def render_unit(spec: UnitSpec) -> str:
    name = spec.name
    agent = spec.kind == "agent"
    head = (_AGENT_HEAD if agent else _SERVE_HEAD).format(
        name=name, home=spec.home, sudo="" if spec.user_mode else "sudo ", user="--user " if spec.user_mode else "")
    lines = [head.rstrip("\n"), "[Unit]"]
    if agent:
        lines.append("Description=DTF agent (runs tests and benchmarks for a DTF coordinator)")
    else:
        lines.append("Description=DTF coordinator (dtf serve)")
    if not spec.user_mode:
        lines += ["After=network-online.target", "Wants=network-online.target"]
    lines += [
        "# Restarts are spaced by the backoff below and never given up on.",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
    ]
    if not spec.user_mode:
        lines.append(f"User={spec.run_as}")
    lines.append(f"Environment={_assignment('DTF_HOME=' + spec.home)}")
    if spec.env_file:
        # "-": the file is optional (it holds the join token when there is one).
        lines.append(f"EnvironmentFile=-{_escape(spec.env_file)}")
    lines.append("ExecStart=" + " ".join(_exec_word(w) for w in spec.exec_start))
    if agent:
        lines += [
            "# SIGTERM to the agent alone: it kills its tasks' process trees and says goodbye; whatever is",
            "# left of the group gets SIGKILL after TimeoutStopSec.",
            "KillMode=mixed",
            "TimeoutStopSec=30",
        ]
    else:
        lines += ["# SIGTERM: the coordinator commits what it holds and stops its backups.", "TimeoutStopSec=60"]
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "# systemd >= 254: the delay grows from RestartSec to RestartMaxDelaySec over RestartSteps",
        "# restarts. Older versions log \"Unknown key\" for these two and restart every RestartSec.",
        "RestartSteps=8",
        "RestartMaxDelaySec=300",
        "# 2: refused (revoked, rejected, a bad token) or a configuration error: starting again would",
        "# fail the same way.",
        "RestartPreventExitStatus=2",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
    ]
    if not spec.user_mode:
        lines += [
            "# /var/lib/dtf, made and given to the service user at each start, is $DTF_HOME.",
            "StateDirectory=dtf",
            "StateDirectoryMode=0750",
            "UMask=0027",
            "# All but the state directory read-only (StateDirectory= is writable under strict).",
            "ProtectSystem=strict",
        ]
        lines += [f"ReadWritePaths={'-' if p.startswith('-') else ''}{_assignment(p.removeprefix('-'))}"
                  for p in spec.writable]
        lines += [
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "ProtectControlGroups=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelLogs=yes",
            "ProtectHostname=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
        ]
        if spec.run_as != "root":
            # A user that is not root holds no capabilities; none can be gained either.
            lines.append("CapabilityBoundingSet=")
        if not agent:
            # The coordinator runs no tasks: no devices, no clock, no namespaces, only its sockets.
            lines += [
                "PrivateDevices=yes",
                "ProtectClock=yes",
                "RestrictNamespaces=yes",
                "RestrictRealtime=yes",
                "SystemCallArchitectures=native",
                "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            ]
    lines += ["", "[Install]", f"WantedBy={'default.target' if spec.user_mode else 'multi-user.target'}", ""]
    return "\n".join(lines)


# -- the service user -----------------------------------------------------------------------------


def _nologin() -> str:
    for path in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"):
        if os.path.exists(path):
            return path
    return "/bin/false"


def useradd_command(user: str, home: str) -> list[str]:
    return ["useradd", "--system", "--user-group", "--home-dir", home, "--no-create-home",
            "--shell", _nologin(), "--comment", "DTF agent and coordinator", user]


def _user_exists(user: str, root: Path | None) -> bool:
    if root is None:
        try:
            pwd.getpwnam(user)
            return True
        except KeyError:
            return False
    try:
        text = (root / "etc" / "passwd").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.split(":", 1)[0] == user for line in text.splitlines())


def ensure_user(user: str, home: str, *, root: Path | None = None) -> bool:
    """Create the system user when missing (root only); True when it was created. ``root``: a tree
    whose etc/passwd is changed instead of the machine's (useradd --prefix), for tests."""
    if _user_exists(user, root):
        return False
    useradd = shutil.which("useradd") or next(
        (p for p in ("/usr/sbin/useradd", "/sbin/useradd") if os.path.exists(p)), None)
    cmd = useradd_command(user, home)
    if useradd is None:
        raise ServiceError(f"the service user {user!r} does not exist and there is no useradd here: create it "
                           f"(`{shlex.join(cmd)}`), or pick another with --run-as USER")
    if os.geteuid() != 0:
        raise ServiceError(f"the service user {user!r} does not exist: create it as root (`sudo {shlex.join(cmd)}`) "
                           "or run install-service with sudo, or pick another with --run-as USER")
    argv = [useradd] + cmd[1:]
    if root is not None:
        argv[1:1] = ["--prefix", str(root)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ServiceError(f"useradd could not create the service user {user!r} (exit {out.returncode}): "
                           f"{out.stderr.strip() or out.stdout.strip()}")
    return True


def access_problem(path: str, user: str, *, run: bool = True) -> str | None:
    """Why ``user`` could not run ``path`` (or, with ``run=False``, read it): a directory on the way
    it may not enter, a file it may not read (and execute); or None. Mode bits only: an ACL may
    allow more."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None  # made by ensure_user with no groups: the "other" bits decide, checked below
    if pw.pw_uid == 0:
        return None
    groups = {pw.pw_gid} | {g.gr_gid for g in _all_groups() if user in g.gr_mem}
    p = Path(path)
    for d in list(reversed(p.parents)):
        why = _denied(d, pw.pw_uid, groups, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
        if why:
            return f"{user} cannot enter {d} ({why})"
    x = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) if run else (0, 0, 0)
    why = _denied(p, pw.pw_uid, groups, stat.S_IRUSR | x[0], stat.S_IRGRP | x[1], stat.S_IROTH | x[2])
    return f"{user} cannot {'read and run' if run else 'read'} {p} ({why})" if why else None


def _all_groups() -> list[grp.struct_group]:
    return list(grp.getgrall())


def _denied(path: Path, uid: int, gids: set[int], u: int, g: int, o: int) -> str | None:
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if st.st_uid == uid:
        need = u
    elif st.st_gid in gids:
        need = g
    else:
        need = o
    return None if st.st_mode & need == need else f"mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}"


# -- writing and enabling -------------------------------------------------------------------------


class ServiceError(Exception):
    """Something install-service cannot do; the message says what and what to do instead."""


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_unit(path: Path, text: str) -> None:
    _write_atomic(path, text, 0o644)


def write_private(path: Path, values: dict[str, str]) -> None:
    """An EnvironmentFile= only its owner reads (a join token is a secret)."""
    text = "".join(f"{k}={v}\n" for k, v in values.items())
    _write_atomic(path, text, 0o600)


def _systemctl(user_mode: bool, *words: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemctl")
    if exe is None:
        raise FileNotFoundError("systemctl")
    return subprocess.run([exe, *(["--user"] if user_mode else []), *words], capture_output=True, text=True,
                          check=False, timeout=120)


def _enable_commands(name: str, user_mode: bool) -> str:
    s = "systemctl --user" if user_mode else "sudo systemctl"
    return f"{s} daemon-reload && {s} enable --now {name}"


def _systemd_running() -> bool:
    # sd_booted(3): systemd is PID 1 when this directory exists.
    return os.path.isdir("/run/systemd/system")


def enable(name: str, user_mode: bool, err: TextIO, prog: str = "install-service") -> int:
    """daemon-reload and enable --now; when there is no systemd to ask, say so and how to do it later."""
    why = ""
    try:
        for words in (("daemon-reload",), ("enable", "--now", f"{name}.service")):
            out = _systemctl(user_mode, *words)
            if out.returncode != 0:
                why = (f"`systemctl {'--user ' if user_mode else ''}{' '.join(words)}` failed (exit {out.returncode}): "
                       f"{(out.stderr or out.stdout).strip() or 'no message'}")
                break
    except FileNotFoundError:
        why = "there is no systemctl on this machine"
    except subprocess.TimeoutExpired as exc:
        why = f"`{' '.join(map(str, exc.cmd))}` did not answer within {exc.timeout:.0f} s"
    if not why:
        s = "systemctl --user" if user_mode else "systemctl"
        print(f"{prog}: {name} is enabled and started: `{s} status {name}`, logs: "
              f"`journalctl {'--user-unit' if user_mode else '-u'} {name} -f`", file=err)
        return 0
    if not _systemd_running():
        why += " (systemd is not running here: no /run/systemd/system, as in most containers)"
    print(f"{prog}: the unit is written but not enabled: {why}.\n"
          f"On a machine where systemd runs, enable and start it with:\n  {_enable_commands(name, user_mode)}",
          file=err)
    return EXIT_NO_SYSTEMD


# -- the command ----------------------------------------------------------------------------------


def add_install_args(ap: argparse.ArgumentParser, kind: str) -> None:
    program = KINDS[kind][1]
    what = "agent" if kind == "agent" else "`dtf serve`"
    ap.add_argument("--user", action="store_true",
                    help=f"a user unit (~/.config/systemd/user): the {what} runs as you, with your DTF home "
                         "(`loginctl enable-linger` keeps it running when you are logged out)")
    ap.add_argument("--run-as", metavar="USER", default=SERVICE_USER,
                    help=f"system units: the user it runs as (default {SERVICE_USER}, created with useradd "
                         "--system when missing)")
    yaml = "worker.yaml" if kind == "agent" else "coordinator.yaml"
    ap.add_argument("--config", metavar="FILE", help=f"{yaml} for {'the agent' if kind == 'agent' else what}, "
                                                     "checked now and passed by its absolute path (default: "
                                                     f"$DTF_HOME/{yaml}, which is {STATE_DIR}/{yaml} for a "
                                                     "system unit)")
    if kind == "agent":
        ap.add_argument("--join", metavar="TOKEN", default=os.environ.get("DTF_JOIN_TOKEN") or None,
                        help="a join token from `dtf token create`, kept in the unit's EnvironmentFile (mode "
                             "0600), never in the unit (or $DTF_JOIN_TOKEN)")
    ap.add_argument("--writable", metavar="PATH", action="append", default=[],
                    help="system units: a path outside the state directory that tasks may write (repeat)")
    ap.add_argument("--exec", dest="exec_path", metavar="PATH",
                    help=f"the {program} executable the unit starts (default: the one running now)")
    ap.add_argument("--no-enable", action="store_true", help="write the unit only; say how to enable it")
    ap.add_argument("--dry-run", action="store_true", help="print the unit; write and run nothing")
    ap.add_argument("--unit-dir", metavar="DIR",
                    help="write the unit here (default /etc/systemd/system, or ~/.config/systemd/user with --user)")
    ap.add_argument("--env-file", metavar="PATH",
                    help="the unit's EnvironmentFile (default /etc/dtf/UNIT.env, or ~/.config/dtf/UNIT.env)")
    ap.add_argument("program_args", nargs="*", metavar="-- FLAGS",
                    help=f"after --: flags for `{program}{' serve' if kind == 'serve' else ''}` in the unit "
                         "(e.g. -- --log-format json)")


def unit_spec(kind: str, args: argparse.Namespace, *, home_for_user: str) -> UnitSpec:
    name, program, module, words = KINDS[kind]
    exe = [os.path.abspath(args.exec_path)] if args.exec_path else own_command(program, module)
    flags = list(args.program_args)
    if args.config:
        cfg = Path(args.config).expanduser().absolute()
        if not cfg.is_file():
            raise ServiceError(f"--config {args.config}: no such file (the service would stop at its first start)")
        flags = ["--config", str(cfg), *flags]
    env_file = args.env_file or str((user_env_dir() if args.user else SYSTEM_ENV_DIR) / f"{name}.env")
    writable = tuple(str(Path(p).expanduser().absolute()) for p in args.writable)
    home = home_for_user if args.user else STATE_DIR
    if not args.user and args.run_as != SERVICE_USER:
        # Tasks expect a writable home; ProtectHome=read-only would leave this user's read-only.
        try:
            own = pwd.getpwnam(args.run_as).pw_dir
        except KeyError:
            own = ""
        if own and own not in ("/", STATE_DIR) and own not in writable:
            writable += ("-" + own,)  # "-": a home that does not exist (nobody's) is no start failure
    return UnitSpec(kind=kind, exec_start=tuple([*exe, *words, *flags]), user_mode=args.user, run_as=args.run_as,
                    home=home, env_file=env_file, writable=writable)


def main(kind: str, args: argparse.Namespace, *, home_for_user: str, check_flags: Callable[[list[str]], None],
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run install-service; ``check_flags`` parses the flags meant for the program (exits 2 with
    argparse's message on a bad one, so a typo shows now rather than at the service's start)."""
    out = out or sys.stdout
    err = err or sys.stderr
    prog = "dtf-agent install-service" if kind == "agent" else "dtf install-service"
    if "--join" in args.program_args or any(a.startswith("--join=") for a in args.program_args):
        print(f"{prog}: give the token as `{prog} --join TOKEN`: it is then kept in a file only root reads, not "
              "in the unit, which every user can read", file=err)
        return 2
    try:
        check_flags(list(args.program_args))
    except SystemExit as exc:
        if exc.code in (0, None):
            return 0  # --help among them
        print(f"{prog}: the flags after -- are for `{KINDS[kind][1]}{' serve' if kind == 'serve' else ''}`, "
              "which refused them (above)", file=err)
        return 2
    try:
        spec = unit_spec(kind, args, home_for_user=home_for_user)
    except ServiceError as exc:
        print(f"{prog}: {exc}", file=err)
        return 2
    text = render_unit(spec)
    unit_dir = Path(args.unit_dir) if args.unit_dir else (user_unit_dir() if args.user else SYSTEM_UNIT_DIR)
    path = unit_dir / f"{spec.name}.service"
    secrets = {"DTF_JOIN_TOKEN": args.join} if getattr(args, "join", None) else {}
    if args.dry_run:
        out.write(text)
        print(f"{prog}: dry run: would write {path}"
              + (f" and {spec.env_file} (mode 0600: the join token)" if secrets else "")
              + ("" if args.user or _user_exists(spec.run_as, None) else
                 f", create the user {spec.run_as} (`{shlex.join(useradd_command(spec.run_as, STATE_DIR))}`)")
              + ("" if args.no_enable else f", then run `{_enable_commands(spec.name, args.user)}`"), file=err)
        return 0
    try:
        if not args.user and ensure_user(spec.run_as, STATE_DIR):
            print(f"{prog}: created the system user {spec.run_as} (home {STATE_DIR}); tasks that use GPUs or "
                  f"serial ports need its groups: sudo usermod -aG video,render,dialout {spec.run_as}", file=err)
        if not args.user:
            why = access_problem(spec.exec_start[0], spec.run_as)
            if why:
                print(f"{prog}: warning: {why}; the service would fail to start (status 203/EXEC). Install "
                      f"DTF where every user can read it (a venv under /opt, a bundle in /usr/local/bin), give "
                      f"its path with --exec, or use --user", file=err)
            why = access_problem(str(Path(args.config).expanduser().absolute()), spec.run_as,
                                 run=False) if args.config else None
            if why:
                print(f"{prog}: warning: {why}; the service would stop at its start (a configuration error). "
                      f"Put the file in /etc/dtf (mode 0640, group {spec.run_as})", file=err)
        if secrets:
            write_private(Path(spec.env_file), secrets)
        write_unit(path, text)
    except PermissionError as exc:
        print(f"{prog}: cannot write {exc.filename}: permission denied; a system unit needs root (sudo), or "
              "use --user", file=err)
        return 1
    except (ServiceError, OSError) as exc:
        print(f"{prog}: {exc}", file=err)
        return 1
    print(f"{prog}: wrote {path}" + (f" and {spec.env_file}" if secrets else ""), file=err)
    if args.no_enable:
        print(f"{prog}: enable and start it with: {_enable_commands(spec.name, args.user)}", file=err)
        return 0
    code = enable(spec.name, args.user, err, prog)
    if code == 0 and args.user:
        print(f"{prog}: to keep it running while you are logged out (and start it at boot): "
              f"loginctl enable-linger {os.environ.get('USER') or ''}".rstrip(), file=err)
    return code
