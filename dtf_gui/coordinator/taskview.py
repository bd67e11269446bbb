"""The task table's reads: windows of the tasks, newest first, filtered, with readable ids.

The window shows a table over every task the database holds (a million and more) without a
Python object per task: it asks for one window of rows at a time (``task_page``) and, to keep a
selection across a refresh, for the positions of known tasks in that ordering
(``task_positions``). Both run deferred (analysis thread, read-only connection of its own).

Order: ``create_time DESC, task_id DESC``, walked backwards along ``idx_tasks_create_time``, so a
window at any depth needs no sort. ``upto`` (a ``[create_time, task_id]`` key) pins a window to a
snapshot of the table: rows at or below that key keep their positions while new tasks arrive
above it, and ``newer_than`` counts what arrived above a key (an index range walk of the new rows
only). Each reply is read in one read transaction, so its count, rows and top agree.

Short ids: task ids are time-ordered hex counters with a shared suffix, so consecutive ids share
all but their last digits; a row's ``short_id`` is the shortest prefix (six characters at least)
that differs from both neighbours in primary-key order.

Measured on a 1,000,000-task database (``python -m tests.unit.test_taskview``, which builds it with
the real schema and prints these; 2-core dev box, warm page cache, other work running), ms:

    page of 200 at offset 0 ................... 3.2
    page of 200 at offset 10,000 .............. 3.3
    page of 200 at offset 500,000 ............. 14   (the skip walks the index only)
    the same, pinned (upto) ................... 40
    total, no filter (index-only count) ....... 11
    total, status filter ...................... 105
    total, text filter ........................ 780
    page of 200, text filter, common match .... 3.4
    page of 200, text filter, rare (1 in 10^4)  2,000 (a whole scan: it runs off the GUI thread)
    newer_than (1,000 new rows counted) ....... 0.1
    task_positions of 100 ids across the table  200

A filtered count is too dear to do per window: the table asks ``with_total`` only when its filter
changes (and, under a filter on what changes, at most once a second); windows and the arrival of
new tasks (``newer_than``) cost milliseconds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import msgspec

from dtf_agent import protocol as p

__all__ = ["PageArgs", "PositionArgs", "common_prefix", "ops", "short_id"]

MAX_PAGE = 500
MAX_POSITIONS = 1000
MAX_STATUSES = 10
MAX_TEXT = 200
SHORT_MIN = 6

# The columns a row of the table needs, the JSON of parameters and requirements decoded in SQL
# (only the pieces shown), never the whole task.
_COLUMNS = ("task_id, type, status, priority, worker_id, create_time, start_time, end_time, attempt, "
            "json_extract(parameters, '$.command') AS command, error, status_reason, test_id, "
            "json_extract(metadata, '$.run') AS run_id, json_extract(requirements, '$.tags') AS tags")


# At or below a key in the ordering. The plain bound on create_time is redundant but lets SQLite
# bound its index walk by it (the row value alone is tested row by row: 6x slower at depth).
_AT_OR_BELOW = ("create_time <= ?", "(create_time, task_id) <= (?, ?)")


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# A position in the ordering: [create_time, task_id].
Key = tuple[float, p.Id]


class TaskFilter(_Args, kw_only=True):
    status: Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]],
                      msgspec.Meta(max_length=MAX_STATUSES)] = msgspec.field(default_factory=list)
    worker_id: p.Name | None = None
    tag: p.Name | None = None
    run_id: p.Id | None = None
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] = ""
    # Only rows at or below this key (a snapshot of the ordering: new tasks above it do not move it).
    upto: Key | None = None


class PageArgs(TaskFilter, kw_only=True):
    offset: Annotated[int, msgspec.Meta(ge=0, le=2**53)] = 0
    # 0: no rows, only the counts asked for.
    limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_PAGE)] = 200
    with_total: bool = True
    # Count the matching rows above this key (what arrived since a window was pinned there).
    newer_than: Key | None = None


class PositionArgs(TaskFilter, kw_only=True):
    task_ids: Annotated[list[p.Id], msgspec.Meta(max_length=MAX_POSITIONS)]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(f: TaskFilter) -> tuple[list[str], list[Any]]:
    """The filter's SQL conditions and their parameters (the ordering's bounds are the caller's)."""
    unknown = [s for s in f.status if s not in p.TASK_STATUSES]
    if unknown:
        # ValueError: the server answers it as a refusal with this text (taskview sits below trust_api).
        raise ValueError(f"unknown task status {', '.join(map(repr, unknown))}; known: {', '.join(p.TASK_STATUSES)}")
    conds: list[str] = []
    params: list[Any] = []
    if f.status:
        conds.append(f"status IN ({','.join('?' * len(f.status))})")
        params.extend(f.status)
    if f.worker_id:
        conds.append("worker_id = ?")
        params.append(f.worker_id)
    if f.tag:
        conds.append("EXISTS (SELECT 1 FROM json_each(requirements, '$.tags') WHERE value = ?)")
        params.append(f.tag)
    if f.run_id:
        conds.append("json_extract(metadata, '$.run') = ?")
        params.append(f.run_id)
    text = f.text.strip()
    if text:
        # An id is typed from its start (a short id, pasted); the rest is searched anywhere in it.
        # LIKE: case-insensitive for ASCII, which is what a search box is expected to be.
        anywhere = f"%{_like(text)}%"
        conds.append("(task_id LIKE ? ESCAPE '\\' OR json_extract(parameters, '$.command') LIKE ? ESCAPE '\\' "
                     "OR test_id LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\')")
        params.extend([f"{_like(text)}%", anywhere, anywhere, anywhere])
    return conds, params


