"""The window's side of enrollment and roles, against a stand-in coordinator (tests/gui/fakes.py):
agents waiting to join with their whole fingerprints and Accept buttons, the join-command dialog,
the insecure banner, the key in the status bar, what a viewer may not do, security events."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontMetrics, QGuiApplication

from dtf_gui.ui.main_window import INSECURE_TEXT, MainWindow
from dtf_gui.ui.models import agents_model, security_model
from tests.gui.fakes import agent, fake_bridge, screenshot


@pytest.fixture
def make_window(qtbot):
    made = []

    def make(**kwargs):
        bridge, fake = fake_bridge(**kwargs)
        win = MainWindow(bridge)
        qtbot.addWidget(win)
        win.show()
        made.append(bridge)
        return win, fake

    yield make
    for b in made:
        b.stop()


def _column(model, title: str) -> int:
    return next(i for i, c in enumerate(model.columns) if c.title == title)


def test_pending_agents_show_whole_fingerprints_and_accept_moves_them_on(qtbot, make_window) -> None:
    a, b = agent("bench-07", address="10.1.2.7"), agent("bench-08", address="10.1.2.8")
    done = agent("old-box", state="accepted")
    win, fake = make_window(agents=[a, b, done])
    assert win.pending_box.isVisible()
    assert "2 agents waiting" in win.pending_title.text()
    view, proxy = win.pending_view, win.pending_proxy
    assert proxy.rowCount() == 2  # the accepted one is not asking
    fp_col = _column(win.agents, "Key fingerprint")
    shown = {proxy.index(r, fp_col).data() for r in range(proxy.rowCount())}
    assert shown == {a["fingerprint"], b["fingerprint"]}  # whole, distinct, not cut to a common prefix
    mono = QFontMetrics(proxy.index(0, fp_col).data(Qt.ItemDataRole.FontRole))
    assert view.columnWidth(fp_col) >= mono.horizontalAdvance(a["fingerprint"])  # wide enough: no elision
    host_col, addr_col = _column(win.agents, "Host"), _column(win.agents, "Address")
    rows = {proxy.index(r, 0).data(): r for r in range(proxy.rowCount())}
    assert proxy.index(rows["bench-07"], host_col).data() == "bench-07.lab"
    assert proxy.index(rows["bench-07"], addr_col).data() == "10.1.2.7"
    print(screenshot(win, "pending-agents"))

    accept = view.button("accept", a["fingerprint"])
    assert accept is not None and accept.isEnabled()
    qtbot.mouseClick(accept, Qt.MouseButton.LeftButton)
    assert ("accept_agents", {"agents": [a["fingerprint"]], "all_pending": False}) in fake.calls
    qtbot.waitUntil(lambda: proxy.rowCount() == 1)
    assert win.agents.row_for(a["fingerprint"])["state"] == "accepted"
    assert "Accepted: bench-07" in win.statusBar().currentMessage()
    assert view.button("reject", b["fingerprint"]) is not None

    qtbot.mouseClick(view.button("reject", b["fingerprint"]), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not win.pending_box.isVisible())
    assert win.agents.row_for(b["fingerprint"])["state"] == "rejected"
    # Each decision is a security event in its own tab.
    assert win.security.rowCount() == 2
    assert {win.security.row_for(k)["what"] for k in win.security.keys()} == {"agent accepted", "agent rejected"}
    assert win.tabs.tabText(win.tabs.indexOf(win.security_view)) == "Security (2)"
    win.tabs.setCurrentIndex(3)
    print(screenshot(win, "security-events"))


def test_accept_all_and_revoke_selected(qtbot, make_window) -> None:
    agents = [agent(f"rack-{i}") for i in range(3)]
    win, fake = make_window(agents=agents)
    assert win.accept_all_action.text() == "Accept all waiting agents (3)"
    win.accept_all_action.trigger()
    qtbot.waitUntil(lambda: not win.pending_box.isVisible())
    win.tabs.setCurrentIndex(2)
    win.agents_view.selectRow(0)
    key = win.selected_agent_keys()[0]
    win.agent_buttons["revoke"].click()
    assert win.agents.row_for(key)["state"] == "revoked"
    print(screenshot(win, "agents-tab"))


def test_a_viewer_is_offered_no_decisions(qtbot, make_window) -> None:
    pending = agent("bench-09")
    win, fake = make_window(role="viewer", agents=[pending])
    assert win.pending_box.isVisible()
    accept = win.pending_view.button("accept", pending["fingerprint"])
    assert not accept.isEnabled() and "needs the admin role" in accept.toolTip()
    assert not win.new_task_action.isEnabled() and not win.cancel_action.isEnabled()
    assert not win.add_machines_action.isEnabled() and not win.accept_all_action.isEnabled()
    assert not any(b.isEnabled() for b in win.agent_buttons.values())
    assert not win.workers_view.acceptDrops()
    assert "needs the operator role (you are viewer)" in win.new_task_action.toolTip()


def test_an_operator_runs_tasks_but_does_not_enroll(qtbot, make_window) -> None:
    pending = agent("bench-10")
    win, _ = make_window(role="operator", agents=[pending])
    assert win.new_task_action.isEnabled() and win.cancel_action.isEnabled()
    assert not win.pending_view.button("accept", pending["fingerprint"]).isEnabled()
    assert not win.add_machines_action.isEnabled()


def test_a_refusal_names_the_role_in_the_status_bar(qtbot, make_window) -> None:
    pending = agent("bench-11")
    win, _ = make_window(role="operator", agents=[pending])
    assert win.decide_agents("accept", [pending["fingerprint"]]) == []
    assert "needs the admin role" in win.statusBar().currentMessage()


def test_add_machines_dialog_shows_a_copyable_join_command(qtbot, make_window) -> None:
    win, fake = make_window()
    dlg = win.open_add_machines_dialog()
    qtbot.waitUntil(dlg.isVisible)
    assert dlg.command.text().startswith("dtf-agent --join dtf1-")
    assert dlg.command.isReadOnly()
    op, args = fake.calls[-1]
    assert op == "create_token" and args["uses"] == 10 and args["ttl"] == 8 * 3600
    assert "Good for 10 machines, until" in dlg.validity.text()
    dlg.copy_button.click()
    assert QGuiApplication.clipboard().text() == dlg.command.text()
    first = dlg.command.text()
    dlg.uses.setValue(3)
    dlg.tags.setText("gpu, lab-2")
    dlg.remake.click()
    assert dlg.command.text() != first
    assert fake.calls[-1] == ("create_token", {"uses": 3, "ttl": 8 * 3600.0, "tags": ["gpu", "lab-2"]})
    assert "Good for 3 machines" in dlg.validity.text()
    print(screenshot(dlg, "add-machines"))


def test_insecure_coordinator_says_so_in_the_status_bar(qtbot, make_window) -> None:
    win, _ = make_window(insecure=True)
    assert win.insecure_label.isVisible()
    assert win.insecure_label.text() == INSECURE_TEXT
    assert win.key_label.text() == "No key"
    win.statusBar().showMessage("a passing message", 1000)
    assert win.insecure_label.isVisible()  # permanent: a message does not push it away
    print(screenshot(win, "insecure"))


def test_secure_coordinator_shows_its_key(qtbot, make_window) -> None:
    win, fake = make_window()
    assert not win.insecure_label.isVisible()
    fp = fake.identity["fingerprint"]
    assert win.key_label.text() == f"Encrypted (CURVE), key {fp[:len('SHA256:') + 12]}"
    assert fp in win.key_label.toolTip()
    about = win.open_about_dialog()
    assert about.fingerprint.text() == fp
    print(screenshot(about, "about"))


def test_agent_and_security_models_pass_qt_model_tester(qtmodeltester) -> None:
    m = agents_model()
    a, b = agent("a"), agent("b")
    m.apply([{**a, "key": a["fingerprint"]}, {**b, "key": b["fingerprint"]}])
    m.apply([{"key": a["fingerprint"], "state": "accepted"}, {**agent("c"), "key": "c"}])
    assert m.data(m.index(0, 1), Qt.ItemDataRole.ForegroundRole) is not None
    qtmodeltester.check(m, force_py=True)
    s = security_model(max_rows=2)
    s.apply([{"seq": i, "what": "refused key", "subject": "x", "detail": "", "time": 1.0} for i in range(3)])
    assert s.keys() == [1, 2]
    qtmodeltester.check(s, force_py=True)
