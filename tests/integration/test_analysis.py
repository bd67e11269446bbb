"""Results flow through the aggregator as they land: statistics, change points and comparisons
through the client API and `dtf analyze`, findings as events and rows in SQLite, and custom
result processors loaded by import path."""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any

from dtf_agent import protocol as p
from dtf_gui.client import Client
from dtf_gui.coordinator.aggregator import Finding
from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.store import connect_readonly
from tests.helpers import cli, dtf_command, wait_until

BEFORE, AFTER, N = 100.0, 80.0, 24  # a throughput drop of 20 % from the 13th run on


def metric_command(value: float) -> str:
    return f"echo '{{\"throughput\": {value}}}' > $DTF_RESULT_FILE"


def values() -> list[float]:
    # Small deterministic wiggle so the series has a spread.
    return [(BEFORE if i < N // 2 else AFTER) + (i % 3) * 0.5 for i in range(N)]


def run_series(s: Any, test_id: str) -> list[str]:
    ids = []
    for v in values():
        # One at a time, so the history has the order the values were produced in.
        tid = s.call("create_task", {"command": metric_command(v), "test_id": test_id})["task_id"]
        s.wait_task_status(tid, "completed")
        ids.append(tid)
    return ids


def test_statistics_change_points_and_comparison_through_the_coordinator(serve):
    s = serve()
    s.start_agent("bench-box", slots=1)
    s.wait_workers_online("bench-box")
    run_series(s, "resnet50")

    stats = s.call("aggregate_results", {"aggregation_level": "test_id"})["basic_statistics"]
    got = stats["resnet50"]["throughput"]
    assert got["count"] == N
    assert abs(got["mean"] - statistics.fmean(values())) < 1e-9
    assert abs(got["median"] - statistics.median(values())) < 1e-9
    assert got["min"] == min(values()) and got["max"] == max(values())

    # The drop became a change point: an event row in SQLite, at the first run of the new level.
    def change_points() -> list[dict[str, Any]]:
        conn = s.db()
        try:
            rows = conn.execute("SELECT data FROM events WHERE kind='change_point'").fetchall()
        finally:
            conn.close()
        return [json.loads(r["data"]) for r in rows]

    cps = wait_until(change_points, 15, message="no change point was recorded")
    # Whatever the batching, the new level's first values are not left standing as anomalies:
    # the change point explains them (anomalies flagged before it was seen are retracted).
    conn = s.db()
    try:
        standing = [json.loads(r["data"]) for r in conn.execute("SELECT data FROM events WHERE kind='anomaly'")]
    finally:
        conn.close()
    assert [a["value"] for a in standing if a["value"] < (BEFORE + AFTER) / 2] == []
    assert len(cps) == 1, cps
    cp = cps[0]
    assert cp["index"] == N // 2
    assert cp["direction"] == "regression"
    assert cp["series"]["test_id"] == "resnet50" and cp["metric"] == "throughput"
    assert abs(cp["rel_change"] - (AFTER - BEFORE) / BEFORE) < 0.02

    out = cli(s.env, "analyze", "stats", "--by", "worker_id", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["basic_statistics"]["bench-box"]["throughput"]["count"] == N
    table = cli(s.env, "analyze")
    assert "resnet50" in table.stdout and "throughput" in table.stdout

    report = s.call("get_comparison_report", {"aggregation_level": "test_id"})
    assert "resnet50" in json.dumps(report)


def test_findings_reach_subscribers_as_events(serve):
    import zmq

    s = serve()
    s.start_agent("bench-box", slots=1)
    s.wait_workers_online("bench-box")
    from dtf_agent.transport import make_socket
    from dtf_gui.client import find_credentials

    ctx = zmq.Context()
    creds = find_credentials(home=s.home)  # the events port serves known client keys only
    assert creds is not None
    sub = make_socket(ctx, zmq.SUB, curve=creds.curve())
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(s.info["events_endpoint"])
    kinds: set[str] = set()
    try:
        run_series(s, "bert")

        def saw_change_point() -> bool:
            while sub.poll(50):
                batch = p.decode(sub.recv())
                assert isinstance(batch, p.EventBatch)
                kinds.update(e.kind for e in batch.events)
            return "change_point" in kinds

        wait_until(saw_change_point, 15, message=lambda: f"event kinds seen: {sorted(kinds)}")
        assert "task" in kinds, "a subscriber gets task updates too"
    finally:
        sub.close(linger=0)
        ctx.term()


# Custom processors, loaded by the coordinator through their import paths.


def tag_findings(findings: list[Finding]) -> list[Finding]:
    for f in findings:
        f.notes["reviewed_by"] = "custom-postprocessor"
    return findings


def drop_warmup(result: Result) -> Result | None:
    return None if result.metrics.get("warmup") else result


def test_custom_result_processors_are_loaded_and_applied(coordinator, procs):
    coord = coordinator(result_aggregator={"postprocessors": [f"{__name__}:tag_findings"],
                                           "preprocessors": [f"{__name__}:drop_warmup"]})
    procs.start("agent", dtf_command("dtf-agent") + ["--coordinator", coord.endpoint("agents"), "--worker-id", "w",
                                                      "--slots", "1"])
    with Client(coord.endpoint("clients")) as c:
        wait_until(lambda: c.call("get_status")["workers_online"] == 1, 20)
        # Warm-up runs are wildly off and marked as such: the preprocessor keeps them out of analysis.
        commands = ["echo '{\"throughput\": 1, \"warmup\": 1}' > $DTF_RESULT_FILE"] * 3
        commands += [metric_command(v) for v in values()]
        for cmd in commands:
            tid = c.call("create_task", {"command": cmd, "test_id": "vit"})["task_id"]
            wait_until(lambda t=tid: c.call("get_task", {"task_id": t})["status"] == "completed", 20)

        def findings() -> list[dict[str, Any]]:
            conn = connect_readonly(coord.s.db_path)  # our own reader; the store belongs to the loop
            try:
                rows = conn.execute("SELECT data FROM events WHERE kind='change_point'").fetchall()
            finally:
                conn.close()
            return [json.loads(r[0]) for r in rows]

        found = wait_until(findings, 15, message="no change point recorded")
    assert all(f["notes"]["reviewed_by"] == "custom-postprocessor" for f in found)
    # Without the warm-up runs the step is the only change: it sits at run 12 of the measured ones.
    assert [f["index"] for f in found] == [N // 2]


def test_a_processor_that_cannot_be_loaded_stops_the_start_with_its_name(dtf_env, dtf_home):
    (dtf_home / "coordinator.yaml").write_text(
        "result_aggregator:\n  postprocessors: [no_such_module_xyz:fn]\n", encoding="utf-8")
    out = subprocess.run(dtf_command("dtf") + ["serve", "--port", "0", "--agent-port", "0", "--events-port", "0"],
                         env=dtf_env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "result_aggregator.postprocessors" in out.stderr and "no_such_module_xyz" in out.stderr
    assert "Traceback" not in out.stderr
