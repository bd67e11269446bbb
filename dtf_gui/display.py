"""Whether a window can open here, asked before Qt is imported.

Without a display Qt aborts from inside its platform plugin with a message about "xcb" that never
says the plain fact: there is no display. This module says it, and how to get one, in the time it
takes to read two environment variables. No Qt import here: the whole point is to answer first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# Qt platforms that draw without a window system (QT_QPA_PLATFORM, see Qt's "Qt Platform
# Abstraction" docs): a window can "open" on them with neither X11 nor Wayland.
HEADLESS_PLATFORMS = frozenset({"offscreen", "minimal", "minimalegl", "vnc", "eglfs", "linuxfb", "vkkhrdisplay",
                                "directfb"})

# Platforms whose windows are drawn by the operating system itself: no display server to look for.
_OWN_WINDOWING = ("darwin", "win32", "cygwin")

NO_DISPLAY = """there is no display to open the window on (neither DISPLAY nor WAYLAND_DISPLAY is set).
Ways to get one:
  - run it from a terminal of the desktop session (where DISPLAY is set);
  - over SSH, forward X: `ssh -X HOST`, then `make run` (or `dtf-gui`);
  - on a machine without a screen, a virtual display: `xvfb-run make run` (Debian package xvfb);
  - to try it headless (nothing shown): `QT_QPA_PLATFORM=offscreen dtf-gui`;
  - the coordinator without a window: `dtf serve` (then `dtf-gui --connect tcp://HOST:8080` from a desktop)."""


def _platforms(value: str) -> list[str]:
    """QT_QPA_PLATFORM's platform names: it may list fallbacks ("wayland;xcb") and carry options
    after a colon ("vnc:size=800x600")."""
    return [part.split(":", 1)[0].strip().lower() for part in value.split(";") if part.strip()]


def display_problem(env: Mapping[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why no window can open here, with how to get one; None when one can (or when this cannot be
    told: macOS and Windows always have their own window system). ``env`` and ``platform`` default
    to this process's (os.environ, sys.platform); tests pass their own."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform.startswith(_OWN_WINDOWING):
        return None
    if any(name in HEADLESS_PLATFORMS for name in _platforms(env.get("QT_QPA_PLATFORM", ""))):
        return None
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return NO_DISPLAY
