"""GUI fixtures: a real window (offscreen) with its embedded coordinator and a real local agent."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def gui_session(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.ui.app import Session

    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    settings = ephemeral_settings(tmp_path / "dtf.sqlite",
                                  health_monitor={"heartbeat_interval": 1.0, "heartbeat_timeout": 10.0})
    session = Session(settings, tmp_path, local_slots=2)
    qtbot.addWidget(session.window)
    session.window.show()
    try:
        yield session
    finally:
        session.close()
        assert session.agent is None or not session.agent.alive(), "local agent outlived the window"
        assert not session.bridge.coordinator.is_running, "coordinator thread outlived the window"


@pytest.fixture(autouse=True)
def collect_qt_garbage_in_the_gui_thread() -> Iterator[None]:
    """Qt objects a test dropped (models, timers, views in reference cycles with their callbacks) are
    collected here, in the GUI thread. Left to Python's cyclic GC they could be collected later in
    whichever thread happens to allocate (a bridge reader, the coordinator loop): a QTimer destroyed
    off its thread leaves a dangling timer the GUI thread then fires (a segfault in activateTimers)."""
    yield
    gc.collect()
