"""Enrollment in the window with a real coordinator: an agent from another machine waits with its
fingerprint and is accepted with its row's button; the join command; the insecure banner."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt

from dtf_agent import protocol as p
from dtf_gui.ui.main_window import INSECURE_TEXT
from tests.gui.fakes import screenshot
from tests.helpers import FakeAgent


def test_a_stranger_waits_with_its_fingerprint_and_the_accept_button_lets_it_in(qtbot, gui_session) -> None:
    win = gui_session.window
    assert not win.insecure_label.isVisible()
    qtbot.waitUntil(lambda: win.workers.rowCount() == 1, timeout=15_000)  # the local agent, no click
    fake = FakeAgent(gui_session.bridge.coordinator.endpoint("agents"), "bench-stranger", stranger=True)
    try:
        hello = p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="bench-stranger", hostname="benchhost",
                           slots=1)
        fake.send(hello)
        waiting = fake.recv(p.Pending, timeout=10)
        assert waiting.fingerprint.startswith("SHA256:")
        qtbot.waitUntil(lambda: win.pending_proxy.rowCount() == 1, timeout=10_000)
        assert win.pending_box.isVisible()
        row = win.agents.row_for(waiting.fingerprint)
        assert row["name"] == "bench-stranger" and row["state"] == "pending"
        assert row["hostname"] == "benchhost" and row["address"]
        fp_col = next(i for i, c in enumerate(win.agents.columns) if c.title == "Key fingerprint")
        assert win.pending_proxy.index(0, fp_col).data() == waiting.fingerprint  # whole
        assert "bench-stranger" not in win.workers.keys()  # no worker before the click
        print(screenshot(win, "real-pending-agent"))

        accept = win.pending_view.button("accept", waiting.fingerprint)
        assert accept is not None and accept.isEnabled()
        qtbot.mouseClick(accept, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: win.agents.row_for(waiting.fingerprint)["state"] == "accepted", timeout=10_000)
        qtbot.waitUntil(lambda: not win.pending_box.isVisible(), timeout=5000)
        fake.register_until_welcomed(hello)
        qtbot.waitUntil(lambda: "bench-stranger" in win.workers.keys(), timeout=10_000)
        # The decision is in the Security tab, live.
        qtbot.waitUntil(lambda: any((win.security.row_for(k) or {}).get("what") == "agent_accepted"
                                    and (win.security.row_for(k) or {}).get("subject") == "bench-stranger"
                                    for k in win.security.keys()), timeout=10_000)
        win.tabs.setCurrentIndex(3)
        print(screenshot(win, "real-accepted-agent"))
    finally:
        fake.close()


def test_add_machines_dialog_makes_a_real_join_command(qtbot, gui_session) -> None:
    win = gui_session.window
    assert win.add_machines_action.isEnabled()
    dlg = win.open_add_machines_dialog()
    qtbot.waitUntil(dlg.isVisible)
    assert dlg.command.text().startswith("dtf-agent --join dtf1-")
    from dtf_agent.keys import decode_token

    token = decode_token(dlg.command.text().removeprefix("dtf-agent --join "))
    assert token.key == gui_session.bridge.identity["coordinator_key"]
    assert "Good for 10 machines" in dlg.validity.text()
    print(screenshot(dlg, "real-add-machines"))


def test_an_insecure_coordinator_says_so_plainly(qtbot, tmp_path: Path, monkeypatch) -> None:
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.ui.app import Session

    monkeypatch.setenv("DTF_HOME", str(tmp_path))
    session = Session(ephemeral_settings(tmp_path / "dtf.sqlite", security={"insecure": True}), tmp_path,
                      local_agent=False)
    win = session.window
    qtbot.addWidget(win)
    win.show()
    try:
        assert win.insecure_label.isVisible() and win.insecure_label.text() == INSECURE_TEXT
        assert win.key_label.text() == "No key"
        assert not win.add_machines_action.isEnabled()
        assert "--insecure" in win.add_machines_action.toolTip()
        print(screenshot(win, "real-insecure"))
    finally:
        session.close()
