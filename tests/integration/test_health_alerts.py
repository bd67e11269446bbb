"""Worker health alerts and drain against a real `dtf serve` and real agents.

- Heartbeats over a threshold raise an alert: listed by list_alerts, handed to an alert handler
  loaded by import path (a module of the test's own, on PYTHONPATH), acknowledged, and still
  listed acknowledged after the coordinator restarts.
- Tasks failing in a row on one worker raise a failures alert.
- A drained worker gets no new task while another does; a task only it can run waits and says
  why; resuming it lets the task run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dtf_gui.client import ClientError
from tests.helpers import ProcessTracker, Serve, serve_lab, wait_until

HOOK = '''\
import json, os

def record(alert):
    with open(os.environ["DTF_TEST_ALERT_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(alert) + "\\n")
'''

# Thresholds that any real machine's memory and disk use exceed; CPU never goes above 100%.
LOW = """\
health_monitor:
  heartbeat_interval: 0.5
  heartbeat_timeout: 5
  cpu_threshold: 100
  memory_threshold: 0.01
  disk_threshold: 0.01
  sustained_s: 0
  alert_handlers:
    - dtf_test_alert_hook:record
"""

FAST = """\
health_monitor:
  heartbeat_interval: 0.5
  heartbeat_timeout: 5
  failure_threshold: 2
task_scheduler:
  retry_limit: 0
"""


def _alerts(s: Serve, **args: Any) -> list[dict[str, Any]]:
    return s.call("list_alerts", args)["alerts"]


def _handled(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_an_alert_is_listed_handled_acknowledged_and_kept_through_a_restart(procs: ProcessTracker, dtf_home: Path,
                                                                            dtf_env: dict[str, str], tmp_path: Path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "dtf_test_alert_hook.py").write_text(HOOK, encoding="utf-8")
    log = tmp_path / "alerts.jsonl"
    env = dict(dtf_env, PYTHONPATH=str(hooks), DTF_TEST_ALERT_LOG=str(log))
    (dtf_home / "coordinator.yaml").write_text(LOW, encoding="utf-8")

    first = Serve(procs, dtf_home, env, "--no-mdns")
    first.start_agent("lab-1", slots=1)
    first.wait_workers_online("lab-1")

    def memory_alert() -> dict[str, Any] | None:
        return next((a for a in _alerts(first) if a["kind"] == "memory" and a["worker_id"] == "lab-1"), None)

    alert = wait_until(memory_alert, 20, message=procs.logs)
    assert alert["state"] == "raised" and alert["threshold"] == 0.01 and alert["value"] > 0.01
    assert alert["message"].startswith("lab-1: memory above 0.01% (") and not alert["acked"]
    assert {a["kind"] for a in _alerts(first)} >= {"memory", "disk"}
    assert "cpu" not in {a["kind"] for a in _alerts(first)}
    handled = wait_until(lambda: [a for a in _handled(log) if a["alert_id"] == alert["alert_id"]], 10,
                         message=procs.logs)
    assert handled[0]["message"] == alert["message"]

    finding = "change_point:r-1:latency_ms"
    assert first.call("ack_alerts", {"alert_ids": [alert["alert_id"], finding]}) == {
        "acked": [alert["alert_id"], finding]}
    assert memory_alert()["acked"] is True
    first.close()
    procs.stop(first.proc)

    second = Serve(procs, dtf_home, env, "--no-mdns")
    try:
        listed = second.call("list_alerts", {"include_cleared": True})
        again = next(a for a in listed["alerts"] if a["alert_id"] == alert["alert_id"])
        assert again["acked"] is True and again["state"] == "raised"
        assert finding in listed["acked_findings"]
    finally:
        second.close()


def test_tasks_failing_in_a_row_raise_a_failures_alert(tmp_path: Path):
    with serve_lab(tmp_path, {"sick": 1}, config=FAST) as (s, _):
        ids = s.call("create_tasks", {"tasks": [{"command": "false"}, {"command": "false"}]})["task_ids"]
        for tid in ids:
            s.wait_task_status(tid, "failed")

        def failures() -> dict[str, Any] | None:
            return next((a for a in _alerts(s) if a["kind"] == "failures"), None)

        a = wait_until(failures, 10, message=s.tracker.logs)
        assert (a["worker_id"], a["state"], a["value"], a["threshold"]) == ("sick", "raised", 2.0, 2.0)
        ok = s.call("create_task", {"command": "true"})["task_id"]
        s.wait_task_status(ok, "completed")
        cleared = s.call("list_alerts", {"include_cleared": True})["alerts"]
        assert [x["state"] for x in cleared if x["alert_id"] == a["alert_id"]] == ["cleared"]


def test_a_drained_worker_gets_no_new_task_until_it_is_resumed(tmp_path: Path):
    with serve_lab(tmp_path, {"drained": 1, "open": 1}, config=FAST) as (s, _):
        summary = s.call("drain_worker", {"worker_id": "drained"})
        assert summary["worker_id"] == "drained" and summary["draining"] is True
        row = next(r for r in s.call("list_workers") if r["worker_id"] == "drained")
        assert row["health_status"]["draining"] is True

        ids = s.call("create_tasks", {"tasks": [{"command": "true"} for _ in range(4)]})["task_ids"]
        done = [s.wait_task_status(t, "completed") for t in ids]
        assert {t["worker_id"] for t in done} == {"open"}

        only_there = s.call("create_task", {"command": "true", "requirements": {"worker": "drained"}})["task_id"]
        waiting = wait_until(lambda: (t := s.task(only_there))["why"].endswith("draining (drained)") and t, 10)
        assert waiting["status"] == "pending"
        assert waiting["why"] == "waiting: every capable worker online is draining (drained)"
        other = s.call("create_task", {"command": "sleep 30", "requirements": {"worker": "open"}})["task_id"]
        with pytest.raises(ClientError, match="worker drained is draining"):
            s.call("assign_task", {"task_id": other, "worker_id": "drained"})

        resumed = s.call("resume_worker", {"worker_id": "drained"})
        assert resumed["draining"] is False
        assert s.wait_task_status(only_there, "completed")["worker_id"] == "drained"
