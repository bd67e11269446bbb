"""$DTF_RESULT_FILE: what a task declares about its own results.

Three shapes are accepted, told apart by their keys:

* the old one, a flat JSON object of metric name -> number: ``{"latency_ms": 1.5, "ops": 200}``;
* the declared one: ``{"metrics": {...}, "units": {"throughput_mb_s": "MB/s"},
  "directions": {"throughput_mb_s": "higher"}}`` (a direction is "higher" or "lower"; the aliases
  "higher_is_better", "max", "lower_is_better" and "min" mean the same);
* pytest-benchmark's ``--benchmark-json`` output: one per-test entry per benchmark (outcome
  "passed", its statistics as that test's metrics), with the units and directions of those
  statistics declared.

Nothing a task writes fails its run: what cannot be used is left out and named in
:attr:`ResultFile.note`, which the runner appends to the result's error text, so the engineer
learns what was dropped and why. Limits follow the protocol's (a result that would be refused on
the wire is trimmed here instead).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtf_agent.protocol import MAX_LIST, MAX_METRICS, MAX_NAME, MAX_NODEID, MAX_TIMEOUT

__all__ = [
    "BENCHMARK_DIRECTIONS",
    "BENCHMARK_STATS",
    "BENCHMARK_UNITS",
    "MAX_RESULT_FILE_BYTES",
    "ResultFile",
    "normalise_direction",
    "parse_result_data",
    "read_result_file",
]

# A benchmark JSON of many thousand tests is a few MB; far beyond this, the file is not results.
MAX_RESULT_FILE_BYTES = 64 * 1024 * 1024

_DIRECTION_ALIASES: dict[str, str] = {
    "higher": "higher", "higher_is_better": "higher", "max": "higher",
    "lower": "lower", "lower_is_better": "lower", "min": "lower",
}
# The structured shape's keys; any one of them holding an object marks the file as that shape.
_DECLARED_KEYS = ("metrics", "units", "directions")

# pytest-benchmark statistic -> (metric name, unit, direction); rounds is a count, better neither way.
BENCHMARK_STATS: dict[str, tuple[str, str, str | None]] = {
    "min": ("bench_min_s", "s", "lower"),
    "max": ("bench_max_s", "s", "lower"),
    "mean": ("bench_mean_s", "s", "lower"),
    "median": ("bench_median_s", "s", "lower"),
    "stddev": ("bench_stddev_s", "s", "lower"),
    "iqr": ("bench_iqr_s", "s", "lower"),
    "ops": ("bench_ops", "ops/s", "higher"),
    "rounds": ("bench_rounds", "count", None),
}
BENCHMARK_UNITS: dict[str, str] = {name: unit for name, unit, _d in BENCHMARK_STATS.values()}
BENCHMARK_DIRECTIONS: dict[str, str] = {name: d for name, _u, d in BENCHMARK_STATS.values() if d is not None}

# Names listed in a note at most; the rest are counted (a note must stay readable).
_NOTE_NAMES = 10


@dataclass
class ResultFile:
    """What a task's result file held that can be used.

    ``metrics`` are the task's own numbers; ``units`` and ``directions`` ("higher" / "lower": is
    a higher value better?) what it declared about metrics by name; ``tests`` per-test entries
    (dicts of protocol.TestOutcome's fields: nodeid, outcome, duration, metrics) from a
    pytest-benchmark file; ``note`` says what was left out and why ("" when nothing was)."""

    metrics: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def normalise_direction(value: object) -> str | None:
    """"higher" or "lower" for a direction or one of its aliases (any case); None for anything else."""
    if not isinstance(value, str):
        return None
    return _DIRECTION_ALIASES.get(value.strip().lower())


class _Notes:
    """Problems by kind, each with the names it concerns, joined into one note at the end."""

    def __init__(self) -> None:
        self._by_kind: dict[str, list[str]] = {}
        self._plain: list[str] = []

    def add(self, kind: str, name: str) -> None:
        self._by_kind.setdefault(kind, []).append(name)

    def say(self, text: str) -> None:
        self._plain.append(text)

    def text(self) -> str:
        parts = list(self._plain)
        for kind, names in self._by_kind.items():
            shown = ", ".join(_clip(n) for n in names[:_NOTE_NAMES])
            more = f" and {len(names) - _NOTE_NAMES} more" if len(names) > _NOTE_NAMES else ""
            parts.append(f"{kind}: {shown}{more}")
        return "; ".join(parts)


def _clip(name: str, keep: int = 40) -> str:
    return name if len(name) <= keep else name[:keep] + "..."


def _number(value: object) -> float | str:
    """The value as a finite float; else "non-numeric" or "non-finite" (why it is refused)."""
    # bool is an int to Python, but true/false is a flag, not a measurement.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "non-numeric"
    try:
        x = float(value)
    except OverflowError:  # an integer beyond any float
        return "non-finite"
    return x if math.isfinite(x) else "non-finite"


def _name_ok(name: object, notes: _Notes, what: str) -> bool:
    if not isinstance(name, str) or not name:
        notes.add(f"{what} without a name ignored", repr(name))
        return False
    if len(name) > MAX_NAME:
        notes.add(f"{what} names over {MAX_NAME} characters ignored", name)
        return False
    return True


def _metrics(data: Mapping[Any, Any], notes: _Notes, out: dict[str, float], *, what: str = "metrics") -> None:
    """Numbers of ``data`` into ``out``, at most MAX_METRICS in all; the rest named in ``notes``."""
    over = 0
    for name, value in data.items():
        if not _name_ok(name, notes, "metric"):
            continue
        x = _number(value)
        if isinstance(x, str):
            notes.add(f"{x} {what} ignored", name)
            continue
        if name not in out and len(out) >= MAX_METRICS:
            over += 1
            continue
        out[name] = x
    if over:
        notes.say(f"{over} {what} over the limit of {MAX_METRICS} ignored")


def _declarations(data: Mapping[str, Any], notes: _Notes, rf: ResultFile) -> None:
    units = data.get("units")
    if units is not None and not isinstance(units, dict):
        notes.say("\"units\" must be an object of metric name -> unit; ignored")
    elif units:
        for name, unit in units.items():
            if not _name_ok(name, notes, "unit"):
                continue
            if not isinstance(unit, str) or len(unit) > MAX_NAME:
                notes.add(f"units that are not text of at most {MAX_NAME} characters ignored", name)
            elif unit and len(rf.units) < MAX_METRICS:
                rf.units[name] = unit
    directions = data.get("directions")
    if directions is not None and not isinstance(directions, dict):
        notes.say("\"directions\" must be an object of metric name -> \"higher\" or \"lower\"; ignored")
    elif directions:
        for name, value in directions.items():
            if not _name_ok(name, notes, "direction"):
                continue
            d = normalise_direction(value)
            if d is None:
                notes.add("directions other than \"higher\" or \"lower\" ignored", f"{name}={_clip(repr(value))}")
            elif len(rf.directions) < MAX_METRICS:
                rf.directions[name] = d


def _declared(data: Mapping[str, Any], notes: _Notes) -> ResultFile:
    rf = ResultFile()
    metrics = data.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        notes.say("\"metrics\" must be an object of metric name -> number; ignored")
    elif metrics:
        _metrics(metrics, notes, rf.metrics)
    _declarations(data, notes, rf)
    unknown = [str(k) for k in data if k not in _DECLARED_KEYS]
    for key in unknown:
        notes.add("unknown keys ignored (expected metrics, units, directions)", key)
    return rf


def _benchmarks(data: Mapping[str, Any], notes: _Notes) -> ResultFile:
    """pytest-benchmark's JSON: each benchmark becomes a passed test whose metrics are its stats."""
    rf = ResultFile(units=dict(BENCHMARK_UNITS), directions=dict(BENCHMARK_DIRECTIONS))
    benches = data.get("benchmarks")
    if not isinstance(benches, list):
        notes.say("\"benchmarks\" must be a list; ignored")
        return rf
    if len(benches) > MAX_LIST:
        notes.say(f"{len(benches) - MAX_LIST} benchmarks over the limit of {MAX_LIST} ignored")
        benches = benches[:MAX_LIST]
    for i, bench in enumerate(benches):
        if not isinstance(bench, dict):
            notes.add("benchmarks that are not objects ignored", f"#{i}")
            continue
        nodeid = bench.get("fullname") or bench.get("name")
        if not isinstance(nodeid, str) or not nodeid or len(nodeid) > MAX_NODEID:
            notes.add(f"benchmarks without a name of at most {MAX_NODEID} characters ignored", f"#{i}")
            continue
        stats = bench.get("stats")
        if not isinstance(stats, dict):
            notes.add("benchmarks without stats ignored", nodeid)
            continue
        metrics: dict[str, float] = {}
        for stat, (name, _unit, _direction) in BENCHMARK_STATS.items():
            if stat in stats:
                x = _number(stats[stat])
                if isinstance(x, str):
                    notes.add(f"{x} benchmark stats ignored", f"{nodeid}:{stat}")
                else:
                    metrics[name] = x
        extra = bench.get("extra_info")
        if isinstance(extra, dict):
            # A benchmark's own measurements (benchmark.extra_info["throughput"] = ...) are metrics
            # too; text in extra_info is a label, not a measurement, so it is left out quietly.
            numeric = {k: v for k, v in extra.items() if not isinstance(_number(v), str)}
            _metrics(numeric, notes, metrics, what="extra_info values")
        rf.tests.append({"nodeid": nodeid, "outcome": "passed", "duration": _duration(stats),
                         "metrics": metrics})
    return rf


def _duration(stats: Mapping[str, Any]) -> float:
    """Seconds the benchmark ran: its total, else mean x rounds; 0 when neither is known."""
    total = _number(stats.get("total"))
    if isinstance(total, float):
        seconds = total
    else:
        mean, rounds = _number(stats.get("mean")), _number(stats.get("rounds"))
        seconds = mean * rounds if isinstance(mean, float) and isinstance(rounds, float) else 0.0
    # The protocol refuses a duration outside 0..MAX_TIMEOUT; a clock step must not lose the test.
    return min(max(seconds, 0.0), MAX_TIMEOUT)


def _is_benchmark(data: Mapping[str, Any]) -> bool:
    if "machine_info" in data and "benchmarks" in data:
        return True
    # Without machine_info (a trimmed file), a list of benchmarks still says what it is.
    return isinstance(data.get("benchmarks"), list) and not any(isinstance(data.get(k), dict) for k in _DECLARED_KEYS)


def parse_result_data(data: object) -> ResultFile:
    """A result file's parsed JSON as a :class:`ResultFile` (see the module docstring)."""
    notes = _Notes()
    if not isinstance(data, dict):
        return ResultFile(note="DTF_RESULT_FILE must hold a JSON object of metric name -> number "
                               "(or {\"metrics\": ..., \"units\": ..., \"directions\": ...}, "
                               "or pytest-benchmark's --benchmark-json output)")
    if _is_benchmark(data):
        rf = _benchmarks(data, notes)
    elif any(isinstance(data.get(k), dict) for k in _DECLARED_KEYS):
        rf = _declared(data, notes)
    else:
        rf = ResultFile()
        _metrics(data, notes, rf.metrics)
    rf.note = notes.text()
    return rf


def read_result_file(path: str | os.PathLike[str]) -> ResultFile:
    """The task's result file; a missing or empty one is an empty :class:`ResultFile`."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return ResultFile()
    except OSError as exc:
        return ResultFile(note=f"DTF_RESULT_FILE cannot be read: {exc.strerror or exc}")
    if size == 0:
        return ResultFile()
    if size > MAX_RESULT_FILE_BYTES:
        return ResultFile(note=f"DTF_RESULT_FILE is {size} bytes, over the limit of {MAX_RESULT_FILE_BYTES}; "
                               "ignored")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        return ResultFile(note=f"DTF_RESULT_FILE cannot be read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return ResultFile(note=f"DTF_RESULT_FILE is not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})")
    if not text.strip():
        return ResultFile()
    try:
        data = json.loads(text)
    except ValueError as exc:
        return ResultFile(note=f"DTF_RESULT_FILE is not valid JSON: {exc}")
    except RecursionError:
        return ResultFile(note="DTF_RESULT_FILE is not valid JSON: nested too deeply")
    return parse_result_data(data)
