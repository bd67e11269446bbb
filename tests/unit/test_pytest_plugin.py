"""The shard plugin alone, in a real pytest process in tmp_path: which node ids it keeps and in
what order, what it reports for each outcome, and that a process that dies loses nothing already
reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dtf_agent.runners.pytest_plugin import MAX_FIELD, bound

ROOT = Path(__file__).resolve().parents[2]
LONG = f"test_o.py::test_param[{'a' * 200}::/[x]]"

OUTCOMES = '''
import logging
import os
import sys

import pytest


def test_pass():
    pass


def test_fail():
    print("to stdout")
    print("to stderr", file=sys.stderr)
    logging.getLogger("x").warning("to the log")
    assert 1 == 2


def test_skip():
    pytest.skip("not here")


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0


@pytest.mark.xfail(reason="never runs", run=False)
def test_xfail_norun():
    pass


@pytest.mark.xfail(reason="lax")
def test_xpass():
    pass


@pytest.mark.xfail(reason="strict one", strict=True)
def test_xpass_strict():
    pass


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")


def test_setup_error(broken):
    pass


@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown broke")


def test_teardown_error(bad_teardown):
    print("printed before the teardown")


def test_fail_and_teardown_error(bad_teardown):
    assert 0, "call failed"


def test_big_output():
    print("x" * 100_000)
    assert 0, "y" * 100_000


def test_not_listed():
    pass


# pytest shortens a long string value to "value0"; an explicit id stays as long as it is.
@pytest.mark.parametrize("value", ["a", "b"], ids=["a" * 200 + "::/[x]", "b"])
def test_param(value):
    pass
'''


def _run(tmp_path: Path, files: dict[str, str], ids: list[str] | None, *extra: str,
         autoload: bool = True) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    report = tmp_path / "report.jsonl"
    argv = [sys.executable, "-m", "pytest", "-p", "dtf_agent.runners.pytest_plugin", f"--dtf-report={report}",
            "-p", "no:cacheprovider"]
    if ids is not None:
        (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        argv.append(f"--dtf-tests={tmp_path / 'ids.txt'}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # hypothesis alone costs a second per start here
    proc = subprocess.run([*argv, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()] if report.exists() else []
    return proc, events


def _done(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["nodeid"]: e for e in events if e["e"] == "done"}


def test_outcomes_order_and_selection(tmp_path: Path) -> None:
    # With every installed plugin loaded (pytest-qt, hypothesis, pytest-timeout): the plugin must
    # live beside them.
    ids = ["test_o.py::test_xpass_strict", "test_o.py::test_pass", "test_o.py::test_fail", "test_o.py::test_skip",
           "test_o.py::test_xfail", "test_o.py::test_xfail_norun", "test_o.py::test_xpass",
           "test_o.py::test_setup_error", "test_o.py::test_teardown_error",
           "test_o.py::test_fail_and_teardown_error", "test_o.py::test_big_output",
           LONG, "test_o.py::test_param[b]", "test_o.py::test_nothing_here", "test_o.py::test_pass"]
    proc, events = _run(tmp_path, {"test_o.py": OUTCOMES}, ids, "test_o.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deselected" in proc.stdout  # test_not_listed, through pytest_deselected

    listed = list(dict.fromkeys(ids))
    ran = [e["nodeid"] for e in events if e["e"] == "start"]
    assert ran == [i for i in listed if i != "test_o.py::test_nothing_here"]  # the listed order
    # Every start comes before its done, and each done right after its start (no xdist here).
    kinds = [(e["e"], e.get("nodeid")) for e in events if e["e"] in ("start", "done")]
    assert kinds == [(k, n) for n in ran for k in ("start", "done")]
    assert [e for e in events if e["e"] == "missing"] == [{"e": "missing", "nodeid": "test_o.py::test_nothing_here"}]
    assert events[-1] == {"e": "finish", "exitstatus": 1}

    done = _done(events)
    outcome = {n.split("::", 1)[1]: d["outcome"] for n, d in done.items()}
    assert outcome == {
        "test_xpass_strict": "failed", "test_pass": "passed", "test_fail": "failed", "test_skip": "skipped",
        "test_xfail": "xfailed", "test_xfail_norun": "xfailed", "test_xpass": "xpassed",
        "test_setup_error": "error", "test_teardown_error": "error", "test_fail_and_teardown_error": "failed",
        "test_big_output": "failed", LONG.split("::", 1)[1]: "passed", "test_param[b]": "passed",
    }
    d = {n.split("::", 1)[1]: d for n, d in done.items()}
    assert "[XPASS(strict)] strict one" in d["test_xpass_strict"]["longrepr"]
    assert d["test_skip"]["longrepr"] == "Skipped: not here"
    assert d["test_xfail"]["longrepr"].startswith("known bug")
    assert d["test_xpass"]["longrepr"] == "lax"
    assert "fixture broke" in d["test_setup_error"]["longrepr"]
    assert "teardown broke" in d["test_teardown_error"]["longrepr"]
    both = d["test_fail_and_teardown_error"]["longrepr"]
    assert "call failed" in both and "teardown broke" in both
    # Output only for failures and errors: stdout, stderr and log sections of every phase.
    out = d["test_fail"]["output"]
    assert "to stdout" in out and "to stderr" in out and "to the log" in out
    assert "printed before the teardown" in d["test_teardown_error"]["output"]
    for name in ("test_pass", "test_skip", "test_xfail", "test_xpass"):
        assert d[name]["output"] == "" and d[name]["duration"] >= 0
    assert d["test_fail"]["duration"] > 0
    # Bounded, with the head and the tail kept.
    big = d["test_big_output"]
    assert len(big["output"].encode()) <= MAX_FIELD and len(big["longrepr"].encode()) <= MAX_FIELD
    assert "cut in the middle" in big["output"] and big["output"].startswith("----- Captured stdout call")
    assert "AssertionError" in big["longrepr"][-200:] or "test_o.py" in big["longrepr"][-200:]


def test_collection_errors_and_module_skips(tmp_path: Path) -> None:
    files = {
        "test_ok.py": "def test_one():\n    pass\n",
        "test_syntax.py": "def test_x(:\n    pass\n",
        "test_skipped.py": "import pytest\npytest.importorskip('no_such_module_dtf')\ndef test_s():\n    pass\n",
    }
    ids = ["test_syntax.py::test_x", "test_ok.py::test_one", "test_skipped.py::test_s"]
    proc, events = _run(tmp_path, files, ids, "--continue-on-collection-errors", *files, autoload=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [e for e in events if e["e"] == "collect_error"]
    assert [e["nodeid"] for e in errors] == ["test_syntax.py"]
    assert "SyntaxError" in errors[0]["longrepr"] or "invalid syntax" in errors[0]["longrepr"]
    skips = [e for e in events if e["e"] == "collect_skip"]
    assert [e["nodeid"] for e in skips] == ["test_skipped.py"]
    assert "no_such_module_dtf" in skips[0]["longrepr"]
    # Not collected either: the runner tells them apart from the collection reports above.
    assert {e["nodeid"] for e in events if e["e"] == "missing"} == {"test_syntax.py::test_x", "test_skipped.py::test_s"}
    assert _done(events)["test_ok.py::test_one"]["outcome"] == "passed"


def test_a_process_that_dies_loses_nothing_reported(tmp_path: Path) -> None:
    files = {"test_die.py": """
        import os

        def test_first():
            pass

        def test_die():
            os._exit(3)

        def test_never():
            pass
    """}
    proc, events = _run(tmp_path, files, None, "test_die.py", autoload=False)
    assert proc.returncode == 3
    assert [(e["e"], e.get("nodeid")) for e in events] == [
        ("start", "test_die.py::test_first"), ("done", "test_die.py::test_first"), ("start", "test_die.py::test_die"),
    ]


def test_without_a_list_every_test_is_reported(tmp_path: Path) -> None:
    proc, events = _run(tmp_path, {"test_two.py": "def test_a():\n    pass\n\ndef test_b():\n    assert 0\n"},
                        None, "test_two.py", autoload=False)
    assert proc.returncode == 1
    assert {n: d["outcome"] for n, d in _done(events).items()} == {"test_two.py::test_a": "passed",
                                                                   "test_two.py::test_b": "failed"}
    assert events[-1] == {"e": "finish", "exitstatus": 1}


def test_with_xdist(tmp_path: Path) -> None:
    # Workers collect and filter; the controller alone reports starts and outcomes, once each.
    pytest.importorskip("xdist")
    files = {"test_x.py": "import os\nimport pytest\n\n@pytest.mark.parametrize('i', range(6))\ndef test_i(i):\n"
                          "    assert i != 4\n    if i == 2:\n        os._exit(1)\n\ndef test_other():\n    pass\n"}
    ids = [f"test_x.py::test_i[{i}]" for i in range(6)] + ["test_x.py::test_gone"]
    proc, events = _run(tmp_path, files, ids, "-n", "2", "-p", "xdist", "test_x.py", autoload=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    done = [e for e in events if e["e"] == "done"]
    assert sorted(e["nodeid"] for e in done) == sorted(ids[:6])
    outcome = {e["nodeid"]: e["outcome"] for e in done}
    assert outcome["test_x.py::test_i[4]"] == "failed"
    assert outcome["test_x.py::test_i[2]"] == "crashed"  # its worker died; xdist carried on
    assert outcome["test_x.py::test_i[5]"] == "passed"
    assert {e["nodeid"] for e in events if e["e"] == "missing"} == {"test_x.py::test_gone"}
    assert [e for e in events if e["e"] == "finish"] == [{"e": "finish", "exitstatus": 1}]


def test_bound_keeps_head_and_tail_within_the_limit() -> None:
    assert bound("short") == "short"
    text = "HEAD" + "é" * 50_000 + "TAIL"
    cut = bound(text, 1000)
    assert len(cut.encode()) <= 1000
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and "cut in the middle" in cut
    # Undecodable output (lone surrogates) still encodes afterwards.
    assert bound("a\udcff b").encode() == b"a? b"
    assert bound("x" * 100, 10) == "x" * 10
    assert bound("x" * 100, 0) == ""


def test_teardown_errors_count_like_pytests_summary(tmp_path: Path) -> None:
    """pytest says "1 failed, 1 passed, 2 errors" for a test failing with a teardown error and a test
    passing with one: dtf pytest's counts from the plugin's rows say the same."""
    from dtf_gui.cli_pytest import _summary, count_outcomes

    (tmp_path / "test_td.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown broke")

        def test_fails(broken_teardown):
            assert False

        def test_passes(broken_teardown):
            pass
    """))
    report = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "dtf_agent.runners.pytest_plugin",
                           f"--dtf-report={report}", "-p", "no:cacheprovider", "test_td.py"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
                          timeout=120, check=False)
    plain = [ln for ln in proc.stdout.splitlines() if " in " in ln][-1]
    rows = [json.loads(ln) for ln in report.read_text().splitlines()]
    done = [r for r in rows if r["e"] == "done"]
    counts = count_outcomes(done)
    assert _summary(counts, 0.1).split(" in ")[0] in plain, (counts, plain)
