"""coordinator.yaml and what a coordinator runs with.

Section and key names follow the seed's coordinator.yaml (server, database, security,
task_scheduler, result_aggregator, health_monitor, load_balancer). Every key has a default, so
``load_coordinator_config()`` with no file is a working local setup; loading and validation live in
dtf_agent.config.

:class:`ServerSettings` is the whole of what a coordinator needs: the config, with command-line
flags applied on top, plus the database path and the coordinator's id. The code reads settings by
the same names as the YAML (``settings.config.health_monitor.heartbeat_timeout``), so each key is
spelled in one place: here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from dtf_agent.config import ConfigError, dump_config, load_config
from dtf_gui.coordinator.balancer import BUILTIN_STRATEGIES
from dtf_gui.coordinator.scheduler import SchedulerConfig

__all__ = [
    "ConfigError",
    "CoordinatorConfig",
    "DatabaseSection",
    "HealthMonitorSection",
    "LoadBalancerSection",
    "MetricDeclaration",
    "ResultAggregatorSection",
    "SecuritySection",
    "ServerSection",
    "ServerSettings",
    "TaskSchedulerSection",
    "dump_defaults",
    "ephemeral_settings",
    "load_coordinator_config",
    "scheduler_config",
    "server_settings",
]

Port = Annotated[int, Meta(ge=0, le=65535)]
# Bounds must sit on the int itself, inside the Optional: msgspec refuses ``ge`` on ``int | None``.
PositiveInt = Annotated[int, Meta(ge=1)]


class ServerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Sockets and event batching."""

    host: Annotated[str, Meta(
        description="address the sockets bind to; 0.0.0.0 lets agents on other machines in")] = "127.0.0.1"
    port: Annotated[Port, Meta(description="client API (CLI, scripts) ROUTER port; 0 picks a free port")] = 8080
    agent_port: Annotated[Port, Meta(description="agents' ROUTER port; 0 picks a free port")] = 8081
    events_port: Annotated[Port, Meta(description="live events PUB port; 0 picks a free port")] = 8082
    max_message_size: Annotated[int, Meta(
        ge=1024, description="bytes; larger frames are refused by ZeroMQ (ZMQ_MAXMSGSIZE)")] = 16 * 1024 * 1024
    event_interval: Annotated[float, Meta(
        gt=0, description="seconds between batched event publications to the window and clients")] = 0.1
    advertise: Annotated[bool, Meta(
        description="announce _dtf._tcp.local. via mDNS so that agents find this coordinator")] = True
    interfaces: Annotated[list[str], Meta(
        description="IP addresses mDNS uses; empty: the bound host's address (all interfaces for 0.0.0.0)"
    )] = msgspec.field(default_factory=list)
    service_name: Annotated[str | None, Meta(
        description="mDNS instance name; null: 'DTF coordinator on HOST'")] = None
    max_log_bytes: Annotated[int, Meta(
        ge=1024, description="bytes of each task's stdout and of its stderr kept under DTF home's logs/ (the "
                             "first half and the last half; the middle is dropped with a marker)")] = 64 * 1024 * 1024
    log_retention_days: Annotated[float, Meta(
        ge=0, description="days a task's logs are kept after its last output; 0 keeps them for ever")] = 30.0
    max_bundle_bytes: Annotated[int, Meta(
        ge=1024, description="largest bundle (a shipped test suite, compressed) a client may upload")] = 1024**3
    max_bundles_bytes: Annotated[int, Meta(
        ge=1024, description="bytes of bundles kept under DTF home's bundles/; the least recently used go "
                             "first")] = 10 * 1024**3
    # None, not 0, is "off": 0 means "a free port" for every port of this section.
    metrics_port: Annotated[Port | None, Meta(
        description="Prometheus metrics over HTTP (GET /metrics), bound to host like the other ports; null: "
                    "off; 0 picks a free port (coordinator.json's metrics_endpoint names it); needs "
                    "prometheus-client (pip install 'dtf[server]')")] = None

    def __post_init__(self) -> None:
        ports = {"port": self.port, "agent_port": self.agent_port, "events_port": self.events_port,
                 "metrics_port": self.metrics_port or 0}
        taken: dict[int, str] = {}
        for name, value in ports.items():
            if value and value in taken:
                raise ValueError(f"{name}: {value} is also {taken[value]}; each socket needs its own port")
            taken[value] = name


class DatabaseSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """SQLite storage (the coordinator is its only writer)."""

    path: Annotated[str | None, Meta(description="SQLite file; null puts it under DTF home")] = None
    flush_interval: Annotated[float, Meta(
        gt=0, description="seconds between flushes of batched inserts (results, metrics, events)")] = 0.25
    batch_size: Annotated[int, Meta(
        ge=1, description="rows that trigger a flush before flush_interval is up")] = 5000
    durability: Annotated[Literal["process-crash", "power-loss"], Meta(
        description="what an acknowledged write survives: process-crash (WAL, synchronous=NORMAL) or "
                    "power-loss (synchronous=FULL: an fsync per commit)")] = "process-crash"
    backup_interval: Annotated[float, Meta(
        ge=0, description="seconds between automatic online backups into DTF home's backups/; 0 = none")] = 0.0
    backups_kept: Annotated[int, Meta(ge=1, description="automatic backups kept, newest first")] = 5


class SecuritySection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Encryption and trust."""

    enabled: Annotated[bool, Meta(
        description="CURVE encryption on every socket and approval of agent keys (false is the same as "
                    "insecure: true)")] = True
    insecure: Annotated[bool, Meta(
        description="plain-text sockets, any agent accepted, every client an admin (like --insecure); for a "
                    "quick local try only")] = False
    enrollment_token: Annotated[str | None, Meta(
        description="agents presenting this secret get their key accepted without a click: `dtf token create "
                    "--from-config` makes a join token of it that never expires (for agents that come and go, as "
                    "in a cluster); otherwise prefer `dtf token create`, whose tokens expire")] = None
    requests_per_s: Annotated[float, Meta(
        gt=0, description="each client key's requests per second (a burst of 2 s worth is allowed)")] = 2000.0
    tasks_per_s: Annotated[float, Meta(
        gt=0, description="each client key's submitted tasks per second (a burst of 2 s worth is allowed)")] = 100_000.0

    @property
    def is_insecure(self) -> bool:
        return self.insecure or not self.enabled


class TaskSchedulerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Queueing, priorities, retries and dependencies."""

    default_priority: Annotated[int, Meta(description="priority of a task submitted without one")] = 5
    max_queue_size: Annotated[int, Meta(
        ge=1, description="pending tasks held at most; submissions beyond it are refused")] = 1_000_000
    retry_limit: Annotated[int, Meta(ge=0, description="times a failed task is retried before it stays failed")] = 3
    aging_interval: Annotated[float, Meta(
        ge=0, description="seconds a task waits before its priority is raised one step (no starvation); 0: off"
    )] = 60.0
    retry_backoff_base: Annotated[float, Meta(
        gt=0, description="seconds before the first retry; doubled on each further retry")] = 1.0
    retry_backoff_max: Annotated[float, Meta(gt=0, description="seconds the retry delay never exceeds")] = 60.0
    lost_limit: Annotated[int, Meta(
        ge=0, description="times a task may go back to the queue because its worker vanished")] = 3
    dependency_failure: Annotated[Literal["fail", "run"], Meta(
        description="when a dependency fails: fail its dependents, or run them anyway")] = "fail"

    def __post_init__(self) -> None:
        if self.retry_backoff_max < self.retry_backoff_base:
            raise ValueError(f"retry_backoff_max: {self.retry_backoff_max} is below "
                             f"retry_backoff_base ({self.retry_backoff_base})")