def _upto(f: TaskFilter, conds: list[str], params: list[Any]) -> tuple[list[str], list[Any]]:
    if f.upto is None:
        return conds, params
    return [*conds, *_AT_OR_BELOW], [*params, f.upto[0], *f.upto]


def _sql_where(conds: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(conds)}" if conds else ""


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def short_id(task_id: str, before: str | None, after: str | None) -> str:
    """The shortest prefix of ``task_id`` (``SHORT_MIN`` characters at least) that neither
    neighbour in key order starts with."""
    need = max(common_prefix(task_id, before or ""), common_prefix(task_id, after or "")) + 1
    return task_id[:max(SHORT_MIN, need)]


def _row(r: sqlite3.Row, short: str) -> dict[str, Any]:
    command = r["command"]
    tags = r["tags"]
    return {
        "task_id": r["task_id"], "type": r["type"], "status": r["status"], "priority": r["priority"],
        "worker_id": r["worker_id"], "create_time": r["create_time"], "start_time": r["start_time"],
        "end_time": r["end_time"], "attempt": r["attempt"] or 0,
        # A command given as an argument list is shown as JSON text, as stored.
        "command": command if isinstance(command, str) else None,
        "error": r["error"], "status_reason": r["status_reason"], "test_id": r["test_id"] or "",
        "why": r["error"] or r["status_reason"],
        "run_id": r["run_id"] if isinstance(r["run_id"], str) else None,
        "tags": msgspec.json.decode(tags) if isinstance(tags, str) else [],
        "short_id": short,
    }


