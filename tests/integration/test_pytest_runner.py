"""PytestRun for real: a generated suite in tmp_path, run by the shard runner the agent uses.

Per node id outcomes, a test that kills pytest ("crashed", and the tests after it still run in a
new pytest), timeout and cancel (no process of the shard left), and a big shard in one pytest.
Most runs disable pytest's plugin autoload through the task's env: hypothesis alone costs a
second per pytest start here, and these tests start many."""

from __future__ import annotations

import os
import queue
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from dtf_agent import protocol
from dtf_agent.protocol import RunSpec
from dtf_agent.runners import pytest_run
from dtf_agent.runners.command import Outcome
from dtf_agent.runners.pytest_run import MAX_TESTS_BYTES, NOT_FOUND, PytestRun, fit
from tests.helpers import alive, wait_until

FAST = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
LONG_ID = "case-" + "x" * 300 + "::/[1]"

MIXED = '''
import os
import sys

import pytest


def test_pass():
    pass


def test_fail():
    print("some output of the failing test")
    assert 1 == 2


def test_skip():
    pytest.skip("not on this machine")


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0


@pytest.mark.xfail(reason="fixed?", strict=True)
def test_xpass_strict():
    pass


@pytest.fixture
def broken():
    raise RuntimeError("fixture setup broke")


def test_fixture_error(broken):
    pass


def test_prints():
    print("printed by test_prints")
    print("on stderr too", file=sys.stderr)


def test_env():
    assert os.environ["DTF_TASK_ID"] == "shard-1"
    assert os.environ["DTF_ATTEMPT"] == "2"
    assert os.environ["FROM_TASK"] == "yes"
    import helper_on_path  # from the PYTHONPATH the task set: kept behind the plugin's

    assert helper_on_path.VALUE == 7


@pytest.mark.parametrize("n", [1, 2], ids=["%s", "short"])
def test_param(n):
    assert n in (1, 2)
'''.replace('"%s"', repr(LONG_ID))

CRASH = '''
import os
import signal


def test_before():
    pass


def test_exit():
    print("about to exit", flush=True)
    os._exit(3)


def test_between():
    pass


def test_sigkill():
    os.kill(os.getpid(), signal.SIGKILL)


def test_after():
    pass
'''

SLOW = '''
import subprocess
import sys
import time
from pathlib import Path


def test_quick():
    pass


def test_sleeps():
    # A child in the group and one that left it: neither may outlive the shard.
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]),
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)]
    Path("children.txt").write_text(" ".join(str(k.pid) for k in kids))
    time.sleep(120)


def test_never_reached():
    pass
'''


class Shard:
    """Starts PytestRuns in a suite folder and hands back their outcomes."""

    def __init__(self, tmp_path: Path) -> None:
        self.suite = tmp_path / "suite"
        self.suite.mkdir()
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.runs: list[PytestRun] = []

    def write(self, name: str, text: str) -> None:
        path = self.suite / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")

    def start(self, tests: list[str], *, timeout: float | None = None, env: dict[str, str] | None = None,
              attempt: int = 1, **kwargs: Any) -> PytestRun:
        params: dict[str, Any] = {"tests": tests, "cwd": str(self.suite), "env": {**FAST, **(env or {})}}
        params.update(kwargs.pop("params", {}))
        spec = RunSpec(task_id="shard-1", type="pytest", parameters=params, timeout=timeout, attempt=attempt)
        run = PytestRun(spec, self.work, self.done.put, **kwargs)
        self.runs.append(run)
        run.start()
        return run

    def outcome(self, timeout: float = 60) -> Outcome:
        try:
            return self.done.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no outcome within {timeout} s") from None

    def close(self) -> None:
        for run in self.runs:
            run.cancel()
            run.join(10)
            run.cleanup()


@pytest.fixture
def shard(tmp_path: Path) -> Any:
    s = Shard(tmp_path)
    try:
        yield s
    finally:
        s.close()


def outcomes(outcome: Outcome) -> dict[str, str]:
    return {t["nodeid"]: t["outcome"] for t in outcome.tests}


def by_id(outcome: Outcome) -> dict[str, dict[str, Any]]:
    return {t["nodeid"]: t for t in outcome.tests}