class MetricDeclaration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One metric's (or glob's) unit and direction, under result_aggregator.metrics."""

    unit: Annotated[str, Meta(
        max_length=255, description="what the values are in (ms, MB/s, ops/s...); shown next to them")] = ""
    direction: Annotated[Literal["higher", "lower"] | None, Meta(
        description="higher: a rise is an improvement (throughput); lower: a fall is (latency, errors); "
                    "null: guessed from the name")] = None


class ResultAggregatorSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Statistics, anomalies and comparisons."""

    anomaly_threshold: Annotated[float, Meta(
        gt=0, description="z-score beyond which a metric value is flagged as an anomaly")] = 2.5
    cache_ttl: Annotated[float, Meta(
        ge=0, description="seconds an aggregate is reused before it is computed again; 0 disables")] = 10.0
    comparative_lookback_days: Annotated[int, Meta(
        ge=1, description="days of history a new result is compared against")] = 7
    trend_min_slope: Annotated[float, Meta(
        ge=0, le=1, description="how fast a significant drift of a series must move to be reported as a trend: "
                                "relative change per 100 results (0.002 = 0.2 % per 100 results)")] = 0.002
    preprocessors: Annotated[list[str], Meta(
        description="custom result processors run before analysis, as package.module:function; "
                    "fn(result) -> result, or None to leave it out")] = msgspec.field(default_factory=list)
    postprocessors: Annotated[list[str], Meta(
        description="custom processors of new findings, as package.module:function; "
                    "fn(findings) -> findings")] = msgspec.field(default_factory=list)
    metrics: Annotated[dict[str, MetricDeclaration], Meta(
        description="unit and direction (which way is better: higher or lower) per metric name or glob, e.g. "
                    "{throughput_mb_s: {unit: MB/s, direction: higher}, \"latency_*\": {direction: lower}}; an exact "
                    "name wins over a glob and no task overrides these; an undeclared direction is guessed from "
                    "the name")] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("preprocessors", "postprocessors"):
            for path in getattr(self, key):
                if not re.fullmatch(r"[\w.]+:[\w.]+", path):
                    raise ValueError(f"{key}: {path!r} is not an import path like package.module:function")
        for name in self.metrics:
            # The store and the wire carry metric names of at most 255 characters.
            if not name or len(name) > 255:
                raise ValueError(f"metrics: {name[:60]!r} is not a metric name (1 to 255 characters)")

    def metric_declarations(self) -> dict[str, tuple[str, str | None]]:
        """``metrics`` as MetricCatalog takes them: name or glob -> (unit, direction or None)."""
        return {name: (d.unit, d.direction) for name, d in self.metrics.items()}


class HealthMonitorSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Worker liveness."""

    heartbeat_interval: Annotated[float, Meta(
        gt=0, description="seconds between heartbeats that agents are asked to keep")] = 5.0
    heartbeat_timeout: Annotated[float, Meta(
        gt=0, description="seconds of silence after which a worker is offline and its tasks requeued")] = 30.0
    cpu_threshold: Annotated[float, Meta(
        gt=0, le=100, description="a worker's CPU use (%) that raises an alert when it stays above it")] = 95.0
    memory_threshold: Annotated[float, Meta(
        gt=0, le=100, description="a worker's memory use (%) that raises an alert when it stays above it")] = 90.0
    disk_threshold: Annotated[float, Meta(
        gt=0, le=100, description="a worker's disk use (%) of its work directory that raises an alert")] = 90.0
    sustained_s: Annotated[float, Meta(
        ge=0, description="seconds a resource must stay above its threshold before the alert is raised "
                          "(a short spike raises none)")] = 30.0
    failure_threshold: Annotated[int, Meta(
        ge=1, description="tasks failing in a row on one worker that raise an alert (a sick machine, not a bad "
                          "test)")] = 5
    alert_handlers: Annotated[list[str], Meta(
        description="code that receives each alert, as package.module:function; fn(alert: dict) -> None, run "
                    "off the coordinator's loop (e.g. dtf_gui.coordinator.webhook:post to send JSON to "
                    "DTF_ALERT_WEBHOOK)")] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for path in self.alert_handlers:
            if not re.fullmatch(r"[\w.]+:[\w.]+", path):
                raise ValueError(f"alert_handlers: {path!r} is not an import path like package.module:function")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(f"heartbeat_timeout: {self.heartbeat_timeout} must exceed "
                             f"heartbeat_interval ({self.heartbeat_interval})")


class LoadBalancerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which worker gets the next task."""

    strategy: Annotated[str, Meta(
        description="duration_aware, fair_share, round_robin, least_loaded, best_fit, or package.module:Class"
    )] = "duration_aware"
    worker_cap: Annotated[PositiveInt | None, Meta(
        description="workers one submission may occupy at once, leaving room for others; null: no cap")] = None
    task_cap_per_worker: Annotated[PositiveInt | None, Meta(
        description="tasks in flight on one worker; null: its concurrent_tasks slots")] = None

    def __post_init__(self) -> None:
        # Custom strategies are import paths, checked when the coordinator loads them; names are checked here.
        if ":" not in self.strategy and self.strategy not in BUILTIN_STRATEGIES:
            close = difflib.get_close_matches(self.strategy, list(BUILTIN_STRATEGIES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"strategy: unknown strategy {self.strategy!r}{hint}; built-in: "
                             f"{', '.join(sorted(BUILTIN_STRATEGIES))}, or an import path package.module:Class")


class CoordinatorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """coordinator.yaml: every key is optional."""

    server: ServerSection = msgspec.field(default_factory=ServerSection)
    database: DatabaseSection = msgspec.field(default_factory=DatabaseSection)
    security: SecuritySection = msgspec.field(default_factory=SecuritySection)
    task_scheduler: TaskSchedulerSection = msgspec.field(default_factory=TaskSchedulerSection)
    result_aggregator: ResultAggregatorSection = msgspec.field(default_factory=ResultAggregatorSection)
    health_monitor: HealthMonitorSection = msgspec.field(default_factory=HealthMonitorSection)
    load_balancer: LoadBalancerSection = msgspec.field(default_factory=LoadBalancerSection)


def load_coordinator_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                            *, default_path: str | os.PathLike[str] | None = None) -> CoordinatorConfig:
    """Load coordinator.yaml (see ``dtf_agent.config.load_config`` for ``path``, ``env``, ``default_path``)."""
    return load_config(path, CoordinatorConfig, env=env, default_path=default_path)


