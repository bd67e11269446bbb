"""Screenshots of every view of the real window on a demo home, offscreen, for a person to look at.

    python tools/screenshots.py OUT_DIR [--dark] [--tasks 3000] [--keep-home]

Builds a demo home (tests/gui/demo.py) in a temporary directory, opens the real window on it (an
embedded coordinator, no local agent) at 1400x900, waits until each view shows data (polling, with a
deadline), and saves one PNG per view: the whole window, each tab of each tab widget, each dock, the
named views of issue 11 (task table, task detail, results explorer, health view, alerts dock) and the
New task dialog. Tolerant: a view that does not exist is listed as missing, the rest are saved. The
last line printed is a JSON summary ({"saved": [...], "missing": [...], "notes": [...]}).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SIZE = (1400, 900)
# objectName -> file stem: the views issue 11 adds (and today's), found wherever they sit.
NAMED_VIEWS = {
    "taskTable": "task-table", "tasksView": "tasks-view", "resultsExplorer": "results-explorer",
    "healthView": "health-view", "alertsDock": "alerts-dock", "workersView": "workers-view",
    "findingsView": "findings-view", "throughputPlot": "throughput-plot",
}
# Ways a window may offer to open one task's detail (the first that exists is used).
DETAIL_METHODS = ("open_task_detail", "show_task_detail", "show_task", "open_task")
DETAIL_NAMES = ("taskDetail", "taskDetailPane", "taskDetails")
# Ways a results explorer may offer to show one series.
SERIES_METHODS = ("select", "show_series", "select_series")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.replace("&&", "and").replace("&", "").lower()).strip("-") or "view"


class Shooter:
    """Saves widgets as PNGs into ``out`` and remembers what it saved, missed and noticed."""

    def __init__(self, app: Any, out: Path, suffix: str) -> None:
        self.app = app
        self.out = out
        self.suffix = suffix
        self.saved: list[str] = []
        self.missing: list[str] = []
        self.notes: list[str] = []
        self._stems: set[str] = set()

    def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> bool:
        """Process events until ``ready()`` or the deadline; a deadline passed is noted, not fatal."""
        from PySide6.QtTest import QTest

        deadline = time.monotonic() + timeout
        while True:
            self.app.processEvents()
            try:
                if ready():
                    return True
            except Exception as exc:  # noqa: BLE001 - a view half-built: note it and keep going
                self.notes.append(f"{what}: readiness check raised {type(exc).__name__}: {exc}")
                return False
            if time.monotonic() > deadline:
                self.notes.append(f"{what}: not ready after {timeout:.0f} s (saved as it was)")
                return False
            QTest.qWait(50)

    def save(self, widget: Any, stem: str) -> None:
        stem = _slug(stem)
        if stem in self._stems:
            return
        self._stems.add(stem)
        self.app.processEvents()
        path = self.out / f"{stem}{self.suffix}.png"
        pixmap = widget.grab()
        if pixmap.isNull() or not pixmap.save(str(path)):
            self.notes.append(f"{stem}: grab or save failed ({widget.objectName() or type(widget).__name__})")
            return
        self.saved.append(f"{path.name} ({pixmap.width()}x{pixmap.height()})")


def _model_rows(widget: Any) -> int:
    model = widget.model() if hasattr(widget, "model") and callable(widget.model) else None
    return model.rowCount() if model is not None else -1


def _has_data(widget: Any) -> bool:
    """A view shows something: an item view has rows; a plot has a curve with points; else it is
    visible (nothing better to ask of an arbitrary widget)."""
    from PySide6.QtWidgets import QAbstractItemView

    if isinstance(widget, QAbstractItemView):
        return _model_rows(widget) > 0
    import pyqtgraph as pg

    plots = [widget] if isinstance(widget, pg.PlotWidget) else widget.findChildren(pg.PlotWidget)
    if plots:
        for plot in plots:
            for item in plot.getPlotItem().listDataItems():
                xs, _ys = item.getData()
                if xs is not None and len(xs) > 0:
                    return True
        return False
    views = widget.findChildren(QAbstractItemView)
    if views:
        return any(_model_rows(v) > 0 for v in views)
    return widget.isVisible()


def _reveal(widget: Any) -> None:
    """Bring a widget into sight: the tab page that holds it current, its dock shown and raised."""
    from PySide6.QtWidgets import QDockWidget, QStackedWidget, QTabWidget

    child, parent = widget, widget.parentWidget()
    while parent is not None:
        if isinstance(parent, QStackedWidget) and isinstance(parent.parentWidget(), QTabWidget):
            tabs = parent.parentWidget()
            i = tabs.indexOf(child)
            if i >= 0:
                tabs.setCurrentIndex(i)
        if isinstance(parent, QDockWidget):
            parent.show()
            parent.raise_()
        child, parent = parent, parent.parentWidget()
    if isinstance(widget, QDockWidget):
        widget.show()
        widget.raise_()


def _first_failed_task(bridge: Any) -> str | None:
    rows = bridge.call("list_tasks", {"status": "failed", "limit": 50}, quiet=True) or []
    retried = [r for r in rows if (r.get("attempt") or 0) > 1]
    pick = (retried or rows or [None])[0]
    return pick["task_id"] if pick else None


def shoot(out: Path, *, dark: bool, tasks: int, keep_home: bool) -> dict[str, Any]:
    from tests.gui.demo import BENCH_TEST, build_demo

    home = Path(tempfile.mkdtemp(prefix="dtf-shots-"))
    os.environ["DTF_HOME"] = str(home)
    if dark:
        os.environ["DTF_THEME"] = "dark"  # dtf_gui/ui/theme.py: overrides the system's scheme
    made = build_demo(home, tasks=tasks)

    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication, QDialog, QDockWidget, QTabWidget, QWidget

    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.ui.app import Session

    app = QApplication.instance() or QApplication([sys.argv[0], "-platform", "offscreen"])
    assert isinstance(app, QApplication)
    shooter = Shooter(app, out, "-dark" if dark else "")
    if dark:
        try:
            from dtf_gui.ui import theme

            theme.apply_theme(app, "dark")
        except ImportError:
            from PySide6.QtGui import QColor, QPalette

            app.setStyle("Fusion")
            pal = QPalette()
            for role, colour in ((QPalette.ColorRole.Window, "#2b2b2b"), (QPalette.ColorRole.Base, "#1e1e1e"),
                                 (QPalette.ColorRole.AlternateBase, "#262626"),
                                 (QPalette.ColorRole.WindowText, "#dddddd"), (QPalette.ColorRole.Text, "#dddddd"),
                                 (QPalette.ColorRole.Button, "#333333"), (QPalette.ColorRole.ButtonText, "#dddddd"),
                                 (QPalette.ColorRole.Highlight, "#2f80ed")):
                pal.setColor(role, QColor(colour))
            app.setPalette(pal)
            shooter.notes.append("no dtf_gui.ui.theme: a plain Fusion dark palette was applied")
    settings = ephemeral_settings(home / "dtf.sqlite")
    session = Session(settings, home, local_agent=False)
    win = session.window
    try:
        win.resize(*SIZE)
        win.show()
        shooter.wait(lambda: win.isVisible() and win.width() == SIZE[0], 10, "window shown")
        # History: the tasks and workers the demo holds reach the tables (call_async answers later).
        tables = [w for name in ("taskTable", "tasksView", "workersView") if (w := win.findChild(QWidget, name))]
        shooter.wait(lambda: all(_model_rows(t) > 0 for t in tables), 30, "task and worker tables loaded")
        shooter.save(win, "window")

        # Named views, each brought into sight and given time to load.
        seen: set[int] = set()
        for name, stem in NAMED_VIEWS.items():
            widget = win.findChild(QWidget, name)
            if widget is None:
                if stem not in {NAMED_VIEWS[n] for n in NAMED_VIEWS if win.findChild(QWidget, n)}:
                    shooter.missing.append(name)
                continue
            _reveal(widget)
            if name == "resultsExplorer":
                _show_series(shooter, widget, BENCH_TEST, "throughput_mb_s")
            shooter.wait(lambda w=widget: _has_data(w), 20, f"{name} shows data")
            shooter.save(widget, stem)
            seen.add(id(widget))

        # Every tab of every tab widget (today's: Tasks, Anomalies, Agents, Security), as the page.
        for tabs in win.findChildren(QTabWidget):
            for i in range(tabs.count()):
                tabs.setCurrentIndex(i)
                page = tabs.widget(i)
                shooter.wait(lambda p=page: _has_data(p), 5, f"tab {tabs.tabText(i)!r} shows data")
                shooter.save(page, f"tab-{tabs.tabText(i)}")
                shooter.save(win, f"window-tab-{tabs.tabText(i)}")
        # Every dock, raised.
        for dock in win.findChildren(QDockWidget):
            _reveal(dock)
            shooter.wait(lambda d=dock: _has_data(d), 5, f"dock {dock.windowTitle()!r} shows data")
            shooter.save(dock, f"dock-{dock.objectName() or dock.windowTitle()}")

        # The task detail, opened on a task that failed after retries: by the window's own method, else
        # on the pane itself (a widget with show_task(task_id): dtf_gui/ui/task_detail.py).
        detail = _open_detail(shooter, win)
        if detail is not None:
            _reveal(detail)
            shooter.wait(lambda: detail.isVisible() and _has_data(detail), 15, "task detail shows data")
            shooter.save(detail, "task-detail")
            shooter.save(win, "window-task-detail")
        else:
            shooter.missing.append("task detail (no open_task_detail method, no widget with show_task)")

        # The New task dialog at the size it opens at.
        if hasattr(win, "open_new_task_dialog"):
            dlg = win.open_new_task_dialog()
            shooter.wait(lambda: dlg.isVisible(), 5, "New task dialog shown")
            shooter.save(dlg, "new-task-dialog")
            dlg.reject()
        for dlg in win.findChildren(QDialog):
            if dlg.isVisible():
                dlg.close()
        app.processEvents()
        win.setWindowState(Qt.WindowState.WindowNoState)
    finally:
        session.close()
        win.deleteLater()
        app.processEvents()
        if keep_home:
            shooter.notes.append(f"demo home kept at {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return {"out": str(out), "saved": shooter.saved, "missing": shooter.missing, "notes": shooter.notes,
            "demo": {"tasks": made["tasks"], "workers": len(made["workers"]), "findings": made["finding_kinds"]}}


def _open_detail(shooter: Shooter, win: Any) -> Any:
    """Open the detail of a failed, retried task; returns the widget that shows it (or None)."""
    from PySide6.QtWidgets import QWidget

    task_id = _first_failed_task(win.bridge)
    if not task_id:
        shooter.notes.append("task detail: no failed task to open")
        return None
    for name in DETAIL_METHODS:
        method = getattr(win, name, None)
        if callable(method):
            shown = method(task_id)
            shooter.notes.append(f"task detail: window.{name}({task_id!r})")
            if isinstance(shown, QWidget):
                return shown
            break
    for widget in win.findChildren(QWidget):
        if widget.objectName() in DETAIL_NAMES or callable(getattr(widget, "show_task", None)):
            if getattr(widget, "task_id", None) != task_id and callable(getattr(widget, "show_task", None)):
                widget.show_task(task_id)
                shooter.notes.append(f"task detail: {type(widget).__name__}.show_task({task_id!r})")
            return widget
    return None


def _show_series(shooter: Shooter, explorer: Any, test_id: str, metric: str) -> None:
    for name in SERIES_METHODS:
        method = getattr(explorer, name, None)
        if callable(method):
            try:
                method(test_id, metric)
                shooter.notes.append(f"results explorer: {name}({test_id!r}, {metric!r})")
                return
            except TypeError as exc:
                shooter.notes.append(f"results explorer: {name} did not take (test, metric): {exc}")
    shooter.notes.append("results explorer: no method to choose a series; shown as it opened")


def main() -> int:
    ap = argparse.ArgumentParser(description="Screenshots of every view of the window on a demo home.")
    ap.add_argument("out", type=Path, help="directory for the PNGs (made if missing)")
    ap.add_argument("--dark", action="store_true", help="the dark palette (file names end in -dark)")
    ap.add_argument("--tasks", type=int, default=3000, help="tasks in the demo home")
    ap.add_argument("--keep-home", action="store_true", help="keep the demo home (its path is printed)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = shoot(args.out, dark=args.dark, tasks=args.tasks, keep_home=args.keep_home)
    for line in summary["saved"]:
        print(f"saved   {line}")
    for line in summary["missing"]:
        print(f"missing {line}")
    for line in summary["notes"]:
        print(f"note    {line}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
