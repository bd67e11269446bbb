"""`dtf`, the headless CLI, against a real `dtf serve` with a real agent.

Every table the CLI prints is parsed by its header and checked against what the coordinator's API
answers for the same data: a column whose data has a value shows it (not "-"). That is the bug
that once got through: `dtf analyze anomalies` asked for fields the query never returned and
printed "-" for every row. Also: `--version`, a reader that closes stdout early, malformed
coordinator addresses, and that the client commands import no numpy, scipy, Qt or coordinator.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dtf_agent
from dtf_gui import cli as dtf_cli
from tests.helpers import ProcessTracker, Serve, cli, dtf_command, wait_until

AGENT = "cli-box"
# One wild value in a steady series (an anomaly), and a steadily rising series (a trend).
SPIKY = [100.0 + (i % 3) * 0.5 for i in range(12)]
SPIKY[7] = 500.0
RISING = [100.0 + 5.0 * i for i in range(10)]
# Results of the spiky test after a gap of GAP_S seconds: the "current" side of `analyze compare`.
LATER = [100.2, 100.7, 100.4]
GAP_S = 3
TIME_OF_DAY = re.compile(r"\d\d:\d\d:\d\d")


def metric_command(value: float, before: str = "") -> str:
    return f"{before}echo '{{\"throughput\": {value}}}' > $DTF_RESULT_FILE"


@dataclass
class Lab:
    """A coordinator with one agent and the results of a few series of tasks."""

    serve: Serve
    env: dict[str, str]
    task_ids: dict[str, list[str]] = field(default_factory=dict)
    later: bool = False  # the LATER results are in

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return self.serve.call(op, args)

    def run_series(self, test_id: str, values: list[float], first_before: str = "") -> list[str]:
        """One task at a time, so the results are stored in the order of ``values``."""
        ids = []
        for i, v in enumerate(values):
            command = metric_command(v, first_before if i == 0 else "")
            tid = self.call("create_task", {"command": command, "test_id": test_id})["task_id"]
            self.serve.wait_task_status(tid, "completed", timeout=30)
            ids.append(tid)
        self.task_ids.setdefault(test_id, []).extend(ids)
        return ids

    def wait_results_stored(self) -> None:
        """Every finished task's result is in SQLite (the coordinator writes in batches), so the
        analysis queries, which read SQLite, see all of them."""
        want = sum(len(ids) for ids in self.task_ids.values())

        def stored() -> bool:
            rows = self.call("list_results", {"limit": 1000})
            return len([r for r in rows if r.get("metrics")]) >= want

        wait_until(stored, 15, message=self.serve.tracker.logs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Built once for the module (a few dozen tasks run one after another)."""
    root = tmp_path_factory.mktemp("cli-lab")
    home, logs = root / "dtf-home", root / "logs"
    home.mkdir()
    logs.mkdir()
    env = dict(os.environ, DTF_HOME=str(home), PYTHONUNBUFFERED="1")
    tracker = ProcessTracker(logs)
    serve: Serve | None = None
    try:
        serve = Serve(tracker, home, env, "--no-mdns")
        serve.start_agent(AGENT, slots=1)
        serve.wait_workers_online(AGENT)
        lab = Lab(serve, env)
        lab.run_series("spiky", SPIKY)
        lab.run_series("rising", RISING)
        # A task that fails (no metrics, an error) and one that waits for a tag no worker has.
        failed = lab.call("create_task", {"command": "exit 3", "retry_limit": 0})["task_id"]
        serve.wait_task_status(failed, "failed", timeout=30)
        lab.call("create_task", {"command": "true", "requirements": {"tags": ["no-such-tag"]}})
        lab.wait_results_stored()
        yield lab
    finally:
        if serve is not None:
            serve.close()
        tracker.close()


