"""Reports from the window: File > Export's dialog writes each kind (run report PDF, JUnit XML,
CSV of results, tasks and findings) for a run made by the embedded coordinator and the local
agent, and the PDF renderer on its own (pages, an embedded plot image, the run's numbers as text)."""

from __future__ import annotations

import csv
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from PySide6.QtCore import Qt

from dtf_gui.coordinator import reports
from dtf_gui.ui.export_dialog import KINDS, ExportDialog, default_name
from dtf_gui.ui.report_pdf import nice_ticks, render_run_pdf, time_ticks

# Writes a metric, as a benchmark would (the results CSV gets a metric column).
METRIC = ("import json, os; json.dump({'metrics': {'copy_mb_s': 812.5}, 'units': {'copy_mb_s': 'MB/s'}}, "
          "open(os.environ['DTF_RESULT_FILE'], 'w'))")


def shot(widget: Any, name: str) -> None:
    """A screenshot for a person to look at, only when DTF_SHOTS names a folder."""
    folder = os.environ.get("DTF_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        widget.grab().save(str(Path(folder) / name))


def pdf_text(path: Path) -> tuple[PdfReader, str]:
    reader = PdfReader(path)
    return reader, " ".join(" ".join(p.extract_text().split()) for p in reader.pages)


def images(reader: PdfReader) -> int:
    n = 0
    for page in reader.pages:
        xobjects = page["/Resources"].get_object().get("/XObject")
        for ref in (xobjects.get_object().values() if xobjects else []):
            n += ref.get_object().get("/Subtype") == "/Image"
    return n


@pytest.fixture
def run_id(qtbot, gui_session: Any) -> str:
    """A run of three tasks on the local agent: two that pass (one writes a metric), one that fails."""
    bridge = gui_session.bridge
    rid = bridge.call("create_run", {"name": "window export", "kind": "submit"})["run_id"]
    ids = [bridge.call("create_task", {"command": [sys.executable, "-c", METRIC], "run_id": rid,
                                       "test_id": "copy"})["task_id"],
           bridge.call("create_task", {"command": "true", "run_id": rid, "test_id": "ok"})["task_id"],
           bridge.call("create_task", {"command": "false", "run_id": rid, "test_id": "broken", "retry_limit": 0})["task_id"]]

    def all_final() -> bool:
        return all(bridge.call("get_task", {"task_id": t}, quiet=True)["status"] in ("completed", "failed")
                   for t in ids)

    qtbot.waitUntil(all_final, timeout=30_000)
    qtbot.waitUntil(lambda: bridge.call("get_run", {"run_id": rid})["results"] == {"success": 2, "failure": 1},
                    timeout=10_000)
    return str(rid)


def export(qtbot, dialog: ExportDialog, kind: str, run: str | None, path: Path) -> None:
    with qtbot.waitSignal(dialog.finished_export, timeout=30_000) as got:
        dialog.export(kind, run, path)
    assert got.args == [str(path)]
    assert str(path) in dialog.status.text()


def test_the_dialog_exports_every_kind(qtbot, gui_session: Any, run_id: str, tmp_path: Path) -> None:
    dialog = ExportDialog(gui_session.bridge, gui_session.window)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: any(r["run_id"] == run_id for r in dialog.runs), timeout=10_000)
    dialog.show()
    assert dialog.run.findData(run_id) >= 0
    shot(dialog, "export_dialog.png")

    pdf = tmp_path / "run.pdf"
    export(qtbot, dialog, "pdf", run_id, pdf)
    shot(dialog, "export_dialog_done.png")
    reader, text = pdf_text(pdf)
    assert "window export" in text and run_id in text and "2 success, 1 failure" in text
    assert "Pass rate 66.7 %" in text and "broken" in text
    assert images(reader) >= 1  # the metric's trend plot

    xml = tmp_path / "run.xml"
    export(qtbot, dialog, "junit", run_id, xml)
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == run_id and suite.get("tests") == "0"  # plain tasks, no tests

    results = tmp_path / "results.csv"
    export(qtbot, dialog, "csv:results", run_id, results)
    with open(results, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["test_id"], r["status"]) for r in rows) == [("broken", "failure"), ("copy", "success"),
                                                                 ("ok", "success")]
    assert [r["metric.copy_mb_s"] for r in rows if r["test_id"] == "copy"] == ["812.5"]

    tasks = tmp_path / "tasks.csv"
    export(qtbot, dialog, "csv:tasks", None, tasks)  # all runs
    with open(tasks, newline="") as f:
        trows = list(csv.DictReader(f))
    assert {r["test_id"] for r in trows if r["run_id"] == run_id} == {"copy", "ok", "broken"}

    findings = tmp_path / "findings.csv"
    export(qtbot, dialog, "csv:findings", run_id, findings)
    assert findings.read_text().startswith("time,kind,metric,test_id")