def test_a_mixed_shard_with_crashes(shard: Shard, tmp_path: Path) -> None:
    shard.write("test_mixed.py", MIXED)
    shard.write("test_crash.py", CRASH)
    shard.write("test_syntax.py", "def test_broken(:\n    pass\n")
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "helper_on_path.py").write_text("VALUE = 7\n")
    mixed = [f"test_mixed.py::{n}" for n in ("test_pass", "test_fail", "test_skip", "test_xfail",
                                               "test_xpass_strict", "test_fixture_error", "test_prints",
                                               "test_env")]
    params = [f"test_mixed.py::test_param[{LONG_ID}]", "test_mixed.py::test_param[short]"]
    crash = [f"test_crash.py::{n}" for n in ("test_before", "test_exit", "test_between", "test_sigkill", "test_after")]
    missing = ["test_mixed.py::test_not_there", "not_a_file.py::test_x"]
    broken = ["test_syntax.py::test_broken"]
    tests = crash[:2] + mixed + missing + params + broken + crash[2:]
    run = shard.start(tests, env={"FROM_TASK": "yes", "PYTHONPATH": str(helpers)}, attempt=2)
    logs = run.log_files()
    assert logs["stdout"].exists() and logs["stderr"].exists()  # from the start on, for the streamer
    out = shard.outcome()

    assert outcomes(out) == {
        "test_crash.py::test_before": "passed",
        "test_crash.py::test_exit": "crashed",
        "test_mixed.py::test_pass": "passed",
        "test_mixed.py::test_fail": "failed",
        "test_mixed.py::test_skip": "skipped",
        "test_mixed.py::test_xfail": "xfailed",
        "test_mixed.py::test_xpass_strict": "failed",
        "test_mixed.py::test_fixture_error": "error",
        "test_mixed.py::test_prints": "passed",
        "test_mixed.py::test_env": "passed",
        "test_mixed.py::test_not_there": "error",
        "not_a_file.py::test_x": "error",
        f"test_mixed.py::test_param[{LONG_ID}]": "passed",
        "test_mixed.py::test_param[short]": "passed",
        "test_syntax.py::test_broken": "error",
        "test_crash.py::test_between": "passed",   # ran after the first crash, in a new pytest
        "test_crash.py::test_sigkill": "crashed",
        "test_crash.py::test_after": "passed",     # and after the second
        "test_syntax.py": "error",                 # the module that failed to import, once
    }
    # One entry per listed node id, in the order given; the broken module's own entry after them.
    assert [t["nodeid"] for t in out.tests] == tests + ["test_syntax.py"]
    for t in out.tests:
        protocol.TestOutcome(**t)  # every entry fits the wire record
    protocol.ResultRecord(result_id="r", task_id="shard-1", status=out.status, tests=[protocol.TestOutcome(**t) for t in out.tests])

    t = by_id(out)
    assert "exit code 3" in t["test_crash.py::test_exit"]["longrepr"]
    assert "pytest process died" in t["test_crash.py::test_exit"]["longrepr"]
    assert "SIGKILL" in t["test_crash.py::test_sigkill"]["longrepr"]
    assert t["test_mixed.py::test_not_there"]["longrepr"] == NOT_FOUND
    assert t["not_a_file.py::test_x"]["longrepr"] == NOT_FOUND
    assert "test_syntax.py" in t["test_syntax.py::test_broken"]["longrepr"]
    assert "SyntaxError" in t["test_syntax.py"]["longrepr"] or "invalid syntax" in t["test_syntax.py"]["longrepr"]
    assert "some output of the failing test" in t["test_mixed.py::test_fail"]["output"]
    assert t["test_mixed.py::test_prints"]["output"] == ""  # output only for failures
    assert "fixture setup broke" in t["test_mixed.py::test_fixture_error"]["longrepr"]
    assert t["test_mixed.py::test_skip"]["longrepr"] == "Skipped: not on this machine"
    assert all(x["duration"] >= 0 for x in out.tests)

    assert out.status == "failure" and out.exit_code == 1
    assert out.error == "2 of 18 tests failed; 4 of 18 tests errored; 2 crashed; pytest restarted 2 times"
    assert out.end_time >= out.start_time
    # Three pytest sessions, all appended to the same logs.
    stdout = logs["stdout"].read_text()
    assert stdout.count("test session starts") == 3
    stderr = logs["stderr"].read_text()
    assert stderr.count("starting it again") == 2
    assert "restart 2 of at most 20" in out.stderr_tail
    assert run.progress() == (18, 8, 18, "")
    # The run's own files stay until the agent has streamed them; cleanup() removes them all.
    assert sorted(p.name.rsplit(".", 1)[1] for p in shard.work.iterdir()) == ["stderr", "stdout"]
    run.cleanup()
    assert list(shard.work.iterdir()) == []


