"""New task: what `dtf submit`, `dtf pytest` and `dtf plan run` can do, from the window, checked as
you type.

Three modes. *Command*: one command (tags, worker, priority, timeout, retries, depends-on, count,
an optional bundle directory). *pytest run*: a suite spread over the agents (`dtf pytest`). *Plan
file*: a YAML plan (`dtf plan run`), checked by the plan checker itself (no coordinator needed).

A plain command goes to the coordinator through the bridge (``create_run`` then ``create_tasks``,
as `dtf submit` does: every submission is a run). Everything else runs the real `dtf` command
(:mod:`dtf_gui.ui.submit_cli`) against this window's coordinator, so it behaves exactly as from a
terminal; its output shows live in the dialog, with its exit status.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QProcess, Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QShowEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from dtf_agent import protocol as p
from dtf_gui.coordinator.plans import PlanError, count, describe, load_plan
from dtf_gui.ui import theme
from dtf_gui.ui.submit_cli import (
    CliRuns,
    cli_target,
    dtf_argv,
    pytest_options,
    shown_command,
    submit_options,
)

COMMAND, PYTEST, PLAN = "command", "pytest", "plan"
MAX_COUNT = 10_000
MAX_DEPENDENCIES = 10_000  # api.CreateTask.dependencies
DEPS_DEBOUNCE_MS = 300
PLAN_DEBOUNCE_MS = 250
HINT_STYLE = "color: palette(placeholder-text)"
OUTPUT_LINES = 5000  # the pane keeps the last lines of a long run
FULL_HEIGHT = 560  # with the output pane


def _error_style() -> str:
    return f"color: {theme.status_colours()['failed']}"  # readable on the light and the dark palette


def _ok_style() -> str:
    return f"color: {theme.status_colours()['completed']}"


def split_words(text: str) -> list[str]:
    """Tags and task ids as typed: separated by commas and/or spaces; duplicates dropped."""
    return list(dict.fromkeys(w for w in text.replace(",", " ").split() if w))


def quotes_problem(text: str) -> str | None:
    """Why ``text`` does not split like a shell line (shlex's words), else None."""
    try:
        shlex.split(text)
    except ValueError as exc:
        return f"{exc}: the quotes do not balance"
    return None


def run_name(command: str, test_id: str) -> str:
    """The run a plain submission is, named as `dtf submit` names it: the test id, else the program."""
    if test_id:
        return test_id
    words = command.split()
    return (os.path.basename(words[0])[:100] if words else "") or "submit"


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        lay.addWidget(w, 1 if i == 0 else 0)
    return box


class SubmitDialog(QDialog):
    """``SubmitDialog(bridge, parent)``; ``open()`` it. Signals: :attr:`submitted` (the task ids made,
    when they are known), :attr:`runStarted` (a `dtf` command started: its command line) and
    :attr:`runFinished` (its exit status and last line)."""

    submitted = Signal(list)
    runStarted = Signal(str)
    runFinished = Signal(int, str)

    def __init__(self, bridge: Any, parent: QWidget | None = None, *, runs: CliRuns | None = None,
                 start_dir: str | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.runs = runs if runs is not None else CliRuns.of(parent)
        self.setWindowTitle("New task")
        self.setObjectName("newTaskDialog")
        self.resize(660, FULL_HEIGHT)
        self.setMinimumWidth(560)
        self.mode = COMMAND
        self.process: QProcess | None = None  # the `dtf` command of the last CLI submission
        self._stdout = ""
        self._tail = ""
        self._busy = False  # a direct submission waits for the coordinator
        # Depends-on ids asked about: "" the task exists, else why it cannot be one; None: asking.
        self._deps: dict[str, str | None] = {}
        self._deps_unsure: set[str] = set()  # no verdict (the coordinator did not answer): asked again
        self._plan_result: tuple[str, float, str | None, list[str]] = ("", 0.0, None, [])
        self._workers: list[str] = []
        self._labels: list[QLabel] = []
        self._pane_shows_run = False  # the pane holds a command's output (else a plan preview, or nothing)

        lay = QVBoxLayout(self)
        lay.addLayout(self._mode_switch())
        self.command_box = self._command_section()
        self.pytest_box = self._pytest_section()
        self.plan_box = self._plan_section()
        self.where_box = self._where_section()
        self.schedule_box = self._schedule_section()
        for box in (self.command_box, self.pytest_box, self.plan_box, self.where_box, self.schedule_box):
            lay.addWidget(box)

        self.error = QLabel()
        self.error.setObjectName("submitError")
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.error)

        self.output = QPlainTextEdit()
        self.output.setObjectName("submitOutput")
        self.output.setReadOnly(True)
        self.output.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.output.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.output.setMaximumBlockCount(OUTPUT_LINES)
        self.output.setPlaceholderText("The output of the dtf command shows here, as it runs.")
        self.output.setMinimumHeight(120)
        lay.addWidget(self.output, 1)
        self.exit_label = QLabel()
        self.exit_label.setObjectName("submitExit")
        lay.addWidget(self.exit_label)
        lay.addStretch(0)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Close)
        self.submit_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.submit_button.setText("Submit")
        self.submit_button.setObjectName("submitButton")
        self.stop_button = self.buttons.addButton("Stop", QDialogButtonBox.ButtonRole.ActionRole)
        self.stop_button.setObjectName("stopButton")
        self.stop_button.setToolTip("Interrupt the running command (Ctrl-C: a pytest run cancels its shards)")
        self.stop_button.hide()
        self.stop_button.clicked.connect(self.stop)
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)

        self._align_labels()
        self._deps_timer = self._debouncer(DEPS_DEBOUNCE_MS, self._check_dependencies)
        self._plan_timer = self._debouncer(PLAN_DEBOUNCE_MS, self._check_plan)
        self._watch_inputs()
        self._load_workers()
        if hasattr(bridge, "workersChanged"):
            bridge.workersChanged.connect(self._on_workers)
        self.set_mode(COMMAND)
        if start_dir:
            self.pytest_dir.setText(start_dir)

    # -- building ----------------------------------------------------------------------------------

    def _mode_switch(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(0)
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: dict[str, QPushButton] = {}
        for mode, text, tip in ((COMMAND, "Command", "one command, or N copies of it (dtf submit)"),
                                (PYTEST, "pytest run", "a pytest suite spread over the agents (dtf pytest)"),
                                (PLAN, "Plan file", "a YAML test plan: a matrix of tasks (dtf plan run)")):
            button = QPushButton(text)
            button.setObjectName(f"mode_{mode}")
            button.setCheckable(True)
            button.setToolTip(tip)
            button.setMinimumWidth(120)
            # The chosen mode stands out in either palette (Fusion's checked face barely does on dark).
            button.setStyleSheet("QPushButton:checked { background: palette(highlight); "
                                 "color: palette(highlighted-text); font-weight: bold; border: 1px solid "
                                 "palette(highlight); border-radius: 3px; padding: 4px 10px; }")
            button.clicked.connect(lambda _=False, m=mode: self.set_mode(m))
            self.mode_group.addButton(button)
            self.mode_buttons[mode] = button
            row.addWidget(button)
        row.addStretch(1)
        return row

    def _browse_button(self, target: QLineEdit, *, directory: bool, title: str,
                       name_filter: str = "") -> QPushButton:
        button = QPushButton("Browse…")

        def pick() -> None:
            start = target.text().strip() or os.getcwd()
            if directory:
                chosen = QFileDialog.getExistingDirectory(self, title, start)
            else:
                chosen, _ = QFileDialog.getOpenFileName(self, title, start, name_filter)
            if chosen:
                target.setText(chosen)

        button.clicked.connect(pick)
        return button

    def _command_section(self) -> QGroupBox:
        box = QGroupBox("Command")
        form = QFormLayout(box)
        self.command = QLineEdit()
        self.command.setObjectName("commandEdit")
        self.command.setPlaceholderText("e.g. ./bench.sh --size 1G   or   python -m mytool check")
        self.command.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.bundle = QLineEdit()
        self.bundle.setObjectName("bundleEdit")
        self.bundle.setPlaceholderText("optional: ship this directory; the command runs inside it")
        self.test_id = QLineEdit()
        self.test_id.setObjectName("testIdEdit")
        self.test_id.setPlaceholderText("optional: groups results of the same test across runs")
        self._add_row(form, "Command", self.command)
        self._add_row(form, "Bundle directory", _row(self.bundle, self._browse_button(
            self.bundle, directory=True, title="Directory to ship with the command")))
        self._add_row(form, "Test id", self.test_id)
        return box

    def _pytest_section(self) -> QGroupBox:
        box = QGroupBox("pytest run")
        form = QFormLayout(box)
        self.pytest_dir = QLineEdit()
        self.pytest_dir.setObjectName("pytestDirEdit")
        self.pytest_dir.setPlaceholderText("the suite's directory: where you would type pytest")
        self.pytest_args = QLineEdit()
        self.pytest_args.setObjectName("pytestArgsEdit")
        self.pytest_args.setPlaceholderText("pytest's arguments, e.g. -q -k 'not slow' tests/")
        self.pytest_args.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.shards = QSpinBox()
        self.shards.setObjectName("shardsSpin")
        self.shards.setRange(0, 1000)
        self.shards.setSpecialValueText("auto (one per slot)")
        self.shards.setMinimumWidth(170)
        self.reruns = QSpinBox()
        self.reruns.setObjectName("rerunsSpin")
        self.reruns.setRange(0, 10)
        self.reruns.setSpecialValueText("none")
        self.reruns.setToolTip("run failed tests again on another worker; one that then passes is flaky")
        self._add_row(form, "Directory", _row(self.pytest_dir, self._browse_button(
            self.pytest_dir, directory=True, title="The pytest suite's directory")))
        self._add_row(form, "Arguments", self.pytest_args)
        self.reruns.setMinimumWidth(90)
        shards_row = QWidget()
        row = QHBoxLayout(shards_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.shards)
        row.addSpacing(16)
        row.addWidget(QLabel("Reruns"))
        row.addWidget(self.reruns)
        row.addStretch(1)
        self._add_row(form, "Shards", shards_row)
        return box

    def _plan_section(self) -> QGroupBox:
        box = QGroupBox("Plan file")
        form = QFormLayout(box)
        self.plan_file = QLineEdit()
        self.plan_file.setObjectName("planFileEdit")
        self.plan_file.setPlaceholderText("a YAML plan, e.g. resources/plans/example.yaml")
        self.check_button = QPushButton("Check")
        self.check_button.setObjectName("checkPlanButton")
        self.check_button.setToolTip("read the plan again and show what it expands to (dtf plan check)")
        self.check_button.clicked.connect(self.check_plan_now)
        self._add_row(form, "Plan", _row(self.plan_file, self._browse_button(
            self.plan_file, directory=False, title="Test plan", name_filter="YAML plans (*.yaml *.yml);;All files (*)"),
            self.check_button))
        return box

    def _where_section(self) -> QGroupBox:
        box = QGroupBox("Where it runs")
        form = QFormLayout(box)
        self.tags = QLineEdit()
        self.tags.setObjectName("tagsEdit")
        self.tags.setPlaceholderText("optional: tags a worker must have, e.g. gpu, lab-2")
        self.worker = QComboBox()
        self.worker.setObjectName("workerCombo")
        self.worker.setEditable(True)
        self.worker.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.worker.addItem("")
        line = self.worker.lineEdit()
        assert line is not None
        line.setPlaceholderText("any worker")
        self._add_row(form, "Tags", self.tags)
        self._add_row(form, "Worker", self.worker)
        return box

    def _schedule_section(self) -> QGroupBox:
        box = QGroupBox("Scheduling")
        grid = QGridLayout(box)
        self.priority = QSpinBox()
        self.priority.setObjectName("prioritySpin")
        self.priority.setRange(-p.MAX_PRIORITY, p.MAX_PRIORITY)
        self.priority.setValue(5)
        self.priority.setToolTip("higher runs first")
        self.timeout = QDoubleSpinBox()
        self.timeout.setObjectName("timeoutSpin")
        self.timeout.setRange(0, 7 * 24 * 3600)
        self.timeout.setDecimals(0)
        self.timeout.setSpecialValueText("none")
        self.timeout.setSuffix(" s")
        self.retries = QSpinBox()
        self.retries.setObjectName("retriesSpin")
        self.retries.setRange(-1, 1000)
        self.retries.setValue(-1)
        self.retries.setSpecialValueText("coordinator's default")
        self.count = QSpinBox()
        self.count.setObjectName("countSpin")
        # Wider than allowed on purpose: a number out of range is said, not silently refused as typed.
        self.count.setRange(0, 10 * MAX_COUNT)
        self.count.setValue(1)
        self.count.setSuffix(" ×")
        self.depends = QLineEdit()
        self.depends.setObjectName("dependsEdit")
        self.depends.setPlaceholderText("optional: task ids that must complete first, comma separated")
        self.depends.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        grid.addWidget(self._label("Priority"), 0, 0)
        grid.addWidget(self.priority, 0, 1)
        grid.addWidget(QLabel("Timeout"), 0, 2)
        grid.addWidget(self.timeout, 0, 3)
        grid.addWidget(self._label("Retries"), 1, 0)
        grid.addWidget(self.retries, 1, 1)
        grid.addWidget(QLabel("Count"), 1, 2)
        grid.addWidget(self.count, 1, 3)
        grid.addWidget(self._label("Depends on"), 2, 0)
        grid.addWidget(self.depends, 2, 1, 1, 3)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        return box

    def _label(self, text: str) -> QLabel:
        """A label of the first column: all of them one width, so the fields line up across sections."""
        label = QLabel(text)
        self._labels.append(label)
        return label

    def _add_row(self, form: QFormLayout, text: str, field: QWidget) -> None:
        form.addRow(self._label(text), field)

    def _align_labels(self) -> None:
        width = max(label.sizeHint().width() for label in self._labels)
        for label in self._labels:
            label.setMinimumWidth(width)

    def _debouncer(self, ms: int, slot: Callable[[], None]) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    def _watch_inputs(self) -> None:
        for edit in (self.command, self.bundle, self.test_id, self.pytest_dir, self.pytest_args, self.tags):
            edit.textChanged.connect(self.validate)
        self.worker.currentTextChanged.connect(self.validate)
        for spin in (self.count, self.priority, self.retries, self.shards, self.reruns):
            spin.valueChanged.connect(self.validate)
        self.depends.textChanged.connect(self._on_depends_edited)
        self.bundle.textChanged.connect(self._show_pane)
        self.plan_file.textChanged.connect(self._on_plan_edited)

    # -- workers -------------------------------------------------------------------------------------

    def _load_workers(self) -> None:
        call_async = getattr(self.bridge, "call_async", None)
        if call_async is not None:
            call_async("list_workers", None, lambda data, _err: self._on_workers(data or []))

    def _on_workers(self, rows: list[dict[str, Any]]) -> None:
        names = sorted(set(self._workers) | {str(r["worker_id"]) for r in rows if r.get("worker_id")})
        if names == self._workers:
            return
        self._workers = names
        typed = self.worker.currentText()
        self.worker.blockSignals(True)
        self.worker.clear()
        self.worker.addItem("")
        self.worker.addItems(names)
        self.worker.setEditText(typed)
        self.worker.blockSignals(False)

    # -- modes ---------------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in (COMMAND, PYTEST, PLAN):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.mode_buttons[mode].setChecked(True)
        self.command_box.setVisible(mode == COMMAND)
        self.schedule_box.setVisible(mode == COMMAND)
        self.pytest_box.setVisible(mode == PYTEST)
        self.plan_box.setVisible(mode == PLAN)
        self.where_box.setVisible(mode in (COMMAND, PYTEST))
        first = {COMMAND: self.command, PYTEST: self.pytest_dir if not self.pytest_dir.text() else self.pytest_args,
                 PLAN: self.plan_file}[mode]
        first.setFocus()
        if not self._pane_shows_run:
            self.output.clear()  # a plan's preview is not for the other modes
        self._show_pane()
        if mode == PLAN:
            self._check_plan()
        self.validate()

    def _show_pane(self) -> None:
        """The output pane where there is something to show: a `dtf` command's output, a plan's preview.
        A plain command has none: the dialog shrinks to its fields."""
        wanted = self.mode != COMMAND or bool(self.bundle.text().strip()) or self._pane_shows_run
        was = not self.output.isHidden()
        self.output.setVisible(wanted)
        if wanted and not was:
            self.resize(self.width(), max(self.height(), FULL_HEIGHT))
        elif not wanted:
            layout = self.layout()
            if layout is not None:
                layout.activate()
            self.resize(self.width(), self.minimumSizeHint().height())

    # -- validation (as you type) -------------------------------------------------------------------

    def problem(self) -> tuple[str, bool] | None:
        """What stands in the way of Submit: (message, is an error); False: only not finished yet
        (nothing typed, an answer awaited). None: ready."""
        if self._busy:
            return "Submitting…", False
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            return "Running… (Stop interrupts it)", False
        op = "create_tasks" if self.mode == COMMAND and not self.bundle.text().strip() else "create_run"
        allows = getattr(self.bridge, "allows", None)
        if allows is not None and not allows(op):
            return f"You cannot submit here: {self.bridge.why_not(op)}.", True
        check = {COMMAND: self._command_problem, PYTEST: self._pytest_problem, PLAN: self._plan_problem}[self.mode]
        return check()

    def _command_problem(self) -> tuple[str, bool] | None:
        command = self.command.text().strip()
        if not command:
            return "Type the command to run.", False
        if len(command.encode()) > p.MAX_COMMAND:
            return f"The command is longer than {p.MAX_COMMAND // 1024} KiB.", True
        quotes = quotes_problem(command)
        if quotes:
            return f"Command: {quotes}.", True
        bundle = self.bundle.text().strip()
        if bundle:
            path = Path(bundle).expanduser()
            if not path.exists():
                return f"Bundle directory: {bundle} does not exist.", True
            if not path.is_dir():
                return f"Bundle directory: {bundle} is not a directory.", True
        where = self._where_problem()
        if where:
            return where
        n = self.count.value()
        if not 1 <= n <= MAX_COUNT:
            return f"Count: 1 to {MAX_COUNT:,} copies ({n:,} asked).", True
        return self._depends_problem()

    def _where_problem(self) -> tuple[str, bool] | None:
        tags = split_words(self.tags.text())
        if len(tags) > p.MAX_TAGS:
            return f"Tags: at most {p.MAX_TAGS} ({len(tags)} typed).", True
        long = [t for t in tags if len(t) > p.MAX_NAME]
        if long:
            return f"Tags: {long[0][:40]}… is longer than {p.MAX_NAME} characters.", True
        worker = self.worker.currentText().strip()
        if len(worker) > p.MAX_NAME or " " in worker:
            return "Worker: a worker id has no spaces (pick one from the list).", True
        return None

    def _depends_problem(self) -> tuple[str, bool] | None:
        ids = split_words(self.depends.text())
        if not ids:
            return None
        if len(ids) > MAX_DEPENDENCIES:
            return f"Depends on: at most {MAX_DEPENDENCIES:,} tasks ({len(ids):,} typed).", True
        long = [t for t in ids if len(t) > p.MAX_ID]
        if long:
            return f"Depends on: {long[0][:40]}… is not a task id (longer than {p.MAX_ID} characters).", True
        answers = [self._deps.get(t, None) for t in ids]
        refused = [a for a in answers if a]
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            return f"Depends on: {refused[0]}{more}.", True
        if any(a is None for a in answers):
            return "Checking the depends-on ids…", False
        return None

    def _pytest_problem(self) -> tuple[str, bool] | None:
        directory = self.pytest_dir.text().strip()
        if not directory:
            return "Choose the suite's directory (where you would type pytest).", False
        path = Path(directory).expanduser()
        if not path.exists():
            return f"Directory: {directory} does not exist.", True
        if not path.is_dir():
            return f"Directory: {directory} is not a directory.", True
        quotes = quotes_problem(self.pytest_args.text())
        if quotes:
            return f"Arguments: {quotes}.", True
        return self._where_problem()

    def _plan_problem(self) -> tuple[str, bool] | None:
        path = self.plan_file.text().strip()
        if not path:
            return "Choose a plan file (YAML).", False
        checked, _, error, _ = self._plan_result
        if checked != path:
            return "Checking the plan…", False
        if error:
            return error, True
        return None

    def validate(self) -> bool:
        """Show what stands in the way (or what will be submitted) and enable Submit when nothing does."""
        problem = self.problem()
        if problem is None:
            self.error.setStyleSheet(HINT_STYLE)
            self.error.setText(self._ready_text())
        else:
            text, is_error = problem
            self.error.setStyleSheet(_error_style() if is_error else HINT_STYLE)
            self.error.setText(text)
        self.submit_button.setEnabled(problem is None)
        return problem is None

    def _ready_text(self) -> str:
        if self.mode == COMMAND:
            n = self.count.value()
            what = f"{n:,} tasks" if n > 1 else "1 task"
            via = " (its bundle is uploaded first, by dtf submit)" if self.bundle.text().strip() else ""
            return f"Ready: {what}{via}."
        if self.mode == PYTEST:
            return "Ready: dtf pytest collects the suite here, then spreads it over the agents."
        _, _, _, lines = self._plan_result
        return f"Ready: {lines[-1]}." if lines else "Ready."

    def _on_depends_edited(self) -> None:
        for task_id in self._deps_unsure:
            self._deps.pop(task_id, None)
        self._deps_unsure.clear()
        self._deps_timer.start()
        self.validate()

    def _check_dependencies(self) -> None:
        """Ask the coordinator about each id not asked yet (debounced: once typing pauses)."""
        ids = [t for t in split_words(self.depends.text()) if t not in self._deps and len(t) <= p.MAX_ID]
        for task_id in ids[:MAX_DEPENDENCIES]:
            self._deps[task_id] = None
            started = self.bridge.call_async("get_task", {"task_id": task_id},
                                             lambda data, err, t=task_id: self._on_dependency(t, data, err))
            if not started:  # the bridge has stopped: nothing will answer
                self._on_dependency(task_id, None, "the coordinator is not connected")
        self.validate()

    def _on_dependency(self, task_id: str, data: Any, error: str | None) -> None:
        if data is not None:
            self._deps[task_id] = ""
        elif error and error.startswith("no task"):
            self._deps[task_id] = f"no task {task_id} on this coordinator"
        else:
            self._deps[task_id] = f"cannot check {task_id}: {error}"
            self._deps_unsure.add(task_id)
        self.validate()

    def _on_plan_edited(self) -> None:
        self._plan_timer.start()
        self.validate()

    def _check_plan(self) -> None:
        """The plan checker on the file named (what `dtf plan check` says), kept until the file or its
        modification time changes."""
        path = self.plan_file.text().strip()
        if not path:
            return
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            mtime = -1.0
        if self._plan_result[:2] == (path, mtime):
            self.validate()
            return
        try:
            plan = load_plan(path)
        except PlanError as exc:
            self._plan_result = (path, mtime, str(exc), [])
        else:
            n = count(plan)
            steps = len(plan.steps)
            summary = (f"plan OK: {n} task{'s' if n != 1 else ''} in {steps} step{'s' if steps != 1 else ''}")
            self._plan_result = (path, mtime, None, [*describe(plan), summary])
        self._preview_plan()
        self.validate()

    def _preview_plan(self) -> None:
        """In plan mode, while no command's output is there: what the plan expands to, or the checker's
        message (what `dtf plan check` prints)."""
        if self.mode != PLAN or self._pane_shows_run:
            return
        _, _, error, lines = self._plan_result
        self.output.setPlainText(error if error else "\n".join(lines))

    def check_plan_now(self) -> None:
        """The Check button: read the file again and show what it expands to, or the checker's message."""
        self._plan_result = ("", 0.0, None, [])
        self._pane_shows_run = False
        self.exit_label.clear()
        self._check_plan()

    # -- submitting ----------------------------------------------------------------------------------

    def submit(self) -> None:
        # The debounced checks run now: Submit never acts on an answer to older text.
        if self._deps_timer.isActive():
            self._deps_timer.stop()
            self._check_dependencies()
        if self._plan_timer.isActive():
            self._plan_timer.stop()
            self._check_plan()
        if not self.validate():
            return
        if self.mode == COMMAND and not self.bundle.text().strip():
            self._submit_direct()
        elif self.mode == COMMAND:
            self._run_cli(["submit"], submit_options(**self._command_fields(), bundle=self._bundle_dir()),
                          cwd=os.getcwd())
        elif self.mode == PYTEST:
            directory = str(Path(self.pytest_dir.text().strip()).expanduser().resolve())
            self._run_cli(["pytest"], pytest_options(tags=self._tags(), worker=self._worker(),
                                                     shards=self.shards.value(), reruns=self.reruns.value()),
                          rest=shlex.split(self.pytest_args.text()), cwd=directory)
        else:
            plan = Path(self.plan_file.text().strip()).expanduser().resolve()
            self._run_cli(["plan", "run", str(plan)], [], cwd=str(plan.parent))

    def _tags(self) -> list[str]:
        return split_words(self.tags.text())

    def _worker(self) -> str:
        return self.worker.currentText().strip()

    def _bundle_dir(self) -> str:
        return str(Path(self.bundle.text().strip()).expanduser().resolve())

    def _command_fields(self) -> dict[str, Any]:
        """The command's fields in submit_options' terms (shared by the direct and the CLI way)."""
        return {"command": self.command.text().strip(), "tags": self._tags(), "worker": self._worker(),
                "priority": self.priority.value(),
                "timeout": float(self.timeout.value()) if self.timeout.value() > 0 else None,
                "retries": self.retries.value() if self.retries.value() >= 0 else None,
                "depends_on": split_words(self.depends.text()), "count": self.count.value(),
                "test_id": self.test_id.text().strip()}

    def task_fields(self) -> dict[str, Any]:
        """One create_task's arguments (api.CreateTask) for the command as typed."""
        f = self._command_fields()
        out: dict[str, Any] = {"type": "command", "command": f["command"], "priority": f["priority"]}
        if f["timeout"] is not None:
            out["timeout"] = f["timeout"]
        if f["retries"] is not None:
            out["retry_limit"] = f["retries"]
        if f["depends_on"]:
            out["dependencies"] = f["depends_on"]
        if f["test_id"]:
            out["test_id"] = f["test_id"]
        req: dict[str, Any] = {}
        if f["tags"]:
            req["tags"] = f["tags"]
        if f["worker"]:
            req["worker"] = f["worker"]
        if req:
            out["requirements"] = req
        return out

    def _submit_direct(self) -> None:
        """create_run then create_tasks, off the GUI thread; the dialog closes when they are in."""
        fields = self.task_fields()
        n = self.count.value()
        self._set_busy(True)

        def created(data: Any, error: str | None) -> None:
            self._set_busy(False)
            if error is not None or not data:
                self._refused(error or "the coordinator did not answer")
                return
            ids = list(data.get("task_ids") or [])
            self.submitted.emit(ids)
            self.accept()

        def run_made(data: Any, error: str | None) -> None:
            if error is not None or not data:
                self._set_busy(False)
                self._refused(error or "the coordinator did not answer")
                return
            if not self.bridge.call_async("create_tasks", {"tasks": [fields] * n, "run_id": data["run_id"]},
                                          created):
                self._set_busy(False)
                self._refused("the coordinator is not connected")

        name = run_name(fields["command"], fields.get("test_id", ""))
        if not self.bridge.call_async("create_run", {"name": name, "kind": "submit"}, run_made):
            self._set_busy(False)
            self._refused("the coordinator is not connected")

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self.validate()

    def _refused(self, why: str) -> None:
        self.validate()
        self.error.setStyleSheet(_error_style())
        self.error.setText(f"Refused by the coordinator: {why}")
        self.submit_button.setEnabled(True)  # the engineer may change nothing and try again

    def _run_cli(self, command: list[str], options: list[str], *, cwd: str, rest: list[str] | None = None) -> None:
        target = cli_target(self.bridge.coordinator)
        argv = dtf_argv(target, command, options, rest or [])
        shown = shown_command(argv)
        self._pane_shows_run = True
        self._show_pane()
        self.output.setPlainText(f"$ {shown}\n  (in {cwd})\n")
        self.exit_label.setStyleSheet("")
        self.exit_label.setText("Running…")
        self._stdout = ""
        self._tail = ""
        proc = self.runs.start(argv, cwd=cwd, target=target)
        self.process = proc
        proc.readyReadStandardOutput.connect(lambda: self._read(proc, stdout=True))
        proc.readyReadStandardError.connect(lambda: self._read(proc, stdout=False))
        proc.finished.connect(lambda code, status: self._finished(proc, code, status))
        proc.errorOccurred.connect(lambda err: self._failed_to_start(proc, err))
        self.stop_button.show()
        self.stop_button.setEnabled(True)
        self.runStarted.emit(shown)
        self.validate()

    def _read(self, proc: QProcess, *, stdout: bool) -> None:
        raw = proc.readAllStandardOutput() if stdout else proc.readAllStandardError()
        text = bytes(raw.data()).decode("utf-8", "replace")
        if not text:
            return
        if stdout:
            self._stdout += text
        if proc is self.process:
            self._append(text)

    def _append(self, text: str) -> None:
        cursor = self.output.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        cursor.insertText(text)
        self.output.setTextCursor(cursor)
        self.output.ensureCursorVisible()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines:
            self._tail = lines[-1].strip()

    def _finished(self, proc: QProcess, code: int, status: QProcess.ExitStatus) -> None:
        self._read(proc, stdout=True)
        self._read(proc, stdout=False)
        if proc is not self.process:
            return
        crashed = status == QProcess.ExitStatus.CrashExit
        self.stop_button.hide()
        if crashed:
            self.exit_label.setStyleSheet(_error_style())
            self.exit_label.setText("Ended by a signal (stopped or killed)")
            code = -1
        else:
            self.exit_label.setStyleSheet(_ok_style() if code == 0 else _error_style())
            self.exit_label.setText(f"Finished: exit status {code}" + (" (success)" if code == 0 else ""))
        if code == 0 and self.mode == COMMAND:
            # `dtf submit` prints the ids it made, one a line, on stdout (its messages go to stderr).
            ids = [ln.strip() for ln in self._stdout.splitlines() if ln.strip() and " " not in ln.strip()]
            if ids:
                self.submitted.emit(ids)
        self.runFinished.emit(code, self._tail)
        self.validate()

    def _failed_to_start(self, proc: QProcess, error: QProcess.ProcessError) -> None:
        if proc is not self.process or error != QProcess.ProcessError.FailedToStart:
            return
        self.stop_button.hide()
        self.exit_label.setStyleSheet(_error_style())
        self.exit_label.setText(f"Could not start dtf: {proc.errorString()}")
        self.runFinished.emit(-1, proc.errorString())
        self.validate()

    def stop(self) -> None:
        """Interrupt the running `dtf` command (Ctrl-C: a pytest run cancels its shards and reports)."""
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            self.runs.interrupt(self.process)
            self.stop_button.setEnabled(False)
            self.exit_label.setText("Stopping…")

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.validate()
