"""The Prometheus endpoint of an in-process coordinator: what it exports, when it is off, how it
binds and stops, and the pieces it is made of (histograms, the loop's snapshot, stored figures)."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtf_agent import __version__
from dtf_agent import protocol as p
from dtf_gui.coordinator import analysis, metrics
from dtf_gui.coordinator.aggregator import findings
from dtf_gui.coordinator.config import (
    ConfigError,
    CoordinatorConfig,
    ServerSection,
    load_coordinator_config,
    server_settings,
)
from dtf_gui.coordinator.server import Coordinator
from dtf_gui.coordinator.store import Store
from dtf_gui.coordinator.telemetry import Counters
from dtf_gui.coordinator.trust import REFUSALS
from tests.helpers import FakeAgent, scrape, wait_until

ROOT = Path(__file__).resolve().parents[2]


def family_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    names = set()
    for fam in text_string_to_metric_families(text):
        # The parser names a counter family without its _total; the exported sample has it.
        names.add(f"{fam.name}_total" if fam.type == "counter" else fam.name)
    return names


def snapshot(completed: int = 0) -> metrics.Snapshot:
    """A loop's snapshot with ``completed`` tasks and nothing else."""
    return metrics.Snapshot(made=time.monotonic(), tasks=(("completed", completed),), queue_depth=0, workers=(),
                            counters=(), histograms=(), db_commits=0, db_rows_written=0, db_write_errors=0,
                            db_refused_rows=0, db_pending_rows=0)


def answering_metrics(tmp_path: Path) -> metrics.Metrics:
    """An endpoint whose "loop" answers at once (runs the snapshot's builder on the asking thread)."""
    return metrics.Metrics(ask_loop=lambda fn: fn(), build=snapshot, db_path=tmp_path / "none.sqlite",
                           coordinator_id="c", started=0.0)