_HEADER = """\
coordinator.yaml: configuration of the DTF coordinator (dtf serve --config, or the window).
Every key is optional and shows its default. ${VAR} and ${VAR:-default} expand from the environment."""


def dump_defaults() -> str:
    """coordinator.yaml with every key at its default and a comment each (resources/coordinator.example.yaml)."""
    return dump_config(CoordinatorConfig(), header=_HEADER)


def scheduler_config(cfg: CoordinatorConfig) -> SchedulerConfig:
    """task_scheduler.* and load_balancer.*: the scheduler's own settings carry the same names."""
    return SchedulerConfig(**msgspec.structs.asdict(cfg.task_scheduler), **msgspec.structs.asdict(cfg.load_balancer))


def _new_coordinator_id() -> str:
    return os.urandom(4).hex()


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What one coordinator runs with (see the module docstring)."""

    config: CoordinatorConfig = dataclasses.field(default_factory=CoordinatorConfig)
    db_path: str = "dtf.sqlite"
    coordinator_id: str = dataclasses.field(default_factory=_new_coordinator_id)
    # Where the keys live (keys/): None is $DTF_HOME (or the platform's data dir).
    home: Path | None = None

    @property
    def scheduler(self) -> SchedulerConfig:
        return scheduler_config(self.config)


def server_settings(cfg: CoordinatorConfig, home: Path, *, db: str | None = None, host: str | None = None,
                    port: int | None = None, agent_port: int | None = None, events_port: int | None = None,
                    mdns: bool = True, metrics_port: int | None = None) -> ServerSettings:
    """coordinator.yaml, then command-line flags on top (a flag left at None keeps the file's value;
    ``metrics_port`` given switches metrics on, 0 on a free port)."""
    flags = {"host": host, "port": port, "agent_port": agent_port, "events_port": events_port,
             "metrics_port": metrics_port}
    server = msgspec.structs.replace(cfg.server, **{k: v for k, v in flags.items() if v is not None})
    if not mdns:
        server = msgspec.structs.replace(server, advertise=False)
    return ServerSettings(config=msgspec.structs.replace(cfg, server=server),
                          db_path=db or cfg.database.path or str(home / "dtf.sqlite"), home=home)


def ephemeral_settings(db_path: str | os.PathLike[str], *, home: Path | None = None,
                       **sections: Mapping[str, object]) -> ServerSettings:
    """A coordinator on free ports of 127.0.0.1 that does not advertise itself: for self-checks,
    benchmarks and tests. ``sections`` override coordinator.yaml sections by name, checked like
    the file (``ephemeral_settings(db, load_balancer={"worker_cap": 1})``)."""
    server = {"port": 0, "agent_port": 0, "events_port": 0, "advertise": False, **sections.pop("server", {})}
    cfg = msgspec.convert({"server": server, **sections}, CoordinatorConfig)
    return ServerSettings(config=cfg, db_path=str(db_path), home=home)
