"""A light or dark palette that follows the system (Qt 6.5+ colour scheme), for widgets and plots.

``apply_theme(app)`` once at start: it reads ``QStyleHints.colorScheme()`` and follows its
``colorSchemeChanged`` signal. Dark is drawn with the Fusion style and a palette of its own (the
platform styles do not all have a dark face); light keeps the style and palette the platform gave.
``DTF_THEME=dark|light`` (or ``apply_theme(app, "dark")``) overrides the system, for a screenshot or
a desktop whose scheme Qt cannot read.

Plots (pyqtgraph) take their colours from :func:`plot_colours`; widgets made after a change get the
new defaults (``pg.setConfigOptions``), widgets that exist already redraw on :data:`notifier`'s
``changed`` signal if their view connects it. Table text colours by status come from
:func:`status_colours` (and :func:`state_colours`): the light set is too dark to read on a dark
background.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

DARK, LIGHT = "dark", "light"


@dataclass(frozen=True)
class PlotColours:
    background: str
    foreground: str  # axes, labels, text
    grid: str
    # Categorical colours (workers, hardware, series): each at least 3:1 against both backgrounds
    # (WCAG's contrast for graphics), so one series keeps its colour when the scheme changes.
    series: tuple[str, ...]


SERIES = ("#2f80ed", "#d55e00", "#1a9e5c", "#e64980", "#8e5cd9", "#008b8b", "#b8860b", "#9c755f")
LIGHT_PLOTS = PlotColours(background="#ffffff", foreground="#303030", grid="#d6d6d6", series=SERIES)
DARK_PLOTS = PlotColours(background="#1e1e1e", foreground="#d4d4d4", grid="#3c3c3c", series=SERIES)

# Text colour by status. The light set is models.STATUS_COLOURS' (at least 4.5:1 on white); on the
# dark table base (#1e1e1e) those dark greens and blues fall under 3:1, so dark has its own set, each
# at least 5:1 there.
LIGHT_STATUS_COLOURS = {
    "online": "#2e7d32", "busy": "#1565c0", "offline": "#9e9e9e", "error": "#c62828",
    "pending": "#6d6d6d", "assigned": "#8e6c00", "running": "#1565c0", "completed": "#2e7d32",
    "failed": "#c62828", "cancelled": "#9e9e9e", "regression": "#c62828", "improvement": "#2e7d32",
    # worker health states (health_view)
    "lost": "#c62828", "draining": "#b26a00", "pending enrollment": "#6a1b9a",
}
LIGHT_STATE_COLOURS = {"pending": "#b26a00", "accepted": "#2e7d32", "rejected": "#c62828", "revoked": "#9e9e9e"}
DARK_STATUS_COLOURS = {
    "online": "#81c784", "busy": "#64b5f6", "offline": "#9e9e9e", "error": "#ef6b6b",
    "pending": "#b0b0b0", "assigned": "#e0b64a", "running": "#64b5f6", "completed": "#81c784",
    "failed": "#ef6b6b", "cancelled": "#9e9e9e", "regression": "#ef6b6b", "improvement": "#81c784",
    "lost": "#ef6b6b", "draining": "#ffb74d", "pending enrollment": "#ce93d8",
}
DARK_STATE_COLOURS = {"pending": "#ffb74d", "accepted": "#81c784", "rejected": "#ef6b6b", "revoked": "#9e9e9e"}

# (role, colour) of the dark palette, for every colour group; disabled widgets get their own below.
_DARK_ROLES = {
    QPalette.ColorRole.Window: "#2b2b2b",
    QPalette.ColorRole.WindowText: "#e0e0e0",
    QPalette.ColorRole.Base: "#1e1e1e",
    QPalette.ColorRole.AlternateBase: "#262626",
    QPalette.ColorRole.ToolTipBase: "#333333",
    QPalette.ColorRole.ToolTipText: "#e0e0e0",
    QPalette.ColorRole.PlaceholderText: "#8a8a8a",
    QPalette.ColorRole.Text: "#e0e0e0",
    QPalette.ColorRole.Button: "#353535",
    QPalette.ColorRole.ButtonText: "#e0e0e0",
    QPalette.ColorRole.BrightText: "#ff6b6b",
    QPalette.ColorRole.Light: "#4a4a4a",
    QPalette.ColorRole.Midlight: "#3e3e3e",
    QPalette.ColorRole.Mid: "#303030",
    QPalette.ColorRole.Dark: "#1a1a1a",
    QPalette.ColorRole.Shadow: "#0a0a0a",
    QPalette.ColorRole.Highlight: "#2f65ca",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#64b5f6",
    QPalette.ColorRole.LinkVisited: "#b39ddb",
}
_DARK_DISABLED = {
    QPalette.ColorRole.WindowText: "#7a7a7a",
    QPalette.ColorRole.Text: "#7a7a7a",
    QPalette.ColorRole.ButtonText: "#7a7a7a",
    QPalette.ColorRole.Highlight: "#454545",
    QPalette.ColorRole.HighlightedText: "#a0a0a0",
}


def dark_palette() -> QPalette:
    pal = QPalette()
    for role, colour in _DARK_ROLES.items():
        pal.setColor(role, QColor(colour))
    for role, colour in _DARK_DISABLED.items():
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor(colour))
    return pal


class _Notifier(QObject):
    changed = Signal(str)  # "dark" or "light", after the palette and plot defaults changed


class _State:
    def __init__(self) -> None:
        self.scheme = LIGHT
        self.forced: str | None = None
        self.light_style: str | None = None  # the platform's own style, back when the system turns light
        self.watching = False


_state = _State()
notifier = _Notifier()


def current_scheme() -> str:
    return _state.scheme


def is_dark() -> bool:
    return _state.scheme == DARK


def system_scheme() -> str:
    """What the desktop asks for; light when it does not say (Qt's Unknown, the offscreen platform)."""
    hints = QGuiApplication.styleHints()
    return DARK if hints.colorScheme() == Qt.ColorScheme.Dark else LIGHT


def plot_colours() -> PlotColours:
    """Background, foreground, grid and the categorical series colours for the current scheme."""
    return DARK_PLOTS if is_dark() else LIGHT_PLOTS


def status_colours() -> dict[str, str]:
    """Text colour by task/worker status (and finding direction) for the current scheme."""
    return DARK_STATUS_COLOURS if is_dark() else LIGHT_STATUS_COLOURS


def state_colours() -> dict[str, str]:
    """Text colour by an agent's enrollment state for the current scheme."""
    return DARK_STATE_COLOURS if is_dark() else LIGHT_STATE_COLOURS


def _forced_scheme(scheme: str | None) -> str | None:
    value = (scheme or os.environ.get("DTF_THEME", "")).strip().lower()
    return value if value in (DARK, LIGHT) else None


def apply_theme(app: QApplication, scheme: str | None = None) -> str:
    """Palette, style and plot defaults for ``scheme`` ("dark", "light"; None: ``$DTF_THEME``, else
    the system's, followed as it changes). Returns the scheme applied."""
    if _state.light_style is None:
        _state.light_style = app.style().name()
    _state.forced = _forced_scheme(scheme)
    if not _state.watching:
        # Connected once for the application's life; a forced scheme ignores the system's changes.
        QGuiApplication.styleHints().colorSchemeChanged.connect(lambda *_: _follow_system(app))
        _state.watching = True
    return _apply(app, _state.forced or system_scheme())


def _follow_system(app: QApplication) -> None:
    if _state.forced is None:
        _apply(app, system_scheme())


def _apply(app: QApplication, scheme: str) -> str:
    if scheme == DARK:
        app.setStyle("Fusion")
        app.setPalette(dark_palette())
    else:
        if _state.light_style and app.style().name().lower() != _state.light_style.lower():
            app.setStyle(_state.light_style)
        app.setPalette(app.style().standardPalette())
    colours = DARK_PLOTS if scheme == DARK else LIGHT_PLOTS
    pg.setConfigOptions(background=colours.background, foreground=colours.foreground)
    changed = scheme != _state.scheme
    _state.scheme = scheme
    if changed:
        notifier.changed.emit(scheme)
    return scheme
