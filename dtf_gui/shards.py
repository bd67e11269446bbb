"""Splitting a collected pytest suite into shards by measured duration (no I/O).

Longest-processing-time first: each unit, longest first, goes onto the shard expected to finish
earliest; with known durations that is within 4/3 of the best possible makespan (Graham 1969),
and in practice within a few percent of it. Tests never timed yet go as whole files, each
test counted at the suite's median duration: a file's module fixtures then run once, and a first
run is balanced about as well as its ignorance allows. Within a shard the tests keep their
collection order, so module- and class-scoped fixtures are set up once per shard.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# What a test never timed counts for when nothing at all is known of the suite (seconds).
DEFAULT_DURATION = 0.5


@dataclass
class Shard:
    tests: list[str] = field(default_factory=list)
    expected: float = 0.0  # seconds, by the history (and the median for unknown tests)


@dataclass(frozen=True)
class ShardPlan:
    shards: list[Shard]
    known: int  # tests with a duration history
    unknown: int
    median: float  # what an unknown test was counted as

    @property
    def makespan(self) -> float:
        return max((s.expected for s in self.shards), default=0.0)

    @property
    def total(self) -> float:
        return sum(s.expected for s in self.shards)


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def auto_shards(slots: int, n_tests: int) -> int:
    """How many shards for ``slots`` free slots: one each. More shards would balance a first run
    (no history yet) dynamically, but each costs a pytest start and a collection of its own (seconds
    with a few plugins installed), which a suite of short tests cannot win back."""
    if n_tests <= 0:
        return 0
    return max(1, min(n_tests, slots))


# A plan that keeps files whole is taken when its makespan is within this of the finest plan: each
# file a shard holds is collected (imported) by that shard's pytest, which a suite of short tests
# feels more than a few percent of imbalance.
WHOLE_FILES_SLACK = 1.05


def plan_shards(test_ids: Sequence[str], durations: Mapping[str, float], n: int) -> ShardPlan:
    """Split ``test_ids`` (in collection order) into at most ``n`` non-empty shards: test by test
    where durations are known, unless keeping files whole costs no more than WHOLE_FILES_SLACK."""
    order = {t: i for i, t in enumerate(dict.fromkeys(test_ids))}
    known = {t: max(0.0, float(durations[t])) for t in order if t in durations}
    median = statistics.median(known.values()) if known else DEFAULT_DURATION
    fine = _lpt(order, known, median, n, whole_files=False)
    if not known:
        return fine
    whole = _lpt(order, known, median, n, whole_files=True)
    return whole if whole.makespan <= fine.makespan * WHOLE_FILES_SLACK else fine


def _lpt(order: Mapping[str, int], known: Mapping[str, float], median: float, n: int, *,
         whole_files: bool) -> ShardPlan:
    # Units: a known test alone (or, with whole_files, with the rest of its file unless the file
    # alone is more than a shard's fair share); the unknown tests of one file together.
    by_file: dict[str, list[str]] = {}
    for t in order:
        by_file.setdefault(file_of(t), []).append(t)
    total = sum(known.get(t, median) for t in order)
    units: list[tuple[float, int, list[str]]] = []
    for tests in by_file.values():
        cost = sum(known.get(t, median) for t in tests)
        unknown = [t for t in tests if t not in known]
        if whole_files and cost <= total / max(1, n):
            units.append((cost, order[tests[0]], tests))
            continue
        units += [(known[t], order[t], [t]) for t in tests if t in known]
        if unknown:
            units.append((median * len(unknown), order[unknown[0]], unknown))
    n = max(1, min(n, len(units))) if units else 0
    # Longest first; ties in collection order, so the same input always gives the same plan.
    units.sort(key=lambda u: (-u[0], u[1]))
    heap = [(0.0, i) for i in range(n)]
    shards = [Shard() for _ in range(n)]
    for cost, _, tests in units:
        load, i = heapq.heappop(heap)
        shards[i].tests.extend(tests)
        shards[i].expected += cost
        heapq.heappush(heap, (load + cost, i))
    for s in shards:
        s.tests.sort(key=order.__getitem__)
    shards = [s for s in shards if s.tests]
    shards.sort(key=lambda s: -s.expected)  # the longest is dispatched first
    return ShardPlan(shards, len(known), len(order) - len(known), median)


def lower_bound(durations: Sequence[float], workers: int) -> float:
    """No schedule on ``workers`` can finish sooner than this: the whole work shared out evenly,
    or the longest single test."""
    if not durations:
        return 0.0
    return max(sum(durations) / max(1, workers), max(durations))
