"""File > Export…: a run's report as PDF, its tests as JUnit XML, or tasks, results or findings as CSV.

The same files `dtf report` writes, from the same code: the rows come from the coordinator a page
at a time (call_async: the window never waits on a read), each CSV page is written as it arrives,
the PDF is drawn by report_pdf. The dialog says how far it got and where it wrote.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Protocol

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from dtf_gui.coordinator.reports import CSV_WRITERS, junit_xml

# What can be exported: (label, file extension, whether a run must be chosen).
KINDS: dict[str, tuple[str, str, bool]] = {
    "pdf": ("Run report (PDF)", "pdf", True),
    "junit": ("JUnit XML of a run's tests", "xml", True),
    "csv:results": ("Results (CSV)", "csv", False),
    "csv:tasks": ("Tasks (CSV)", "csv", False),
    "csv:findings": ("Findings: anomalies and change points (CSV)", "csv", False),
}
MAX_ROWS = 1_000_000


class Bridge(Protocol):
    def call_async(self, op: str, args: dict[str, Any] | None, done: Any, *, timeout: float = 60.0) -> bool: ...


def default_name(kind: str, run: dict[str, Any] | None, now: float | None = None) -> str:
    """``nightly-bench.3-20240501.pdf``, ``nightly-bench.3-results-20240501.csv``, ``results-….csv``."""
    stamp = time.strftime("%Y%m%d", time.localtime(time.time() if now is None else now))
    what = kind.partition(":")[2]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(run["run_id"])).strip("-.") if run else ""
    parts = [p for p in (base, what, stamp) if p]
    return "-".join(parts) + "." + KINDS[kind][1]


class ExportDialog(QDialog):
    """Choose what, which run and where; ``export`` does the work (the dialog's button calls it)."""

    finished_export = Signal(str)  # the path written
    failed_export = Signal(str)  # why not

    def __init__(self, bridge: Bridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setWindowTitle("Export")
        self.setObjectName("exportDialog")
        self.setMinimumWidth(620)
        self.runs: list[dict[str, Any]] = []
        self.busy = False
        self._cancelled = False
        self._written = 0

        self.kind = QComboBox()
        self.kind.setObjectName("exportKind")
        for key, (label, _, _) in KINDS.items():
            self.kind.addItem(label, key)
        self.run = QComboBox()
        self.run.setObjectName("exportRun")
        self.run.setMinimumContentsLength(40)
        self.path = QLineEdit()
        self.path.setObjectName("exportPath")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        where = QHBoxLayout()
        where.addWidget(self.path, 1)
        where.addWidget(browse)
        form = QFormLayout()
        form.addRow("Export", self.kind)
        form.addRow("Run", self.run)
        form.addRow("File", where)
        self.progress = QProgressBar()
        self.progress.setObjectName("exportProgress")
        self.progress.setVisible(False)
        self.status = QLabel("Loading the runs…")
        self.status.setObjectName("exportStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # the path, copyable
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.export_button.setObjectName("exportButton")
        self.buttons.accepted.connect(self._export_clicked)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self.kind.currentIndexChanged.connect(self._choice_changed)
        self.run.currentIndexChanged.connect(self._choice_changed)
        self._path_touched = False
        self.path.textEdited.connect(lambda _: setattr(self, "_path_touched", True))
        self.load_runs()

    # -- choices ------------------------------------------------------------------------------------

    def load_runs(self) -> None:
        def done(data: Any, error: str | None) -> None:
            if error is not None:
                self.status.setText(f"Could not list the runs: {error}")
                return
            self.runs = list(data or [])
            self._fill_runs()
            n = len(self.runs)
            self.status.setText(f"{n} run{'' if n == 1 else 's'} to choose from." if n
                                else "No runs yet: only CSV of everything can be exported.")

        self.bridge.call_async("list_runs", {"limit": 500}, done)

    def _fill_runs(self) -> None:
        needs_run = KINDS[self.current_kind()][2]
        keep = self.run.currentData()
        self.run.blockSignals(True)
        self.run.clear()
        if not needs_run:
            self.run.addItem("All runs (everything in the database)", None)
        for r in self.runs:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.get("created") or 0))
            self.run.addItem(f"{r['run_id']}  —  {r.get('name', '')}  ({when}, {r.get('status', '')})", r["run_id"])
        i = self.run.findData(keep)
        self.run.setCurrentIndex(i if i >= 0 else 0)
        self.run.blockSignals(False)
        self._choice_changed()

    def current_kind(self) -> str:
        return str(self.kind.currentData())

    def current_run(self) -> dict[str, Any] | None:
        rid = self.run.currentData()
        return next((r for r in self.runs if r["run_id"] == rid), None)

    def _choice_changed(self) -> None:
        kind = self.current_kind()
        if self.run.count() and (self.run.itemData(0) is None) == KINDS[kind][2]:
            self._fill_runs()  # the "All runs" entry comes and goes with the kind
            return
        ok = not KINDS[kind][2] or self.current_run() is not None
        self.export_button.setEnabled(ok and not self.busy)
        if not self._path_touched:
            folder = Path(self.path.text()).parent if self.path.text() else Path.home()
            self.path.setText(str(folder / default_name(kind, self.current_run())))

    def _browse(self) -> None:
        ext = KINDS[self.current_kind()][1]
        path, _ = QFileDialog.getSaveFileName(self, "Export to", self.path.text(), f"{ext.upper()} (*.{ext})")
        if path:
            self.path.setText(path)
            self._path_touched = True

    def _export_clicked(self) -> None:
        if self.busy:
            return
        run = self.run.currentData()
        self.export(self.current_kind(), run, self.path.text().strip())

    def reject(self) -> None:
        self._cancelled = True  # pages still on the way are dropped
        super().reject()

    # -- the work -----------------------------------------------------------------------------------

    def export(self, kind: str, run_id: str | None, path: str | Path) -> None:
        """Write ``kind`` (a KINDS key) of ``run_id`` (None: everything, for CSV) to ``path``. Returns at
        once; finished_export(path) or failed_export(why) says how it went."""
        target = Path(path).expanduser()
        if kind not in KINDS:
            self._fail(f"unknown export {kind!r}; known: {', '.join(KINDS)}")
            return
        if KINDS[kind][2] and not run_id:
            self._fail("choose a run")
            return
        if not str(path) or target.is_dir() or not target.parent.is_dir():
            self._fail(f"cannot write {target}: choose a file in an existing folder")
            return
        self.busy = True
        self._cancelled = False
        self._written = 0
        self.export_button.setEnabled(False)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)  # busy until the first page says how far
        self.status.setText(f"Exporting to {target}…")
        if kind == "pdf":
            self.bridge.call_async("run_report", {"run_id": run_id}, lambda d, e: self._pdf(d, e, target),
                                   timeout=300.0)
        elif kind == "junit":
            self._junit_page(str(run_id), target, [], 0)
        else:
            try:
                out = open(target, "w", newline="", encoding="utf-8")  # closed after the last page
            except OSError as exc:
                self._fail(f"cannot write {target}: {exc.strerror or exc}")
                return
            self._csv_page(kind.partition(":")[2], run_id, target, out, "", None)

    def _pdf(self, report: Any, error: str | None, target: Path) -> None:
        if self._stop(error):
            return
        from dtf_gui.ui.report_pdf import render_run_pdf  # Qt's PDF writer, loaded when first needed

        self.status.setText(f"Drawing the report of {report['run']['run_id']}…")
        try:
            pages = render_run_pdf(report, target)
        except OSError as exc:
            self._fail(f"cannot write {target}: {exc}")
            return
        self._done(target, f"{pages} pages")

    def _junit_page(self, run_id: str, target: Path, rows: list[dict[str, Any]], after: int) -> None:
        def done(page: Any, error: str | None) -> None:
            if self._stop(error):
                return
            if page:
                rows.extend(page)
                self.status.setText(f"Fetched {len(rows)} test rows…")
                self._junit_page(run_id, target, rows, int(page[-1]["seq"]))
                return
            final: dict[str, dict[str, Any]] = {}
            for t in rows:
                final[t["test_id"]] = t  # stored order: a rerun's row comes after the first run's
            run = next((r for r in self.runs if r["run_id"] == run_id), {})
            took = (run["finished"] - run["created"]) if run.get("finished") and run.get("created") else sum(
                float(t.get("duration") or 0) for t in final.values())
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run["created"])) if run.get("created") else ""
            try:
                target.write_bytes(junit_xml(run_id, final.values(), duration=took, timestamp=stamp))
            except OSError as exc:
                self._fail(f"cannot write {target}: {exc.strerror or exc}")
                return
            self._done(target, f"{len(final)} tests")

        self.bridge.call_async("run_tests", {"run_id": run_id, "after": after}, done, timeout=120.0)

    def _csv_page(self, what: str, run_id: str | None, target: Path, out: Any, after: str,
                  names: list[str] | None) -> None:
        args: dict[str, Any] = {"what": what, "after": after, "limit": MAX_ROWS - self._written}
        if run_id:
            args["run_id"] = run_id

        def done(page: Any, error: str | None) -> None:
            if self._stop(error):
                out.close()
                return
            nonlocal names
            first = not after
            if first:
                names = page.get("metric_names") or []
            extra = {"metric_names": names} if what == "results" else {}
            try:
                self._written += CSV_WRITERS[what](page["rows"], out, header=first, **extra)
            except OSError as exc:
                out.close()
                self._fail(f"cannot write {target}: {exc.strerror or exc}")
                return
            self.status.setText(f"{self._written} rows written to {target}…")
            if page.get("next") and self._written < MAX_ROWS:
                self._csv_page(what, run_id, target, out, page["next"], names)
                return
            out.close()
            self._done(target, f"{self._written} rows")

        self.bridge.call_async("export_rows", args, done, timeout=300.0)

    def _stop(self, error: str | None) -> bool:
        """True when the chain ends here: the dialog was closed, or the coordinator refused."""
        if self._cancelled:
            self.busy = False
            return True
        if error is not None:
            self._fail(error)
            return True
        return False

    def _done(self, target: Path, what: str) -> None:
        self.busy = False
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.export_button.setEnabled(True)
        self.status.setText(f"Wrote {what} to {target}")
        self.finished_export.emit(str(target))

    def _fail(self, why: str) -> None:
        self.busy = False
        self.progress.setVisible(False)
        self.export_button.setEnabled(True)
        self.status.setText(f"Export failed: {why}")
        self.failed_export.emit(why)
