"""Named runs: one submission (a plan, a pytest run, a batch) whose results belong together.

A run has an id an engineer can read and type (``nightly-bench.3``: the name, then how many runs
of that name came before plus one) and a baseline: the previous run of the same name, which is
what ``dtf analyze compare --run R`` compares against when no other is named. Rows are written
through the store like every other row (the single writer); the registry keeps them in memory
too, so the loop never reads SQLite to check that a submission names a run that exists.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgspec

from dtf_gui.coordinator.store import KEYED_COLUMNS, Store, json_or_none

RUN_KINDS = ("plan", "pytest", "submit")
_SLUG = re.compile(r"[^a-z0-9_.-]+")
MAX_KEPT = 100_000  # runs held in memory: far more than a lab makes in years


def slug(name: str) -> str:
    """A run name as the start of an id: lower case, no spaces or slashes."""
    s = _SLUG.sub("-", name.lower()).strip("-.")
    return s[:60] or "run"


class Runs:
    """The runs table, held in memory by the loop thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rows: dict[str, dict[str, Any]] = {}
        self._count_by_slug: dict[str, int] = {}
        # Tasks of each run not final yet, and how many of its tasks failed: a run whose tasks have
        # all ended is finished here, whether or not its client lived to say so.
        self.active: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        for row in store.load_rows("runs"):
            self._keep(row)

    def _keep(self, row: dict[str, Any]) -> None:
        self.rows[row["run_id"]] = row
        base, _, n = row["run_id"].rpartition(".")
        if n.isdigit():
            self._count_by_slug[base] = max(self._count_by_slug.get(base, 0), int(n))

    def _put(self, row: dict[str, Any]) -> None:
        self._keep(row)
        self.store.put_row("runs", tuple(json_or_none(row[c]) if c in ("meta", "summary") else row[c]
                                         for c in KEYED_COLUMNS["runs"]))

    def create(self, name: str, kind: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        if kind not in RUN_KINDS:
            raise ValueError(f"unknown run kind {kind!r}; known: {', '.join(RUN_KINDS)}")
        if not name.strip():
            raise ValueError("a run needs a name")
        if len(self.rows) >= MAX_KEPT:
            raise ValueError(f"{MAX_KEPT} runs are kept; remove old ones before starting more")
        base = slug(name)
        n = self._count_by_slug.get(base, 0) + 1
        run_id = f"{base}.{n}"
        baseline = self.previous(name, before=time.time())
        row = {"run_id": run_id, "name": name, "kind": kind, "created": time.time(), "finished": None,
               "status": "running", "meta": meta or {}, "summary": {}}
        self._put(row)
        return {"run_id": run_id, "baseline": baseline}

    def finish(self, run_id: str, status: str, summary: dict[str, Any]) -> dict[str, Any]:
        row = self.get(run_id)
        row = {**row, "finished": time.time(), "status": status, "summary": summary}
        self._put(row)
        return row

    def tasks_added(self, run_ids: Iterable[str]) -> None:
        """New tasks of runs (a run gets more: reruns of a pytest run): it is running again."""
        for run_id in run_ids:
            self.active[run_id] += 1
            self.total[run_id] += 1
            row = self.rows.get(run_id)
            if row is not None and row["status"] != "running":
                self._put({**row, "status": "running", "finished": None})

    def task_final(self, run_id: str, ok: bool) -> None:
        if self.active[run_id] <= 0:
            return
        self.active[run_id] -= 1
        if not ok:
            self.failed[run_id] += 1
        row = self.rows.get(run_id)
        if self.active[run_id] == 0 and row is not None and row["status"] == "running":
            del self.active[run_id]
            summary = {**_decoded(row["summary"]), "tasks": self.total[run_id], "failed_tasks": self.failed[run_id]}
            self._put({**row, "status": "failed" if self.failed[run_id] else "passed", "finished": time.time(),
                       "summary": summary})

    # get and listing are also called from the analysis thread (get_run, list_runs): they read a
    # snapshot of the rows (list() of a dict is one step under the GIL), never iterate the live dict.

    def get(self, run_id: str) -> dict[str, Any]:
        row = self.rows.get(run_id)
        if row is None:
            raise KeyError(f"no run {run_id!r}; see `dtf runs`")
        return dict(row, meta=_decoded(row["meta"]), summary=_decoded(row["summary"]))

    def exists(self, run_id: str) -> bool:
        return run_id in self.rows

    def previous(self, name: str, before: float) -> str | None:
        """The latest run of ``name`` created before ``before``: the default baseline."""
        best: dict[str, Any] | None = None
        for row in self.rows.values():
            if row["name"] == name and (row["created"] or 0) < before and (
                    best is None or row["created"] > best["created"]):
                best = row
        return best["run_id"] if best else None

    def listing(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        rows = [r for r in list(self.rows.values()) if name is None or r["name"] == name]
        rows.sort(key=lambda r: r["created"] or 0, reverse=True)
        return [self.get(r["run_id"]) for r in rows[:limit]]


def _decoded(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        return msgspec.json.decode(value)
    return value if value is not None else {}
