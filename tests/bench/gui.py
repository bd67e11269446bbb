"""The real window, offscreen, under load: a flood of task events, live worker strip charts and a
100,000-point results plot, over a database of a million tasks.

    .venv/bin/python tests/bench/gui.py [--tasks 1000000] [--seconds 10] [--rate 50000] [--points 100000]

What it does, in order:

1. A demo home (tests/gui/demo.py: six workers, 3,000 tasks, results with findings) plus ``--tasks``
   finished tasks appended in one transaction; the window opens on it (embedded coordinator, no
   local agent) at 1400x900.
2. For ``--seconds``: a feeder thread hands the bridge task events the way the coordinator's thread
   does (``bridge._on_events_coordinator_thread``): batches of rate/20 events at 20 Hz, each a
   TaskRecord.summary() of a rolling set of task ids moving pending -> running -> completed, plus
   "worker" events for 4 workers at 4 Hz with moving cpu/memory/disk/gpu figures (the strip charts).
   The results explorer shows a ``--points`` series (window.results.set_series, metric_series' shape).
   Measured meanwhile: frame time = one ``window.repaint()`` every 16 ms (QTimer), and GUI-thread
   stall = how late a 5 ms QTimer probe fires. The time is split evenly between the views that exist
   (results explorer, health view, task table), each brought into sight in turn.
3. After the flood: 100 PageDown presses in the task table (objectName "taskTable"), then the time
   until every visible row shows real data (no "…" placeholder).

Goals (issue 11): p95 frame <= 16 ms, stall p99 <= 50 ms, scroll <= 1 s. A part whose view does not
exist says "not available: <what>" and the rest runs. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from dtf_agent import protocol as p  # noqa: E402
from tests.gui.demo import build_big_tasks, build_demo  # noqa: E402

GOALS = {"frame_p95_ms": 16.0, "stall_p99_ms": 50.0, "scroll_s": 1.0}
SIZE = (1400, 900)


_T0 = time.perf_counter()


def stage(text: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {text}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


# ------------------------------------------------------------------------------------------ load


class Feeder:
    """The coordinator's side of the event stream, in a thread of its own (owned here: stop() joins it;
    an exception is kept in ``error`` and reported)."""

    def __init__(self, bridge: Any, *, rate: int, workers: list[dict[str, Any]], seconds: float, hz: int = 20,
                 live_ids: int = 20_000) -> None:
        self.bridge = bridge
        self.seconds = seconds  # the feeder stops by itself then, however far behind the window is
        self.batch = max(1, rate // hz)
        self.period = 1.0 / hz
        self.workers = workers
        self.stop_flag = threading.Event()
        self.sent_events = 0
        self.sent_task_events = 0
        self.sent_batches = 0
        self.error: str | None = None
        self.late = 0  # batches sent late because building the previous one took longer than its period
        base = int(time.time() * 1e6)
        self.ids = [f"{base + i:x}fe" for i in range(live_ids)]
        self.created = [time.time() - (live_ids - i) * 0.001 for i in range(live_ids)]
        self.cursor = 0
        self.step = 0
        self.thread = threading.Thread(target=self._run, name="bench-feeder", daemon=True)

    def start(self) -> Feeder:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def _task_events(self, now: float) -> list[p.Event]:
        out = []
        n = len(self.ids)
        # Each pass over the rolling set moves every task one state on: submitted, running, done.
        for _ in range(self.batch):
            i = self.cursor
            self.cursor = (i + 1) % n
            if self.cursor == 0:
                self.step += 1
            phase = (self.step + i) % 3
            status = ("pending", "running", "completed")[phase]
            worker = None if phase == 0 else f"lab2-xeon-0{1 + i % 2}"
            created = self.created[i]
            out.append(p.Event(kind="task", time=now, data={
                "task_id": self.ids[i], "type": "command", "status": status, "priority": 5, "worker_id": worker,
                "create_time": created, "start_time": None if phase == 0 else created + 0.2,
                "end_time": now if phase == 2 else None, "attempt": 0 if phase == 0 else 1,
                "command": "./bench/noop.sh", "error": None, "status_reason": None, "test_id": "bench/noop",
                "why": "no free slot" if phase == 0 else None}))
        return out

    def _worker_events(self, now: float) -> list[p.Event]:
        out = []
        for k, w in enumerate(self.workers):
            phase = now / 7.0 + k
            data = dict(w)
            data.update(status="busy", running=2 + k % 3, last_seen=now,
                        cpu_percent=round(50 + 40 * math.sin(phase), 1),
                        memory_percent=round(55 + 25 * math.sin(phase / 3), 1),
                        disk_percent=round(60 + 5 * math.sin(phase / 11), 1))
            if k == 0:
                data.update(gpu_percent=round(50 + 45 * math.sin(phase * 1.7), 1),
                            gpu_memory_percent=round(70 + 20 * math.sin(phase / 2), 1))
            out.append(p.Event(kind="worker", time=now, data=data))
        return out

    def _run(self) -> None:
        try:
            nxt = time.monotonic()
            end = nxt + self.seconds
            tick = 0
            while not self.stop_flag.is_set() and time.monotonic() < end:
                now = time.time()
                events = self._task_events(now)
                self.sent_task_events += len(events)
                if tick % 5 == 0:  # 4 Hz of the 20
                    events += self._worker_events(now)
                self.bridge._on_events_coordinator_thread(events)
                self.sent_events += len(events)
                self.sent_batches += 1
                tick += 1
                nxt += self.period
                wait = nxt - time.monotonic()
                if wait > 0:
                    self.stop_flag.wait(wait)
                else:
                    self.late += 1
                    nxt = time.monotonic()
        except Exception:  # noqa: BLE001 - reported with the figures, never lost
            self.error = traceback.format_exc()


def series_payload(n: int, workers: list[dict[str, Any]], *, seed: int = 5) -> dict[str, Any]:
    """A metric_series reply (dtf_gui/coordinator/explore.py) of ``n`` points over 30 days: 6 workers,
    a step and spikes, with findings to mark."""
    import random

    rng = random.Random(seed)
    now = time.time()
    t0 = now - 30 * 86400
    t = [t0 + i * (30 * 86400 / n) for i in range(n)]
    names = [w["worker_id"] for w in workers] or ["w1"]
    hw = {w["worker_id"]: w.get("hardware_id") or "" for w in workers}
    worker = [names[i % len(names)] for i in range(n)]
    step = int(n * 0.7)
    v = [100.0 * (1.08 if i >= step else 1.0) * (1 + rng.gauss(0, 0.03)) for i in range(n)]
    anomalies = []
    for i in range(0, n, max(1, n // 300)):
        v[i] *= 1.3
        anomalies.append({"result_id": f"r{i}", "t": t[i], "v": v[i], "score": 9.0})
    changes = [{"result_id": f"r{step + k}", "t": t[step + k], "before": 100.0, "after": 108.0, "rel_change": 0.08,
                "p_value": 1e-9, "direction": "improvement", "worker": names[(step + k) % len(names)],
                "n_before": 48, "n_after": 48} for k in range(len(names))]
    return {"test_id": "bench/io_throughput", "metric": "throughput_mb_s", "unit": "MB/s", "direction": "higher",
            "truncated": False, "t": t, "v": v, "worker": worker, "hardware": [hw.get(w, "") for w in worker],
            "result_id": [f"r{i}" for i in range(n)], "task_id": [f"t{i}" for i in range(n)],
            "run_id": [f"bench-io.{1 + i // len(names)}" for i in range(n)], "anomalies": anomalies,
            "change_points": changes}


# ------------------------------------------------------------------------------------------ measuring


class Probes:
    """A repaint of the whole window every 16 ms (its duration: the frame time) and a 5 ms timer whose
    lateness is the GUI thread's stall."""

    def __init__(self, win: Any) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.win = win
        self.frames: list[float] = []
        self.frame_starts: list[float] = []
        self.stalls: list[float] = []
        self._last: float | None = None
        self.frame_timer = QTimer()
        self.frame_timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.frame_timer.timeout.connect(self._frame)
        self.probe = QTimer()
        self.probe.setTimerType(Qt.TimerType.PreciseTimer)
        self.probe.timeout.connect(self._probe)

    def start(self) -> None:
        self._last = time.perf_counter()
        self.frame_timer.start(16)
        self.probe.start(5)

    def stop(self) -> None:
        self.frame_timer.stop()
        self.probe.stop()
        self._last = None

    def _frame(self) -> None:
        t = time.perf_counter()
        self.frame_starts.append(t)
        self.win.repaint()
        self.frames.append(time.perf_counter() - t)

    def _probe(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.stalls.append(max(0.0, now - self._last - 0.005))
        self._last = now


def run_for(app: Any, seconds: float) -> None:
    """Let the GUI thread's event loop run ``seconds`` (the probes and the events live in it)."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def wait_until(app: Any, ready: Any, timeout: float) -> bool:
    from PySide6.QtTest import QTest

    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        QTest.qWait(10)
    return True


def find(win: Any, name: str, attr_path: str = "") -> Any:
    """A view by the window's attribute (``a.b``), else by objectName."""
    from PySide6.QtWidgets import QWidget

    obj: Any = win
    for part in attr_path.split(".") if attr_path else ():
        obj = getattr(obj, part, None)
        if obj is None:
            break
    if obj is not None and obj is not win:
        return obj
    return win.findChild(QWidget, name)


def reveal(widget: Any) -> None:
    from PySide6.QtWidgets import QDockWidget, QStackedWidget, QTabWidget

    child, parent = widget, widget.parentWidget()
    while parent is not None:
        if isinstance(parent, QStackedWidget) and isinstance(parent.parentWidget(), QTabWidget):
            i = parent.parentWidget().indexOf(child)
            if i >= 0:
                parent.parentWidget().setCurrentIndex(i)
        if isinstance(parent, QDockWidget):
            parent.show()
            parent.raise_()
        child, parent = parent, parent.parentWidget()


def visible_rows(view: Any) -> range:
    top = view.rowAt(0)
    bottom = view.rowAt(view.viewport().height() - 1)
    if top < 0:
        return range(0)
    if bottom < 0:
        bottom = view.model().rowCount() - 1
    return range(top, bottom + 1)


def scroll_test(app: Any, view: Any, presses: int) -> dict[str, Any]:
    """PageDown ``presses`` times, then wait until every visible row shows real data."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    try:
        from dtf_gui.ui.task_table import COL_TASK, PLACEHOLDER  # type: ignore[attr-defined]
    except ImportError:
        COL_TASK, PLACEHOLDER = 0, "…"
    model = view.model()
    wait_until(app, lambda: model.rowCount() >= 100_000, 30)
    rows = model.rowCount()
    reveal(view)
    view.setFocus()
    view.setCurrentIndex(model.index(0, 0))
    wait_until(app, lambda: all(model.data(model.index(r, COL_TASK)) not in (None, PLACEHOLDER)
                                for r in visible_rows(view)), 10)

    def placeholders() -> int:
        return sum(1 for r in visible_rows(view) if model.data(model.index(r, COL_TASK)) in (None, "", PLACEHOLDER))

    t0 = time.perf_counter()
    for _ in range(presses):
        QTest.keyClick(view, Qt.Key.Key_PageDown)
    pressed = time.perf_counter() - t0
    shown_before = len(visible_rows(view)) - placeholders()
    ok = wait_until(app, lambda: placeholders() == 0 and len(visible_rows(view)) > 0, 30)
    total = time.perf_counter() - t0
    return {"rows_in_model": rows, "first_visible_row": view.rowAt(0), "visible_rows": len(visible_rows(view)),
            "presses_s": round(pressed, 3), "real_rows_right_after_presses": shown_before,
            "scroll_s": round(total, 3) if ok else None, "complete": ok}


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description="The window under load (issue 11's benchmark).")
    ap.add_argument("--tasks", type=int, default=1_000_000, help="finished tasks in the database")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the flood")
    ap.add_argument("--rate", type=int, default=50_000, help="task events per second")
    ap.add_argument("--points", type=int, default=100_000, help="points of the results plot")
    ap.add_argument("--presses", type=int, default=100, help="PageDown presses in the task table")
    ap.add_argument("--keep-home", action="store_true")
    args = ap.parse_args()

    not_available: list[str] = []
    out: dict[str, Any] = {"tasks_in_db": None, "goals": GOALS}
    home = Path(tempfile.mkdtemp(prefix="dtf-bench-gui-"))
    os.environ["DTF_HOME"] = str(home)
    t0 = time.perf_counter()
    stage("building the demo home")
    made = build_demo(home, tasks=3000)
    stage(f"appending {args.tasks} tasks")
    build_big_tasks(made["db"], args.tasks)
    out["build_s"] = round(time.perf_counter() - t0, 2)
    out["tasks_in_db"] = args.tasks + made["tasks"]

    from PySide6.QtWidgets import QApplication, QTableView

    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.ui.app import Session

    app = QApplication.instance() or QApplication([sys.argv[0]])
    t1 = time.perf_counter()
    stage("opening the window")
    session = Session(ephemeral_settings(made["db"]), home, local_agent=False)
    win = session.window
    feeder: Feeder | None = None
    try:
        win.resize(*SIZE)
        win.show()
        table = find(win, "taskTable", "tasks_panel.view")
        if table is not None and not isinstance(table, QTableView):
            table = None
        old_table = find(win, "tasksView")
        wait_until(app, lambda: (table or old_table) is None or (table or old_table).model().rowCount() > 0, 60)
        out["open_s"] = round(time.perf_counter() - t1, 2)
        stage("window open")

        # The views the load is shown in; each gets an equal share of the flood in sight.
        results = getattr(win, "results", None) or find(win, "resultsExplorer")
        health = find(win, "healthView", "health")
        phases: list[tuple[str, Any]] = []
        if results is not None and callable(getattr(results, "set_series", None)):
            payload = series_payload(args.points, [w for w in session.bridge.call("list_workers") or []])
            reveal(results)
            t2 = time.perf_counter()
            results.set_series(payload)
            app.processEvents()
            out["set_series_s"] = round(time.perf_counter() - t2, 3)
            count = getattr(results, "point_count", None)
            out["plot_points"] = count() if callable(count) else None
            phases.append(("results explorer", results))
        else:
            not_available.append("results plot (window.results.set_series / resultsExplorer)")
        if health is not None:
            phases.append(("health view", health))
        else:
            not_available.append("strip charts (healthView)")
        if table is not None:
            phases.append(("task table", table))
        elif old_table is not None:
            phases.append(("tasks view (today's)", old_table))
            not_available.append("virtual task table (taskTable); today's tasksView used for the flood")
        if not phases:
            phases.append(("window", win))

        workers = [{"worker_id": w, "hostname": f"{w}.lab.example.com", "status": "busy", "slots": 4, "running": 0,
                    "last_seen": time.time(), "hardware_id": None, "tags": [], "hardware": "", "draining": False}
                   for w in made["workers"][:4]]
        probes = Probes(win)
        delivered = [0]  # the feeder's task events that reached the window (tasksChanged, GUI thread)

        def count(rows: list[dict[str, Any]]) -> None:
            delivered[0] += sum(1 for r in rows if str(r.get("task_id", "")).endswith("fe"))

        session.bridge.tasksChanged.connect(count)
        feeder = Feeder(session.bridge, rate=args.rate, workers=workers, seconds=args.seconds).start()
        flood_start = time.perf_counter()
        per_phase: dict[str, Any] = {}
        for i, (name, view) in enumerate(phases):
            stage(f"flood with the {name} in sight")
            reveal(view)
            n_f, n_s = len(probes.frames), len(probes.stalls)
            began = time.perf_counter()
            probes.start()
            # Each view its share of the flood's wall time; a stalled loop overruns it, and says so.
            run_for(app, max(0.05, flood_start + (i + 1) * args.seconds / len(phases) - time.perf_counter()))
            probes.stop()
            f, s = probes.frames[n_f:], probes.stalls[n_s:]
            per_phase[name] = {"wall_s": round(time.perf_counter() - began, 2), "frames": len(f),
                               "frame_p50_ms": ms(pct(f, 50)), "frame_p95_ms": ms(pct(f, 95)),
                               "stall_p99_ms": ms(pct(s, 99)), "stall_max_ms": ms(max(s) if s else None),
                               "task_events_in_window": delivered[0]}
        flood_s = time.perf_counter() - flood_start
        feeder.stop()
        task_events_sent = feeder.sent_task_events
        backlog = max(0, task_events_sent - delivered[0])
        t3 = time.perf_counter()
        stage(f"flood over; {backlog} task events not yet in the window")
        drained = wait_until(app, lambda: delivered[0] >= task_events_sent, 30)
        out["flood"] = {
            "seconds": round(flood_s, 2), "events_sent": feeder.sent_events,
            "events_per_s_sent": round(feeder.sent_events / min(flood_s, args.seconds)),
            "task_events_per_s_into_window": round((task_events_sent - backlog) / flood_s), "batches_sent": feeder.sent_batches,
            "feeder_late_batches": feeder.late, "task_events_delivered_during_flood": task_events_sent - backlog,
            "task_events_queued_at_end": backlog,
            "drain_s": round(time.perf_counter() - t3, 3) if drained else None, "feeder_error": feeder.error,
        }
        out["phases"] = per_phase
        out["frame_p50_ms"] = ms(pct(probes.frames, 50))
        out["frame_p95_ms"] = ms(pct(probes.frames, 95))
        out["stall_p99_ms"] = ms(pct(probes.stalls, 99))
        out["stall_max_ms"] = ms(max(probes.stalls) if probes.stalls else None)
        out["frames"] = len(probes.frames)
        # A starved event loop paints rarely, however fast each paint is: the gap between frames says so.
        gaps = [b - a for a, b in zip(probes.frame_starts, probes.frame_starts[1:], strict=False) if b - a < 60]
        out["frame_gap_p95_ms"] = ms(pct(gaps, 95))
        out["frames_expected"] = int(flood_s / 0.016)

        if table is not None:
            stage("scrolling the task table")
            out["scroll"] = scroll_test(app, table, args.presses)
            out["scroll_s"] = out["scroll"]["scroll_s"]
        else:
            not_available.append("scroll of the 1,000,000-task table (taskTable)")
            out["scroll_s"] = None
    finally:
        if feeder is not None:
            feeder.stop()
        session.close()
        win.deleteLater()
        app.processEvents()
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    out["not_available"] = not_available

    def verdict(measured: float | None, goal: float) -> str:
        return "n/a" if measured is None else ("ok" if measured <= goal else "MISSED")

    rows = [("p95 frame (ms)", out.get("frame_p95_ms"), GOALS["frame_p95_ms"]),
            ("stall p99 (ms)", out.get("stall_p99_ms"), GOALS["stall_p99_ms"]),
            ("scroll x100 PageDown (s)", out.get("scroll_s"), GOALS["scroll_s"])]
    print(f"{'':28}{'measured':>10}{'goal':>8}")
    for label, measured, goal in rows:
        print(f"{label:28}{'-' if measured is None else measured:>10}{'<= ' + str(goal):>8}  {verdict(measured, goal)}")
    print(f"frames painted: {out.get('frames')} of {out.get('frames_expected')} (one per 16 ms), gap between frames "
          f"p95 {out.get('frame_gap_p95_ms')} ms; task events into the window "
          f"{out.get('flood', {}).get('task_events_per_s_into_window')}/s of {args.rate}/s sent")
    for name, ph in out.get("phases", {}).items():
        print(f"  {name:26} frame p50 {ph['frame_p50_ms']} ms, p95 {ph['frame_p95_ms']} ms; stall p99 "
              f"{ph['stall_p99_ms']} ms, max {ph['stall_max_ms']} ms ({ph['frames']} frames)")
    for what in not_available:
        print(f"not available: {what}")
    out["verdict"] = {k: verdict(m, g) for (k, m, g) in
                      (("frame", out.get("frame_p95_ms"), GOALS["frame_p95_ms"]),
                       ("stall", out.get("stall_p99_ms"), GOALS["stall_p99_ms"]),
                       ("scroll", out.get("scroll_s"), GOALS["scroll_s"]))}
    if feeder is not None and feeder.error:
        print(feeder.error, file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
