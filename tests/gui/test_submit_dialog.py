"""The New task dialog against a real window, coordinator and local agent: it checks as you type,
submits commands straight to the coordinator, and runs pytest suites, plans and bundles through the
real `dtf` command."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QProcess

from dtf_gui.ui.submit_cli import CliRuns, cli_target, dtf_argv, shown_command, submit_options
from dtf_gui.ui.submit_dialog import SubmitDialog, quotes_problem, run_name, split_words


def _dialog(qtbot, session) -> SubmitDialog:
    dlg = SubmitDialog(session.bridge, session.window)
    qtbot.addWidget(dlg)
    dlg.show()
    return dlg


def _blocked(dlg: SubmitDialog, fragment: str) -> bool:
    return not dlg.submit_button.isEnabled() and fragment.lower() in dlg.error.text().lower()


def test_command_mode_checks_as_you_type(qtbot, gui_session, tmp_path: Path) -> None:
    dlg = _dialog(qtbot, gui_session)
    assert _blocked(dlg, "type the command")
    qtbot.keyClicks(dlg.command, 'echo "half quoted')
    assert _blocked(dlg, "no closing quotation")
    qtbot.keyClicks(dlg.command, '"')
    assert dlg.submit_button.isEnabled(), dlg.error.text()
    assert "Ready: 1 task" in dlg.error.text()

    dlg.count.setValue(0)
    assert _blocked(dlg, "count: 1 to 10,000")
    dlg.count.setValue(10_001)
    assert _blocked(dlg, "count: 1 to 10,000")
    dlg.count.setValue(10_000)
    assert dlg.submit_button.isEnabled()
    dlg.count.setValue(1)

    dlg.bundle.setText(str(tmp_path / "nowhere"))
    assert _blocked(dlg, "does not exist")
    (tmp_path / "a-file").write_text("x")
    dlg.bundle.setText(str(tmp_path / "a-file"))
    assert _blocked(dlg, "is not a directory")
    dlg.bundle.setText(str(tmp_path))
    assert dlg.submit_button.isEnabled()
    assert "bundle" in dlg.error.text()

    dlg.worker.setEditText("two words")
    assert _blocked(dlg, "worker")
    dlg.worker.setEditText("")
    dlg.command.clear()
    assert _blocked(dlg, "type the command")


def test_pytest_and_plan_modes_check_their_own_fields(qtbot, gui_session, tmp_path: Path) -> None:
    dlg = _dialog(qtbot, gui_session)
    dlg.set_mode("pytest")
    assert dlg.pytest_box.isVisibleTo(dlg) and not dlg.command_box.isVisibleTo(dlg)
    assert not dlg.schedule_box.isVisibleTo(dlg) and dlg.where_box.isVisibleTo(dlg)
    assert _blocked(dlg, "suite's directory")
    qtbot.keyClicks(dlg.pytest_dir, str(tmp_path / "missing"))
    assert _blocked(dlg, "does not exist")
    dlg.pytest_dir.setText(str(tmp_path))
    assert dlg.submit_button.isEnabled()
    qtbot.keyClicks(dlg.pytest_args, "-k 'fast")
    assert _blocked(dlg, "quotation")

    dlg.set_mode("plan")
    assert dlg.plan_box.isVisibleTo(dlg) and not dlg.where_box.isVisibleTo(dlg)
    assert _blocked(dlg, "choose a plan file")
    qtbot.keyClicks(dlg.plan_file, str(tmp_path / "none.yaml"))
    qtbot.waitUntil(lambda: _blocked(dlg, "plan file not found"), timeout=3000)


def test_a_command_three_times_with_tags_and_priority_lands_on_the_coordinator(qtbot, gui_session) -> None:
    dlg = _dialog(qtbot, gui_session)
    qtbot.keyClicks(dlg.command, "echo three")
    qtbot.keyClicks(dlg.tags, "lab-9, nightly")
    dlg.priority.setValue(42)
    dlg.count.setValue(3)
    dlg.retries.setValue(2)
    dlg.timeout.setValue(90)
    assert dlg.submit_button.isEnabled(), dlg.error.text()
    with qtbot.waitSignal(dlg.submitted, timeout=10_000) as got:
        dlg.submit_button.click()
    ids = got.args[0]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert not dlg.isVisible()  # a direct submission closes the dialog
    stored = {t["task_id"]: t for t in gui_session.bridge.call("list_tasks", {"limit": 100})}
    assert set(ids) <= set(stored)
    for task_id in ids:
        task = stored[task_id]
        assert task["priority"] == 42
        assert task["requirements"]["tags"] == ["lab-9", "nightly"]
        assert task["retry_limit"] == 2
        assert task["timeout"] == 90
        assert task["parameters"]["command"] == "echo three"
        assert task["metadata"]["run"], "every submission is a run, as with dtf submit"
    run = gui_session.bridge.call("get_run", {"run_id": stored[ids[0]]["metadata"]["run"]})
    assert run["name"] == "echo" and run["kind"] == "submit"


def test_depends_on_an_unknown_task_is_refused_before_submit(qtbot, gui_session) -> None:
    bridge = gui_session.bridge
    dlg = _dialog(qtbot, gui_session)
    qtbot.keyClicks(dlg.command, "echo after")
    qtbot.keyClicks(dlg.depends, "feedfacefeedface")
    assert _blocked(dlg, "checking")  # asked once typing pauses; Submit waits for the answer
    qtbot.waitUntil(lambda: _blocked(dlg, "no task feedfacefeedface"), timeout=5000)
    dlg.submit()  # what a click would do: nothing reaches the coordinator
    assert dlg.isVisible()
    assert bridge.call("list_tasks", {"limit": 10}) == []

    first = bridge.call("create_task", {"type": "noop"})["task_id"]
    dlg.depends.setText(f"{first}, {first}")
    qtbot.waitUntil(dlg.submit_button.isEnabled, timeout=5000)
    with qtbot.waitSignal(dlg.submitted, timeout=10_000) as got:
        dlg.submit_button.click()
    assert bridge.call("get_task", {"task_id": got.args[0][0]})["dependencies"] == [first]


def test_a_plan_with_a_typo_shows_the_checkers_message_with_its_line(qtbot, gui_session, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: typo\nsteps:\n  - name: one\n    comand: echo hi\n", encoding="utf-8")
    dlg = _dialog(qtbot, gui_session)
    dlg.set_mode("plan")
    dlg.plan_file.setText(str(plan))
    qtbot.waitUntil(lambda: _blocked(dlg, f"{plan}:4"), timeout=3000)
    assert "command" in dlg.error.text()  # the checker's did-you-mean
    dlg.check_button.click()
    assert f"{plan}:4" in dlg.output.toPlainText()

    plan.write_text("name: typo\nsteps:\n  - name: one\n    command: echo hi\n    repeat: 2\n", encoding="utf-8")
    dlg.check_button.click()  # the file changed on disk: Check reads it again
    assert dlg.submit_button.isEnabled(), dlg.error.text()
    assert "plan OK: 2 tasks in 1 step" in dlg.output.toPlainText()
    assert "plan OK: 2 tasks" in dlg.error.text()


def _run_and_wait(qtbot, dlg: SubmitDialog, timeout_ms: int) -> tuple[int, str]:
    with qtbot.waitSignal(dlg.runFinished, timeout=timeout_ms) as done:
        dlg.submit_button.click()
        assert dlg.process is not None
        assert dlg.stop_button.isVisible()
        assert not dlg.submit_button.isEnabled()  # one run at a time per dialog
    return done.args[0], dlg.output.toPlainText()


def test_a_plan_runs_through_dtf_plan_run(qtbot, gui_session, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: two-echoes\nsteps:\n  - name: hello\n    command: echo hi\n    repeat: 2\n",
                    encoding="utf-8")
    dlg = _dialog(qtbot, gui_session)
    dlg.set_mode("plan")
    dlg.plan_file.setText(str(plan))
    qtbot.waitUntil(dlg.submit_button.isEnabled, timeout=3000)
    code, out = _run_and_wait(qtbot, dlg, 30_000)
    assert code == 0, out
    assert "$ dtf plan run" in out and "2 tasks submitted" in out
    assert "exit status 0" in dlg.exit_label.text()
    runs = gui_session.bridge.call("list_runs", {})
    assert any(r["name"] == "two-echoes" for r in (runs.get("runs") if isinstance(runs, dict) else runs))


def test_a_pytest_run_goes_through_dtf_pytest_and_shows_pytests_summary(qtbot, gui_session, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_tiny.py").write_text("def test_one():\n    assert 1 + 1 == 2\n", encoding="utf-8")
    win = gui_session.window
    qtbot.waitUntil(lambda: win.workers.rowCount() == 1, timeout=15_000)  # the local agent runs it
    dlg = _dialog(qtbot, gui_session)
    dlg.set_mode("pytest")
    dlg.pytest_dir.setText(str(suite))
    dlg.pytest_args.setText("-q")
    assert dlg.submit_button.isEnabled(), dlg.error.text()
    started = time.monotonic()
    code, out = _run_and_wait(qtbot, dlg, 90_000)
    assert code == 0, out
    assert "1 passed" in out
    assert "$ dtf pytest --coordinator" in out
    assert time.monotonic() - started < 60


def test_a_bundle_command_goes_through_dtf_submit(qtbot, gui_session, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "hello.txt").write_text("from the bundle\n", encoding="utf-8")
    dlg = _dialog(qtbot, gui_session)
    qtbot.keyClicks(dlg.command, "cat hello.txt")
    dlg.bundle.setText(str(bundle))
    dlg.count.setValue(2)
    with qtbot.waitSignal(dlg.submitted, timeout=30_000) as got:
        dlg.submit_button.click()
    ids = got.args[0]
    assert len(ids) == 2
    bridge = gui_session.bridge
    qtbot.waitUntil(lambda: all(bridge.call("get_task", {"task_id": t})["status"] == "completed" for t in ids),
                    timeout=30_000)
    task = bridge.call("get_task", {"task_id": ids[0]})
    assert task["result_list"][-1]["raw_data"]["stdout_tail"].strip() == "from the bundle"
    assert "--bundle" in dlg.output.toPlainText()


def test_a_running_dtf_command_dies_with_the_window(qtbot, gui_session, tmp_path: Path) -> None:
    win = gui_session.window
    runs = CliRuns.of(win)
    assert CliRuns.of(win) is runs  # one per window
    target = cli_target(gui_session.bridge.coordinator)
    proc = runs.start([sys.executable, "-c", "import time; time.sleep(120)"], cwd=str(tmp_path), target=target)
    assert proc.waitForStarted(10_000)
    pid = proc.processId()
    win.close()
    assert proc.state() == QProcess.ProcessState.NotRunning
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cli_target_points_at_the_windows_coordinator_with_its_key(tmp_path: Path) -> None:
    class Embedded:
        home = tmp_path

        def endpoint(self, which: str) -> str:
            return "tcp://127.0.0.1:5555" if which == "clients" else "?"

    target = cli_target(Embedded())
    assert target.endpoint == "tcp://127.0.0.1:5555"
    assert target.env == {"DTF_HOME": str(tmp_path)} and "DTF_CLIENT_KEY" in target.unset

    class Remote:
        credentials = SimpleNamespace(source="/keys/alice.key")

        def endpoint(self, which: str) -> str:
            return "tcp://lab:8080"

    remote = cli_target(Remote())
    argv = dtf_argv(remote, ["plan", "run", "p.yaml"])
    assert argv[:3] == [sys.executable, "-m", "dtf_gui.cli"]
    assert argv[3:] == ["--key", "/keys/alice.key", "plan", "run", "p.yaml", "--coordinator", "tcp://lab:8080"]
    assert shown_command(argv).startswith("dtf --key /keys/alice.key plan run")
    plain = SimpleNamespace(credentials=None, endpoint=lambda which: "tcp://lab:8080")
    assert cli_target(plain).global_args == () and cli_target(plain).unset == ()


def test_pure_helpers() -> None:
    assert split_words("a, b  c,,a") == ["a", "b", "c"]
    assert quotes_problem("echo 'x") and quotes_problem("echo 'x'") is None
    assert run_name("/usr/bin/python bench.py", "") == "python" and run_name("x", "t1") == "t1"
    opts = submit_options(command="x y", tags=["a"], worker="w", priority=3, timeout=5.0, retries=0,
                          depends_on=["d1", "d2"], count=4, bundle="/b")
    assert opts == ["--command", "x y", "--tag", "a", "--worker", "w", "--priority", "3", "--timeout", "5",
                    "--retries", "0", "--depends-on", "d1", "--depends-on", "d2", "--count", "4", "--bundle", "/b"]
