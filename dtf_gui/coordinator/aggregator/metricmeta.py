"""What a metric is: its unit, and whether a higher value is better.

A direction guessed from the name (``compare.higher_is_better``) is wrong often enough to call a
21 % throughput drop an improvement ("_s" reads as seconds in ``throughput_mb_s``), so the
direction is declared where possible and the guess is only the labelled fallback:

1. ``result_aggregator.metrics`` in coordinator.yaml: exact names, or globs (``latency_*``); an
   exact name wins over a glob, and a more specific glob (more literal characters) over a looser
   one. Nothing a task or an API call says overrides the config.
2. Declarations through the client API (source "api"): a person said so; a task does not
   override them, it may only fill in what they left out.
3. What tasks declare in their result files (source "task"); a later task's declaration replaces
   an earlier task's.
4. Otherwise the name guess (source "guess").

Unit and direction are resolved separately: a config glob may give the direction while a task
gives the unit. Declarations from tasks and the API outlive the coordinator in the store's
``metric_meta`` table (:meth:`MetricCatalog.load` / :meth:`MetricCatalog.changed_rows`); the
config's are read from the config at each start and never stored.

Reads (``polarity``, ``info``, ``describe``) run on the analysis thread while ``declare`` runs on
the loop thread: every declaration builds a new immutable snapshot and swaps one reference, so a
reader always sees one whole snapshot and never takes a lock.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from dtf_agent.runners.resultfile import normalise_direction
from dtf_gui.coordinator.aggregator.compare import higher_is_better

__all__ = [
    "DECLARED",
    "GUESSED",
    "GUESS_HINT",
    "MetricCatalog",
    "MetricInfo",
    "direction_hint",
    "metric_info_for",
]

# direction_source, as findings, comparisons and trends carry it.
DECLARED = "declared"
GUESSED = "guessed from the name"
# What a message that rests on a guessed direction adds, so the reader knows and can fix it.
GUESS_HINT = "(direction guessed from the name; declare it in result_aggregator.metrics)"

_STORED_SOURCES = ("task", "api")
_SOURCES = ("config", *_STORED_SOURCES)
_GLOB_CHARS = frozenset("*?[")
# Resolved names remembered per snapshot; past this the memo starts over (names are unbounded).
_MEMO_MAX = 65_536
_EMPTY: Mapping[str, tuple[str, str | None]] = MappingProxyType({})


class MetricInfo(NamedTuple):
    """What judging a metric needs: its polarity, its unit ("" when unknown) and whether that
    polarity was declared (:data:`DECLARED`) or guessed from the name (:data:`GUESSED`)."""

    higher_is_better: bool
    unit: str
    direction_source: str


def direction_hint(direction_source: str) -> str:
    """:data:`GUESS_HINT` for a guessed direction, "" for a declared one."""
    return GUESS_HINT if direction_source == GUESSED else ""


@dataclass(frozen=True)
class _Decl:
    unit: str
    direction: str | None
    source: str
    updated: float = 0.0


class _Resolved(NamedTuple):
    unit: str
    direction: str
    source: str  # of the direction: config, api, task or guess
    pattern: str | None  # the config glob that gave the unit or direction, if one did


@dataclass(frozen=True)
class _Snapshot:
    # The config's declarations as given (names and globs, in order), then split for lookup.
    declared: Mapping[str, _Decl]
    config: Mapping[str, _Decl]
    # (pattern, declaration), most specific first.
    globs: tuple[tuple[str, _Decl], ...]
    stored: Mapping[str, _Decl]
    # Filled by readers as they resolve names; a new snapshot starts with an empty one.
    memo: dict[str, _Resolved] = field(default_factory=dict)


def _is_glob(name: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(name)


def _specificity(pattern: str) -> int:
    return sum(1 for ch in pattern if ch not in _GLOB_CHARS)


def _check_direction(name: str, direction: str | None) -> str | None:
    if direction is None or direction == "":
        return None
    d = normalise_direction(direction)
    if d is None:
        raise ValueError(f"metric {name!r}: direction must be 'higher' or 'lower', not {direction!r}")
    return d


class MetricCatalog:
    """Units and directions of metrics by name: declared (config, API, tasks) or guessed.

    ``declared``: the config's declarations, name or glob -> (unit, direction or None), as
    ``ResultAggregatorSection.metric_declarations()`` gives them. ``clock`` stamps the stored
    declarations' ``updated``."""

    def __init__(self, declared: Mapping[str, tuple[str, str | None]] = _EMPTY, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        config: dict[str, _Decl] = {}
        for name, (unit, direction) in declared.items():
            config[name] = _Decl(unit or "", _check_direction(name, direction), "config")
        self._snap = self._snapshot(config, {})

    @staticmethod
    def _snapshot(config: Mapping[str, _Decl], stored: Mapping[str, _Decl]) -> _Snapshot:
        exact = {n: d for n, d in config.items() if not _is_glob(n)}
        order = {n: i for i, n in enumerate(config)}
        globs = sorted(((n, d) for n, d in config.items() if _is_glob(n)),
                       key=lambda nd: (-_specificity(nd[0]), order[nd[0]]))
        return _Snapshot(MappingProxyType(dict(config)), MappingProxyType(exact), tuple(globs),
                         MappingProxyType(dict(stored)))

    # -- declaring ---------------------------------------------------------------------------

    def declare(self, name: str, unit: str = "", direction: str | None = None, source: str = "task") -> bool:
        """Record what ``source`` ("task", "api" or "config") says of ``name``; True when that
        changed what is recorded. "" and None declare nothing (an earlier unit or direction
        stays). A bad direction or source raises ValueError."""
        return self.declare_all({name: unit} if unit else {}, {name: direction} if direction else {}, source)

    def declare_all(self, units: Mapping[str, str], directions: Mapping[str, str | None],
                    source: str = "task") -> bool:
        """:meth:`declare` for every name of ``units`` and ``directions`` at once (a result's
        declarations), with one snapshot swap; True when anything changed."""
        if source not in _SOURCES:
            raise ValueError(f"metric declaration source must be one of {', '.join(_SOURCES)}, not {source!r}")
        wanted: dict[str, tuple[str, str | None]] = {}
        for name, unit in units.items():
            if unit:
                wanted[name] = (str(unit), None)
        for name, direction in directions.items():
            d = _check_direction(name, direction)
            if d is not None:
                wanted[name] = (wanted.get(name, ("", None))[0], d)
        if not wanted:
            return False
        with self._lock:
            snap = self._snap
            if source == "config":
                return self._declare_config(snap, wanted)
            now = self.clock()
            changes: dict[str, _Decl] = {}
            for name, (unit, direction) in wanted.items():
                new = self._merge(snap.stored.get(name), unit, direction, source, now)
                if new is not None:
                    changes[name] = new
            if not changes:
                return False
            self._snap = self._snapshot(snap.declared, {**snap.stored, **changes})
            self._dirty.update(changes)
            return True

    @staticmethod
    def _merge(old: _Decl | None, unit: str, direction: str | None, source: str, now: float) -> _Decl | None:
        """The stored declaration after ``source`` said (unit, direction); None if unchanged."""
        if old is None:
            return _Decl(unit, direction, source, now)
        if old.source == "api" and source == "task":
            # A person's declaration stands; a task may only fill in what it left open.
            unit, direction = old.unit or unit, old.direction or direction
            source = "api"
        else:
            unit, direction = unit or old.unit, direction or old.direction
        if (unit, direction, source) == (old.unit, old.direction, old.source):
            return None
        return _Decl(unit, direction, source, now)

    def _declare_config(self, snap: _Snapshot, wanted: Mapping[str, tuple[str, str | None]]) -> bool:
        config = dict(snap.declared)
        changed = False
        for name, (unit, direction) in wanted.items():
            old = config.get(name)
            new = _Decl(unit or (old.unit if old else ""), direction or (old.direction if old else None), "config")
            if new != old:
                config[name] = new
                changed = True
        if changed:
            self._snap = self._snapshot(config, snap.stored)
        return changed

    # -- the store's metric_meta rows -----------------------------------------------------------

    def load(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Take the stored declarations back (``store.load_rows("metric_meta")``); rows of the
        config or of an unknown source are skipped, as are bad directions. Loaded rows are not
        "changed". Returns how many were taken."""
        taken: dict[str, _Decl] = {}
        for row in rows:
            source = row.get("source")
            name = row.get("name")
            if source not in _STORED_SOURCES or not isinstance(name, str) or not name:
                continue
            direction = normalise_direction(row.get("direction"))
            unit = row.get("unit") or ""
            updated = row.get("updated")
            taken[name] = _Decl(str(unit), direction, str(source),
                                float(updated) if isinstance(updated, (int, float)) else 0.0)
        if taken:
            with self._lock:
                snap = self._snap
                self._snap = self._snapshot(snap.declared, {**snap.stored, **taken})
        return len(taken)

    def changed_rows(self) -> list[tuple[str, str, str | None, str, float]]:
        """Rows (name, unit, direction, source, updated) in ``store.KEYED_COLUMNS["metric_meta"]``
        order for every stored declaration changed since the last call, for ``store.put_row``."""
        with self._lock:
            names, self._dirty = self._dirty, set()
            stored = self._snap.stored
        rows = []
        for name in sorted(names):
            d = stored[name]
            rows.append((name, d.unit, d.direction, d.source, d.updated))
        return rows

    # -- reading -----------------------------------------------------------------------------------

    def _resolve(self, name: str) -> _Resolved:
        snap = self._snap
        hit = snap.memo.get(name)
        if hit is not None:
            return hit
        layers: list[tuple[_Decl, str | None]] = []
        exact = snap.config.get(name)
        if exact is not None:
            layers.append((exact, None))
        layers.extend((d, pattern) for pattern, d in snap.globs if fnmatch.fnmatchcase(name, pattern))
        stored = snap.stored.get(name)
        if stored is not None:
            layers.append((stored, None))
        unit, unit_pattern = next(((d.unit, pat) for d, pat in layers if d.unit), ("", None))
        found = next(((d.direction, d.source, pat) for d, pat in layers if d.direction), None)
        if found is None:
            direction, source, pattern = ("higher" if higher_is_better(name) else "lower"), "guess", unit_pattern
        else:
            direction, source, dir_pattern = found[0] or "higher", found[1], found[2]
            pattern = dir_pattern or unit_pattern
        resolved = _Resolved(unit, direction, source, pattern)
        if len(snap.memo) >= _MEMO_MAX:
            snap.memo.clear()
        snap.memo[name] = resolved
        return resolved

    def polarity(self, name: str) -> bool:
        """Is a higher value of ``name`` better? The declared direction, else the name guess."""
        return self._resolve(name).direction == "higher"

    def info(self, name: str) -> MetricInfo:
        """Polarity, unit and direction source of ``name`` (what a finding or comparison carries)."""
        r = self._resolve(name)
        return MetricInfo(r.direction == "higher", r.unit, GUESSED if r.source == "guess" else DECLARED)

    def describe(self, name: str) -> dict[str, Any]:
        """{"name", "unit", "direction": "higher"|"lower", "source": "config"|"task"|"api"|"guess"
        (where the direction came from), "direction_source": "declared"|"guessed from the name",
        "pattern": the config glob that applied, or None}."""
        r = self._resolve(name)
        return {"name": name, "unit": r.unit, "direction": r.direction, "source": r.source,
                "direction_source": GUESSED if r.source == "guess" else DECLARED, "pattern": r.pattern}

    def declarations(self) -> list[dict[str, Any]]:
        """Every declaration as made, config (names and globs) first, then the stored ones by name:
        {"name", "unit", "direction" (None when only a unit was declared), "source", "updated"}."""
        snap = self._snap
        stored = sorted(snap.stored.items())
        return [{"name": n, "unit": d.unit, "direction": d.direction, "source": d.source,
                 "updated": d.updated or None} for n, d in (*snap.declared.items(), *stored)]


def metric_info_for(polarity: Callable[[str], bool] | None,
                    catalog: MetricCatalog | None) -> Callable[[str], MetricInfo]:
    """How the detector and the query service judge a metric, from what they were given.

    A catalog alone (or with its own ``polarity``): the catalog says everything. A polarity
    callable of the caller's own: that polarity, counted as declared (the caller chose it), with
    the catalog's units if there is one. Neither: the name guess, labelled as such."""
    if catalog is not None and (polarity is None or polarity == catalog.polarity):
        return catalog.info
    if polarity is None or polarity is higher_is_better:
        def guessed(name: str) -> MetricInfo:
            unit = catalog.info(name).unit if catalog is not None else ""
            return MetricInfo(higher_is_better(name), unit, GUESSED)

        return guessed
    custom = polarity

    def chosen(name: str) -> MetricInfo:
        unit = catalog.info(name).unit if catalog is not None else ""
        return MetricInfo(bool(custom(name)), unit, DECLARED)

    return chosen
