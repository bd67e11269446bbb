"""Shard planning by duration history, and the JUnit XML of a run (pure functions)."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from dtf_gui.exports import junit_xml, split_nodeid
from dtf_gui.shards import WHOLE_FILES_SLACK, auto_shards, file_of, lower_bound, plan_shards


def test_known_durations_are_balanced_longest_first() -> None:
    ids = [f"t.py::test_{i}" for i in range(6)]
    durations = dict(zip(ids, [5.0, 4.0, 3.0, 3.0, 2.0, 1.0], strict=True))
    plan = plan_shards(ids, durations, 2)
    assert sorted(s.expected for s in plan.shards) == [9.0, 9.0]
    assert plan.known == 6 and plan.unknown == 0
    # Collection order within each shard.
    for s in plan.shards:
        assert s.tests == sorted(s.tests, key=ids.index)


def test_unknown_tests_go_by_file_at_the_median() -> None:
    ids = ["a.py::x", "a.py::y", "b.py::z", "c.py::k1", "c.py::k2", "c.py::k3"]
    plan = plan_shards(ids, {"b.py::z": 2.0}, 3)
    assert plan.median == 2.0 and plan.unknown == 5
    by_file = [{t.split("::")[0] for t in s.tests} for s in plan.shards]
    # Each unknown file whole on one shard.
    assert sorted(map(sorted, by_file)) == [["a.py"], ["b.py"], ["c.py"]]
    assert plan.makespan == 6.0


def test_small_files_stay_whole_when_that_costs_little() -> None:
    # 30 files of 10 tests of about the same length: whole files balance within a test's length.
    ids = [f"f{k:02d}.py::t{i}" for k in range(30) for i in range(10)]
    durations = {t: 0.1 + 0.001 * (hash(t) % 7) for t in ids}
    plan = plan_shards(ids, durations, 2)
    files = [{file_of(t) for t in s.tests} for s in plan.shards]
    assert not files[0] & files[1] and len(files[0]) + len(files[1]) == 30
    # One file that is most of the suite is split test by test: whole, it could not be balanced.
    ids.extend(f"big.py::t{i}" for i in range(100))
    durations.update({f"big.py::t{i}": 1.0 for i in range(100)})
    plan = plan_shards(ids, durations, 2)
    assert all(any(t.startswith("big.py") for t in s.tests) for s in plan.shards)


def test_never_more_shards_than_units_and_none_empty() -> None:
    plan = plan_shards(["a.py::x", "a.py::y"], {}, 8)
    assert len(plan.shards) == 1 and plan.shards[0].tests == ["a.py::x", "a.py::y"]
    assert plan_shards([], {}, 4).shards == []


def test_auto_shards() -> None:
    assert auto_shards(2, 400) == 2
    assert auto_shards(4, 3) == 3
    assert auto_shards(0, 10) == 1
    assert auto_shards(3, 0) == 0


@given(st.lists(st.floats(0.001, 100), min_size=1, max_size=200), st.integers(1, 16))
def test_lpt_is_within_four_thirds_of_the_lower_bound(durs: list[float], n: int) -> None:
    ids = [f"f{i % 7}.py::t{i}" for i in range(len(durs))]
    plan = plan_shards(ids, dict(zip(ids, durs, strict=True)), n)
    assert sorted(t for s in plan.shards for t in s.tests) == sorted(ids)
    # Graham's bound for LPT against the optimum (itself at least the lower bound), with the slack a
    # plan keeping files whole may take.
    bound = (4 / 3) * lower_bound(durs, min(n, len(durs))) + max(durs) / 3
    assert plan.makespan <= WHOLE_FILES_SLACK * bound + 1e-9


def test_same_input_same_plan() -> None:
    rng = random.Random(4)
    ids = [f"m{i % 5}.py::t{i}" for i in range(300)]
    durs = {t: rng.lognormvariate(0, 1) for t in ids[:200]}
    a, b = plan_shards(ids, durs, 4), plan_shards(list(ids), dict(durs), 4)
    assert [s.tests for s in a.shards] == [s.tests for s in b.shards]


def test_junit_xml_counts_and_names() -> None:
    rows = [
        {"test_id": "tests/test_a.py::TestB::test_c[x-1]", "outcome": "passed", "duration": 0.5},
        {"test_id": "tests/test_a.py::test_f", "outcome": "failed", "duration": 1.0,
         "longrepr": "def test_f():\n>   assert 1 == 2\nE   assert 1 == 2", "output": "printed\x07"},
        {"test_id": "tests/test_a.py::test_e", "outcome": "error", "longrepr": "fixture 'db' not found"},
        {"test_id": "tests/test_a.py::test_s", "outcome": "skipped", "longrepr": "Skipped: no GPU"},
        {"test_id": "tests/test_a.py::test_x", "outcome": "xfailed"},
        {"test_id": "tests/test_a.py::test_k", "outcome": "crashed", "longrepr": "pytest died (exit code 3)"},
        {"test_id": "tests/test_a.py::test_fl", "outcome": "flaky", "worker_id": "w2"},
    ]
    root = ET.fromstring(junit_xml("run.1", rows, duration=3.25))
    suite = root.find("testsuite")
    assert suite is not None
    assert {k: suite.get(k) for k in ("name", "tests", "failures", "errors", "skipped", "time")} == {
        "name": "run.1", "tests": "7", "failures": "2", "errors": "1", "skipped": "2", "time": "3.250"}
    cases = suite.findall("testcase")
    assert (cases[0].get("classname"), cases[0].get("name")) == ("tests.test_a.TestB", "test_c[x-1]")
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "assert 1 == 2"
    out = cases[1].find("system-out")
    assert out is not None and out.text == "printed\ufffd"  # no control character in the XML
    crashed = cases[5].find("failure")
    assert crashed is not None and crashed.get("message", "").startswith("crashed: ")


def test_split_nodeid() -> None:
    assert split_nodeid("a/b.py::C::D::t[1]") == ("a.b.C.D", "t[1]")
    assert split_nodeid("a/b.py") == ("a.b", "a/b.py")
    assert split_nodeid("t.py::test_p[x::y]") == ("t", "test_p[x::y]")
