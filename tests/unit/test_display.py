"""`dtf-gui` without a display says so, and how to get one, before Qt is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtf_gui.display import display_problem


@pytest.mark.parametrize("env", [{"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"},
                                 {"DISPLAY": "localhost:10.0", "WAYLAND_DISPLAY": ""}])
def test_a_display_server_is_enough(env: dict[str, str]) -> None:
    assert display_problem(env, "linux") is None


@pytest.mark.parametrize("platform", ["offscreen", "minimal", "vnc:size=800x600", "eglfs", "linuxfb", "OFFSCREEN",
                                      "xcb;offscreen"])
def test_a_headless_qt_platform_needs_no_display(platform: str) -> None:
    assert display_problem({"QT_QPA_PLATFORM": platform}, "linux") is None


@pytest.mark.parametrize("env", [{}, {"DISPLAY": ""}, {"QT_QPA_PLATFORM": "xcb"}, {"QT_QPA_PLATFORM": "wayland"},
                                 {"QT_QPA_PLATFORM": "wayland;xcb", "WAYLAND_DISPLAY": ""}])
def test_no_display_names_the_problem_and_the_ways_out(env: dict[str, str]) -> None:
    problem = display_problem(env, "linux")
    assert problem is not None
    assert "no display" in problem
    for way in ("ssh -X", "xvfb-run make run", "QT_QPA_PLATFORM=offscreen", "dtf serve"):
        assert way in problem


@pytest.mark.parametrize("platform", ["darwin", "win32", "cygwin"])
def test_macos_and_windows_always_have_a_window_system(platform: str) -> None:
    assert display_problem({}, platform) is None


def test_it_reads_this_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert display_problem() is not None
    monkeypatch.setenv("DISPLAY", ":1")
    assert display_problem() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is for X11/Wayland systems")
def test_dtf_gui_without_a_display_exits_2_with_the_message_and_no_qt(tmp_path: Path) -> None:
    entry = Path(sys.executable).parent / "dtf-gui"
    if not entry.exists():
        pytest.skip(f"no dtf-gui entry point next to {sys.executable} (install with pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    home = tmp_path / "home"
    env["DTF_HOME"] = str(home)
    # -X importtime lists every module the process imported (on stderr): Qt must not be among them.
    proc = subprocess.run([sys.executable, "-X", "importtime", str(entry)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    messages = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert messages[0].startswith("dtf-gui: there is no display"), messages
    assert any("xvfb-run make run" in line for line in messages)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "dtf_gui.cli" in imported  # the listing is real: it shows what was imported
    assert not [m for m in imported if m.split(".")[0] in ("PySide6", "shiboken6", "pyqtgraph")]
    assert not home.exists(), "nothing is started or written before the display is checked"