def _children(suite: Path) -> list[psutil.Process]:
    text = wait_until(lambda: (suite / "children.txt").read_text(), timeout=30)
    return [psutil.Process(int(pid)) for pid in text.split()]


def test_timeout_kills_the_tree(shard: Shard) -> None:
    shard.write("test_slow.py", SLOW)
    tests = ["test_slow.py::test_quick", "test_slow.py::test_sleeps", "test_slow.py::test_never_reached"]
    run = shard.start(tests, timeout=4)
    kids = _children(shard.suite)
    pytest_proc = psutil.Process(wait_until(lambda: run.proc).pid)
    out = shard.outcome()
    assert outcomes(out) == {"test_slow.py::test_quick": "passed", "test_slow.py::test_sleeps": "crashed",
                             "test_slow.py::test_never_reached": "error"}
    t = by_id(out)
    assert "timed out" in t["test_slow.py::test_sleeps"]["longrepr"]
    assert t["test_slow.py::test_sleeps"]["duration"] > 0
    assert t["test_slow.py::test_never_reached"]["longrepr"] == "not run: the shard timed out"
    assert out.status == "failure" and out.error.startswith("timed out after 4 s")
    assert not alive([pytest_proc, *kids])


def test_cancel_kills_the_tree_and_keeps_what_finished(shard: Shard) -> None:
    shard.write("test_slow.py", SLOW)
    tests = ["test_slow.py::test_quick", "test_slow.py::test_sleeps", "test_slow.py::test_never_reached"]
    run = shard.start(tests)
    kids = _children(shard.suite)
    # progress() reads the report as it grows: the sleeping test is the one running now.
    assert wait_until(lambda: run.progress() == (1, 0, 3, "test_slow.py::test_sleeps"), timeout=30)
    pytest_proc = psutil.Process(run.proc.pid)  # type: ignore[union-attr]
    t0 = time.monotonic()
    run.cancel()
    assert time.monotonic() - t0 < 1  # the agent's loop calls it: it must not block
    out = shard.outcome()
    assert out.error == "cancelled" and out.status == "failure"
    assert outcomes(out) == {"test_slow.py::test_quick": "passed"}
    assert not alive([pytest_proc, *kids])


def test_a_big_shard_runs_in_one_pytest(shard: Shard) -> None:
    body = "import pytest\n\n@pytest.mark.parametrize('i', range(100))\ndef test_n(i):\n    assert i >= 0\n"
    for k in range(3):
        shard.write(f"test_big_{k}.py", body)
    tests = [f"test_big_{k}.py::test_n[{i}]" for k in range(3) for i in range(100)]
    run = shard.start(tests)
    out = shard.outcome()
    assert out.status == "success" and out.exit_code == 0 and out.error == ""
    assert set(outcomes(out).values()) == {"passed"} and len(out.tests) == 300
    # One pytest session for the whole shard: no process per test.
    assert run.log_files()["stdout"].read_text().count("test session starts") == 1
    assert run.progress() == (300, 0, 300, "")


def test_pytest_benchmark_stats_become_the_tests_metrics(shard: Shard) -> None:
    pytest.importorskip("pytest_benchmark")
    shard.write("test_bench.py", """
        def test_sum(benchmark):
            benchmark.extra_info["items"] = 1000
            assert benchmark(sum, range(1000)) == 499500

        def test_plain():
            pass
    """)
    # Plugins are not autoloaded here (FAST): pytest-benchmark is named, as a suite's conftest would.
    shard.start(["test_bench.py::test_sum", "test_bench.py::test_plain"],
                params={"args": ["-p", "pytest_benchmark.plugin", "--benchmark-min-rounds=3"]})
    out = shard.outcome()
    assert out.status == "success", out.error
    tests = by_id(out)
    m = tests["test_bench.py::test_sum"]["metrics"]
    assert 0 < m["bench_min_s"] <= m["bench_mean_s"] <= m["bench_max_s"] and m["bench_rounds"] >= 3
    assert m["items"] == 1000.0 and m["bench_ops"] > 0
    assert "metrics" not in tests["test_bench.py::test_plain"]
    assert out.units["bench_mean_s"] == "s" and out.directions["bench_mean_s"] == "lower"
    assert out.directions["bench_ops"] == "higher"


