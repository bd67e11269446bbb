"""$DTF_RESULT_FILE: the flat format, declared units and directions, pytest-benchmark's JSON, and
what is left out (always named in the note, never failing the run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dtf_agent import protocol as p
from dtf_agent.runners.resultfile import (
    BENCHMARK_DIRECTIONS,
    BENCHMARK_UNITS,
    ResultFile,
    normalise_direction,
    parse_result_data,
    read_result_file,
)


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "result.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_missing_or_empty_file_is_an_empty_result(tmp_path: Path) -> None:
    assert read_result_file(tmp_path / "absent.json") == ResultFile()
    assert read_result_file(write(tmp_path, "")) == ResultFile()
    assert read_result_file(write(tmp_path, "  \n")) == ResultFile()


def test_flat_format_is_still_read_and_drops_what_is_not_a_number(tmp_path: Path) -> None:
    rf = read_result_file(write(tmp_path, {"latency_ms": 1.5, "ops": 200, "ok": True, "name": "x"}))
    assert rf.metrics == {"latency_ms": 1.5, "ops": 200.0}
    assert isinstance(rf.metrics["ops"], float)
    assert (rf.units, rf.directions, rf.tests) == ({}, {}, [])
    # The runner's older note, word for word: engineers grep for it.
    assert rf.note == "non-numeric metrics ignored: ok, name"


def test_invalid_json_and_non_objects_say_so(tmp_path: Path) -> None:
    rf = read_result_file(write(tmp_path, "latency=3"))
    assert rf.metrics == {} and rf.note.startswith("DTF_RESULT_FILE is not valid JSON: ")
    rf = read_result_file(write(tmp_path, "[1, 2]"))
    assert rf.metrics == {} and "DTF_RESULT_FILE must hold a JSON object" in rf.note
    path = tmp_path / "bin.json"
    path.write_bytes(b'{"a": "\xff"}')
    assert read_result_file(path).note.startswith("DTF_RESULT_FILE is not valid JSON: not UTF-8")
    assert "nested too deeply" in read_result_file(write(tmp_path, "[" * 100_000)).note


def test_non_finite_values_and_long_names_are_dropped_with_a_note(tmp_path: Path) -> None:
    long = "m" * 256
    # Python's json writes NaN and Infinity, and so do many benchmark scripts.
    text = json.dumps({"good": 1, "nan": float("nan"), "inf": float("inf"), long: 2, "m" * 255: 3})
    text = text[:-1] + ', "huge": 1' + "0" * 400 + "}"
    rf = read_result_file(write(tmp_path, text))
    assert rf.metrics == {"good": 1.0, "m" * 255: 3.0}
    assert "non-finite metrics ignored: nan, inf, huge" in rf.note
    assert "metric names over 255 characters ignored: mmmm" in rf.note


def test_declared_format_with_units_and_directions(tmp_path: Path) -> None:
    rf = read_result_file(write(tmp_path, {
        "metrics": {"throughput_mb_s": 812.5, "p99_ms": 3.2, "rounds": 10},
        "units": {"throughput_mb_s": "MB/s", "p99_ms": "ms", "not_measured_here": "s"},
        "directions": {"throughput_mb_s": "higher_is_better", "p99_ms": "MIN", "rounds": "max"},
    }))
    assert rf.metrics == {"throughput_mb_s": 812.5, "p99_ms": 3.2, "rounds": 10.0}
    # A declaration may name a metric this result does not carry (it is about the name).
    assert rf.units == {"throughput_mb_s": "MB/s", "p99_ms": "ms", "not_measured_here": "s"}
    assert rf.directions == {"throughput_mb_s": "higher", "p99_ms": "lower", "rounds": "higher"}
    assert rf.note == ""


def test_a_bad_direction_is_named_with_its_value(tmp_path: Path) -> None:
    rf = read_result_file(write(tmp_path, {"metrics": {"a": 1, "b": 2}, "directions": {"a": "up", "b": "lower",
                                                                                       "c": 1}}))
    assert rf.directions == {"b": "lower"}
    assert "directions other than \"higher\" or \"lower\" ignored: a='up', c=1" in rf.note
    assert rf.metrics == {"a": 1.0, "b": 2.0}


def test_declared_format_names_what_it_cannot_use(tmp_path: Path) -> None:
    rf = read_result_file(write(tmp_path, {"metrics": {"a": "fast", "b": 1}, "units": {"b": 5, "a": "x" * 300},
                                           "directions": ["b"], "extra": 1}))
    assert rf.metrics == {"b": 1.0} and rf.units == {} and rf.directions == {}
    for part in ("non-numeric metrics ignored: a", "units that are not text of at most 255 characters ignored: b, a",
                 "\"directions\" must be an object", "unknown keys ignored (expected metrics, units, directions): "
                 "extra"):
        assert part in rf.note, rf.note
    only_units = parse_result_data({"units": {"t": "s"}})
    assert (only_units.metrics, only_units.units, only_units.note) == ({}, {"t": "s"}, "")


def test_at_most_ten_thousand_metrics(tmp_path: Path) -> None:
    data = {f"m{i}": i for i in range(p.MAX_METRICS + 5)}
    rf = read_result_file(write(tmp_path, data))
    assert len(rf.metrics) == p.MAX_METRICS
    assert "5 metrics over the limit of 10000 ignored" in rf.note


def test_a_long_list_of_problems_stays_readable() -> None:
    rf = parse_result_data({f"bad{i}": "x" for i in range(50)})
    assert rf.note == ("non-numeric metrics ignored: bad0, bad1, bad2, bad3, bad4, bad5, bad6, bad7, bad8, bad9 "
                       "and 40 more")


@pytest.mark.parametrize(("value", "expected"), [
    ("higher", "higher"), ("Lower", "lower"), ("higher_is_better", "higher"), ("lower_is_better", "lower"),
    ("max", "higher"), ("min", "lower"), (" max ", "higher"), ("up", None), ("", None), (None, None), (1, None),
])
def test_normalise_direction(value: object, expected: str | None) -> None:
    assert normalise_direction(value) == expected


# -- pytest-benchmark -----------------------------------------------------------------------------

STATS = {"min": 0.001, "max": 0.004, "mean": 0.002, "stddev": 0.0005, "rounds": 250, "median": 0.0019,
         "iqr": 0.0004, "q1": 0.0017, "q3": 0.0021, "iqr_outliers": 3, "stddev_outliers": 7, "outliers": "7;3",
         "ld15iqr": 0.001, "hd15iqr": 0.003, "ops": 500.0, "total": 0.5, "iterations": 1}


def benchmark_json(*benches: Any) -> dict[str, Any]:
    """The shape pytest-benchmark 4 writes with --benchmark-json (trimmed machine and commit info)."""
    return {"machine_info": {"node": "bench-1", "python_version": "3.11.6"},
            "commit_info": {"id": "abc123", "dirty": False},
            "benchmarks": list(benches), "datetime": "2024-05-01T10:00:00.000000", "version": "4.0.0"}


def bench(fullname: str, **over: Any) -> dict[str, Any]:
    return {"group": None, "name": fullname.split("::")[-1], "fullname": fullname, "params": None,
            "param": None, "extra_info": {}, "options": {"disable_gc": False, "timer": "perf_counter",
                                                         "min_rounds": 5, "max_time": 1.0},
            "stats": {**STATS, **over}}


def test_pytest_benchmark_json_becomes_one_passed_test_per_benchmark(tmp_path: Path) -> None:
    rf = read_result_file(write(tmp_path, benchmark_json(
        bench("tests/test_io.py::test_read[4096]"), bench("tests/test_io.py::test_write", total=None))))
    assert rf.metrics == {} and rf.note == ""
    assert [t["nodeid"] for t in rf.tests] == ["tests/test_io.py::test_read[4096]", "tests/test_io.py::test_write"]
    first, second = rf.tests
    assert first["outcome"] == "passed" and first["duration"] == 0.5
    assert first["metrics"] == {"bench_min_s": 0.001, "bench_max_s": 0.004, "bench_mean_s": 0.002,
                                "bench_median_s": 0.0019, "bench_stddev_s": 0.0005, "bench_iqr_s": 0.0004,
                                "bench_ops": 500.0, "bench_rounds": 250.0}
    assert second["duration"] == pytest.approx(0.002 * 250)  # no total: mean x rounds
    # Units and directions are declared for every statistic; rounds is better neither way.
    assert rf.units == BENCHMARK_UNITS and rf.directions == BENCHMARK_DIRECTIONS
    assert rf.units["bench_mean_s"] == "s" and rf.units["bench_ops"] == "ops/s"
    assert rf.units["bench_rounds"] == "count" and "bench_rounds" not in rf.directions
    assert rf.directions["bench_mean_s"] == "lower" and rf.directions["bench_ops"] == "higher"


def test_benchmark_entries_are_valid_protocol_test_outcomes(tmp_path: Path) -> None:
    rf = read_result_file(write(tmp_path, benchmark_json(bench("t.py::a"), bench("t.py::b", total=-1.0))))
    rec = p.ResultRecord(result_id="r", task_id="t", status="success", metrics=rf.metrics, tests=[
        msgspec.convert(t, p.TestOutcome) for t in rf.tests], units=rf.units,
        directions=rf.directions)  # type: ignore[arg-type]  # the file's directions are "higher"/"lower" by construction
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(rec), type=p.ResultRecord)
    assert again.tests[0].metrics["bench_ops"] == 500.0
    assert again.tests[1].duration == 0.0  # a negative total (a clock step) is no reason to lose the test


def test_benchmark_extra_info_numbers_are_metrics_too(tmp_path: Path) -> None:
    b = bench("t.py::copy")
    b["extra_info"] = {"throughput_mb_s": 812.5, "label": "ssd", "flag": True}
    (test,) = read_result_file(write(tmp_path, benchmark_json(b))).tests
    assert test["metrics"]["throughput_mb_s"] == 812.5
    assert "label" not in test["metrics"] and "flag" not in test["metrics"]


def test_benchmarks_without_a_name_or_stats_are_named_in_the_note(tmp_path: Path) -> None:
    nameless = bench("x")
    nameless["fullname"] = nameless["name"] = ""
    by_name = bench("t.py::only_name")
    del by_name["fullname"]
    no_stats = bench("t.py::broken")
    no_stats["stats"] = None
    rf = read_result_file(write(tmp_path, benchmark_json(nameless, by_name, no_stats, "junk",
                                                         bench("t.py::nan", mean=float("nan")))))
    assert [t["nodeid"] for t in rf.tests] == ["only_name", "t.py::nan"]
    assert "bench_mean_s" not in rf.tests[1]["metrics"]
    for part in ("benchmarks without a name of at most 4096 characters ignored: #0",
                 "benchmarks without stats ignored: t.py::broken", "benchmarks that are not objects ignored: #3",
                 "non-finite benchmark stats ignored: t.py::nan:mean"):
        assert part in rf.note, rf.note


def test_a_benchmark_file_without_machine_info_is_still_recognised() -> None:
    rf = parse_result_data({"benchmarks": [bench("t.py::a")]})
    assert [t["nodeid"] for t in rf.tests] == ["t.py::a"]
    bad = parse_result_data({"machine_info": {}, "benchmarks": {"t.py::a": 1}})
    assert bad.tests == [] and "\"benchmarks\" must be a list" in bad.note


def test_an_oversized_file_is_refused_without_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dtf_agent.runners.resultfile as resultfile

    monkeypatch.setattr(resultfile, "MAX_RESULT_FILE_BYTES", 10)
    rf = read_result_file(write(tmp_path, {"a_long_name": 1}))
    assert rf.metrics == {} and "over the limit of 10" in rf.note


def test_the_agent_module_stays_free_of_the_coordinator_and_numpy() -> None:
    import subprocess
    import sys

    code = ("import sys, dtf_agent.runners.resultfile; "
            "bad = [m for m in ('numpy', 'scipy', 'dtf_gui', 'sqlite_utils', 'PySide6') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