@pytest.fixture(scope="module")
def lab_later(lab: Lab) -> Lab:
    """The lab plus LATER: spiky results at least GAP_S seconds after all the others (the task
    itself waits, in its command), so a time window can hold them and nothing else."""
    if not lab.later:
        lab.run_series("spiky", LATER, first_before=f"sleep {GAP_S}; ")
        lab.later = True
        lab.wait_results_stored()
    return lab


def parse_table(text: str) -> list[dict[str, str]]:
    """A `dtf` table as {column: cell} per row, cut where the header's columns start (cells are
    left-aligned to the header, so a cell with spaces stays whole)."""
    lines = text.rstrip("\n").split("\n")
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    names = [n.lower() for n in lines[0].split()]
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def table(lab: Lab, *args: str) -> tuple[list[str], list[dict[str, str]]]:
    out = cli(lab.env, *args)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    rows = parse_table(out.stdout)
    return [n.lower() for n in out.stdout.split("\n", 1)[0].split()], rows


def real(cell: str) -> bool:
    return cell not in ("", "-")


def shown(v: Any) -> str:
    """How the CLI prints a number (three significant digits)."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------ tables


def test_tasks_table(lab: Lab) -> None:
    columns, rows = table(lab, "tasks", "--limit", "100")
    assert columns == ["task_id", "type", "status", "priority", "worker_id", "create_time", "command", "why"]
    api = {t["task_id"]: t for t in lab.call("list_tasks", {"limit": 100})}
    assert {r["task_id"] for r in rows} == set(api)
    assert {r["status"] for r in rows} >= {"completed", "failed", "pending"}
    for r in rows:
        t = api[r["task_id"]]
        assert (r["type"], r["status"], r["priority"]) == (t["type"], t["status"], str(t["priority"]))
        assert TIME_OF_DAY.fullmatch(r["create_time"]), r
        assert r["command"] == t["parameters"]["command"][:60]
        if r["status"] in ("completed", "failed"):
            assert r["worker_id"] == AGENT, r
        else:
            assert r["worker_id"] == "-", r
        if r["status"] in ("pending", "failed"):  # why it waits, why it failed
            assert real(r["why"]) and r["why"] == t["why"][:60], r
        else:
            assert r["why"] == "-", r
    pending = [r for r in rows if r["status"] == "pending"]
    assert len(pending) == 1 and "needs tag" in pending[0]["why"]


def test_workers_table(lab: Lab) -> None:
    columns, rows = table(lab, "workers")
    assert columns == ["worker_id", "hostname", "status", "slots", "cpus", "memory_gb", "gpus", "last_seen"]
    (row,) = rows
    (w,) = lab.call("list_workers")
    caps = w["capabilities"]
    assert row["worker_id"] == AGENT and row["hostname"] == w["hostname"] and real(row["hostname"])
    assert row["status"] in ("online", "busy") and row["slots"] == "1"
    assert (row["cpus"], row["memory_gb"], row["gpus"]) == (
        shown(caps["cpu_count"]), shown(caps["memory_gb"]), shown(caps["gpu_count"]))
    assert int(row["cpus"]) >= 1 and float(row["memory_gb"]) > 0
    assert TIME_OF_DAY.fullmatch(row["last_seen"])


def test_status_summary(lab: Lab) -> None:
    out = cli(lab.env, "status")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    st = lab.call("get_status")
    first, workers, tasks, security = out.stdout.rstrip("\n").split("\n")
    assert security == f"security: CURVE, coordinator key {st['security']['fingerprint']}", security
    assert st["security"]["fingerprint"].startswith("SHA256:")
    m = re.fullmatch(r"coordinator (\S+) up (\d+) s", first)
    assert m and m[1] == st["coordinator_id"], first
    assert workers == "workers: 1 online of 1 known"
    counts = dict(part.rsplit(" ", 1) for part in tasks.removeprefix("tasks:").strip().split(", "))
    assert {k: int(v) for k, v in counts.items()} == st["tasks"]
    assert st["tasks"]["completed"] >= len(SPIKY) + len(RISING) and st["tasks"]["pending"] == 1


def test_results_csv(lab: Lab) -> None:
    out = cli(lab.env, "results")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    reader = csv.DictReader(io.StringIO(out.stdout))
    assert reader.fieldnames == ["result_id", "task_id", "worker_id", "test_id", "timestamp", "status",
                                 "execution_time", "exit_code", "error", "metric.throughput"]
    rows = list(reader)
    api = {r["result_id"]: r for r in lab.call("list_results", {"limit": 1000})}
    assert {r["result_id"] for r in rows} == set(api)
    for r in rows:
        a = api[r["result_id"]]
        for col in ("task_id", "worker_id", "timestamp", "status", "execution_time", "exit_code"):
            assert real(r[col]), (col, r)
        assert r["task_id"] == a["task_id"] and r["worker_id"] == AGENT
        assert float(r["timestamp"]) == a["timestamp"]  # the raw value, not a time of day
        assert r["test_id"] == a["test_id"]
        if (a["metrics"] or {}).get("throughput") is not None:
            assert float(r["metric.throughput"]) == a["metrics"]["throughput"], r
        else:
            assert r["metric.throughput"] == ""
        if r["status"] != "success":
            assert r["error"] == "exit code 3" and r["exit_code"] == "3", r
    assert sorted(float(r["metric.throughput"]) for r in rows if r["test_id"] == "rising") == RISING


def test_analyze_stats_table(lab: Lab) -> None:
    columns, rows = table(lab, "analyze", "stats")
    assert columns == ["group", "metric", "count", "mean", "median", "std", "p95", "min", "max", "cv"]
    api = lab.call("aggregate_results", {"aggregation_level": "test_id"})["basic_statistics"]
    assert {(r["group"], r["metric"]) for r in rows} == {("spiky", "throughput"), ("rising", "throughput")}
    for r in rows:
        st = api[r["group"]][r["metric"]]
        for col in columns[2:]:
            assert real(r[col]) and r[col] == shown(st[col]), (col, r, st)
    rising = next(r for r in rows if r["group"] == "rising")
    assert (float(rising["min"]), float(rising["max"])) == (min(RISING), max(RISING))


def test_analyze_anomalies_table(lab: Lab) -> None:
    columns, rows = table(lab, "analyze", "anomalies")
    assert columns == ["group", "metric", "value", "score", "median", "expected_low", "expected_high",
                       "result_id"]
    (row,) = rows  # the one wild value
    (a,) = lab.call("get_result_anomalies", {"aggregation_level": "test_id"})
    for col in columns:
        assert real(row[col]) and row[col] == shown(a[col]), (col, row, a)
    assert (row["group"], row["metric"], float(row["value"])) == ("spiky", "throughput", 500.0)
    assert float(row["expected_low"]) < float(row["median"]) < float(row["expected_high"]) < 500
    assert float(row["score"]) > 2.5


def test_analyze_trends_table(lab: Lab) -> None:
    columns, rows = table(lab, "analyze", "trends")
    assert columns == ["group", "metric", "n", "slope", "rel_change", "p_value", "direction", "significant"]
    api = lab.call("aggregate_results", {"aggregation_level": "test_id", "include_trends": True})["trends"]
    assert {(r["group"], r["metric"]) for r in rows} == {("spiky", "throughput"), ("rising", "throughput")}
    for r in rows:
        t = api[r["group"]][r["metric"]]
        for col in ("n", "slope", "rel_change", "p_value", "significant"):
            assert real(r[col]) and r[col] == shown(t[col]), (col, r, t)
        # Set only when significant: there it must show.
        assert r["direction"] == (t["direction"] if t["significant"] else "-"), r
    rising = next(r for r in rows if r["group"] == "rising")
    assert rising["significant"] == "True" and rising["direction"] == "improvement"
    assert (int(rising["n"]), float(rising["slope"])) == (len(RISING), 5.0)
    assert float(rising["p_value"]) < 0.05


@pytest.mark.slow  # its data holds a gap of GAP_S seconds between two time windows
def test_analyze_compare_table(lab_later: Lab) -> None:
    lab = lab_later
    stamps = {r["task_id"]: r["timestamp"] for r in lab.call("list_results", {"limit": 1000})}
    later = lab.task_ids["spiky"][-len(LATER):]
    before = [stamps[t] for ids in lab.task_ids.values() for t in ids if t not in later]
    assert min(stamps[t] for t in later) - max(before) >= GAP_S - 0.5
    # The current window starts just after the last earlier result; the CLI starts its clock a
    # little later than we read ours, which the gap leaves room for.
    since_hours = (time.time() - (max(before) + 0.2)) / 3600
    columns, rows = table(lab, "analyze", "compare", "--since-hours", repr(since_hours))
    assert columns == ["group", "metric", "verdict", "pct_change", "p_value", "baseline_n", "baseline_mean",
                       "baseline_median", "current_n", "current_mean", "current_median"]
    by_group = {r["group"]: r for r in rows}
    assert set(by_group) == {"spiky", "rising"}
    spiky, rising = by_group["spiky"], by_group["rising"]
    # Both sides have data: every column has a value.
    for col in columns:
        assert real(spiky[col]), (col, spiky)
    assert (spiky["baseline_n"], spiky["current_n"]) == (str(len(SPIKY)), str(len(LATER)))
    assert spiky["verdict"] in ("unchanged", "improved", "regressed")
    assert float(spiky["current_mean"]) == pytest.approx(sum(LATER) / len(LATER), rel=1e-2)
    # Nothing in the current window: the comparison's own fields are empty, the baseline's are not.
    assert (rising["verdict"], rising["current_n"], rising["baseline_n"]) == ("not enough data", "0", "10")
    for col in ("baseline_mean", "baseline_median"):
        assert real(rising[col]), (col, rising)
    for col in ("pct_change", "p_value", "current_mean", "current_median"):
        assert rising[col] == "-", (col, rising)


# ------------------------------------------------------------------------------ the process


def test_client_commands_import_no_numpy_scipy_qt_or_coordinator(lab: Lab) -> None:
    """Run every client command in one process, then list what it imported."""
    commands = [["status"], ["tasks"], ["workers"], ["results"], ["results", "--format", "json"],
                ["analyze", "stats"], ["analyze", "anomalies"], ["analyze", "trends"], ["analyze", "compare"],
                ["submit", "--type", "noop"], ["cancel", "no-such-task"], ["retry", "no-such-task"]]
    code = (
        "import contextlib, io, json, sys\n"
        "from dtf_gui.cli import dtf_main\n"
        "codes = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        codes.append(dtf_main(argv))\n"
        "heavy = {'numpy', 'scipy', 'PySide6', 'pyqtgraph', 'sqlite_utils', 'yaml'}\n"
        "print(json.dumps({'codes': codes, 'imported': sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "    or m.startswith('dtf_gui.coordinator') or m in ('dtf_agent.config', 'dtf_gui.ui'))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], env=lab.env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().split("\n")[-1])
    assert got["codes"] == [0] * 9 + [0, 1, 1]  # the last two name a task that does not exist
    assert got["imported"] == []


def test_version(dtf_env: dict[str, str]) -> None:
    out = cli(dtf_env, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"dtf {dtf_agent.__version__}"
    assert dtf_agent.__version__ == importlib.metadata.version("dtf")


@pytest.mark.parametrize("argv", [["tasks"], ["results"], ["status"], ["analyze", "trends"]])
def test_a_reader_that_closes_stdout_early_gets_no_traceback(lab: Lab, argv: list[str]) -> None:
    # Nobody ever reads: the pipe has no reader left when the command writes, so the write fails.
    proc = subprocess.Popen(dtf_command("dtf") + argv, env=lab.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141  # 128 + SIGPIPE, as a shell reports a process ended by it
    assert err == b""


def test_dtf_tasks_into_head(lab: Lab) -> None:
    dtf = " ".join(dtf_command("dtf"))
    out = subprocess.run(["bash", "-c", f"{dtf} tasks --limit 100 | head -1"], env=lab.env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0
    assert out.stderr == ""
    assert out.stdout.split() == ["TASK_ID", "TYPE", "STATUS", "PRIORITY", "WORKER_ID", "CREATE_TIME", "COMMAND",
                                  "WHY"]


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8080", "tcp://nohost", "", "tcp://127.0.0.1:99999",
                                      "tcp://*:8080", "http://127.0.0.1:8080"])
def test_a_malformed_coordinator_address_is_a_usage_error(dtf_env: dict[str, str], endpoint: str) -> None:
    out = cli(dtf_env, "status", "--coordinator", endpoint)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "Traceback" not in out.stderr and "ZMQError" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert repr(endpoint) in out.stderr and "tcp://HOST:PORT" in out.stderr, out.stderr


def test_a_malformed_address_in_another_command(dtf_env: dict[str, str]) -> None:
    out = cli(dtf_env, "submit", "--command", "true", "--coordinator", "localhost:8080")
    assert out.returncode == 2 and "'localhost:8080'" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------------ the parser


@pytest.mark.parametrize("argv", [
    ["status"], ["--log-level", "DEBUG", "tasks", "--status", "pending", "--limit", "3"],
    ["--log-level=WARNING", "analyze", "anomalies", "--by", "worker_id", "--metric", "x", "--json"],
    ["submit", "--command", "true", "--tag", "a", "--tag", "b", "--count", "2", "--wait"],
    ["priority", "T1", "7"], ["assign", "T1", "W1"], ["cancel", "T1", "T2"],
    ["serve", "--port", "0", "--no-mdns"], ["results", "-o", "x.csv", "--format", "json"],
])
def test_the_parser_for_one_command_reads_argv_as_the_whole_parser_does(argv: list[str]) -> None:
    whole = vars(dtf_cli.dtf_parser().parse_args(argv))
    name = dtf_cli._named_command(argv)
    assert name == whole["cmd"]
    assert vars(dtf_cli.dtf_parser(name).parse_args(argv)) == whole


def test_help_and_unknown_commands_use_the_whole_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert dtf_cli._named_command(["--help"]) is None
    assert dtf_cli._named_command(["--log", "DEBUG", "status"]) is None  # an abbreviation: argparse decides
    with pytest.raises(SystemExit) as exc:
        dtf_cli.dtf_main(["--help"])
    assert exc.value.code == 0
    listed = capsys.readouterr().out
    for name in dtf_cli.COMMANDS:
        assert name in listed
    with pytest.raises(SystemExit) as exc:
        dtf_cli.dtf_main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err



def test_a_bad_coordinator_yaml_stops_serve_with_its_line_and_key(dtf_env: dict[str, str], dtf_home: Path) -> None:
    # The config module is imported only by `serve`; its ConfigError is still a usage error.
    (dtf_home / "coordinator.yaml").write_text("server:\n  prot: 1\n", encoding="utf-8")
    out = cli(dtf_env, "serve", "--port", "0", "--agent-port", "0", "--events-port", "0", "--no-mdns")
    assert out.returncode == 2
    assert "coordinator.yaml:2" in out.stderr and "server.prot" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("enabled", [True, False])
def test_importing_the_cli_leaves_the_garbage_collector_as_it_was(enabled: bool) -> None:
    code = ("import gc, sys\n"
            f"gc.enable() if {enabled} else gc.disable()\n"
            "import dtf_gui.cli\n"
            "sys.exit(0 if gc.isenabled() == " + str(enabled) + " and not gc.get_freeze_count() else 1)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0
