"""`dtf-gui --connect`: RemoteCoordinator (one thread, a DEALER and a SUB) against a real coordinator
through its client and events ports, and the same window on it, nothing embedded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dtf_agent import protocol as p
from dtf_gui.remote import RESYNC, RemoteCoordinator, RemoteError
from tests.gui.fakes import screenshot


def test_remote_requests_and_events(qtbot, coordinator) -> None:
    c = coordinator()
    batches: list[list[p.Event]] = []
    remote = RemoteCoordinator.open(c.endpoint("clients"), None, event_sinks=[batches.append]).start()
    try:
        assert remote.endpoint("events") == c.endpoint("events")  # found through get_status's ports
        assert remote.endpoint("agents") == c.endpoint("agents")
        ids = remote.request("create_tasks", {"tasks": [{"type": "noop"}] * 3})["task_ids"]
        assert len(ids) == 3
        assert remote.request("get_task", {"task_id": ids[0]})["status"] == "pending"
        qtbot.waitUntil(lambda: any(e.kind == "stats" for b in batches for e in b), timeout=10_000)
        with pytest.raises(RemoteError, match="unknown operation"):
            remote.request("no_such_op")
        # Any thread may ask; the owning thread carries every call.
        answers: list[object] = []

        def ask() -> None:
            for _ in range(20):
                answers.append(remote.request("get_status")["coordinator_id"])

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers == [c.s.coordinator_id] * 80
        thread = remote._thread
    finally:
        remote.stop()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(RemoteError, match="not connected"):
        remote.request("get_status")


def test_nobody_answering_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(RemoteError, match=f"no answer from the coordinator at tcp://127.0.0.1:{port}"):
        RemoteCoordinator.open(f"tcp://127.0.0.1:{port}", None, connect_timeout=0.5).start()
    with pytest.raises(RemoteError, match="bad coordinator address"):
        RemoteCoordinator.open("localhost:8080", None)
    with pytest.raises(RemoteError, match="cannot read the key file"):
        RemoteCoordinator.open("tcp://127.0.0.1:8080", str(tmp_path / "missing.key"))


def test_an_address_typed_over_the_key_files_takes_the_events_the_same_way(tmp_path: Path) -> None:
    from dtf_agent import keys

    kf = keys.generate("client", "desk", coordinator_key=keys.generate("coordinator", "c").public,
                       endpoint="tcp://10.42.0.7:8080", events_endpoint="tcp://10.42.0.7:8082")
    path = tmp_path / "desk.key"
    keys.write_key_file(path, kf)
    # As the key file says: both its addresses.
    assert RemoteCoordinator.open(None, str(path)).endpoint("events") == "tcp://10.42.0.7:8082"
    # Through a port-forward: not the pod's address for events, which start() asks the coordinator for.
    forwarded = RemoteCoordinator.open("tcp://127.0.0.1:8080", str(path))
    assert forwarded.client_endpoint == "tcp://127.0.0.1:8080" and forwarded.events_endpoint == ""


def test_a_gap_in_the_event_sequence_asks_for_a_reload() -> None:
    got: list[list[p.Event]] = []
    r = RemoteCoordinator("tcp://127.0.0.1:1", event_sinks=[got.append])

    class Sub:
        def __init__(self, frames: list[bytes]) -> None:
            self.frames = frames

        def recv(self, flags: int = 0) -> bytes:
            import zmq

            if not self.frames:
                raise zmq.Again()
            return self.frames.pop(0)

    batch = [p.Event(kind="stats", data={})]
    r._sub = Sub([p.encode(p.EventBatch(events=batch, seq=s)) for s in (1, 2, 5, 1)])  # type: ignore[assignment]
    r._drain_events()
    kinds = [[e.kind for e in b] for b in got]
    assert kinds == [["stats"], ["stats"], [RESYNC, "stats"], [RESYNC, "stats"]]  # lost 3-4; a restart
    assert r.missed_batches == 2
    r.inbox.close()


def test_remote_window_shows_workers_and_tasks(qtbot, coordinator, tmp_path: Path) -> None:
    from dtf_gui.coordinator.local_agent import LocalAgent
    from dtf_gui.ui.app import RemoteSession

    c = coordinator(health_monitor={"heartbeat_interval": 1.0, "heartbeat_timeout": 10.0})
    agent = LocalAgent(c.endpoint("agents"), "remote-test-agent", slots=2, log_path=tmp_path / "agent.log").start()
    session = RemoteSession(c.endpoint("clients"))
    win = session.window
    qtbot.addWidget(win)
    win.show()
    try:
        assert session.bridge.remote and "remote" in win.windowTitle()
        assert win.address_label.text().startswith(f"Connected to {c.endpoint('clients')} as admin")
        qtbot.waitUntil(lambda: "remote-test-agent" in win.workers.keys(), timeout=20_000)
        task_id = session.bridge.submit_task({"command": "echo over-the-wire"})
        assert task_id
        model = win.tasks_panel.model

        def shown() -> dict:
            row = model.row_of(task_id)
            return (model.peek(row) if row is not None else None) or {}

        qtbot.waitUntil(lambda: shown().get("status") == "completed", timeout=20_000)
        assert shown()["worker_id"] == "remote-test-agent"
        qtbot.waitUntil(lambda: "Workers online: 1" in win.workers_label.text(), timeout=5000)
        print(screenshot(win, "remote-window"))
        remote_thread = session.bridge.coordinator._thread
    finally:
        win.close()
        agent.stop()
    assert not remote_thread.is_alive(), "the remote connection outlived the window"
    assert c.is_running, "closing a remote window stops nothing on the coordinator's side"


def test_a_remote_viewer_key_sees_but_is_offered_no_changes(qtbot, coordinator, tmp_path: Path) -> None:
    import msgspec

    from dtf_agent import keys
    from dtf_gui.ui.app import RemoteSession
    from tests.helpers import FakeAgent

    c = coordinator()
    made = c.request("add_client", {"name": "lab-viewer", "role": "viewer"})
    key_file = tmp_path / "lab-viewer.key"
    keys.write_key_file(key_file, msgspec.convert(made["key_file"], keys.KeyFile))
    stranger = FakeAgent(c.endpoint("agents"), "bench-unknown", stranger=True)
    try:
        stranger.register()
        stranger.recv(p.Pending, timeout=10)
        session = RemoteSession(c.endpoint("clients"), str(key_file))  # CURVE with the viewer's key
        win = session.window
        qtbot.addWidget(win)
        win.show()
        try:
            assert session.bridge.identity["role"] == "viewer"
            assert "as lab-viewer, viewer role" in win.address_label.text()
            assert not win.insecure_label.isVisible()
            qtbot.waitUntil(lambda: win.pending_proxy.rowCount() == 1, timeout=10_000)
            key = win.agents.keys()[0]
            accept = win.pending_view.button("accept", key)
            assert accept is not None and not accept.isEnabled()
            assert "needs the admin role (you are viewer)" in accept.toolTip()
            assert not win.new_task_action.isEnabled() and not win.add_machines_action.isEnabled()
            # Asked anyway, the coordinator refuses and the window says which role would do.
            assert win.decide_agents("accept", [key]) == []
            assert "needs the admin role" in win.statusBar().currentMessage()
            print(screenshot(win, "remote-viewer"))
        finally:
            win.close()
    finally:
        stranger.close()
