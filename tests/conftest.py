"""Fixtures shared by every test directory.

Every test gets its own $DTF_HOME (autouse), so no test reads or writes the user's real DTF
state or finds another test's coordinator through coordinator.json. Processes a test starts are
killed at teardown with their whole trees, pass or fail.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `tests.helpers` must import however pytest was started (`python -m pytest` puts the repository
# root on sys.path, the `pytest` script does not).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dtf_gui.coordinator.config import ephemeral_settings  # noqa: E402
from dtf_gui.coordinator.server import Coordinator  # noqa: E402
from tests.helpers import ProcessTracker, Serve  # noqa: E402 - needs the path set above


@pytest.fixture(autouse=True)
def dtf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dtf-home"
    home.mkdir()
    monkeypatch.setenv("DTF_HOME", str(home))
    return home


@pytest.fixture
def dtf_env(dtf_home: Path) -> dict[str, str]:
    """The environment for DTF subprocesses: this test's home, unbuffered logs."""
    env = dict(os.environ)
    env["DTF_HOME"] = str(dtf_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessTracker]:
    logs = tmp_path / "logs"
    logs.mkdir()
    tracker = ProcessTracker(logs)
    try:
        yield tracker
    finally:
        tracker.close()


@pytest.fixture
def serve(procs: ProcessTracker, dtf_home: Path, dtf_env: dict[str, str]) -> Iterator[Callable[..., Serve]]:
    """Factory: ``serve(coordinator_yaml=None, *extra_flags)`` starts `dtf serve` on free ports."""
    started: list[Serve] = []

    def start(coordinator_yaml: str | None = None, *extra: str) -> Serve:
        if coordinator_yaml is not None:
            (dtf_home / "coordinator.yaml").write_text(coordinator_yaml, encoding="utf-8")
        s = Serve(procs, dtf_home, dtf_env, *extra)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Callable[..., Coordinator]]:
    """Factory for an in-process coordinator thread on free ports; stopped at teardown.
    Keyword arguments are coordinator.yaml sections: ``coordinator(load_balancer={"worker_cap": 1})``."""
    started: list[Coordinator] = []

    def start(**sections: Any) -> Coordinator:
        coord = Coordinator(ephemeral_settings(tmp_path / f"coord{len(started)}.sqlite", **sections))
        started.append(coord)
        return coord.start()

    try:
        yield start
    finally:
        for coord in started:
            coord.stop()
