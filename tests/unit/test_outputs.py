"""What agents send besides results, attributed to the worker it came from, and the bundle store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dtf_agent import protocol as p
from dtf_agent.runners.bundles import build_bundle
from dtf_gui.coordinator.outputs import BundleStore, TaskOutputs
from dtf_gui.coordinator.records import TaskRecord
from dtf_gui.coordinator.scheduler import TaskSpec
from dtf_gui.coordinator.state import TaskTable
from tests.helpers import wait_until


def running(task_id: str, worker: str, attempt: int = 1, **params: str) -> TaskRecord:
    t = TaskRecord(TaskSpec(task_id=task_id), type="command", parameters={"command": "true", **params},
                   timeout=None, metadata=None, create_time=time.time(), status=p.RUNNING)
    t.worker_id, t.attempt = worker, attempt
    return t


@pytest.fixture
def desk(tmp_path: Path) -> TaskOutputs:
    tasks = TaskTable()
    tasks.add(running("t1", "w1", attempt=2))
    out = TaskOutputs(tmp_path / "home", tasks, max_log_bytes=1024 * 1024)
    yield out
    out.stop()


def test_a_worker_writes_only_the_logs_of_attempts_it_runs(desk: TaskOutputs) -> None:
    desk.log_chunk("w1", p.LogChunk(task_id="t1", attempt=2, offset=0, data=b"mine\n"))
    desk.log_chunk("w2", p.LogChunk(task_id="t1", attempt=2, offset=5, data=b"not yours\n"))  # another worker
    desk.log_chunk("w1", p.LogChunk(task_id="t1", attempt=1, offset=5, data=b"stale\n"))  # an old attempt
    desk.log_chunk("w1", p.LogChunk(task_id="nope", attempt=1, offset=0, data=b"?\n"))  # no such task
    desk.progress_report("w2", p.Progress(task_id="t1", attempt=2, done=9, total=9))
    desk.progress_report("w1", p.Progress(task_id="t1", attempt=2, done=1, failed=1, total=9, current="a::b"))
    wait_until(lambda: desk.logs.store.read("t1").size == 5, 5)
    assert desk.logs.store.read("t1").data == b"mine\n"
    assert desk.refused == 4
    assert desk.progress["t1"] == (2, 1, 1, 9, "a::b")
    desk.task_final("t1")
    assert "t1" not in desk.progress


def test_a_worker_fetches_only_the_bundles_of_its_tasks(desk: TaskOutputs, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text("def test_a():\n    pass\n")
    bundle = build_bundle(suite)
    assert desk.bundles.write(bundle.digest, 0, bundle.data, len(bundle.data)) == {
        "received": len(bundle.data), "complete": True}
    refused = desk.bundle_piece("w1", p.FetchBundle(digest=bundle.digest))
    assert refused.error and not refused.data
    desk.dispatched("w1", {"bundle": bundle.digest})
    piece = desk.bundle_piece("w1", p.FetchBundle(digest=bundle.digest))
    assert (piece.error, piece.data, piece.total) == ("", bundle.data, len(bundle.data))
    assert desk.bundle_piece("w2", p.FetchBundle(digest=bundle.digest)).error  # w2 was given none
    # After a coordinator restart the grant is gone, but the task the agent claimed back says it is its.
    desk.tasks.add(running("t2", "w3", bundle=bundle.digest))
    assert desk.bundle_piece("w3", p.FetchBundle(digest=bundle.digest)).data == bundle.data
    unknown = "sha256-" + "1" * 64
    desk.dispatched("w1", {"bundle": unknown})
    assert "no bundle" in desk.bundle_piece("w1", p.FetchBundle(digest=unknown)).error


def test_uploads_resume_verify_and_evict(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles", max_total_bytes=1)
    bundles = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        d.mkdir()
        (d / "f.py").write_text(f"x = {i}\n" * 200)
        bundles.append(build_bundle(d))
    b = bundles[0]
    half = len(b.data) // 2
    assert store.write(b.digest, 0, b.data[:half], len(b.data)) == {"received": half, "complete": False}
    assert store.received(b.digest) == half
    # A retried piece at the wrong offset is told where to go on from; nothing is written twice.
    assert store.write(b.digest, 0, b.data[:half], len(b.data)) == {"received": half, "complete": False}
    assert store.write(b.digest, half, b.data[half:], len(b.data))["complete"]
    assert store.has(b.digest) and store.read(b.digest, 0, 10**9) == (b.data, len(b.data))
    # Content that does not hash to its digest is refused and not kept.
    other = bundles[1]
    with pytest.raises(ValueError, match="hashes to"):
        store.write("sha256-" + "2" * 64, 0, other.data, len(other.data))
    assert not store.has("sha256-" + "2" * 64) and store.received("sha256-" + "2" * 64) == 0
    # Over the total, the least recently used goes; never the one just stored.
    store.write(other.digest, 0, other.data, len(other.data))
    assert store.has(other.digest) and not store.has(b.digest)
    with pytest.raises(ValueError, match="not a bundle digest"):
        store.has("../../etc/passwd")
