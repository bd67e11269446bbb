"""Starting the window: clear choices for a port in use and for a home that has a coordinator, and a
palette that follows the system."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyqtgraph as pg
import pytest
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.ui import theme
from dtf_gui.ui.app import (
    FREE_PORTS,
    OPEN_REMOTE,
    QUIT,
    RemoteSession,
    Session,
    StartProblem,
    free_ports,
    problem_box,
    start_session,
)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port some other program listens on (this test's process, as far as the window can tell)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class Chooser:
    """Answers the start problems as the engineer would click, and keeps what it was shown."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[StartProblem] = []

    def __call__(self, problem: StartProblem) -> str:
        self.asked.append(problem)
        return self.answers.pop(0)


def test_a_port_in_use_names_the_port_and_its_process_and_free_ports_start(qtbot, tmp_path: Path, held_port: int,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    settings = ephemeral_settings(tmp_path / "dtf.sqlite", server={"agent_port": held_port})
    choose = Chooser(FREE_PORTS)
    session = start_session(settings, tmp_path, local_agent=False, choose=choose)
    assert isinstance(session, Session)
    try:
        qtbot.addWidget(session.window)
        [problem] = choose.asked
        assert problem.kind == "port"
        assert f"Port {held_port} (agents) on 127.0.0.1 is already in use" in problem.text
        me = psutil.Process(os.getpid()).name()
        assert f"{me} (pid {os.getpid()}" in problem.text
        assert [a for a, _ in problem.actions] == [FREE_PORTS, QUIT]
        assert "Address already in use" in problem.detail
        assert f"dtf-gui: Port {held_port}" in capsys.readouterr().err
        coordinator = session.bridge.coordinator
        assert coordinator.is_running and coordinator.ports["agents"] != held_port
        assert session.bridge.call("get_status") is not None
    finally:
        session.close()


def test_quitting_at_a_port_in_use_starts_nothing(qtbot, tmp_path: Path, held_port: int) -> None:
    settings = ephemeral_settings(tmp_path / "dtf.sqlite", server={"port": held_port})
    choose = Chooser(QUIT)
    assert start_session(settings, tmp_path, local_agent=False, choose=choose) is None
    assert "(clients)" in choose.asked[0].text
    # The home is free again: a start with free ports takes it.
    session = start_session(free_ports(settings), tmp_path, local_agent=False, choose=Chooser())
    assert isinstance(session, Session)
    qtbot.addWidget(session.window)
    session.close()


def test_a_home_with_a_coordinator_is_opened_remotely(qtbot, gui_session, tmp_path: Path) -> None:
    settings = ephemeral_settings(tmp_path / "second.sqlite")
    choose = Chooser(OPEN_REMOTE)
    session = start_session(settings, tmp_path, local_agent=False, choose=choose)
    assert isinstance(session, RemoteSession)
    try:
        qtbot.addWidget(session.window)
        [problem] = choose.asked
        embedded = gui_session.bridge.coordinator
        assert problem.kind == "home"
        assert f"pid {os.getpid()}" in problem.text and embedded.endpoint("clients") in problem.text
        assert [a for a, _ in problem.actions] == [OPEN_REMOTE, QUIT]
        assert session.bridge.remote
        assert session.bridge.coordinator.client_endpoint == embedded.endpoint("clients")
        assert session.bridge.role == "admin"  # this home's admin key
        # One coordinator, two windows: a task made through the remote one is the embedded one's.
        task_id = session.bridge.call("create_task", {"type": "noop"})["task_id"]
        assert gui_session.bridge.call("get_task", {"task_id": task_id})["task_id"] == task_id
    finally:
        session.close()
    assert gui_session.bridge.coordinator.is_running  # the first window's coordinator is left alone


def test_quitting_at_a_held_home_starts_nothing(gui_session, tmp_path: Path) -> None:
    choose = Chooser(QUIT)
    assert start_session(ephemeral_settings(tmp_path / "x.sqlite"), tmp_path, local_agent=False,
                         choose=choose) is None
    assert choose.asked[0].kind == "home"


def test_the_problem_dialog_offers_the_choices(qtbot) -> None:
    problem = StartProblem(kind="port", title="t", text="Port 8081 is in use", advice="a", detail="d",
                           actions=((FREE_PORTS, "Use free ports"), (QUIT, "Quit")))
    box, choices = problem_box(problem)
    qtbot.addWidget(box)
    assert sorted(b.text() for b in choices) == ["Quit", "Use free ports"]
    assert box.defaultButton().text() == "Use free ports"
    assert "Port 8081 is in use" in box.text() and box.detailedText() == "d"


# -- theme ------------------------------------------------------------------------------------------


def _contrast(a: str, b: str) -> float:
    def lum(colour: str) -> float:
        c = QColor(colour)
        parts = [v / 255 for v in (c.red(), c.green(), c.blue())]
        lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in parts]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.fixture
def app_theme(qapp: QApplication, monkeypatch: pytest.MonkeyPatch) -> Iterator[QApplication]:
    monkeypatch.delenv("DTF_THEME", raising=False)
    try:
        yield qapp
    finally:
        theme.apply_theme(qapp)  # back to following the system (light offscreen) for the other tests


def test_dark_theme_sets_palette_plots_and_status_colours(qtbot, app_theme: QApplication) -> None:
    seen: list[str] = []
    theme.notifier.changed.connect(seen.append)
    assert theme.apply_theme(app_theme, "light") == "light"
    assert theme.apply_theme(app_theme, "dark") == "dark"
    assert seen[-1] == "dark" and theme.is_dark()
    assert app_theme.style().name().lower() == "fusion"
    pal = app_theme.palette()
    assert pal.color(QPalette.ColorRole.Window).lightness() < 60
    assert pal.color(QPalette.ColorRole.Text).lightness() > 200
    assert QColor(pg.getConfigOption("background")).name() == theme.DARK_PLOTS.background
    assert theme.plot_colours() == theme.DARK_PLOTS
    base = pal.color(QPalette.ColorRole.Base).name()
    for status, colour in theme.status_colours().items():
        assert _contrast(colour, base) >= 4.5, status
    theme.apply_theme(app_theme, "light")
    assert seen[-1] == "light" and theme.plot_colours() == theme.LIGHT_PLOTS
    assert app_theme.palette().color(QPalette.ColorRole.Window).lightness() > 180
    for status, colour in theme.status_colours().items():
        if status not in ("offline", "cancelled"):  # grey on purpose: they recede
            assert _contrast(colour, "#ffffff") >= 4.2, status


def test_dtf_theme_overrides_the_system(app_theme: QApplication, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTF_THEME", "dark")
    assert theme.apply_theme(app_theme) == "dark"
    monkeypatch.setenv("DTF_THEME", "nonsense")
    assert theme.apply_theme(app_theme) == theme.system_scheme()


def test_series_colours_read_on_both_backgrounds() -> None:
    assert len(set(theme.SERIES)) == 8
    for colours in (theme.LIGHT_PLOTS, theme.DARK_PLOTS):
        for colour in colours.series:
            assert _contrast(colour, colours.background) >= 3.0, (colour, colours.background)
        assert _contrast(colours.foreground, colours.background) >= 7.0
