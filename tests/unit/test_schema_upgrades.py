"""A database written by each released schema version opens and migrates (issue 12, item 7).

The fixtures in tests/fixtures/schemas/ were written by each release's own store
(tools/schema_fixture.py): three tasks, three results with a metric, an anomaly and a change point.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from dtf_gui.coordinator.records import Result
from dtf_gui.coordinator.store import SCHEMA_VERSION, Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"


def test_every_released_schema_version_has_a_fixture() -> None:
    """Raising SCHEMA_VERSION means writing the fixture of the version left (see tools/schema_fixture.py)."""
    have = sorted(int(p.stem.removeprefix("schema_v")) for p in FIXTURES.glob("schema_v*.sqlite"))
    assert have == list(range(1, SCHEMA_VERSION)), have


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_database_of_an_older_release_opens_migrated_with_its_rows(tmp_path: Path, version: int) -> None:
    db = tmp_path / "dtf.sqlite"
    shutil.copy(FIXTURES / f"schema_v{version}.sqlite", db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    conn.close()
    s = Store(db)
    try:
        assert sorted(t["task_id"] for t in s.load_tasks()) == ["task-0", "task-1", "task-2"]
        assert {t["task_id"]: t["status"] for t in s.load_tasks()}["task-0"] == "pending"
        assert sorted(s.query("SELECT result_id, json_extract(metrics, '$.throughput') FROM results")) == [
            ("res-0", 100.0), ("res-1", 101.0), ("res-2", 102.0)]
        assert sorted(s.query("SELECT kind, subject FROM events")) == [("anomaly", "res-1"),
                                                                     ("change_point", "res-2")]
        # Migrated: the newest version's columns and indexes are there and take writes.
        assert s.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        indexes = {r[0] for r in s.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"idx_tasks_create_time", "idx_events_kind", "idx_events_subject"} <= indexes
        s.put_result(Result(result_id="res-new", task_id="task-0", worker_id="w1", test_id="bench", run_id="r1",
                            outcome="passed", metrics={"throughput": 99.0}))
        s.retract_events("anomaly", ["res-1"], "throughput")
        s.flush(wait=True)
        assert s.query("SELECT run_id, outcome FROM results WHERE result_id = 'res-new'") == [("r1", "passed")]
        assert s.query("SELECT kind FROM events WHERE subject = 'res-1'") == [("anomaly_retracted",)]
    finally:
        s.close()
