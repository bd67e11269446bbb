"""Worker health alerts: the rules of the state machine (alerts.py, no clock, no I/O), the
handler thread, the sample web hook (a real HTTP server on 127.0.0.1) and the coordinator side's
persistence over a real SQLite store."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtf_gui.coordinator import webhook
from dtf_gui.coordinator.alerts import HYSTERESIS, Alert, AlertBook, Thresholds
from dtf_gui.coordinator.alerts_api import (
    AckAlerts,
    AlertHandlers,
    AlertsApi,
    ListAlerts,
    MuteAlert,
    WorkerRef,
)
from dtf_gui.coordinator.config import HealthMonitorSection
from dtf_gui.coordinator.events import EventHub
from dtf_gui.coordinator.health import WorkerTable
from dtf_gui.coordinator.store import Store
from tests.helpers import wait_until

T = Thresholds(cpu=95, memory=90, disk=90, sustained_s=30, failure_threshold=3)


def hb(cpu: float = 10.0, memory: float = 10.0, disk: float = 10.0, gpu_memory: float | None = None
       ) -> dict[str, float | None]:
    return {"cpu_percent": cpu, "memory_percent": memory, "disk_percent": disk, "gpu_memory_percent": gpu_memory}


# ----------------------------------------------------------------------------- resources


def test_a_resource_alert_is_raised_only_after_it_stayed_above_for_sustained_s():
    book = AlertBook(T)
    assert book.heartbeat("lab-3", hb(cpu=99), 100.0) == []
    assert book.heartbeat("lab-3", hb(cpu=97), 129.0) == []
    (a,) = book.heartbeat("lab-3", hb(cpu=98), 130.0)
    assert (a.kind, a.worker_id, a.state, a.severity, a.value, a.threshold) == ("cpu", "lab-3", "raised", "critical",
                                                                                98.0, 95.0)
    assert a.message == "lab-3: CPU above 95% for 30 s (98%)"
    assert a.notify and not a.acked and not a.muted
    assert book.heartbeat("lab-3", hb(cpu=99), 200.0) == [], "raised once per episode"


def test_a_dip_to_the_threshold_restarts_the_sustained_clock():
    book = AlertBook(T)
    book.heartbeat("w", hb(memory=95), 0.0)
    book.heartbeat("w", hb(memory=90), 20.0)  # at the threshold is not above it
    assert book.heartbeat("w", hb(memory=95), 31.0) == []
    assert book.heartbeat("w", hb(memory=95), 50.0) == []
    (a,) = book.heartbeat("w", hb(memory=93), 61.0)
    assert a.kind == "memory" and a.severity == "warning"


def test_sustained_0_raises_on_the_first_heartbeat_above_and_says_no_duration():
    book = AlertBook(Thresholds(disk=50, sustained_s=0))
    (a,) = book.heartbeat("w", hb(disk=60.4), 5.0)
    assert a.message == "w: disk above 50% (60%)"


def test_hysteresis_keeps_the_alert_until_the_value_is_5_points_below():
    book = AlertBook(T)
    book.heartbeat("w", hb(cpu=99), 0.0)
    (raised,) = book.heartbeat("w", hb(cpu=99), 30.0)
    assert book.heartbeat("w", hb(cpu=95 - HYSTERESIS), 40.0) == [], "exactly 5 below is not below"
    assert book.heartbeat("w", hb(cpu=93), 45.0) == []
    (cleared,) = book.heartbeat("w", hb(cpu=80), 50.0)
    assert cleared.state == "cleared" and cleared.alert_id == raised.alert_id
    assert cleared.message == "w: CPU back to 80% (alert at 95%)"
    book.heartbeat("w", hb(cpu=99), 60.0)
    (again,) = book.heartbeat("w", hb(cpu=99), 90.0)
    assert again.alert_id != raised.alert_id, "a new episode has a new id"


def test_gpu_memory_uses_the_memory_threshold_and_a_missing_value_changes_nothing():
    book = AlertBook(Thresholds(memory=80, sustained_s=0))
    (a,) = book.heartbeat("gpu-box", hb(gpu_memory=85), 1.0)
    assert a.kind == "gpu_memory" and a.message == "gpu-box: GPU memory above 80% (85%)"
    assert book.heartbeat("gpu-box", hb(gpu_memory=None), 2.0) == [], "no reading is no news"
    assert [x.alert_id for x in book.raised()] == [a.alert_id]
    assert book.heartbeat("cpu-box", {"cpu_percent": float("nan")}, 1.0) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0.1, 20)), min_size=1, max_size=60),
       st.floats(0, 40), st.floats(5, 99))
def test_property_resource_alerts_alternate_and_obey_the_thresholds(samples, sustained, limit):
    """Whatever the readings: raised and cleared alternate, a raise follows sustained_s above the
    threshold, a clear a reading more than HYSTERESIS below it; each episode keeps one id."""
    book = AlertBook(Thresholds(cpu=limit, sustained_s=sustained))
    now = 0.0
    above_since: float | None = None
    raised: Alert | None = None
    for value, step in samples:
        now += step
        out = book.heartbeat("w", hb(cpu=value), now)
        assert len(out) <= 1
        if raised is None:
            above_since = (above_since if above_since is not None else now) if value > limit else None
            should = above_since is not None and now - above_since >= sustained
            assert bool(out) == should, (value, now, above_since)
            if out:
                assert out[0].state == "raised" and out[0].value == value
                raised = out[0]
        else:
            should_clear = value < limit - HYSTERESIS
            assert bool(out) == should_clear
            if out:
                assert out[0].state == "cleared" and out[0].alert_id == raised.alert_id
                raised = None
                above_since = None


# ----------------------------------------------------------------------------- failures and offline


def test_failures_raise_at_the_threshold_in_a_row_and_clear_on_the_next_success():
    book = AlertBook(T)
    assert book.task_ended("w", True, 1.0) == []
    assert book.task_ended("w", True, 2.0) == []
    assert book.task_ended("w", False, 3.0) == [], "a success in between starts the count again"
    assert book.task_ended("w", True, 4.0) == []
    assert book.task_ended("w", True, 5.0) == []
    assert book.task_ended("other", True, 5.5) == [], "counted per worker"
    (a,) = book.task_ended("w", True, 6.0)
    assert (a.kind, a.value, a.threshold, a.severity) == ("failures", 3.0, 3.0, "critical")
    assert a.message.startswith("w: 3 tasks failed in a row there")
    assert book.task_ended("w", True, 7.0) == []
    (c,) = book.task_ended("w", False, 8.0)
    assert c.state == "cleared" and c.alert_id == a.alert_id
    assert c.message == "w: a task succeeded again after 4 failures in a row"


def test_a_lost_worker_raises_offline_until_it_is_back_and_one_that_left_raises_none():
    book = AlertBook(T)
    (a,) = book.worker_lost("lab-1", "no heartbeat for 31 s", 10.0)
    assert (a.kind, a.severity, a.value) == ("offline", "critical", None)
    assert a.message == "lab-1 is offline: no heartbeat for 31 s; its tasks went back to the queue"
    assert book.worker_lost("lab-1", "again", 11.0) == []
    assert book.worker_back("lab-1", 20.0) == [], "back, but not for long yet"
    assert book.heartbeat("lab-1", hb(), 24.0) == []
    (c,) = book.heartbeat("lab-1", hb(), 25.0)  # back_s (5 s by default) after it came back
    assert c.state == "cleared" and c.alert_id == a.alert_id and c.message == "lab-1 is back online (for 5 s)"
    assert book.worker_back("lab-1", 26.0) == []
    # Leaving on purpose: its open alerts end, no offline alert.
    book.task_ended("lab-2", True, 1.0)
    book.task_ended("lab-2", True, 1.0)
    book.task_ended("lab-2", True, 1.0)
    out = book.worker_left("lab-2", 30.0, "left (its agent stopped)")
    assert [(x.kind, x.state) for x in out] == [("failures", "cleared")]
    assert out[0].message == "lab-2 left (its agent stopped): its failures alert is closed"
    assert book.raised() == []


def test_a_flapping_worker_keeps_one_offline_alert_and_notifies_one_raise_and_one_clear():
    book = AlertBook(Thresholds(back_s=5.0))
    said: list[Alert] = []
    t = 0.0
    for _ in range(10):  # lost, back for 2 s, lost again ...
        said += book.worker_lost("flappy", "no heartbeat", t)
        said += book.worker_back("flappy", t + 1.0)
        said += book.heartbeat("flappy", hb(), t + 3.0)
        t += 10.0
    assert [(a.state, a.notify) for a in said] == [("raised", True)], "one episode while it flaps"
    assert [a.kind for a in book.raised()] == ["offline"]
    said += book.worker_lost("flappy", "no heartbeat", t)
    said += book.worker_back("flappy", t + 1.0)
    said += book.heartbeat("flappy", hb(), t + 6.0)
    assert [(a.state, a.notify) for a in said] == [("raised", True), ("cleared", True)]
    assert said[0].alert_id == said[1].alert_id and book.raised() == []
    # With back_s 0 a return clears at once, as it comes.
    quick = AlertBook(Thresholds(back_s=0.0))
    quick.worker_lost("w", "", 0.0)
    (c,) = quick.worker_back("w", 1.0)
    assert c.state == "cleared" and c.message == "w is back online"


def test_cleared_alerts_beyond_keep_cleared_are_forgotten_oldest_first(monkeypatch: pytest.MonkeyPatch):
    from dtf_gui.coordinator import alerts

    monkeypatch.setattr(alerts, "KEEP_CLEARED", 3)
    book = AlertBook(Thresholds(sustained_s=0, cpu=50))
    (kept_raised,) = book.heartbeat("steady", hb(cpu=60), 0.0)
    cleared = []
    for i in range(1, 11):
        book.heartbeat(f"w{i}", hb(cpu=60), float(i))
        cleared += book.heartbeat(f"w{i}", hb(cpu=1), float(i) + 0.5)
    assert book.ids() == [kept_raised.alert_id, *(c.alert_id for c in cleared[-3:])]
    # A raised alert that clears later joins the cleared ones as the newest.
    (c,) = book.heartbeat("steady", hb(cpu=1), 20.0)
    assert book.ids() == [*(x.alert_id for x in cleared[-2:]), c.alert_id]


def test_a_lost_worker_restarts_its_sustained_clocks():
    book = AlertBook(T)
    book.heartbeat("w", hb(cpu=99), 0.0)
    book.worker_lost("w", "", 10.0)
    assert book.heartbeat("w", hb(cpu=99), 31.0) == [], "the clock began again at the first heartbeat after"


# ----------------------------------------------------------------------------- ack, mute, list


def test_ack_marks_an_alert_and_keeps_the_flag_through_its_clear_and_unknown_ids_are_findings():
    book = AlertBook(Thresholds(sustained_s=0, cpu=50))
    (a,) = book.heartbeat("w", hb(cpu=60), 1.0)
    taken, changed = book.ack([a.alert_id, "change_point:r1:latency_ms", a.alert_id], 2.0)
    assert taken == [a.alert_id, "change_point:r1:latency_ms"]
    assert [(x.alert_id, x.acked, x.notify) for x in changed] == [(a.alert_id, True, False)]
    assert list(book.acked_findings) == ["change_point:r1:latency_ms"]
    assert book.ack([a.alert_id], 3.0)[1] == [], "already acknowledged"
    (c,) = book.heartbeat("w", hb(cpu=10), 4.0)
    assert c.acked


def test_a_muted_alert_is_recorded_and_listed_but_not_for_handlers():
    book = AlertBook(Thresholds(sustained_s=0, cpu=50, disk=50))
    (before,) = book.heartbeat("a", hb(cpu=60), 1.0)
    changed = book.mute("a", None, until=100.0, now=2.0)
    assert [(x.alert_id, x.muted, x.notify) for x in changed] == [(before.alert_id, True, False)]
    (disk,) = book.heartbeat("a", hb(cpu=60, disk=70), 3.0)
    assert disk.muted and not disk.notify
    (other,) = book.heartbeat("b", hb(disk=70), 3.0)
    assert not other.muted and other.notify, "another worker is not muted"
    assert {x.alert_id for x in book.alerts(now=50.0)} == {before.alert_id, disk.alert_id, other.alert_id}
    assert all(x.muted for x in book.alerts(now=50.0) if x.worker_id == "a")
    assert not any(x.muted for x in book.alerts(now=101.0)), "a mute ends by itself"
    book.mute(None, "disk", until=200.0, now=102.0)
    (c,) = book.heartbeat("b", hb(disk=10), 103.0)
    assert c.muted and not c.notify, "a kind muted everywhere"
    with pytest.raises(ValueError, match="unknown alert kind"):
        book.mute(None, "temperature", 1.0, 0.0)


def test_list_is_newest_first_with_cleared_ones_on_request_and_limited():
    book = AlertBook(Thresholds(sustained_s=0, cpu=50))
    for i in range(5):
        book.heartbeat(f"w{i}", hb(cpu=60), float(i))
    book.heartbeat("w0", hb(cpu=1), 10.0)
    assert [a.worker_id for a in book.alerts(now=11.0)] == ["w4", "w3", "w2", "w1"]
    assert [a.worker_id for a in book.alerts(now=11.0, include_cleared=True)] == ["w0", "w4", "w3", "w2", "w1"]
    assert [a.worker_id for a in book.alerts(now=11.0, include_cleared=True, limit=2)] == ["w0", "w4"]


def test_restoring_the_published_transitions_gives_the_same_book():
    book = AlertBook(Thresholds(sustained_s=0, cpu=50, failure_threshold=1))
    published: list[Alert] = []
    published += book.heartbeat("w", hb(cpu=60), 1.0)
    published += book.task_ended("w", True, 2.0)
    published += book.worker_lost("x", "silent", 3.0)
    published += book.worker_back("x", 4.0)
    again = AlertBook(Thresholds(sustained_s=0, cpu=50, failure_threshold=1))
    for a in published:
        again.restore_alert(Alert.from_dict(a.to_dict()))
    assert [a.to_dict() for a in again.alerts(5.0, True)] == [a.to_dict() for a in book.alerts(5.0, True)]
    # The restored book goes on from there: the raised ones clear, none is raised twice.
    assert again.heartbeat("w", hb(cpu=60), 6.0) == []
    (c,) = again.heartbeat("w", hb(cpu=1), 7.0)
    assert c.alert_id == published[0].alert_id
    (f,) = again.task_ended("w", False, 8.0)
    assert f.kind == "failures" and f.state == "cleared"
    with pytest.raises(ValueError):
        Alert.from_dict({"kind": "cpu"})


# ----------------------------------------------------------------------------- handlers


def test_a_handler_path_that_does_not_load_names_the_setting():
    with pytest.raises(ValueError, match=r"health_monitor\.alert_handlers: cannot load 'no_such_mod:fn'"):
        AlertHandlers(["no_such_mod:fn"])
    with pytest.raises(ValueError, match=r"health_monitor\.alert_handlers: .*has no 'nope'"):
        AlertHandlers(["json:nope"])


def test_handlers_run_on_their_own_thread_and_a_failing_one_stops_nothing(caplog: pytest.LogCaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch):
    import types

    got: list[tuple[str, str]] = []

    def bad(alert: dict[str, Any]) -> None:
        raise RuntimeError("hook down")

    def good(alert: dict[str, Any]) -> None:
        got.append((alert["alert_id"], threading.current_thread().name))

    mod = types.ModuleType("dtf_test_hooks")
    mod.bad, mod.good = bad, good  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "dtf_test_hooks", mod)
    h = AlertHandlers(["dtf_test_hooks:bad", "dtf_test_hooks:good"])
    h.start()
    try:
        with caplog.at_level(logging.ERROR, logger="dtf_gui.coordinator.alerts_api"):
            h.submit({"alert_id": "a1"})
            h.submit({"alert_id": "a2"})
            wait_until(lambda: len(got) == 2, 5)
        assert got == [("a1", "dtf-alert-handlers"), ("a2", "dtf-alert-handlers")]
        assert h.failed == 2 and h.delivered == 2
        assert "alert handler dtf_test_hooks:bad failed on a1" in caplog.text
    finally:
        h.stop()
    assert h._thread is not None and not h._thread.is_alive()


def test_a_full_handler_queue_drops_the_oldest(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    import types

    release = threading.Event()
    got: list[str] = []

    def slow(alert: dict[str, Any]) -> None:
        release.wait(10)
        got.append(alert["alert_id"])

    mod = types.ModuleType("dtf_test_slow")
    mod.slow = slow  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "dtf_test_slow", mod)
    h = AlertHandlers(["dtf_test_slow:slow"], maxsize=2)
    h.start()
    try:
        h.submit({"alert_id": "first", "message": "m"})
        wait_until(lambda: not h._items, 5)  # the thread holds "first"
        with caplog.at_level(logging.WARNING, logger="dtf_gui.coordinator.alerts_api"):
            for i in range(4):
                h.submit({"alert_id": f"q{i}", "message": f"message {i}"})
        assert h.dropped == 2 and "dropped the oldest (message 0)" in caplog.text
        release.set()
        wait_until(lambda: len(got) == 3, 5)
        assert got == ["first", "q2", "q3"]
    finally:
        release.set()
        h.stop()


# ----------------------------------------------------------------------------- the web hook


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(_Hook.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server(monkeypatch: pytest.MonkeyPatch):
    # webhook.post honours http_proxy (a lab may need one to reach its chat service); the test's
    # hook is on this machine, which a proxy set in the environment could not reach.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    _Hook.received = []
    _Hook.status = 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, name="test-webhook", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not thread.is_alive()


def test_the_webhook_posts_the_alert_as_json(hook_server: str, monkeypatch: pytest.MonkeyPatch):
    alert = AlertBook(Thresholds(sustained_s=0, cpu=50)).heartbeat("lab-3", hb(cpu=60), 1.0)[0].to_dict()
    monkeypatch.setenv(webhook.ENV, hook_server + "/hooks/dtf")
    webhook.post(alert)
    ((path, ctype, body),) = _Hook.received
    assert path == "/hooks/dtf" and ctype == "application/json"
    assert json.loads(body) == alert


def test_the_webhook_raises_on_an_http_error_or_no_url(hook_server: str, monkeypatch: pytest.MonkeyPatch):
    import urllib.error

    _Hook.status = 500
    monkeypatch.setenv(webhook.ENV, hook_server)
    with pytest.raises(urllib.error.HTTPError):
        webhook.post({"alert_id": "x"})
    monkeypatch.delenv(webhook.ENV)
    with pytest.raises(RuntimeError, match="DTF_ALERT_WEBHOOK is not set"):
        webhook.post({"alert_id": "x"})
    monkeypatch.setenv(webhook.ENV, "file:///etc/passwd")
    with pytest.raises(RuntimeError, match="not an http"):
        webhook.post({"alert_id": "x"})


# ----------------------------------------------------------------------------- published and restored


def _api(db: Path, clock: list[float], **hm: Any) -> tuple[AlertsApi, Store, EventHub]:
    store = Store(db)
    hub = EventHub()
    workers = WorkerTable(store, hub, heartbeat_timeout=30.0)
    cfg = HealthMonitorSection(sustained_s=0, cpu_threshold=50, **hm)
    api = AlertsApi(config=cfg, store=store, hub=hub, workers=workers, feed=lambda ev: None,
                    clock=lambda: clock[0])
    return api, store, hub


def test_alerts_acks_and_mutes_survive_a_restart_through_the_events_table(tmp_path: Path):
    clock = [1000.0]
    db = tmp_path / "dtf.sqlite"
    api, store, hub = _api(db, clock)
    api._publish(api.book.heartbeat("w", hb(cpu=70), clock[0]))
    api._publish(api.book.task_ended("w", True, clock[0]))
    (raised,) = [e.data for e in hub._other if e.kind == "alert"]
    assert raised["state"] == "raised" and raised["kind"] == "cpu"
    hub._other.clear()
    assert api.ack_alerts(AckAlerts(alert_ids=[raised["alert_id"], "anomaly:r9:x"])) == {
        "acked": [raised["alert_id"], "anomaly:r9:x"]}
    assert [e.data["acked"] for e in hub._other] == [True], "the ack is published again"
    muted = api.mute_alert(MuteAlert(worker_id="w", seconds=600))
    assert muted == {"muted_until": 1600.0}
    store.close()

    clock[0] = 1100.0
    again, store2, _ = _api(db, clock)
    try:
        assert again.restore() == 1
        listed = again.list_alerts(ListAlerts())
        assert listed["acked_findings"] == ["anomaly:r9:x"]
        (a,) = listed["alerts"]
        assert a["alert_id"] == raised["alert_id"] and a["acked"] and a["muted"]
        clock[0] = 1700.0
        assert not again.list_alerts(ListAlerts())["alerts"][0]["muted"], "the mute ended while it was down"
    finally:
        store2.close()


def _full_replay(db: Path, clock: list[float]) -> AlertsApi:
    """What restore() once did: every alert row ever stored, in order (the reference of correctness)."""
    import sqlite3

    api, store, _ = _api(db, clock)
    store.close()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT kind, data FROM events WHERE kind IN ('alert', 'alert_ack', 'alert_mute') "
                       "ORDER BY id").fetchall()
    con.close()
    for kind, data in rows:
        try:
            d = json.loads(data)
        except ValueError:
            continue
        if kind == "alert":
            api.book.restore_alert(Alert.from_dict(d))
        elif kind == "alert_ack":
            api.book.ack(d["ids"], clock[0])
        else:
            api.book.mute(d["worker_id"], d["kind"], d["until"], clock[0])
    return api


def test_restore_of_a_long_history_reads_what_the_book_keeps_and_gives_the_same_book(tmp_path: Path):
    """50,000 stored alert rows (years of a busy lab): restore brings back only the newest
    KEEP_CLEARED cleared alerts, the ones still raised (however old), their acknowledgements, the
    newest acknowledged findings and the mutes in effect, and agrees with a replay of every row."""
    import sqlite3

    from dtf_gui.coordinator.alerts import KEEP_CLEARED

    db = tmp_path / "long.sqlite"
    Store(db).close()  # the schema, with the events (kind, id) index
    now = 2_000_000_000.0
    rows: list[tuple[float, str, str, str]] = []

    def alert_row(aid: str, worker_id: str, kind: str, state: str, when: float, acked: bool = False) -> None:
        d = {"alert_id": aid, "kind": kind, "worker_id": worker_id, "state": state, "severity": "critical",
             "message": f"{worker_id} {kind} {state}", "value": None, "threshold": None, "time": when,
             "acked": acked, "muted": False}
        rows.append((when, "alert", aid, json.dumps(d)))

    def ack_row(ids: list[str], when: float) -> None:
        rows.append((when, "alert_ack", "", json.dumps({"ids": ids})))

    def mute_row(worker_id: str | None, kind: str | None, until: float, when: float) -> None:
        rows.append((when, "alert_mute", worker_id or "", json.dumps({"worker_id": worker_id, "kind": kind,
                                                                      "until": until})))

    t = now - 10_000_000
    alert_row("offline:old-box:1", "old-box", "offline", "raised", t)  # lost long ago, never back
    ack_row(["offline:old-box:1"], t + 1)
    ack_row(["anomaly:first:latency_ms"], t + 2)  # the oldest finding acknowledged
    mute_row("old-box", None, now + 1e6, t + 3)  # a long mute, ended early by a short one
    mute_row("old-box", None, t + 60, t + 4)
    mute_row(None, "disk", now + 3600, t + 5)  # still in effect at the restart
    rows.append((t + 6, "alert", "junk", "{not json"))
    for i in range(24_300):
        when = t + 10 + i * 100
        aid = f"cpu:w{i % 300}:{int(when * 1000)}"
        alert_row(aid, f"w{i % 300}", "cpu", "raised", when)
        if i % 40 == 0:
            ack_row([aid], when + 1)
            ack_row([f"change_point:r{i}:duration_s"], when + 2)
        if i % 120 == 0:
            mute_row(f"w{i % 300}", "cpu", when + 50, when + 3)  # ended long ago
        alert_row(aid, f"w{i % 300}", "cpu", "cleared", when + 5, acked=i % 40 == 0)
    assert len(rows) >= 50_000
    con = sqlite3.connect(db)
    con.executemany("INSERT INTO events (time, kind, subject, data) VALUES (?,?,?,?)", rows)
    con.commit()
    con.close()

    clock = [now]
    api, store, _ = _api(db, clock)
    try:
        assert api.restore() == 1
        # Kept: KEEP_CLEARED cleared + 1 raised; acks of those (1 in 40, and old-box's); 609
        # findings acknowledged; 7 mute scopes. Not the ~50,000 rows stored.
        kept_acks = 1 + KEEP_CLEARED // 40 + 1
        assert api.restored_rows <= KEEP_CLEARED + 1 + kept_acks + 609 + 7, "only what the book keeps came back"
        listed = api.list_alerts(ListAlerts(include_cleared=True, limit=5000))
        assert len(api.book.ids()) == KEEP_CLEARED + 1
        assert sum(a["state"] == "cleared" for a in listed["alerts"]) == KEEP_CLEARED
        (old,) = api.list_alerts(ListAlerts())["alerts"]
        assert old["alert_id"] == "offline:old-box:1" and old["acked"] and not old["muted"]
        assert listed["acked_findings"][-1] == "anomaly:first:latency_ms"
        assert api.book.is_muted("w1", "disk", now) and not api.book.is_muted("w1", "cpu", now)
        # The same book as a replay of every row.
        ref = _full_replay(db, clock)
        assert listed == ref.list_alerts(ListAlerts(include_cleared=True, limit=5000))
        assert {k: u for k, u in api.book.mutes.items() if u > now} == \
            {k: u for k, u in ref.book.mutes.items() if u > now}
        # The restored book goes on: the old worker's return clears its alert.
        api.book.worker_back("old-box", now + 1)
        assert [a.state for a in api.book.heartbeat("old-box", hb(), now + 10)] == ["cleared"]
    finally:
        store.close()


def test_drain_of_an_unknown_worker_is_refused_with_the_known_ones(tmp_path: Path):
    from dtf_gui.coordinator.trust_api import ApiRefusal

    api, store, _ = _api(tmp_path / "d.sqlite", [0.0])
    try:
        with pytest.raises(ApiRefusal, match="no worker 'ghost' has ever registered .*connected now: none yet"):
            api.drain_worker(WorkerRef(worker_id="ghost"))
    finally:
        store.close()


def test_a_drained_worker_stays_drained_when_it_registers_after_a_restart(tmp_path: Path):
    from dtf_agent import protocol as p
    from dtf_gui.coordinator import scheduler as sch

    db = tmp_path / "w.sqlite"
    reg = p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="lab-2", hostname="h", slots=1)
    store = Store(db)
    table = WorkerTable(store, EventHub(), heartbeat_timeout=30.0)
    w, _, _ = table.register(b"id-1", reg)
    assert [(type(e), e.worker_id) for e in table.set_draining(w, True)] == [(sch.DrainWorker, "lab-2")]
    assert w.summary()["draining"] is True
    table.gone(w, "no heartbeat")
    assert w.health_status == {"state": "offline", "reason": "no heartbeat", "draining": True}
    store.close()

    store = Store(db)
    try:
        table = WorkerTable(store, EventHub(), heartbeat_timeout=30.0)
        table.mark_stored_offline()
        w, _, events = table.register(b"id-2", reg)
        assert w.summary()["draining"] is True
        assert [type(e).__name__ for e in events] == ["WorkerUp", "DrainWorker"]
        assert isinstance(table.set_draining(w, False)[0], sch.ResumeWorker)
        w2, _, events = table.register(b"id-3", reg)
        assert not w2.summary()["draining"] and [type(e).__name__ for e in events] == ["WorkerUp"]
    finally:
        store.close()


def test_a_worker_offline_since_a_restart_can_be_resumed_or_drained_on_its_stored_row(tmp_path: Path):
    """After a restart a drained worker that has not registered yet shows as drained; Resume works
    on its row (and applies when it registers), and so does Drain of another such worker."""
    from dtf_agent import protocol as p
    from dtf_gui.coordinator import scheduler as sch

    db = tmp_path / "r.sqlite"

    def reg(name: str) -> p.Register:
        return p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id=name, hostname=f"{name}.lab", slots=2)

    store = Store(db)
    table = WorkerTable(store, EventHub(), heartbeat_timeout=30.0)
    for name in ("drained", "plain"):
        w, _, _ = table.register(name.encode(), reg(name))
        if name == "drained":
            table.set_draining(w, True)
        table.gone(w, "stopped")
    store.close()

    store = Store(db)
    try:
        hub = EventHub()
        table = WorkerTable(store, hub, heartbeat_timeout=30.0)
        table.mark_stored_offline()
        fed: list[sch.Event] = []
        api = AlertsApi(config=HealthMonitorSection(), store=store, hub=hub, workers=table, feed=fed.extend)
        out = api.resume_worker(WorkerRef(worker_id="drained"))
        assert (out["worker_id"], out["status"], out["draining"], out["hostname"]) == (
            "drained", "offline", False, "drained.lab")
        assert [(type(e).__name__, e.worker_id) for e in fed] == [("ResumeWorker", "drained")]
        assert hub._workers["drained"].summary()["draining"] is False, "the window hears it"
        out = api.drain_worker(WorkerRef(worker_id="plain"))
        assert out["draining"] is True and out["status"] == "offline"
        rows = {r["worker_id"]: r for r in store.load_workers()}
        assert not rows["drained"]["health_status"].get("draining")
        assert rows["plain"]["health_status"].get("draining") is True
        assert rows["plain"]["hostname"] == "plain.lab" and rows["plain"]["slots"] == 2
        # Applied when they register.
        w, _, events = table.register(b"d2", reg("drained"))
        assert not w.summary()["draining"] and [type(e).__name__ for e in events] == ["WorkerUp"]
        w, _, events = table.register(b"p2", reg("plain"))
        assert w.summary()["draining"] and [type(e).__name__ for e in events] == ["WorkerUp", "DrainWorker"]
    finally:
        store.close()

    # A restart later still knows.
    store = Store(db)
    try:
        table = WorkerTable(store, EventHub(), heartbeat_timeout=30.0)
        table.mark_stored_offline()
        assert table.register(b"p3", reg("plain"))[0].summary()["draining"] is True
        assert table.register(b"d3", reg("drained"))[0].summary()["draining"] is False
    finally:
        store.close()


# ----------------------------------------------------------------------------- in a real coordinator


def test_a_handler_that_does_not_load_stops_the_coordinator_start_naming_the_key(tmp_path: Path):
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.server import Coordinator

    coord = Coordinator(ephemeral_settings(tmp_path / "c.sqlite",
                                           health_monitor={"alert_handlers": ["no_such_hooks:post"]}))
    with pytest.raises(RuntimeError, match=r"failed to start: health_monitor\.alert_handlers: cannot load "
                                           r"'no_such_hooks:post'"):
        coord.start()
    coord.stop()


def test_alert_and_drain_events_reach_the_event_stream(tmp_path: Path):
    """What the window's bridge hears: an "alert" event of the contract's shape, raised and then
    acknowledged, and the worker again with draining set."""
    from dtf_agent import protocol as p
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.server import Coordinator
    from tests.helpers import FakeAgent

    heard: list[p.Event] = []
    coord = Coordinator(ephemeral_settings(tmp_path / "c.sqlite", health_monitor={
        "memory_threshold": 80, "sustained_s": 0}), event_sinks=[heard.extend]).start()
    agent = FakeAgent(coord.endpoint("agents"), "hot")
    try:
        agent.register()
        agent.recv(p.Welcome)
        agent.send(p.Heartbeat(cpu_percent=5, memory_percent=93.4, disk_percent=10))

        def alert_events() -> list[dict[str, Any]]:
            return [e.data for e in list(heard) if e.kind == "alert"]

        (raised,) = wait_until(alert_events, 10)
        assert set(raised) == {"alert_id", "kind", "worker_id", "state", "severity", "message", "value", "threshold",
                               "time", "acked", "muted"}
        assert (raised["kind"], raised["worker_id"], raised["state"], raised["severity"]) == (
            "memory", "hot", "raised", "warning")
        assert raised["message"] == "hot: memory above 80% (93%)"
        coord.request("ack_alerts", {"alert_ids": [raised["alert_id"]]})
        acked = wait_until(lambda: [a for a in alert_events() if a["acked"]], 10)
        assert acked[0]["alert_id"] == raised["alert_id"]
        assert coord.request("list_alerts")["alerts"][0]["acked"] is True

        assert coord.request("drain_worker", {"worker_id": "hot"})["draining"] is True
        wait_until(lambda: [e for e in list(heard) if e.kind == "worker" and e.data["draining"]], 10)
        tid = coord.request("create_task", {"command": "true"})["task_id"]
        assert coord.request("get_task", {"task_id": tid})["why"] == \
            "waiting: every capable worker online is draining (hot)"
        coord.request("resume_worker", {"worker_id": "hot"})
        (spec,) = agent.recv(p.Assign).tasks
        assert spec.task_id == tid
    finally:
        agent.close()
        coord.stop()


def test_a_silent_worker_is_lost_and_one_that_left_is_only_offline(tmp_path: Path):
    from dtf_agent import protocol as p

    store = Store(tmp_path / "w.sqlite")
    try:
        table = WorkerTable(store, EventHub(), heartbeat_timeout=30.0)
        silent, _, _ = table.register(b"id-1", p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="quiet",
                                                          hostname="h", slots=1))
        leaving, _, _ = table.register(b"id-2", p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="polite",
                                                           hostname="h", slots=1))
        table.gone(leaving, "agent left: stopped")
        table.sweep(silent.seen_at + 60)  # past the heartbeat timeout
        assert silent.summary()["health"] == "lost" and silent.summary()["status"] == "offline"
        assert leaving.summary()["health"] == "offline"
    finally:
        store.close()