def test_restarts_are_capped(shard: Shard) -> None:
    shard.write("test_c.py", """
        import os

        def test_a():
            os._exit(1)

        def test_b():
            os._exit(1)

        def test_c():
            pass
    """)
    run = shard.start(["test_c.py::test_a", "test_c.py::test_b", "test_c.py::test_c"], max_restarts=1)
    out = shard.outcome()
    assert outcomes(out) == {"test_c.py::test_a": "crashed", "test_c.py::test_b": "crashed",
                             "test_c.py::test_c": "error"}
    assert "gave up after 1 restarts" in by_id(out)["test_c.py::test_c"]["longrepr"]
    assert run.log_files()["stdout"].read_text().count("test session starts") == 2


def test_pytest_that_fails_before_any_test_is_not_restarted(shard: Shard) -> None:
    shard.write("test_ok.py", "def test_ok():\n    pass\n")
    run = shard.start(["test_ok.py::test_ok"], params={"args": ["--no-such-option"]})
    out = shard.outcome()
    assert outcomes(out) == {"test_ok.py::test_ok": "error"}
    assert out.exit_code == 4 and "exit code 4 (usage error)" in out.error
    assert "--no-such-option" in by_id(out)["test_ok.py::test_ok"]["longrepr"]  # pytest's own words
    assert run.log_files()["stderr"].read_text().count("--no-such-option") == 1  # one pytest only


def test_module_skips_and_deselected_tests(shard: Shard) -> None:
    shard.write("test_s.py", "import pytest\npytest.importorskip('no_such_module_dtf')\n\ndef test_s():\n    pass\n")
    shard.write("test_k.py", "def test_keep():\n    pass\n\ndef test_drop():\n    pass\n")
    out_run = shard.start(["test_s.py::test_s", "test_k.py::test_keep", "test_k.py::test_drop"],
                          params={"args": ["-k", "not drop"]})
    out = shard.outcome()
    assert outcomes(out) == {"test_s.py::test_s": "skipped", "test_k.py::test_keep": "passed",
                             "test_k.py::test_drop": "error"}
    assert "no_such_module_dtf" in by_id(out)["test_s.py::test_s"]["longrepr"]
    assert "deselected" in by_id(out)["test_k.py::test_drop"]["longrepr"]
    assert out_run.log_files()["stdout"].read_text().count("test session starts") == 1


def test_bad_parameters(shard: Shard) -> None:
    shard.start([])
    assert "non-empty list of node ids" in shard.outcome().error
    shard.start(["test_x.py::t"], params={"args": "-x"})
    assert "'args' must be a list" in shard.outcome().error
    shard.start(["test_x.py::t" + "x" * 5000])
    assert "at most 4096 characters" in shard.outcome().error


def test_with_xdist(shard: Shard) -> None:
    pytest.importorskip("xdist")
    # xdist replaces a worker that dies and carries on; the test it ran is "crashed", no restart.
    shard.write("test_x.py", "import os\nimport pytest\n\n@pytest.mark.parametrize('i', range(8))\n"
                             "def test_i(i):\n    assert i != 5\n    if i == 2:\n        os._exit(1)\n")
    tests = [f"test_x.py::test_i[{i}]" for i in range(8)]
    run = shard.start(tests, params={"args": ["-p", "xdist", "-n", "2"]})
    out = shard.outcome()
    expect = {t: "passed" for t in tests} | {"test_x.py::test_i[5]": "failed", "test_x.py::test_i[2]": "crashed"}
    assert outcomes(out) == expect
    assert run.log_files()["stdout"].read_text().count("test session starts") == 1