def request_threads() -> list[threading.Thread]:
    """The endpoint's request threads (ThreadingMixIn names each after its target)."""
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def read_to_end(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    return got


# ---------------------------------------------------------------------------------------- config


def test_metrics_are_off_by_default_and_0_is_a_free_port() -> None:
    assert ServerSection().metrics_port is None
    assert msgspec.convert({"metrics_port": 0}, ServerSection).metrics_port == 0


def test_metrics_port_clashing_with_another_port_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "coordinator.yaml"
    f.write_text("server:\n  port: 9100\n  metrics_port: 9100\n")
    with pytest.raises(ConfigError, match="metrics_port"):
        load_coordinator_config(f)
    f.write_text("server:\n  metrics_port: 70000\n")
    with pytest.raises(ConfigError, match="metrics_port"):
        load_coordinator_config(f)
    f.write_text("server:\n  metrics_port: null\n")
    assert load_coordinator_config(f).server.metrics_port is None


def test_a_metrics_port_flag_switches_metrics_on_over_the_file(tmp_path: Path) -> None:
    cfg = msgspec.convert({"server": {"metrics_port": 9464}}, CoordinatorConfig)
    assert server_settings(cfg, tmp_path).config.server.metrics_port == 9464
    assert server_settings(cfg, tmp_path, metrics_port=0).config.server.metrics_port == 0
    assert server_settings(CoordinatorConfig(), tmp_path).config.server.metrics_port is None


# ---------------------------------------------------------------------------------------- pieces


def test_buckets_put_a_value_on_a_bound_in_that_bounds_bucket_and_the_rest_in_inf() -> None:
    b = metrics._Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        b.observe(v)
    bounds, counts, total = b.frozen()
    assert bounds == (0.1, 1.0) and counts == (2, 2, 1)
    assert total == pytest.approx(8.65)


def test_queue_wait_counts_from_submission_or_from_the_requeue() -> None:
    f = metrics.LoopFigures()
    f.dispatched("a", create_time=100.0, now=100.5)  # first attempt: from its submission
    f.queued("a", now=200.0)  # its worker was lost
    f.dispatched("a", create_time=100.0, now=203.0)
    f.queued("b", now=10.0)
    f.ended("b", p.CANCELLED, create_time=5.0, now=12.0)
    assert f.requeued == {}, "nothing is kept for a task once it is dispatched or final"
    hists = {(name, labels): (counts, total) for name, labels, _, counts, total in f.histograms()}
    counts, total = hists[("dtf_queue_wait_seconds", ())]
    assert sum(counts) == 2 and total == pytest.approx(3.5)
    assert hists[("dtf_task_latency_seconds", (p.CANCELLED,))][1] == pytest.approx(7.0)


def test_every_coordinator_counter_is_exported_and_finding_kinds_match_the_analysis() -> None:
    fields = {f.name for f in dataclasses.fields(Counters)}
    assert fields == set(metrics._COUNTER_METRICS)
    assert {f"{m}_total" for m, _ in metrics._COUNTER_METRICS.values()} <= metrics.METRIC_NAMES
    tags = {cls.__struct_config__.tag for cls in (findings.Anomaly, findings.ChangePointFound, findings.TrendFound)}
    assert set(metrics.FINDING_KINDS) == tags | {analysis.SUSPECTED_KIND}


def test_stored_figures_count_standing_and_withdrawn_findings_in_the_database(tmp_path: Path) -> None:
    db = tmp_path / "dtf.sqlite"
    store = Store(db)
    for i in range(3):
        store.put_event("anomaly", f"r{i}", {"metric": "m"})
    store.put_event("trend", "m", {"metric": "m"})
    store.put_event("worker_online", "w", {})  # not a finding
    store.flush()
    store.retract_events("anomaly", ["r0"], "m")
    store.flush()
    m = metrics.Metrics(ask_loop=lambda fn: None, build=lambda: pytest.fail("not asked"), db_path=db,
                        coordinator_id="c", started=0.0)
    size, found = m.stored_figures()
    store.close()
    assert found == {"anomaly": 2, "anomaly_retracted": 1, "trend": 1}
    assert size >= db.stat().st_size > 0


def test_a_loop_that_does_not_answer_gets_its_last_snapshot_served(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(metrics, "SNAPSHOT_WAIT", 0.2)
    answering = True
    built = 0

    def ask_loop(fn: Callable[[], None]) -> None:
        if answering:
            fn()  # this test's "loop": runs it at once

    def build() -> metrics.Snapshot:
        nonlocal built
        built += 1
        return snapshot(completed=built)

    m = metrics.Metrics(ask_loop=ask_loop, build=build, db_path=tmp_path / "none.sqlite", coordinator_id="c",
                        started=0.0)
    before = set(threading.enumerate())
    port = m.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert scrape(url)['dtf_tasks{state="completed"}'] == 1
        answering = False
        got = scrape(url)
        assert got['dtf_tasks{state="completed"}'] == 1, "the last snapshot, not a new one"
        assert got["dtf_metrics_snapshot_age_seconds"] >= 0.2
    finally:
        m.close()
    assert set(threading.enumerate()) == before


# ---------------------------------------------------------------------------------------- the endpoint


def test_a_client_trickling_its_request_does_not_hold_up_close(tmp_path: Path) -> None:
    """The port is open to anyone who reaches it: a client that sends a byte every little while
    (never idle for the handler's timeout) must not keep close(), and the coordinator's stop, waiting."""
    m = answering_metrics(tmp_path)
    before = set(threading.enumerate())
    port = m.serve("127.0.0.1", 0)
    stop = threading.Event()
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

    def trickle() -> None:
        try:
            while not stop.wait(0.2):
                client.sendall(b"x")  # a header line that never ends
        except OSError:
            pass  # the endpoint dropped the connection

    trickler = threading.Thread(target=trickle, name="test-trickler")
    closer = threading.Thread(target=m.close, name="test-closer")
    trickler.start()
    try:
        wait_until(lambda: len(request_threads()) == 1, 10)
        started = time.monotonic()
        closer.start()
        closer.join(3)
        assert not closer.is_alive(), "close() waits for a client that keeps trickling"
        assert time.monotonic() - started < 3
        assert set(threading.enumerate()) - {trickler, closer} <= before, "a thread of the endpoint remains"
    finally:
        stop.set()
        trickler.join(10)
        client.close()
        if closer.ident is not None:
            closer.join(30)
        else:
            m.close()
    assert not trickler.is_alive() and not closer.is_alive()


def test_concurrent_requests_are_capped_and_the_one_over_the_cap_is_answered_503(tmp_path: Path) -> None:
    m = answering_metrics(tmp_path)
    before = set(threading.enumerate())
    port = m.serve("127.0.0.1", 0)
    cap = metrics.MAX_REQUESTS
    slow: list[socket.socket] = []
    try:
        for _ in range(cap):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more: its thread waits for the headers
            slow.append(s)
        wait_until(lambda: len(request_threads()) == cap, 10)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            answer = read_to_end(extra)  # sends nothing: the answer comes without a request
        assert answer.startswith(b"HTTP/1.0 503 "), answer[:100]
        assert len(request_threads()) == cap, "no thread for a connection over the cap"
        # A slot that frees lets the next scrape in.
        slow.pop().close()
        wait_until(lambda: len(request_threads()) < cap, 10)
        assert scrape(f"http://127.0.0.1:{port}/metrics")['dtf_tasks{state="completed"}'] == 0
    finally:
        for s in slow:
            s.close()
        m.close()
    assert set(threading.enumerate()) <= before


def test_a_star_host_listens_on_every_ipv4_interface(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """server.host "*" (ZeroMQ's word for every interface) or "" is 0.0.0.0 to bind(). Checked
    without binding it (tests never listen beyond 127.0.0.1): the address lookup sees 0.0.0.0."""
    asked: list[object] = []

    def getaddrinfo(host: object, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "stop here")

    monkeypatch.setattr(metrics.socket, "getaddrinfo", getaddrinfo)
    m = answering_metrics(tmp_path)
    for host in ("*", ""):
        with pytest.raises(metrics.MetricsError, match=rf"cannot listen on {re.escape(host)}:9464 \(server\.host\)"):
            m.serve(host, 9464)
    assert asked == ["0.0.0.0", "0.0.0.0"]


def test_binding_asks_no_dns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HTTPServer looks its host's full name up (socket.getfqdn: reverse DNS, seconds where DNS is
    broken, as in some containers); the endpoint needs no name."""

    def getfqdn(name: str = "") -> str:
        raise AssertionError(f"socket.getfqdn({name!r}) called")

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    m = answering_metrics(tmp_path)
    port = m.serve("127.0.0.1", 0)
    try:
        assert scrape(f"http://127.0.0.1:{port}/metrics")['dtf_tasks{state="completed"}'] == 0
    finally:
        m.close()


# ---------------------------------------------------------------------------------------- a coordinator


def test_metrics_off_means_no_endpoint_no_module_work(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    assert c.metrics is None and c._figures is None
    assert c.info()["metrics_endpoint"] is None
    assert "metrics" not in c.ports


# A coordinator started and stopped in a fresh interpreter (this one imported metrics itself):
# prints which of the metrics modules it imported. argv[1]: the database, argv[2]: the metrics
# port, "off" for none.
_PROBE = """
import sys
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.server import Coordinator
server = {} if sys.argv[2] == "off" else {"metrics_port": int(sys.argv[2])}
Coordinator(ephemeral_settings(sys.argv[1], server=server)).start().stop()
print(sorted(m for m in ("dtf_gui.coordinator.metrics", "prometheus_client") if sys.modules.get(m) is not None))
"""


@pytest.mark.parametrize("port, imported", [("off", "[]"),
                                            ("0", "['dtf_gui.coordinator.metrics', 'prometheus_client']")],
                         ids=["off", "on"])
def test_metrics_off_imports_neither_the_module_nor_prometheus_client(tmp_path: Path, port: str,
                                                                      imported: str) -> None:
    # "on" shows the probe sees the imports it looks for.
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "probe.sqlite"), port], cwd=ROOT,
                         env=dict(os.environ), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == imported, out.stdout + out.stderr


def test_scrape_of_an_embedded_coordinator_and_nothing_left_after_stop(
        coordinator: Callable[..., Coordinator], caplog: pytest.LogCaptureFixture) -> None:
    before = set(threading.enumerate())
    caplog.set_level("INFO", logger="dtf_gui.coordinator.server")
    c = coordinator(server={"metrics_port": 0})
    url = c.info()["metrics_endpoint"]
    port = c.ports["metrics"]
    assert port > 0 and url == f"http://127.0.0.1:{port}/metrics"
    assert f"Prometheus metrics on {url}" in caplog.text
    fake = FakeAgent(c.endpoint("agents"), "old-agent")
    try:
        fake.register(protocol_version=p.PROTOCOL_VERSION + 1)  # a version this coordinator refuses
        fake.recv(p.Refused)
    finally:
        fake.close()
    ids = c.request("create_tasks", {"tasks": [{"type": "noop"}] * 3})["task_ids"]
    c.request("cancel_task", {"task_id": ids[0]})

    def seen() -> dict[str, float] | None:
        got = scrape(url)
        return got if got['dtf_tasks{state="cancelled"}'] == 1 else None

    got = wait_until(seen, 10)
    assert got['dtf_tasks{state="pending"}'] == 2 and got["dtf_queue_depth"] == 2
    assert got["dtf_submissions_total"] == 1 and got["dtf_tasks_submitted_total"] == 3
    assert got['dtf_security_refusals_total{kind="agent_refused"}'] == 1
    assert got['dtf_security_refusals_total{kind="rate_limited"}'] == 0
    assert got['dtf_task_latency_seconds_count{status="cancelled"}'] == 1
    info = f'coordinator_id="{c.s.coordinator_id}",protocol="{p.PROTOCOL_VERSION}",version="{__version__}"'
    assert got[f"dtf_coordinator_info{{{info}}}"] == 1
    names = family_names(url)
    # Besides ours: the process's own (CPU, memory, file descriptors, Python's version).
    assert names - metrics.METRIC_NAMES == {n for n in names if n.startswith(("process_", "python_"))}
    assert metrics.METRIC_NAMES - {"dtf_worker_heartbeat_age_seconds"} <= names | {
        n.removesuffix("_total") for n in names}, "every name the dashboard may use shows in a scrape"
    c.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    assert set(threading.enumerate()) <= before, "the endpoint's threads are gone"


def test_a_taken_metrics_port_is_a_start_error_naming_it(coordinator: Callable[..., Coordinator]) -> None:
    before = set(threading.enumerate())
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"server\.metrics_port: cannot listen on 127\.0\.0\.1:{port}"):
            coordinator(server={"metrics_port": port})
    assert set(threading.enumerate()) <= before, "a failed start leaves no thread behind"


def test_workers_and_heartbeat_age_come_from_the_loops_snapshot(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(server={"metrics_port": 0})
    fake = FakeAgent(c.endpoint("agents"), "w1")
    try:
        fake.register_until_welcomed(p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="w1",
                                                hostname="fakehost", slots=3))
        got = wait_until(lambda: (lambda g: g if g['dtf_workers{state="online"}'] == 1 else None)(
            scrape(c.info()["metrics_endpoint"])), 10)
        assert got["dtf_worker_slots"] == 3
        assert 0 <= got['dtf_worker_heartbeat_age_seconds{worker_id="w1"}'] < 10
        fake.send(p.Goodbye(reason="test"))
        got = wait_until(lambda: (lambda g: g if g['dtf_workers{state="offline"}'] == 1 else None)(
            scrape(c.info()["metrics_endpoint"])), 10)
        assert 'dtf_worker_heartbeat_age_seconds{worker_id="w1"}' not in got
    finally:
        fake.close()


def test_refusal_kinds_are_the_trust_modules(coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(server={"metrics_port": 0})
    got: dict[str, Any] = scrape(c.info()["metrics_endpoint"])
    assert {k.split('"')[1] for k in got if k.startswith("dtf_security_refusals_total")} == set(REFUSALS)
