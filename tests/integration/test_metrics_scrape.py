"""`dtf serve` with server.metrics_port: 0 and real agents: the endpoint is found through
coordinator.json, scraped during a run, and its figures agree with the database afterwards."""

from __future__ import annotations

import os
import shlex
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dtf_agent import protocol as p
from tests.helpers import FakeAgent, scrape, wait_until

CONFIG = """\
server:
  metrics_port: 0
task_scheduler:
  retry_limit: 0
health_monitor:
  heartbeat_interval: 1
  heartbeat_timeout: 5
"""


def db_rows(serve: Any, sql: str) -> list[tuple[Any, ...]]:
    conn = serve.db()
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def by_label(got: dict[str, float], metric: str) -> dict[str, float]:
    """{label value: value} of a metric with one label."""
    return {k.split('"')[1]: v for k, v in got.items() if k.startswith(metric + "{")}


def test_a_scrape_during_a_run_and_after_it_agrees_with_the_database(serve: Any, tmp_path: Path) -> None:
    s = serve(CONFIG)
    url = s.info["metrics_endpoint"]
    assert url and url.startswith("http://127.0.0.1:") and not url.endswith(":0/metrics")
    assert f"Prometheus metrics on {url}" in s.tracker.log("serve")
    s.start_agent("m-a", slots=2)
    agent_b = s.start_agent("m-b", slots=2)
    s.wait_workers_online("m-a", "m-b")

    # A refusal the security log keeps: an agent one protocol version ahead.
    fake = FakeAgent(s.agent_endpoint, "too-new")
    try:
        fake.register(protocol_version=p.PROTOCOL_VERSION + 1)
        fake.recv(p.Refused)
    finally:
        fake.close()

    # Held until the test opens the gate: the scrape "during" the run is one, however slow the machine.
    gate = tmp_path / "gate"
    held = f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done"
    slow = s.call("create_tasks", {"tasks": [{"command": held} for _ in range(16)]})["task_ids"]
    failing = s.call("create_tasks", {"tasks": [{"command": "exit 3"} for _ in range(3)]})["task_ids"]
    stuck = s.call("create_tasks", {"tasks": [{"command": "true", "requirements": {"tags": ["nobody"]}}] * 2})
    stuck_ids = stuck["task_ids"]
    s.call("cancel_task", {"task_id": stuck_ids[0]})
    submitted = len(slow) + len(failing) + len(stuck_ids)

    submitted_by = time.time()

    # During the run: every slot holds a task waiting at the gate, the rest of them wait in the queue.
    def all_slots_running() -> dict[str, float] | None:
        got = scrape(url)
        return got if by_label(got, "dtf_tasks")["running"] == 4 else None

    during = wait_until(all_slots_running, 30, message=s.tracker.logs)
    tasks = by_label(during, "dtf_tasks")
    assert during["dtf_tasks_submitted_total"] == submitted and sum(tasks.values()) == submitted
    assert tasks["completed"] == 0 and tasks["failed"] == 0, f"not scraped during the run: {tasks}"
    assert tasks["pending"] == submitted - 4 - 1 and tasks["cancelled"] == 1, tasks
    assert during["dtf_queue_depth"] == tasks["pending"]
    assert during["dtf_worker_slots"] == 4 and during["dtf_worker_slots_used"] == 4
    workers = by_label(during, "dtf_workers")
    assert workers["busy"] == 2 and workers["online"] == 0, workers
    ages = by_label(during, "dtf_worker_heartbeat_age_seconds")
    assert set(ages) == {"m-a", "m-b"} and all(0 <= a < 5 for a in ages.values()), ages

    gate.touch()
    opened = time.time()
    finished = s.call("wait", {"task_ids": slow + failing, "timeout": 60})["finished"]
    assert set(finished.values()) <= {"completed", "failed"} and len(finished) == len(slow) + len(failing)

    # After: the wait's reply left after the commit of every final status, so the database holds
    # what the coordinator knows; the scrape must say the same.
    after = scrape(url)
    in_db = dict(db_rows(s, "SELECT status, count(*) FROM tasks GROUP BY status"))
    assert in_db == {"completed": 16, "failed": 3, "cancelled": 1, "pending": 1}
    assert by_label(after, "dtf_tasks") == {st: float(in_db.get(st, 0)) for st in p.TASK_STATUSES}
    assert after["dtf_queue_depth"] == in_db["pending"]
    results = db_rows(s, "SELECT count(*) FROM results")[0][0]
    assert after["dtf_results_stored_total"] == results == 19
    assert after["dtf_dispatch_latency_seconds_count"] == results
    assert after["dtf_tasks_dispatched_total"] == db_rows(s, "SELECT sum(attempt) FROM tasks")[0][0]
    assert after["dtf_tasks_submitted_total"] == db_rows(s, "SELECT count(*) FROM tasks")[0][0]
    assert after["dtf_submissions_total"] == 3
    for status in p.TERMINAL_STATUSES:
        assert after[f'dtf_task_latency_seconds_count{{status="{status}"}}'] == in_db.get(status, 0), status
    # Every held task lasted from its submission to the gate's opening at least.
    assert after['dtf_task_latency_seconds_sum{status="completed"}'] >= 16 * (opened - submitted_by)
    refused = db_rows(s, "SELECT count(*) FROM events WHERE kind = 'security_agent_refused'")[0][0]
    assert after['dtf_security_refusals_total{kind="agent_refused"}'] == refused == 1
    findings = dict(db_rows(s, "SELECT kind, count(*) FROM events WHERE kind IN "
                               "('anomaly','change_suspected','change_point','trend') GROUP BY kind"))
    assert by_label(after, "dtf_findings") == {k: float(findings.get(k, 0)) for k in
                                               ("anomaly", "change_suspected", "change_point", "trend")}
    assert after["dtf_db_commits_total"] == after["dtf_db_commit_seconds_count"] > 0
    assert after["dtf_db_size_bytes"] >= os.path.getsize(s.db_path)

    # A worker that leaves is offline and no longer has a heartbeat age.
    s.tracker.stop(agent_b)

    def b_gone() -> dict[str, float] | None:
        got = scrape(url)
        return got if by_label(got, "dtf_workers")["offline"] == 1 else None

    gone = wait_until(b_gone, 20, message=s.tracker.logs)
    assert set(by_label(gone, "dtf_worker_heartbeat_age_seconds")) == {"m-a"}
    assert by_label(gone, "dtf_workers")["online"] == 1


def test_the_endpoint_closes_with_the_coordinator(serve: Any) -> None:
    # Switched on by the flag this time (coordinator.yaml leaves it off), and named in the banner.
    s = serve(CONFIG.replace("  metrics_port: 0\n", ""), "--insecure", "--metrics-port", "0")
    url = s.info["metrics_endpoint"]
    assert url and f"  metrics: {url}" in s.tracker.log("serve")
    assert scrape(url)["dtf_tasks_submitted_total"] == 0
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(20) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)

