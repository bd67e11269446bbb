"""The window's reads: their own reader threads, and a bound on what one client may have in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from dtf_gui.coordinator.store import Store
from dtf_gui.coordinator.views_api import MAX_IN_FLIGHT, ViewsApi


def test_one_client_may_have_only_so_many_reads_in_flight_and_others_are_not_held_up(tmp_path: Path) -> None:
    Store(tmp_path / "db.sqlite").close()
    views = ViewsApi(tmp_path / "db.sqlite")
    release = threading.Event()
    handed: list[Callable[[], None]] = []  # what the loop would run: here, this thread
    answers: list[Any] = []

    def slow() -> str:
        release.wait(30)
        return "page"

    def then(fut: Future[Any]) -> None:
        answers.append(fut.result())

    lock = threading.Lock()

    def hand_over(fn: Callable[[], None]) -> None:
        with lock:
            handed.append(fn)

    try:
        for _ in range(MAX_IN_FLIGHT):
            assert views.run("window-a", slow, then, hand_over) is None
        refused = views.run("window-a", slow, then, hand_over)
        assert refused and "still being answered" in refused
        assert views.run("window-b", lambda: "other", then, hand_over) is None  # another client is not refused
        release.set()
        deadline = time.monotonic() + 30
        while len(handed) < MAX_IN_FLIGHT + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        release.set()
        views.close()
    for fn in handed:
        fn()
    assert sorted(answers) == ["other"] + ["page"] * MAX_IN_FLIGHT


def test_reads_run_on_their_own_threads_not_the_callers(tmp_path: Path) -> None:
    Store(tmp_path / "db.sqlite").close()
    views = ViewsApi(tmp_path / "db.sqlite")
    names: list[str] = []
    done = threading.Event()
    try:
        views.run("c", lambda: names.append(threading.current_thread().name), lambda fut: done.set(), lambda fn: fn())
        assert done.wait(10)
    finally:
        views.close()
    assert names[0].startswith("dtf-views")
