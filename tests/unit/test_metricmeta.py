"""MetricCatalog: declared units and directions (config, API, tasks), globs, the labelled name
guess, the store's metric_meta rows, and reads racing declarations."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dtf_gui.coordinator.aggregator import higher_is_better
from dtf_gui.coordinator.aggregator.metricmeta import (
    DECLARED,
    GUESS_HINT,
    GUESSED,
    MetricCatalog,
    MetricInfo,
    direction_hint,
    metric_info_for,
)
from dtf_gui.coordinator.store import KEYED_COLUMNS, Store


def test_the_name_guess_is_the_labelled_fallback() -> None:
    cat = MetricCatalog()
    # The guess reads "_s" as seconds: a throughput in MB/s comes out as lower-is-better.
    assert higher_is_better("throughput_mb_s") is False
    assert cat.polarity("throughput_mb_s") is False
    assert cat.describe("throughput_mb_s") == {"name": "throughput_mb_s", "unit": "", "direction": "lower",
                                               "source": "guess", "direction_source": GUESSED, "pattern": None}
    assert cat.info("latency_ms") == MetricInfo(False, "", GUESSED)
    assert cat.info("accuracy") == MetricInfo(True, "", GUESSED)


def test_a_config_declaration_decides_the_direction() -> None:
    cat = MetricCatalog({"throughput_mb_s": ("MB/s", "higher")})
    assert cat.polarity("throughput_mb_s") is True
    assert cat.describe("throughput_mb_s") == {"name": "throughput_mb_s", "unit": "MB/s", "direction": "higher",
                                               "source": "config", "direction_source": DECLARED, "pattern": None}
    assert cat.info("throughput_mb_s") == MetricInfo(True, "MB/s", DECLARED)


def test_config_is_never_overridden_by_a_task_but_a_task_fills_what_it_left_open() -> None:
    cat = MetricCatalog({"throughput_mb_s": ("", "higher")})
    assert cat.declare("throughput_mb_s", "MB/s", "lower") is True  # stored, though the config's direction wins
    d = cat.describe("throughput_mb_s")
    assert (d["unit"], d["direction"], d["source"]) == ("MB/s", "higher", "config")


def test_a_later_task_overrides_an_earlier_one_field_by_field() -> None:
    cat = MetricCatalog()
    assert cat.declare("p99", "ms", "lower") is True
    assert cat.declare("p99", "ms", "lower") is False  # the same again changes nothing
    assert cat.declare("p99", "", None) is False  # declares nothing
    assert cat.declare("p99", "s") is True  # a new unit; the direction stays
    d = cat.describe("p99")
    assert (d["unit"], d["direction"], d["source"]) == ("s", "lower", "task")
    assert cat.declare("p99", direction="higher") is True
    assert cat.describe("p99")["direction"] == "higher"


def test_an_api_declaration_outranks_tasks() -> None:
    cat = MetricCatalog()
    cat.declare("p99", "", "higher", source="task")
    assert cat.declare("p99", "", "lower", source="api") is True
    assert cat.declare("p99", "ms", "higher", source="task") is True  # only the unit, which the API left open
    d = cat.describe("p99")
    assert (d["unit"], d["direction"], d["source"]) == ("ms", "lower", "api")
    assert cat.declare("p99", "", "higher", source="task") is False


def test_globs_from_config_and_exact_names_win() -> None:
    cat = MetricCatalog({"latency_*": ("ms", "lower"), "latency_p*": ("us", None), "latency_budget": ("ms", "higher"),
                         "*_count": ("", "lower")})
    assert cat.describe("latency_p99") == {"name": "latency_p99", "unit": "us", "direction": "lower",
                                           "source": "config", "direction_source": DECLARED, "pattern": "latency_*"}
    # The more specific glob gives the unit; the looser one still gives the direction it alone declares.
    assert cat.describe("latency_mean")["unit"] == "ms"
    assert cat.polarity("latency_budget") is True  # the exact name wins over the glob
    assert cat.describe("latency_budget")["pattern"] is None
    assert cat.polarity("error_count") is False and cat.describe("error_count")["source"] == "config"
    # A task declaring a globbed name cannot override it either.
    cat.declare("latency_p50", "", "higher")
    assert cat.polarity("latency_p50") is False


def test_direction_aliases_and_bad_values() -> None:
    cat = MetricCatalog({"a": ("", "higher")})
    cat.declare("b", direction="lower_is_better")
    assert cat.describe("b")["direction"] == "lower"
    with pytest.raises(ValueError, match="direction must be 'higher' or 'lower', not 'up'"):
        cat.declare("c", direction="up")
    with pytest.raises(ValueError, match="source must be one of config, task, api"):
        cat.declare("c", direction="higher", source="guess")
    with pytest.raises(ValueError, match="metric 'x'"):
        MetricCatalog({"x": ("", "sideways")})


def test_declare_all_takes_a_results_declarations_at_once() -> None:
    cat = MetricCatalog()
    assert cat.declare_all({"bench_mean_s": "s", "bench_rounds": "count"}, {"bench_mean_s": "lower"}) is True
    assert cat.declare_all({"bench_mean_s": "s"}, {"bench_mean_s": "lower"}) is False
    assert cat.describe("bench_rounds")["unit"] == "count"
    assert cat.describe("bench_rounds")["source"] == "guess"  # a unit alone does not declare a direction


def test_a_config_declaration_may_come_later() -> None:
    cat = MetricCatalog()
    cat.declare("x", "", "lower", source="task")
    assert cat.declare("x*", "", "higher", source="config") is True
    assert cat.polarity("x") is True and cat.describe("x")["pattern"] == "x*"
    assert cat.declare("x*", "", "higher", source="config") is False
    assert cat.changed_rows() == [("x", "", "lower", "task", cat.declarations()[-1]["updated"])]


def test_changed_rows_and_load_round_trip_through_the_store(tmp_path: Path) -> None:
    t = [100.0]
    cat = MetricCatalog({"latency_*": ("ms", "lower")}, clock=lambda: t[0])
    cat.declare("throughput_mb_s", "MB/s", "higher")
    t[0] = 200.0
    cat.declare("ops", direction="higher", source="api")
    rows = cat.changed_rows()
    assert rows == [("ops", "", "higher", "api", 200.0), ("throughput_mb_s", "MB/s", "higher", "task", 100.0)]
    assert all(len(r) == len(KEYED_COLUMNS["metric_meta"]) for r in rows)
    assert cat.changed_rows() == []  # each change is handed out once
    cat.declare("ops", direction="higher", source="api")
    assert cat.changed_rows() == []

    store = Store(tmp_path / "dtf.sqlite")
    try:
        for row in rows:
            store.put_row("metric_meta", row)
        store.flush(wait=True)
        stored = store.load_rows("metric_meta")
    finally:
        store.close()
    again = MetricCatalog({"latency_*": ("ms", "lower")})
    assert again.load([*stored, {"name": "latency_x", "unit": "s", "direction": "lower", "source": "config",
                                 "updated": 1.0}, {"name": "", "source": "task"}]) == 2
    assert again.changed_rows() == []  # what was loaded is already stored
    assert again.describe("throughput_mb_s")["direction"] == "higher"
    assert again.describe("throughput_mb_s")["unit"] == "MB/s"
    assert again.describe("ops")["source"] == "api"
    assert again.describe("latency_x")["unit"] == "ms"  # config rows come from the config, not the table
    assert [d["name"] for d in again.declarations()] == ["latency_*", "ops", "throughput_mb_s"]


def test_metric_info_for_says_where_the_polarity_came_from() -> None:
    cat = MetricCatalog({"throughput_mb_s": ("MB/s", "higher")})
    assert metric_info_for(None, cat)("throughput_mb_s") == MetricInfo(True, "MB/s", DECLARED)
    assert metric_info_for(cat.polarity, cat)("latency_ms") == MetricInfo(False, "", GUESSED)
    assert metric_info_for(None, None)("throughput_mb_s") == MetricInfo(False, "", GUESSED)
    assert metric_info_for(higher_is_better, cat)("throughput_mb_s") == MetricInfo(False, "MB/s", GUESSED)
    # A polarity of the caller's own choosing is a declaration, by the caller.
    mine = metric_info_for(lambda name: True, None)
    assert mine("latency_ms") == MetricInfo(True, "", DECLARED)
    assert direction_hint(GUESSED) == GUESS_HINT and direction_hint(DECLARED) == ""
    assert "declare it in result_aggregator.metrics" in GUESS_HINT


def test_reads_on_one_thread_while_another_declares() -> None:
    cat = MetricCatalog({"fixed_*": ("", "higher")})
    names = [f"m{i}_ms" for i in range(500)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for n in names[::37]:
                    d = cat.describe(n)
                    # Either the guess (lower for "_ms") or the declaration (higher): never a mix.
                    assert (d["direction"], d["source"]) in {("lower", "guess"), ("higher", "task")}
                    assert cat.polarity("fixed_x") is True
        except BaseException as exc:  # noqa: BLE001  # handed to the main thread, which fails the test
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    try:
        for n in names:
            cat.declare(n, "ms", "higher")
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert errors == []
    assert all(cat.polarity(n) for n in names)
    assert len(cat.changed_rows()) == len(names)