def test_the_dialog_says_why_it_cannot_export(qtbot, gui_session: Any, tmp_path: Path) -> None:
    dialog = ExportDialog(gui_session.bridge, gui_session.window)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.failed_export, timeout=10_000) as got:
        dialog.export("pdf", "no-such-run.1", tmp_path / "x.pdf")
    assert "no run 'no-such-run.1'" in got.args[0] and "no run" in dialog.status.text()
    dialog.runs = None  # the list of runs answering after the export's outcome: the outcome stays
    dialog.load_runs()
    qtbot.waitUntil(lambda: dialog.runs is not None, timeout=10_000)
    assert "no run" in dialog.status.text()
    with qtbot.waitSignal(dialog.failed_export, timeout=1_000) as got:
        dialog.export("csv:results", None, tmp_path / "missing" / "x.csv")
    assert "existing folder" in got.args[0]
    assert not (tmp_path / "x.pdf").exists()


class HeldBridge:
    """The real bridge, except that export_rows pages after the first wait until ``release``:
    the test acts while an export is surely half done."""

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        self.held: list[tuple[str, dict[str, Any], Any, float]] = []

    def call_async(self, op: str, args: dict[str, Any] | None, done: Any, *, timeout: float = 60.0) -> bool:
        if op == "export_rows" and (args or {}).get("after"):
            self.held.append((op, dict(args or {}), done, timeout))
            return True
        return bool(self.bridge.call_async(op, args, done, timeout=timeout))

    def release(self) -> None:
        held, self.held = self.held, []
        for op, args, done, timeout in held:
            self.bridge.call_async(op, args, done, timeout=timeout)


def deleted(widget: Any) -> list[bool]:
    """Becomes [True] when Qt deletes ``widget``."""
    gone: list[bool] = []
    widget.destroyed.connect(lambda *_: gone.append(True))
    return gone