def test_fit_shrinks_outputs_first() -> None:
    tests = [{"nodeid": f"t{i}", "outcome": "failed", "duration": 0.0, "longrepr": "L" * 10_000,
              "output": "O" * 200_000} for i in range(60)]
    tests.append({"nodeid": "small", "outcome": "failed", "duration": 0.0, "longrepr": "short", "output": "tiny"})
    fit(tests)
    total = sum(len(t["nodeid"]) + len(t["longrepr"]) + len(t["output"]) for t in tests)
    assert total <= MAX_TESTS_BYTES
    assert all(t["longrepr"] == "L" * 10_000 for t in tests[:60])  # longreprs whole
    assert tests[-1]["output"] == "tiny"  # small ones untouched
    # Longreprs shrink too once the outputs are gone.
    huge = [{"nodeid": f"t{i}", "outcome": "error", "duration": 0.0, "longrepr": "L" * 1_000_000,
             "output": "O" * 1000} for i in range(20)]
    fit(huge)
    assert all(t["output"] == "" for t in huge)
    assert sum(len(t["longrepr"]) for t in huge) <= MAX_TESTS_BYTES
    assert all(len(t["longrepr"]) > 100_000 for t in huge)


def test_progress_before_start(tmp_path: Path) -> None:
    spec = RunSpec(task_id="p", type="pytest", parameters={"tests": ["a.py::x", "a.py::y", "a.py::x"]})
    run = PytestRun(spec, tmp_path, lambda o: None)
    assert run.progress() == (0, 0, 2, "")
    assert all(p.exists() and p.stat().st_size == 0 for p in run.log_files().values())
    run.cleanup()
    assert not any(p.exists() for p in run.log_files().values())


def test_nothing_left_in_the_work_dir_but_logs(shard: Shard) -> None:
    shard.write("test_ok.py", "def test_ok():\n    pass\n")
    run = shard.start(["test_ok.py::test_ok"])
    out = shard.outcome()
    assert out.status == "success" and outcomes(out) == {"test_ok.py::test_ok": "passed"}
    assert sorted(os.listdir(shard.work)) == sorted(p.name for p in run.log_files().values())


def test_a_pytest_that_does_not_exit_after_its_session_is_killed(shard: Shard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytest_run, "EXIT_GRACE_S", 1.0)
    shard.write("test_t.py", """
        import threading

        def test_leaves_a_thread():
            # Not a daemon: the interpreter waits for it at exit, for ever.
            threading.Thread(target=threading.Event().wait).start()
    """)
    run = shard.start(["test_t.py::test_leaves_a_thread"])
    out = shard.outcome()
    assert out.status == "success" and outcomes(out) == {"test_t.py::test_leaves_a_thread": "passed"}
    assert "had not exited 1 s later; killed it" in run.log_files()["stderr"].read_text()


def test_prepare_runs_first_and_extra_cleanup_goes_with_the_logs(shard: Shard, tmp_path: Path) -> None:
    # What the agent does for a bundle: unpack it on the task's thread, then run in it.
    unpacked = tmp_path / "unpacked"

    def prepare(spec: RunSpec) -> RunSpec:
        unpacked.mkdir()
        (unpacked / "test_b.py").write_text("import os\n\ndef test_b():\n    assert os.environ['SET_BY'] == 'prepare'\n")
        shard.runs[-1].extra_cleanup.append(unpacked)  # appended before its thread starts; `run` may not be yet
        params = {**spec.parameters, "cwd": str(unpacked), "env": {**FAST, "SET_BY": "prepare"}}
        return msgspec.structs.replace(spec, parameters=params)

    run = shard.start(["test_b.py::test_b"], params={"cwd": "/nonexistent"}, prepare=prepare)
    out = shard.outcome()
    assert out.status == "success" and outcomes(out) == {"test_b.py::test_b": "passed"}
    assert run.spec.parameters["cwd"] == str(unpacked)
    assert unpacked.exists()  # until the agent has streamed the logs
    run.cleanup()
    assert not unpacked.exists() and not any(p.exists() for p in run.log_files().values())

    def broken(spec: RunSpec) -> RunSpec:
        raise ValueError("no such bundle")

    shard.start(["test_b.py::test_b"], prepare=broken)
    out = shard.outcome()
    assert out.status == "failure" and out.error == "cannot prepare the task: no such bundle" and out.tests == []
