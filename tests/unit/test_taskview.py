"""taskview on a real SQLite file made by the real Store: filters, ordering, short ids, positions, bounds.

``python -m tests.unit.test_taskview [N]`` builds an N-task database (1,000,000 by default) and
prints what each read costs (the figures in taskview's docstring).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dtf_gui.coordinator import taskview
from dtf_gui.coordinator.store import Store, connect_readonly

STATUSES = ("completed", "completed", "completed", "failed", "running", "pending", "cancelled", "assigned")
SUFFIX = "a7"
T0 = 1_700_000_000.0
# Time-ordered ids as the coordinator makes them (state.new_task_id): a hex counter of
# microseconds, then a shared suffix.
ID0 = int(T0 * 1e6)


def task_id(i: int) -> str:
    return f"{ID0 + i:x}{SUFFIX}"


def task_row(i: int) -> tuple[Any, ...]:
    status = STATUSES[i % len(STATUSES)]
    tags = ["gpu"] if i % 10 == 0 else ["linux"] if i % 3 == 0 else None
    return (task_id(i), "command", status, i % 5, T0 + i * 0.001, None, None, f"w{i % 4}",
            json.dumps({"command": f"echo job-{i}" + (" needle" if i % 10_000 == 7 else "")}),
            json.dumps({"tags": tags}) if tags else None,
            json.dumps({"run": f"run{i % 3}"}),
            "boom" if status == "failed" else None, i % 2, f"tests/t.py::test_{i % 50}", None)


def build_db(path: Path, n: int) -> None:
    Store(path).close()  # the real schema, migrations included
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO tasks (task_id, type, status, priority, create_time, start_time, end_time, "
                       "worker_id, parameters, requirements, metadata, error, attempt, test_id, status_reason) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (task_row(i) for i in range(n)))
    db.close()


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("taskview") / "dtf.sqlite"
    build_db(path, 3000)
    return path


@pytest.fixture
def ops(db_path: Path) -> Iterator[dict[str, Callable[[dict[str, Any]], Any]]]:
    conn = connect_readonly(db_path)
    table = taskview.ops(lambda: conn)
    yield {name: (lambda args, t=t, h=h: h(msgspec.convert(args, t))) for name, (t, h) in table.items()}
    conn.close()


def newest_first(n: int) -> list[str]:
    return [task_id(i) for i in reversed(range(n))]


def test_pages_are_newest_first_with_the_total(ops) -> None:
    page = ops["task_page"]({"offset": 0, "limit": 5})
    assert page["total"] == 3000
    assert [r["task_id"] for r in page["rows"]] == newest_first(3000)[:5]
    deep = ops["task_page"]({"offset": 2998, "limit": 10, "with_total": False})
    assert deep["total"] is None
    assert [r["task_id"] for r in deep["rows"]] == [task_id(1), task_id(0)]
    row = page["rows"][0]
    assert row["command"] == "echo job-2999" and row["run_id"] == "run2" and row["test_id"] == "tests/t.py::test_49"
    assert set(row) >= {"task_id", "type", "status", "priority", "worker_id", "create_time", "start_time", "end_time",
                        "attempt", "command", "error", "status_reason", "test_id", "why", "run_id", "tags",
                        "short_id"}


def test_filters(ops) -> None:
    failed = ops["task_page"]({"status": ["failed"], "limit": 500})
    assert failed["total"] == 3000 // 8 - (0 if 3000 % 8 <= 3 else 0)
    assert all(r["status"] == "failed" and r["why"] == "boom" for r in failed["rows"])
    two = ops["task_page"]({"status": ["running", "pending"], "limit": 0})
    assert two["total"] == 2 * 375 and two["rows"] == []
    by_worker = ops["task_page"]({"worker_id": "w1", "limit": 3})
    assert by_worker["total"] == 750 and [r["task_id"] for r in by_worker["rows"]] == [task_id(i) for i in (2997, 2993,
                                                                                                          2989)]
    gpu = ops["task_page"]({"tag": "gpu", "limit": 500})
    assert gpu["total"] == 300 and all(r["tags"] == ["gpu"] for r in gpu["rows"])
    run = ops["task_page"]({"run_id": "run2", "limit": 1})
    assert run["total"] == 1000 and run["rows"][0]["task_id"] == task_id(2999)
    both = ops["task_page"]({"run_id": "run0", "tag": "gpu", "status": ["completed"], "limit": 500})
    assert all(r["run_id"] == "run0" and r["status"] == "completed" for r in both["rows"])
    assert both["total"] == sum(1 for i in range(3000) if i % 3 == 0 and i % 10 == 0 and STATUSES[i % 8] == "completed")


def test_text_matches_id_prefix_command_test_and_error(ops) -> None:
    assert [r["task_id"] for r in ops["task_page"]({"text": "job-1234"})["rows"]] == [task_id(1234)]
    assert ops["task_page"]({"text": "NEEDLE"})["total"] == 1  # case-insensitive, command
    assert ops["task_page"]({"text": "test_49", "limit": 0})["total"] == 60  # test id
    assert ops["task_page"]({"text": "boom", "limit": 0})["total"] == 375  # error
    # An id from its start only (the suffix is in every id: not a match anywhere in it).
    assert ops["task_page"]({"text": task_id(42)[:-1]})["rows"][0]["task_id"] == task_id(42)
    assert ops["task_page"]({"text": SUFFIX, "limit": 0})["total"] == 0
    # LIKE's wildcards are literal in the search text.
    assert ops["task_page"]({"text": "job%", "limit": 0})["total"] == 0


def test_short_ids_differ_from_their_neighbours(ops) -> None:
    rows = ops["task_page"]({"offset": 100, "limit": 200})["rows"]
    shorts = [r["short_id"] for r in rows]
    assert len(set(shorts)) == len(shorts)
    for r in rows:
        assert r["task_id"].startswith(r["short_id"]) and len(r["short_id"]) >= 6
    # Consecutive counters differ in the last hex digits only: a fixed 10-character cut would show
    # them all the same (the bug a user reported).
    assert len({r["task_id"][:10] for r in rows}) < len(rows)
    # Shortest: one character less would match a neighbour.
    ids = sorted(r["task_id"] for r in ops["task_page"]({"limit": 500})["rows"])
    for r in rows[1:-1]:
        cut = r["short_id"][:-1]
        if len(cut) >= 6:
            assert sum(1 for i in ids if i.startswith(cut)) > 1
    assert taskview.short_id("abcdefgh", None, None) == "abcdef"
    assert taskview.short_id("abcdefgh12", "abcdefgh02", "abcdefgh13") == "abcdefgh12"


def test_upto_pins_positions_and_newer_counts_above(ops) -> None:
    anchor = [T0 + 2000 * 0.001, task_id(2000)]
    page = ops["task_page"]({"upto": anchor, "offset": 0, "limit": 2, "newer_than": anchor})
    assert page["total"] == 2001
    assert [r["task_id"] for r in page["rows"]] == [task_id(2000), task_id(1999)]
    assert page["newer"] == 999
    assert page["top"] == [T0 + 2999 * 0.001, task_id(2999)]  # the newest matching, above any pin
    top = ops["task_page"]({"offset": 10, "limit": 1, "with_total": False})["top"]
    assert top == [T0 + 2999 * 0.001, task_id(2999)]


def test_plan_walks_the_create_time_index_without_sorting(db_path: Path) -> None:
    f = taskview.TaskFilter(status=["failed"], upto=(T0 + 1, task_id(1000)))
    conds, params = taskview._upto(f, *taskview._where(f))
    db = connect_readonly(db_path)
    try:
        plan = db.execute(f"EXPLAIN QUERY PLAN SELECT {taskview._COLUMNS} FROM tasks {taskview._sql_where(conds)} "
                          "ORDER BY create_time DESC, task_id DESC LIMIT 200 OFFSET 10", params).fetchall()
    finally:
        db.close()
    text = " | ".join(r[3] for r in plan)
    assert "idx_tasks_create_time" in text, text
    assert "TEMP B-TREE" not in text, text


def test_positions(ops) -> None:
    asked = [task_id(2999), task_id(0), task_id(1500), "nope", task_id(7)]
    pos = ops["task_positions"]({"task_ids": asked})
    assert pos == {task_id(2999): 0, task_id(0): 2999, task_id(1500): 1499, task_id(7): 2992}
    failed = ops["task_positions"]({"task_ids": [task_id(3), task_id(11), task_id(4)], "status": ["failed"]})
    rows = [r["task_id"] for r in ops["task_page"]({"status": ["failed"], "limit": 500})["rows"]]
    assert failed == {task_id(3): rows.index(task_id(3)), task_id(11): rows.index(task_id(11))}
    pinned = ops["task_positions"]({"task_ids": [task_id(2999), task_id(1990)], "upto": [T0 + 2.0, task_id(2000)]})
    assert pinned == {task_id(1990): 10}


@pytest.mark.parametrize("args, word", [
    ({"status": ["done"]}, "unknown task status 'done'"),
    ({"status": ["pending"] * 11}, "status"),
    ({"limit": 501}, "limit"),
    ({"offset": -1}, "offset"),
    ({"text": "x" * 201}, "text"),
    ({"sort": "priority"}, "sort"),
])
def test_bounds_are_refused(ops, args: dict[str, Any], word: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError), match=word):
        ops["task_page"](args)


def test_positions_bound(ops) -> None:
    with pytest.raises(msgspec.ValidationError, match="task_ids"):
        ops["task_positions"]({"task_ids": ["a"] * 1001})


def test_ops_are_in_the_views_table_and_role_table() -> None:
    from dtf_gui.coordinator.trust import VIEWER_OPS
    from dtf_gui.coordinator.views_api import ViewsApi
    table = ViewsApi("unused.sqlite").deferred_ops
    assert {"task_page", "task_positions"} <= set(table) and {"task_page", "task_positions"} <= VIEWER_OPS


# -- the figures in taskview's docstring -------------------------------------------------------------

def bench(n: int = 1_000_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dtf.sqlite"
        t = time.perf_counter()
        build_db(path, n)
        print(f"built {n:,} tasks in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        conn = connect_readonly(path)
        table = taskview.ops(lambda: conn)

        def timed(op: str, args: dict[str, Any], repeat: int = 5) -> float:
            t_, h = table[op]
            a = msgspec.convert(args, t_)
            h(a)  # warm
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                h(a)
                best = min(best, time.perf_counter() - t0)
            return round(best * 1000, 1)

        page = {"limit": 200, "with_total": False}
        mid = (T0 + (n // 2) * 0.001, task_id(n // 2))
        new_from = (T0 + (n - 1000) * 0.001, task_id(n - 1000))
        out = {
            "page@0": timed("task_page", {**page, "offset": 0}),
            "page@10000": timed("task_page", {**page, "offset": 10_000}),
            "page@500000": timed("task_page", {**page, "offset": 500_000}),
            "page@500000+upto": timed("task_page", {**page, "offset": 500_000, "upto": mid}),
            "total": timed("task_page", {"limit": 0}),
            "total status": timed("task_page", {"limit": 0, "status": ["failed"]}),
            "total text": timed("task_page", {"limit": 0, "text": "needle"}, repeat=2),
            "page text common": timed("task_page", {**page, "text": "job-9"}),
            "page text rare": timed("task_page", {**page, "text": "needle"}, repeat=2),
            "newer_than 1000": timed("task_page", {"limit": 0, "with_total": False, "newer_than": new_from}),
            "positions 100": timed("task_positions", {"task_ids": [task_id(i) for i in range(0, n, n // 100)]},
                                   repeat=2),
        }
        conn.close()
        return out


if __name__ == "__main__":
    print(json.dumps(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
