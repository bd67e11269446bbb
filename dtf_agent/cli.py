"""`dtf-agent`: run the agent on a test machine."""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import sys
import threading
from types import FrameType

from dtf_agent import discovery
from dtf_agent.agent import Agent, AgentSettings
from dtf_agent.config import ConfigError, load_worker_config
from dtf_agent.paths import dtf_home, read_coordinator_file
from dtf_agent.spool import SpoolLocked
from dtf_agent.transport import hostname


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dtf-agent", description="Run tasks for a DTF coordinator.")
    ap.add_argument("--coordinator", metavar="tcp://HOST:PORT",
                    help="the coordinator's agent endpoint (default: worker.yaml, then the local coordinator)")
    ap.add_argument("--config", metavar="FILE", help="worker.yaml (default: $DTF_HOME/worker.yaml if present)")
    ap.add_argument("--worker-id", help="stable id of this worker (default: derived from host and DTF home)")
    ap.add_argument("--slots", type=int, help="tasks run at once (execution.concurrent_tasks)")
    ap.add_argument("--tags", help="comma-separated tags tasks can require")
    ap.add_argument("--heartbeat", type=float, help="seconds between heartbeats")
    ap.add_argument("--mdns-interface", action="append", metavar="IP",
                    help="look for the coordinator with mDNS on this address (repeat; default: all interfaces)")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def discover(interfaces: list[str], name: str | None, stop: threading.Event, log: logging.Logger) -> str | None:
    """Look for a coordinator on the LAN until one answers or we are told to stop."""
    where = ", ".join(interfaces) or "all interfaces"
    log.info("no coordinator address configured: looking for one with mDNS on %s", where)
    waited = 0.0
    while not stop.is_set():
        ad = discovery.find_coordinator(interfaces, timeout=5.0, name=name)
        if ad is not None:
            log.info("found coordinator %s at %s", ad.name, ad.agent_endpoint)
            return ad.agent_endpoint
        waited += 5.0
        if waited % 30 == 0:
            log.warning("still no coordinator on %s after %.0f s (pass --coordinator tcp://HOST:8081 to skip "
                        "discovery)", where, waited)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s dtf-agent %(levelname)s %(message)s")
    log = logging.getLogger("dtf_agent")
    home = dtf_home()
    try:
        cfg = load_worker_config(args.config, default_path=home / "worker.yaml")
    except ConfigError as exc:
        print(f"dtf-agent: {exc}", file=sys.stderr)
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
    # Where the coordinator is: the flag, worker.yaml, a coordinator on this machine, then the LAN.
    address = args.coordinator or cfg.coordinator.address
    if not address:
        local = read_coordinator_file(home)
        if local and local.get("agent_endpoint"):
            address = local["agent_endpoint"]
    if not address:
        address = discover(args.mdns_interface or list(cfg.coordinator.interfaces), cfg.coordinator.service_name,
                           stopping, log)
        if address is None:
            return 0
    worker_id = args.worker_id or cfg.worker.worker_id or (
        f"{hostname()}-{hashlib.sha1(str(home).encode()).hexdigest()[:6]}")
    slots = args.slots if args.slots is not None else cfg.execution.slots()
    if slots < 1:
        print(f"dtf-agent: --slots must be at least 1, got {slots}", file=sys.stderr)
        return 2
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags else list(cfg.worker.tags)
    settings = AgentSettings(
        address=address, worker_id=worker_id, slots=slots, tags=tags, groups=list(cfg.worker.groups),
        heartbeat_interval=args.heartbeat or cfg.health.heartbeat_interval,
        resend_interval=cfg.reporting.result_resend_interval, default_timeout=cfg.execution.default_timeout,
        tail_bytes=cfg.execution.output_tail_bytes, work_dir=cfg.execution.work_dir,
        spool_dir=cfg.execution.spool_dir,
    )
    try:
        agent = Agent(settings)
    except SpoolLocked as exc:
        print(f"dtf-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The spool or work directory cannot be made or written (permissions, a read-only home);
        # the error names the path.
        print(f"dtf-agent: cannot start: {exc}", file=sys.stderr)
        return 2
    if stopping.is_set():
        return 0
    code = agent.run()
    if agent.fatal_error:
        print(f"dtf-agent: the coordinator refused this agent: {agent.fatal_error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
