"""`dtf pytest` for real: a `dtf serve`, two agent processes on loopback, and a small suite of
our own with passing, failing, skipped, xfail, crashing (os._exit) and flaky tests.

Checked: the exact counts and pytest's summary line and exit code; the crash reported as such and
the tests after it still run; the flaky test rerun on the other agent and stored as flaky; one
JUnit XML for the whole run; the second run's shards planned from the first run's durations; the
second run ships no bundle bytes (client to coordinator, coordinator to agents); `dtf logs`.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtf_gui.cli_runs import fetch_tests
from dtf_gui.shards import plan_shards
from tests.helpers import Serve, dtf_command, serve_lab

AGENTS = ("spread-a", "spread-b")

SUITE = {
    "test_timed.py": """
        import time
        import pytest

        @pytest.mark.parametrize("ms", [400, 300, 250, 200, 150, 100, 60, 30])
        def test_sleep(ms):
            time.sleep(ms / 1000)
    """,
    "test_outcomes.py": """
        import pytest

        def test_fails():
            assert 1 + 1 == 3, "arithmetic is broken"

        def test_skipped():
            pytest.skip("not on this machine")

        @pytest.mark.xfail(reason="known bug")
        def test_xfail():
            assert False
    """,
    "test_crash.py": """
        import os

        def test_before():
            pass

        def test_crashes():
            print("about to die")
            os._exit(3)

        def test_after():
            pass
    """,
    "test_flaky.py": """
        import os
        from pathlib import Path

        def test_flaky():
            # Fails the first time it runs anywhere, passes after (the marker is outside the bundle).
            marker = Path(os.environ["FLAKY_DIR"]) / "ran-once"
            if not marker.exists():
                marker.write_text("x")
                raise AssertionError("first run fails")
    """,
    "test_bench.py": """
        def test_sum(benchmark):
            assert benchmark(sum, range(100)) == 4950
    """,
    # pytest's output changes with addopts; dtf pytest must not care.
    "pytest.ini": """
        [pytest]
        addopts = -q
    """,
    "conftest.py": """
        import pytest

        @pytest.fixture
        def answer():
            return 42
    """,
    "sub/test_sub.py": """
        def test_answer(answer):
            assert answer == 42
    """,
}
COLLECTED = 8 + 3 + 3 + 1 + 1 + 1


@dataclass
class Lab:
    serve: Serve
    env: dict[str, str]
    suite: Path
    root: Path

    def dtf_pytest(self, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(dtf_command("dtf") + ["pytest", *args], cwd=cwd or self.suite, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return self.serve.call(op, args)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("spread")
    suite, flaky = root / "suite", root / "flaky"
    for d in (suite, flaky):
        d.mkdir()
    for name, text in SUITE.items():
        (suite / name).parent.mkdir(parents=True, exist_ok=True)
        (suite / name).write_text(textwrap.dedent(text))
    with serve_lab(root, dict.fromkeys(AGENTS, 1), env_extra={"FLAKY_DIR": str(flaky)}) as (serve, env):
        yield Lab(serve, env, suite, root)


def summary_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("=") and " in " in ln and "s =" in ln]
    assert lines, out
    return lines[-1].strip("= ")


def outcomes(lab: Lab, run_id: str) -> dict[str, list[tuple[str, str]]]:
    """test id -> [(outcome, worker)] in the order the rows were stored."""
    out: dict[str, list[tuple[str, str]]] = {}
    for row in fetch_tests(lab.serve.client, run_id):
        out.setdefault(row["test_id"], []).append((row["outcome"], row["worker_id"]))
    return out


def run_id_of(out: str) -> str:
    m = re.search(r"dtf pytest: run (\S+)", out)
    assert m, out
    return m.group(1)


@pytest.fixture(scope="module")
def first(lab: Lab) -> tuple[subprocess.CompletedProcess[str], str]:
    proc = lab.dtf_pytest("--reruns", "1", "--junitxml", str(lab.root / "first.xml"))
    return proc, run_id_of(proc.stdout)


def test_counts_summary_and_exit_code_are_pytests(lab: Lab, first: Any) -> None:
    proc, _ = first
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = summary_line(proc.stdout)
    # The flaky test counts as passed (as with pytest-rerunfailures) and is named as flaky too.
    assert re.fullmatch(r"1 failed, 13 passed \(1 flaky\), 1 skipped, 1 xfailed, 1 crashed in [\d.]+s", line), line
    assert "FAILED test_outcomes.py::test_fails - AssertionError: arithmetic is broken" in proc.stdout
    assert "CRASHED test_crash.py::test_crashes" in proc.stdout
    assert "FLAKY test_flaky.py::test_flaky" in proc.stdout


def test_the_crash_is_reported_and_the_rest_of_its_shard_still_ran(lab: Lab, first: Any) -> None:
    rows = outcomes(lab, first[1])
    assert rows["test_crash.py::test_crashes"][0][0] == "crashed"
    assert rows["test_crash.py::test_after"] == [("passed", rows["test_crash.py::test_after"][0][1])]
    assert rows["test_crash.py::test_before"][0][0] == "passed"
    crashed = next(r for r in fetch_tests(lab.serve.client, first[1]) if r["test_id"] == "test_crash.py::test_crashes")
    assert "exit code 3" in crashed["longrepr"] or "exited with 3" in crashed["longrepr"], crashed["longrepr"]


def test_a_benchmarks_stats_are_its_rows_metrics(lab: Lab, first: Any) -> None:
    rows = lab.serve.db().execute(
        "SELECT m.name, m.value FROM metrics m JOIN results r ON r.result_id = m.result_id "
        "WHERE r.run_id = ? AND r.test_id = 'test_bench.py::test_sum'", (first[1],)).fetchall()
    metrics = dict(rows)
    assert metrics["bench_mean_s"] > 0 and metrics["bench_rounds"] >= 1
    info = lab.call("metric_info", {"names": ["bench_mean_s", "bench_ops"]})
    assert (info["bench_mean_s"]["unit"], info["bench_mean_s"]["direction"]) == ("s", "lower")
    assert info["bench_ops"]["direction"] == "higher" and info["bench_ops"]["source"] == "task"


def test_the_flaky_test_was_rerun_on_the_other_worker_and_stored_as_flaky(lab: Lab, first: Any) -> None:
    rows = outcomes(lab, first[1])["test_flaky.py::test_flaky"]
    assert [o for o, _ in rows] == ["failed", "flaky"]
    assert rows[0][1] != rows[1][1] and {w for _, w in rows} <= set(AGENTS)
    # A test that fails every time is rerun too, and stays failed.
    assert [o for o, _ in outcomes(lab, first[1])["test_outcomes.py::test_fails"]] == ["failed", "failed"]
    shown = subprocess.run(dtf_command("dtf") + ["runs", first[1]], env=lab.env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert shown.returncode == 0 and "flaky" in shown.stdout and "test_flaky.py::test_flaky" in shown.stdout


def test_one_junit_xml_for_the_whole_run(lab: Lab, first: Any) -> None:
    suite = ET.parse(lab.root / "first.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        str(COLLECTED), "2", "0", "2")
    names = {(tc.get("classname"), tc.get("name")) for tc in suite.iter("testcase")}
    assert ("test_timed", "test_sleep[400]") in names and ("test_crash", "test_crashes") in names


def test_second_run_is_planned_from_history_and_ships_no_bundle(lab: Lab, first: Any) -> None:
    served = lab.call("get_status")["outputs"]["bundle_bytes_served"]
    assert served > 0  # the first run's agents fetched it
    ids = [f"test_timed.py::test_sleep[{ms}]" for ms in (400, 300, 250, 200, 150, 100, 60, 30)]
    durations = lab.call("test_durations", {"test_ids": ids})  # what the second run will plan with
    assert set(durations) == set(ids)  # every one timed by the first run
    proc = lab.dtf_pytest("-k", "test_sleep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"8 passed in [\d.]+s", summary_line(proc.stdout))
    assert "already on the coordinator" in proc.stderr
    assert lab.call("get_status")["outputs"]["bundle_bytes_served"] == served  # the agents had it cached
    run = lab.call("get_run", {"run_id": run_id_of(proc.stdout)})
    assert run["meta"]["known"] == 8 and run["meta"]["shards"] == 2
    # The shards submitted are the duration plan's: longest first onto the least loaded.
    plan = plan_shards(ids, durations, 2)
    assert sorted(map(sorted, run["meta"]["plan"])) == sorted(sorted(s.tests) for s in plan.shards)
    loads = [sum(durations[t] for t in tests) for tests in run["meta"]["plan"]]
    assert max(loads) - min(loads) <= max(durations.values()) + 1e-9


def test_logs_of_a_shard(lab: Lab, first: Any) -> None:
    crashed = next(r for r in fetch_tests(lab.serve.client, first[1]) if r["test_id"] == "test_crash.py::test_crashes")

    def log(*extra: str) -> str:
        return subprocess.run(dtf_command("dtf") + ["logs", crashed["task_id"], *extra], env=lab.env,
                              capture_output=True, text=True, timeout=60, check=False).stdout

    # Both pytest sessions of the shard, the one that died and the one started after it, in one log;
    # the runner says in its stderr why it started pytest again.
    assert "starting it again" in log("--stderr")
    assert "passed" in log()


def test_from_a_subdirectory_with_options_after_the_path(lab: Lab, first: Any) -> None:
    # The rootdir (pytest.ini, conftest.py with the fixture) is what ships, and node ids are relative
    # to it; --junitxml after the path is dtf's, --tb=line is pytest's.
    out = lab.root / "sub.xml"
    proc = lab.dtf_pytest(".", "--junitxml", str(out), "--tb=line", cwd=lab.suite / "sub")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"1 passed in [\d.]+s", summary_line(proc.stdout))
    rows = outcomes(lab, run_id_of(proc.stdout))
    assert rows == {"sub/test_sub.py::test_answer": [("passed", rows["sub/test_sub.py::test_answer"][0][1])]}
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1"
    # Unchanged suite, same arguments: the node ids of last time, no collection here.
    again = lab.dtf_pytest(".", "--junitxml", str(out), "--tb=line", cwd=lab.suite / "sub")
    assert again.returncode == 0 and "as collected last time" in again.stderr, again.stderr
    # A new test in the suite changes its digest: collected again, and run.
    (lab.suite / "sub" / "test_more.py").write_text("def test_more():\n    pass\n")
    try:
        third = lab.dtf_pytest(".", cwd=lab.suite / "sub")
    finally:
        (lab.suite / "sub" / "test_more.py").unlink()
    assert third.returncode == 0 and "as collected last time" not in third.stderr
    assert re.fullmatch(r"2 passed in [\d.]+s", summary_line(third.stdout))


def test_options_that_need_pytests_local_cache_are_refused_with_the_reason(lab: Lab) -> None:
    proc = lab.dtf_pytest("--lf")
    assert proc.returncode == 4 and "pytest's cache" in proc.stderr


def test_a_bundle_with_requirements_runs_in_its_own_cached_venv(lab: Lab, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    # No requirement line: the venv is made without pip, as it would be with one (no network here).
    (proj / "requirements.txt").write_text("# nothing to install\n")
    (proj / "where.py").write_text("import sys, pytest\nprint(sys.prefix)\n")

    def submit() -> str:
        proc = subprocess.run(dtf_command("dtf") + ["submit", "--bundle", str(proj), "--requirements",
                                                    "requirements.txt", "--command", "python where.py",
                                                    "--worker", AGENTS[0], "--wait"],
                              env=lab.env, capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    first, second = submit(), submit()
    prefix = [ln for ln in first.splitlines() if ln.startswith("/")][0]
    # Inside the agent's cache, and the same venv the second time (made once per requirements).
    assert "/cache/venvs/" in prefix, first
    assert prefix in second
