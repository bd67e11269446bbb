"""`dtf-agent`: run the agent on a test machine; `dtf-agent install-service`: as a systemd service."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import threading
from types import FrameType

from dtf_agent import enroll, logsetup
from dtf_agent.agent import Agent, AgentSettings
from dtf_agent.config import ConfigError, load_worker_config
from dtf_agent.keys import KeyFileError
from dtf_agent.paths import dtf_home
from dtf_agent.spool import SpoolLocked
from dtf_agent.transport import hostname


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dtf-agent", description="Run tasks for a DTF coordinator.",
        epilog="`dtf-agent install-service --help`: run it as a systemd service (hardened, restarted on failure).")
    ap.add_argument("--coordinator", metavar="tcp://HOST:PORT",
                    help="the coordinator's agent endpoint (default: worker.yaml, then the local coordinator)")
    ap.add_argument("--config", metavar="FILE", help="worker.yaml (default: $DTF_HOME/worker.yaml if present)")
    ap.add_argument("--worker-id", help="stable id of this worker (default: derived from host and DTF home)")
    ap.add_argument("--slots", type=int, help="tasks run at once (execution.concurrent_tasks)")
    ap.add_argument("--tags", help="comma-separated tags tasks can require")
    ap.add_argument("--heartbeat", type=float, help="seconds between heartbeats")
    ap.add_argument("--mdns-interface", action="append", metavar="IP",
                    help="look for the coordinator with mDNS on this address (repeat; default: all interfaces)")
    ap.add_argument("--join", metavar="TOKEN", default=os.environ.get("DTF_JOIN_TOKEN") or None,
                    help="enroll with a token from `dtf token create`: accepted without a click, the coordinator's "
                         "key pinned (or $DTF_JOIN_TOKEN, which `ps` does not show)")
    ap.add_argument("--coordinator-key", metavar="KEY_OR_FINGERPRINT",
                    help="trust only the coordinator with this public key or fingerprint (SHA256:...)")
    ap.add_argument("--coordinator-name", metavar="NAME",
                    help="with several coordinators on the LAN, the one to join (its mDNS name)")
    ap.add_argument("--insecure", action="store_true",
                    help="plain-text connection, for a coordinator started with --insecure")
    logsetup.add_log_args(ap)
    return ap


def _install_service(argv: list[str]) -> int:
    from dtf_agent import service  # systemd, pwd: only for this command

    ap = argparse.ArgumentParser(
        prog="dtf-agent install-service",
        description="Write a hardened systemd unit that runs this agent (dtf-agent.service), then enable and "
                    "start it. Run as root for a system unit (user dtf, DTF_HOME /var/lib/dtf), or with --user.")
    service.add_install_args(ap, "agent")
    args = ap.parse_args(argv)
    if args.join:
        # Checked now: a bad token would stop the service at its first start, never restarted (exit 2).
        from dtf_agent import keys

        try:
            keys.decode_token(args.join)
        except ValueError as exc:
            print(f"dtf-agent install-service: --join: {exc}", file=sys.stderr)
            return 2

    def check_flags(flags: list[str]) -> None:
        _parser().parse_args(flags)  # a bad flag exits 2 here, not at the service's first start

    # Only a user unit names your home (dtf_home() makes the directory; a system unit uses /var/lib/dtf).
    return service.main("agent", args, home_for_user=str(dtf_home()) if args.user else "", check_flags=check_flags)


# Enrollment secrets an agent may be started with (the container images and units pass them in the
# environment) and that its tasks must never see.
SECRET_VARIABLES = ("DTF_JOIN_TOKEN", "DTF_ENROLLMENT_TOKEN")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install-service"]:
        return _install_service(argv[1:])
    args = _parser().parse_args(argv)
    # Read (above) and forgotten: tasks inherit this process's environment, and a test must not
    # be able to enroll agents of its own with this one's token.
    for secret in SECRET_VARIABLES:
        os.environ.pop(secret, None)
    logsetup.configure("dtf-agent", logsetup.options_from_args(args))
    log = logging.getLogger("dtf_agent")
    json_lines = args.log_format == "json"

    def fail(message: str) -> None:
        # A JSON stderr stays JSON: the reason is a record like the others.
        if json_lines:
            log.error("%s", message)
        else:
            print(f"dtf-agent: {message}", file=sys.stderr)

    home = dtf_home()
    try:
        cfg = load_worker_config(args.config, default_path=home / "worker.yaml")
    except ConfigError as exc:
        fail(str(exc))
        return 2
    stopping = threading.Event()
    agent: Agent | None = None

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping (running tasks are killed)", signum)
        stopping.set()
        if agent is not None:
            agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker_id = args.worker_id or cfg.worker.worker_id or (
        f"{hostname()}-{hashlib.sha1(str(home).encode()).hexdigest()[:6]}")
    # From here every record names this worker, and the file is this worker's own (agents may share a home).
    logsetup.set_context(worker_id=worker_id)
    logsetup.open_log_file(home, worker_id)
    # Where the coordinator is and which key to trust (see enroll.py for the order).
    try:
        how = enroll.plan(home=home, worker_id=worker_id, cfg=cfg, address=args.coordinator,
                          join_token=args.join, coordinator_key=args.coordinator_key,
                          coordinator_name=args.coordinator_name or cfg.coordinator.service_name,
                          interfaces=args.mdns_interface or list(cfg.coordinator.interfaces),
                          insecure=args.insecure, stop=stopping)
    except (enroll.EnrollError, KeyFileError) as exc:
        fail(str(exc))
        return 2
    if how is None:
        return 0
    slots = args.slots if args.slots is not None else cfg.execution.slots()
    if slots < 1:
        fail(f"--slots must be at least 1, got {slots}")
        return 2
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags else list(cfg.worker.tags)
    settings = AgentSettings(
        address=how.address, worker_id=worker_id, curve=how.curve, join=how.join,
        on_first_welcome=how.on_first_welcome,
        advertise_on=(args.mdns_interface or list(cfg.coordinator.interfaces)) if how.browsed else None, slots=slots, tags=tags, groups=list(cfg.worker.groups),
        heartbeat_interval=args.heartbeat or cfg.health.heartbeat_interval,
        resend_interval=cfg.reporting.result_resend_interval, default_timeout=cfg.execution.default_timeout,
        tail_bytes=cfg.execution.output_tail_bytes, work_dir=cfg.execution.work_dir,
        spool_dir=cfg.execution.spool_dir, shell=cfg.execution.shell, max_log_bytes=cfg.execution.max_log_bytes,
        cache_dir=cfg.execution.cache_dir, cache_max_bytes=cfg.execution.cache_max_bytes,
    )
    try:
        agent = Agent(settings)
    except SpoolLocked as exc:
        fail(str(exc))
        return 2
    except OSError as exc:
        # The spool or work directory cannot be made or written (permissions, a read-only home);
        # the error names the path.
        fail(f"cannot start: {exc}")
        return 2
    if stopping.is_set():
        return 0
    code = agent.run()
    if agent.fatal_error:
        fail(f"the coordinator refused this agent: {agent.fatal_error}")
    return code


if __name__ == "__main__":
    sys.exit(main())
