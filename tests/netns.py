"""A small LAN in network namespaces, for tests that need several hosts (issue 9: LAN-ready).

``Lab(hosts=N)`` builds, with the ``ip`` tool (root needed)::

    <tag>-br   holds a Linux bridge br0, no addresses
    <tag>-h0   eth0 = 10.213.X.1/24  ─┐
    <tag>-h1   eth0 = 10.213.X.2/24  ─┼─ veth pairs joined on br0
    ...                               ─┘

Each host namespace has lo up and a multicast route on eth0, so mDNS works between hosts and
never leaves the lab. Every name starts with ``dtfns-<pid>-<random>``, so parallel runs never
clash and a crashed run's leftovers can be told apart (:func:`remove_stale`).

Processes are started inside a host with :meth:`Lab.popen` and owned by the lab: at close every
tracked tree is killed, then whatever still runs inside a namespace (``ip netns pids``), then the
namespaces go. Close runs from ``finally``, from ``atexit``, and when setup fails halfway.

:class:`Capture` records every frame that crosses the bridge (an AF_PACKET socket opened inside
the bridge namespace by ``python -m tests.netns capture``), to check what is or is not visible on
the wire.
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import ProcessTracker, wait_until  # noqa: E402 - needs the path set above

PREFIX = "dtfns-"
BRIDGE = "br0"
HOST_IFACE = "eth0"


def _find_ip() -> str | None:
    found = shutil.which("ip")
    if found:
        return found
    for path in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(path, os.X_OK):
            return path
    return None


IP = _find_ip() or "ip"


class NetnsError(RuntimeError):
    """An ``ip`` command failed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def available() -> str | None:
    """None when labs can be built here, else why not (for pytest.skip)."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if _find_ip() is None:
        return "the `ip` tool (Debian package iproute2) is not installed"
    probe = f"{PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_inside(ns: str) -> None:
    """SIGKILL everything that still runs inside ``ns`` and wait until it is gone."""
    out = ip("netns", "pids", ns, check=False).stdout
    procs = []
    for word in out.split():
        try:
            procs.append(psutil.Process(int(word)))
        except (ValueError, psutil.Error):
            continue
    for pr in procs:
        try:
            pr.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def delete_namespace(ns: str) -> None:
    _kill_inside(ns)
    ip("netns", "del", ns, check=False)


def _owner_pid(ns: str) -> int | None:
    # dtfns-<pid>-<hex>-<role>
    parts = ns[len(PREFIX):].split("-")
    try:
        return int(parts[0])
    except (ValueError, IndexError):
        return None


def remove_stale(everything: bool = False) -> list[str]:
    """Delete the DTF test namespaces a crashed run left behind (their owning process is gone),
    with whatever still runs in them. ``everything=True`` deletes every ``dtfns-`` namespace."""
    removed = []
    for ns in namespaces():
        if not ns.startswith(PREFIX):
            continue
        pid = _owner_pid(ns)
        if everything or pid is None or not psutil.pid_exists(pid):
            delete_namespace(ns)
            removed.append(ns)
    return removed


class Lab:
    """N hosts on one bridge, each in its own network namespace. Use as a context manager."""

    def __init__(self, hosts: int, workdir: Path | None = None) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError(f"hosts must be 1..250, got {hosts}")
        self.hosts = hosts
        self.tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.bridge_ns = f"{self.tag}-br"
        self.host_ns = [f"{self.tag}-h{i}" for i in range(hosts)]
        self.subnet = random.randrange(1, 255)
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="dtf-lab-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self.tracker = ProcessTracker(logs)
        self._made: list[str] = []
        self._closed = False
        self._captures: list[Capture] = []

    # -- addresses and homes --------------------------------------------------------------

    def address(self, host: int) -> str:
        return f"10.213.{self.subnet}.{host + 1}"

    def namespace(self, host: int) -> str:
        return self.host_ns[host]

    def home(self, host: int) -> Path:
        """This host's own $DTF_HOME (different machines do not share one)."""
        path = self.workdir / f"home-h{host}"
        path.mkdir(exist_ok=True)
        return path

    def env(self, host: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["DTF_HOME"] = str(self.home(host))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    # -- building and tearing down ----------------------------------------------------------

    def __enter__(self) -> Lab:
        atexit.register(self.close)
        try:
            remove_stale()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _build(self) -> None:
        br = self.bridge_ns
        self._add_ns(br)
        ip("-n", br, "link", "add", BRIDGE, "type", "bridge")
        # No IGMP snooping: every multicast frame (mDNS) is flooded to every port.
        ip("-n", br, "link", "set", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        ip("-n", br, "link", "set", BRIDGE, "up")
        for i, ns in enumerate(self.host_ns):
            self._add_ns(ns)
            port = f"p{i}"
            ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE, "netns", ns)
            ip("-n", br, "link", "set", port, "master", BRIDGE)
            ip("-n", br, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", HOST_IFACE)
            ip("-n", ns, "link", "set", HOST_IFACE, "up")
            ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", HOST_IFACE)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            atexit.unregister(self.close)
        except Exception:  # noqa: BLE001 - interpreter shutting down
            pass
        try:
            self.tracker.close()
        finally:
            for ns in reversed(self._made):
                delete_namespace(ns)
            self._made.clear()
            if self._own_dir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # -- running things inside a host -------------------------------------------------------

    def _wrap(self, ns: str, argv: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", ns, *argv]

    def popen(self, host: int, argv: Sequence[str], env: dict[str, str] | None = None,
              name: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside host ``host``; the lab kills its whole tree at close.
        Output goes to ``<workdir>/logs/<name>.log`` (see :meth:`log`)."""
        name = name or f"h{host}-{len(self.tracker.procs)}"
        return self.tracker.start(name, self._wrap(self.host_ns[host], argv),
                                  self.env(host) if env is None else env)

    def run(self, host: int, argv: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside host ``host`` to completion (killed with its group on timeout)."""
        proc = subprocess.Popen(self._wrap(self.host_ns[host], argv), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                env=self.env(host) if env is None else env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def log(self, name: str, tail: int = 4000) -> str:
        return self.tracker.log(name, tail)

    def logs(self) -> str:
        return self.tracker.logs()

    # -- the wire -----------------------------------------------------------------------------

    def capture(self, name: str = "capture") -> Capture:
        """Start recording every frame on the bridge; ready (proven with a probe) on return."""
        cap = Capture(self, name)
        self._captures.append(cap)
        return cap

    def send_probe(self, payload: bytes, src: int = 0, dst: int | None = None) -> None:
        """Send one UDP datagram carrying ``payload`` from host ``src`` across the bridge."""
        if self.hosts < 2 and dst is None:
            raise ValueError("a probe needs two hosts")
        dst = (src + 1) % self.hosts if dst is None else dst
        code = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 9))")
        out = self.run(src, [sys.executable, "-c", code, payload.hex(), self.address(dst)], timeout=30)
        if out.returncode != 0:
            raise NetnsError(f"probe from h{src} failed: {out.stderr.strip()}")


class Capture:
    """Every frame crossing the bridge, appended raw to a file by a helper process inside the
    bridge namespace (an AF_PACKET socket on br0 in promiscuous mode)."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.path = lab.workdir / f"{name}.bin"
        argv = [IP, "netns", "exec", lab.bridge_ns, sys.executable, "-m", "tests.netns", "capture",
                "--iface", BRIDGE, "--out", str(self.path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        with open(lab.tracker.log_dir / f"{name}.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=ROOT, start_new_session=True)
        lab.tracker.procs.append((name, self.proc))
        if lab.hosts >= 2:
            self.sync(timeout=20)
        else:
            wait_until(self.path.exists, 20, message=lambda: lab.log(name))

    def bytes(self) -> bytes:
        """Everything captured so far (frames back to back)."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def contains(self, needle: str | bytes) -> bool:
        return (needle.encode() if isinstance(needle, str) else needle) in self.bytes()

    def sync(self, timeout: float = 10) -> None:
        """Return once every frame sent before this call is in the file: a probe datagram sent
        now must show up in the capture, and the capture writes frames in the order seen."""
        token = f"dtf-capture-sync-{secrets.token_hex(8)}".encode()

        def probe_seen() -> bool:
            if self.proc.poll() is not None:
                raise NetnsError(f"capture exited with {self.proc.returncode}\n{self.lab.log(self.name)}")
            if token in self.bytes():
                return True
            self.lab.send_probe(token)
            return token in self.bytes()

        wait_until(probe_seen, timeout, interval=0.1, message=lambda: self.lab.log(self.name))


# -------------------------------------------------------------------------------------------
# the capture helper process: `python -m tests.netns capture --iface br0 --out FILE`

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def _capture_main(iface: str | None, out_path: str) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    if iface:
        sock.bind((iface, 0))
        # A bridge hands frames it forwards between two ports up to its own device only while it
        # is promiscuous; the membership turns that on for as long as this socket lives.
        ifindex = socket.if_nametoindex(iface)
        mreq = ifindex.to_bytes(4, sys.byteorder) + PACKET_MR_PROMISC.to_bytes(2, sys.byteorder) + bytes(10)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    stop = False

    def _term(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    sock.settimeout(0.2)
    with open(out_path, "ab", buffering=0) as out:
        print(f"capturing on {iface or 'every interface'} into {out_path}", flush=True)
        while not stop:
            try:
                frame = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            out.write(frame)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.netns")
    sub = ap.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="write every frame seen to a file until terminated")
    cap.add_argument("--iface", help="interface (default: every interface of this namespace)")
    cap.add_argument("--out", required=True)
    sub.add_parser("clean", help="delete namespaces left by crashed runs")
    clean_all = sub.add_parser("clean-all", help="delete every dtfns- namespace")
    clean_all.set_defaults(everything=True)
    args = ap.parse_args(argv)
    if args.cmd == "capture":
        return _capture_main(args.iface, args.out)
    removed = remove_stale(everything=args.cmd == "clean-all")
    print("\n".join(removed) or "nothing to remove")
    return 0


if __name__ == "__main__":
    sys.exit(main())