def half_done_csv(qtbot, gui_session: Any, run_id: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[ExportDialog, HeldBridge, Path]:
    """A results CSV of the run, one row a page (the embedded coordinator reads PAGE_ROWS when
    asked), its first page written, the second held."""
    monkeypatch.setattr(reports, "PAGE_ROWS", 1)
    held = HeldBridge(gui_session.bridge)
    dialog = ExportDialog(held, gui_session.window)
    dialog.show()
    qtbot.waitUntil(lambda: any(r["run_id"] == run_id for r in dialog.runs), timeout=10_000)
    path = tmp_path / "big.csv"
    dialog.export("csv:results", run_id, path)
    qtbot.waitUntil(lambda: bool(held.held), timeout=10_000)
    return dialog, held, path


def test_a_csv_export_shows_its_progress_and_can_be_cancelled(qtbot, gui_session: Any, run_id: str,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dialog, held, path = half_done_csv(qtbot, gui_session, run_id, tmp_path, monkeypatch)
    # The first page announced the total: the bar counts rows against it.
    assert dialog.busy and dialog.progress.isVisible()
    assert (dialog.progress.minimum(), dialog.progress.maximum(), dialog.progress.value()) == (0, 3, 1)
    assert "1 of 3 rows written" in dialog.status.text()
    assert dialog.cancel_button.isVisible() and not dialog.export_button.isEnabled()
    shot(dialog, "export_dialog_progress.png")
    with qtbot.waitSignal(dialog.failed_export, timeout=1_000) as got:
        qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    assert got.args == ["cancelled"] and "cancelled" in dialog.status.text()
    assert not dialog.busy and not path.exists()  # no half file that reads as a whole one
    assert dialog.export_button.isEnabled() and not dialog.cancel_button.isVisible()
    # The page that was on its way arrives: dropped.
    held.release()
    qtbot.waitUntil(lambda: not held.held, timeout=1_000)
    dialog.export("csv:tasks", None, tmp_path / "after.csv")  # and the dialog still exports
    qtbot.waitUntil(lambda: not dialog.busy or bool(held.held), timeout=10_000)
    assert not path.exists()
    dialog.cancel()
    assert dialog.close()


def test_closing_during_an_export_asks_and_keeps_it_unless_told(qtbot, gui_session: Any, run_id: str,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dialog, held, path = half_done_csv(qtbot, gui_session, run_id, tmp_path, monkeypatch)
    asked: list[bool] = []
    monkeypatch.setattr(dialog, "_confirm_cancel", lambda: asked.append(False) or False)
    assert not dialog.close()  # "keep exporting": the dialog stays, the export goes on
    assert asked == [False] and dialog.isVisible() and dialog.busy
    with qtbot.waitSignal(dialog.finished_export, timeout=10_000):
        while held.held:
            held.release()
            qtbot.waitUntil(lambda: not dialog.busy or bool(held.held), timeout=10_000)
    with open(path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    # Finished: it closes without asking, and deletes itself.
    gone = deleted(dialog)
    assert dialog.close()
    qtbot.waitUntil(lambda: bool(gone), timeout=5_000)
    assert asked == [False]


def test_closing_during_an_export_can_cancel_it(qtbot, gui_session: Any, run_id: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dialog, held, path = half_done_csv(qtbot, gui_session, run_id, tmp_path, monkeypatch)
    monkeypatch.setattr(dialog, "_confirm_cancel", lambda: True)
    cancelled: list[str] = []
    dialog.failed_export.connect(cancelled.append)
    gone = deleted(dialog)
    assert dialog.close()
    qtbot.waitUntil(lambda: bool(gone), timeout=5_000)
    assert cancelled == ["cancelled"] and not path.exists()
    held.release()  # the late page finds no dialog and writes nothing
    qtbot.waitUntil(lambda: not held.held, timeout=1_000)
    assert not path.exists()


def test_default_names_and_kinds() -> None:
    run = {"run_id": "nightly-bench.3", "name": "nightly bench"}
    assert default_name("pdf", run, now=0).startswith("nightly-bench.3-19700101") or default_name(
        "pdf", run, now=0).startswith("nightly-bench.3-19691231")
    assert default_name("csv:results", run, now=86400 * 2).endswith("-results-19700103.csv")
    assert default_name("csv:tasks", None, now=86400 * 2) == "tasks-19700103.csv"
    assert set(KINDS) == {"pdf", "junit", "csv:results", "csv:tasks", "csv:findings"}


def report(**over: Any) -> dict[str, Any]:
    """A run_report reply as the coordinator gives it, small."""
    t0 = 1_700_000_000.0
    points = [[t0 + i * 3600, 100.0 if i < 10 else 80.0] for i in range(14)]
    base = {
        "run": {"run_id": "bench.4", "name": "bench", "kind": "pytest", "created": t0 + 12 * 3600,
                "finished": t0 + 14 * 3600, "status": "failed", "meta": {}, "summary": {}},
        "counts": {"passed": 13, "failed": 1}, "counts_line": "1 failed, 13 passed", "per_test": True,
        "tests_total": 14, "pass_rate": 13 / 14, "failures": 1, "results": {}, "span": [t0, t0 + 14 * 3600],
        "tests": [{"test_id": f"t.py::test_{i}", "task_id": "s", "outcome": "failed" if i == 0 else "passed",
                   "duration": 0.1, "worker_id": "w1", "timestamp": t0, "runs": 1,
                   "error": "AssertionError: no" if i == 0 else ""} for i in range(14)],
        "tests_more": 0,
        "series": [{"test_id": "bench::copy", "metric": "copy_mb_s", "unit": "MB/s", "direction": "higher",
                    "points": points, "run_points": 2, "run_span": [t0 + 12 * 3600, t0 + 13 * 3600],
                    "change_points": [{"timestamp": t0 + 10 * 3600, "mean_before": 100.0, "mean_after": 80.0,
                                       "rel_change": -0.2, "p_value": 1e-5, "direction": "regression"}]}],
        "series_more": 0, "findings": [], "findings_more": 0,
        "workers": [{"worker_id": "w1", "host": "h1", "status": "online", "hardware": "8 cores, 32 GB, Linux",
                     "tags": [], "tasks": 1, "tests": 14, "failures": 1, "busy_s": 1.4}], "workers_more": 0,
        "history": [], "generated_at": t0 + 15 * 3600,
    }
    return {**base, **over}


def test_render_run_pdf_pages_image_and_numbers(qtbot, tmp_path: Path) -> None:
    path = tmp_path / "r.pdf"
    pages = render_run_pdf(report(), path)
    reader, text = pdf_text(path)
    assert pages == len(reader.pages) >= 2  # the plot does not fit on page 1 with the tables
    assert images(reader) == 1
    assert "bench" in text and "13 passed" in text and "1 failed" in text and "Pass rate 92.9 %" in text
    assert "copy_mb_s [MB/s] — bench::copy" in text and "higher is better" in text
    assert f"page {pages} of {pages}" in text and "DTF " in text


def test_a_long_table_is_paginated_with_its_header_on_each_page(qtbot, tmp_path: Path) -> None:
    rows = [{"test_id": f"tests/test_mod.py::test_{i:04d}", "task_id": "s", "outcome": "passed", "duration": 0.1,
             "worker_id": "w1", "timestamp": 0, "runs": 1, "error": ""} for i in range(300)]
    path = tmp_path / "long.pdf"
    pages = render_run_pdf(report(tests=rows, tests_more=99_700, series=[]), path)
    reader, text = pdf_text(path)
    assert pages >= 5
    for page in reader.pages[1:-1]:
        assert "Outcome Test Duration Runs Worker" in " ".join(page.extract_text().split())
    assert "test_0299" in text and "… and 99700 more tests" in text
    assert images(reader) == 0 and "This run's results carry no metrics." in text


def test_ticks_are_round() -> None:
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0.93, 1.07)[:2] == pytest.approx([0.95, 1.0])
    ticks, fmt = time_ticks(1_700_000_000, 1_700_000_000 + 86400 * 8)
    assert fmt == "%Y-%m-%d" and 3 <= len(ticks) <= 6
    ticks, fmt = time_ticks(1_700_000_000, 1_700_000_030)
    assert fmt == "%H:%M:%S" and all(t % 5 == 0 for t in ticks)