@contextmanager
def _snapshot(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every statement inside sees the same database (WAL snapshot)."""
    if db.in_transaction:  # a caller's own transaction already holds one snapshot
        yield db
        return
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


def _neighbours(db: sqlite3.Connection, task_id: str) -> tuple[str | None, str | None]:
    # Two probes of the primary key (the table is WITHOUT ROWID: its own b-tree by task_id).
    before = db.execute("SELECT max(task_id) FROM tasks WHERE task_id < ?", (task_id,)).fetchone()[0]
    after = db.execute("SELECT min(task_id) FROM tasks WHERE task_id > ?", (task_id,)).fetchone()[0]
    return before, after


class TaskView:
    def __init__(self, conn: Callable[[], sqlite3.Connection]) -> None:
        self.conn = conn

    def page(self, a: PageArgs) -> dict[str, Any]:
        any_conds, any_params = _where(a)
        conds, params = _upto(a, any_conds, any_params)
        where = _sql_where(conds)
        db = self.conn()
        with _snapshot(db):
            total = None
            if a.with_total:
                total = db.execute(f"SELECT count(*) FROM tasks {where}", params).fetchone()[0]
            rows: list[dict[str, Any]] = []
            if a.limit:
                found = self._window(db, any_conds, conds, params, a.offset, a.limit)
                rows = [_row(r, short_id(r["task_id"], *_neighbours(db, r["task_id"]))) for r in found]
            newer = None
            if a.newer_than is not None:
                above = _sql_where([*any_conds, "(create_time, task_id) > (?, ?)"])
                newer = db.execute(f"SELECT count(*) FROM tasks {above}", [*any_params, *a.newer_than]).fetchone()[0]
            if rows and a.offset == 0 and a.upto is None:
                top: list[Any] | None = [rows[0]["create_time"], rows[0]["task_id"]]
            else:
                first = db.execute(f"SELECT create_time, task_id FROM tasks {_sql_where(any_conds)} "
                                   "ORDER BY create_time DESC, task_id DESC LIMIT 1", any_params).fetchone()
                top = None if first is None else [first[0], first[1]]
        return {"total": total, "offset": a.offset, "rows": rows, "top": top, "newer": newer}

    @staticmethod
    def _window(db: sqlite3.Connection, filters: list[str], conds: list[str], params: list[Any], offset: int,
                limit: int) -> list[sqlite3.Row]:
        where = _sql_where(conds)
        if offset and not filters:
            # Unfiltered, the rows skipped need nothing but the index (create_time, task_id): find
            # the window's first key there, then read whole rows from it on. Skipping through the
            # table itself costs a row lookup per skipped row (4x slower at offset 500,000).
            first = db.execute(f"SELECT create_time, task_id FROM tasks {where} ORDER BY create_time DESC, "
                               "task_id DESC LIMIT 1 OFFSET ?", [*params, offset]).fetchone()
            if first is None:
                return []
            # The window's first key is at or below any ``upto``: it alone bounds the walk (with
            # both bounds SQLite may start from the higher one and test every row in between).
            conds = list(_AT_OR_BELOW)
            params = [first[0], first[0], first[1]]
            where = _sql_where(conds)
            offset = 0
        return db.execute(f"SELECT {_COLUMNS} FROM tasks {where} ORDER BY create_time DESC, task_id DESC "
                          "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()

    def positions(self, a: PositionArgs) -> dict[str, int]:
        """Each asked task's row in the filtered ordering (absent: not there). One walk of the
        ordering from the top down to the oldest asked task, counted in SQL between asked tasks."""
        conds, params = _upto(a, *_where(a))
        db = self.conn()
        out: dict[str, int] = {}
        ids = list(dict.fromkeys(a.task_ids))
        if not ids:
            return out
        with _snapshot(db):
            marks = ",".join("?" * len(ids))
            keys = db.execute(f"SELECT create_time, task_id FROM tasks "
                              f"{_sql_where([*conds, f'task_id IN ({marks})'])}", [*params, *ids]).fetchall()
            ordered = sorted(((k[0], k[1]) for k in keys), reverse=True)
            pos = -1  # the position of the previous asked task (none yet: above the top)
            prev: tuple[float, str] | None = None
            for key in ordered:
                between = [*conds, "(create_time, task_id) > (?, ?)"]
                args = [*params, *key]
                if prev is not None:
                    between.append("(create_time, task_id) < (?, ?)")
                    args.extend(prev)
                n = db.execute(f"SELECT count(*) FROM tasks {_sql_where(between)}", args).fetchone()[0]
                pos += n + 1
                out[key[1]] = pos
                prev = key
        return out


def ops(conn: Callable[[], sqlite3.Connection]) -> dict[str, tuple[type[Any], Callable[[Any], Any]]]:
    view = TaskView(conn)
    return {"task_page": (PageArgs, view.page), "task_positions": (PositionArgs, view.positions)}
