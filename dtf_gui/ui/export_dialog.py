"""File > Export…: a run's report as PDF, its tests as JUnit XML, or tasks, results or findings as CSV.

The same files `dtf report` writes, from the same code: the rows come from the coordinator a page
at a time (call_async: the window never waits on a read), each CSV page is written as it arrives,
the PDF is drawn by report_pdf. The dialog says how far it got (a CSV counts its rows against the
total the first page announces) and where it wrote. An export can be cancelled (its partial file is
removed); closing the dialog while one runs asks first. The dialog deletes itself when closed.
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
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from dtf_gui.exports import CSV_WRITERS, junit_xml

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
        # File > Export makes a new dialog each time: without this every one closed would stay in memory.
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.runs: list[dict[str, Any]] = []
        self.busy = False
        self._tried = False  # an export was asked for: its outcome owns the status line
        self._job = 0  # bumped by each export and each cancel: a page of an earlier one is dropped
        self._closed = False
        self._written = 0
        self._target: Path | None = None
        self._partial: Any = None  # the CSV file being written, removed if the export is cancelled

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
        self.cancel_button = self.buttons.addButton("Cancel export", QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button.setObjectName("exportCancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
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
            if self._closed:
                return  # the dialog (and its widgets) are gone
            if error is not None:
                self.status.setText(f"Could not list the runs: {error}")
                return
            self.runs = list(data or [])
            self._fill_runs()
            n = len(self.runs)
            if not self._tried:
                # Only while nothing was exported yet: the list may come after an export's outcome,
                # which must stay in sight.
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
        """Close (the Close button, Escape, the window's X): a running export is not dropped
        silently; the engineer says whether to cancel it, or the dialog stays open until it ends."""
        if self.busy and not self._confirm_cancel():
            return  # still visible: QDialog's closeEvent ignores the close
        self.cancel()
        self._closed = True
        super().reject()

    def _confirm_cancel(self) -> bool:
        where = f" to {self._target}" if self._target else ""
        answer = QMessageBox.question(
            self, "Export running",
            f"The export{where} is not finished ({self._written:,} rows so far). Cancel it and close?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def cancel(self) -> None:
        """Stop the running export: pages still on the way are dropped, a partial CSV is removed."""
        if not self.busy:
            return
        self._job += 1
        self.busy = False
        partial, self._partial = self._partial, None
        if partial is not None:
            partial.close()
            if self._target is not None:
                self._target.unlink(missing_ok=True)
        self.cancel_button.setVisible(False)
        self.progress.setVisible(False)
        self.export_button.setEnabled(True)
        self.status.setText("Export cancelled: nothing written." if partial is not None or self._target is None
                            else f"Export cancelled: {self._target} not written.")
        self.failed_export.emit("cancelled")

    # -- the work -----------------------------------------------------------------------------------

    def export(self, kind: str, run_id: str | None, path: str | Path) -> None:
        """Write ``kind`` (a KINDS key) of ``run_id`` (None: everything, for CSV) to ``path``. Returns at
        once; finished_export(path) or failed_export(why) says how it went."""
        self._tried = True
        if self.busy:
            self.failed_export.emit("an export is running: cancel it first")  # and that one goes on
            return
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
        self._job += 1
        job = self._job
        self.busy = True
        self._written = 0
        self._target = target
        self.export_button.setEnabled(False)
        self.cancel_button.setVisible(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)  # busy until the first page says how far
        self.status.setText(f"Exporting to {target}…")
        if kind == "pdf":
            self.bridge.call_async("run_report", {"run_id": run_id}, lambda d, e: self._pdf(job, d, e, target),
                                   timeout=300.0)
        elif kind == "junit":
            self._junit_page(job, str(run_id), target, [], 0)
        else:
            try:
                self._partial = open(target, "w", newline="", encoding="utf-8")  # closed after the last page
            except OSError as exc:
                self._fail(f"cannot write {target}: {exc.strerror or exc}")
                return
            self._csv_page(job, kind.partition(":")[2], run_id, target, "", None, 0)

    def _pdf(self, job: int, report: Any, error: str | None, target: Path) -> None:
        if self._stop(job, error):
            return
        from dtf_gui.ui.report_pdf import render_run_pdf  # Qt's PDF writer, loaded when first needed

        self.status.setText(f"Drawing the report of {report['run']['run_id']}…")
        try:
            pages = render_run_pdf(report, target)
        except OSError as exc:
            self._fail(f"cannot write {target}: {exc}")
            return
        self._done(target, f"{pages} pages")

    def _junit_page(self, job: int, run_id: str, target: Path, rows: list[dict[str, Any]], after: int) -> None:
        def done(page: Any, error: str | None) -> None:
            if self._stop(job, error):
                return
            if page:
                rows.extend(page)
                self._written = len(rows)
                self.status.setText(f"Fetched {len(rows):,} test rows…")
                self._junit_page(job, run_id, target, rows, int(page[-1]["seq"]))
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

    def _csv_page(self, job: int, what: str, run_id: str | None, target: Path, after: str,
                  names: list[str] | None, total: int) -> None:
        args: dict[str, Any] = {"what": what, "after": after, "limit": MAX_ROWS - self._written}
        if run_id:
            args["run_id"] = run_id

        def done(page: Any, error: str | None) -> None:
            if self._stop(job, error):
                return
            out = self._partial
            nonlocal names, total
            first = not after
            if first:
                names = page.get("metric_names") or []
                total = int(page.get("total") or 0)
            extra = {"metric_names": names} if what == "results" else {}
            try:
                self._written += CSV_WRITERS[what](page["rows"], out, header=first, **extra)
            except OSError as exc:
                self._fail(f"cannot write {target}: {exc.strerror or exc}")
                return
            if total:
                self.progress.setRange(0, max(total, self._written))
                self.progress.setValue(self._written)
                self.status.setText(f"{self._written:,} of {total:,} rows written to {target}…")
            else:
                self.status.setText(f"{self._written:,} rows written to {target}…")
            if page.get("next") and self._written < MAX_ROWS:
                self._csv_page(job, what, run_id, target, page["next"], names, total)
                return
            self._partial = None
            out.close()
            self._done(target, f"{self._written:,} rows")

        self.bridge.call_async("export_rows", args, done, timeout=300.0)

    def _stop(self, job: int, error: str | None) -> bool:
        """True when the chain ends here: the export was cancelled (or the dialog closed), or the
        coordinator refused."""
        if job != self._job or self._closed:
            return True
        if error is not None:
            self._fail(error)
            return True
        return False

    def _done(self, target: Path, what: str) -> None:
        self.busy = False
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.cancel_button.setVisible(False)
        self.export_button.setEnabled(True)
        self.status.setText(f"Wrote {what} to {target}")
        self.finished_export.emit(str(target))

    def _fail(self, why: str) -> None:
        if self.busy:
            self._job += 1  # nothing more of this export is taken
            partial, self._partial = self._partial, None
            if partial is not None:  # half a CSV would read as a whole one
                partial.close()
                if self._target is not None:
                    self._target.unlink(missing_ok=True)
        self.busy = False
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.export_button.setEnabled(True)
        self.status.setText(f"Export failed: {why}")
        self.failed_export.emit(why)
