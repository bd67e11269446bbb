"""Gate for the PySide6 pin: PySide6-Essentials 6.12.0 on Python 3.11 killed a pyqtgraph window within
seconds of a 30 fps setData loop ("Fatal Python error: none_dealloc"). This runs >= 10 s of live
plotting in the real window while the coordinator feeds it. A crash takes the test process down,
so the soak runs in a child process and the test checks how it ended."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SOAK = textwrap.dedent('''
    import os, sys, time, tempfile
    from pathlib import Path
    import numpy as np
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.ui.app import Session

    home = Path(tempfile.mkdtemp())
    os.environ["DTF_HOME"] = str(home)
    app = QApplication([])
    settings = ephemeral_settings(home / "db.sqlite")
    session = Session(settings, home, local_slots=2)
    session.window.show()
    curve = session.window.throughput.curve
    frames = 0
    rng = np.random.default_rng(0)

    def frame():
        global frames
        frames += 1
        curve.setData(np.arange(300) - 300.0, rng.random(300) * 100)
        if frames % 30 == 0:
            session.bridge.call("create_tasks", {"tasks": [{"type": "noop"}] * 50})

    timer = QTimer()
    timer.timeout.connect(frame)
    timer.start(33)
    start = time.monotonic()
    QTimer.singleShot(int(float(sys.argv[1]) * 1000), app.quit)
    app.exec()
    elapsed = time.monotonic() - start
    timer.stop()
    completed = session.bridge.last_stats.get("tasks", {}).get("completed", 0)
    session.close()
    print(f"SOAK-OK frames={frames} seconds={elapsed:.1f} completed={completed}", flush=True)
''')


@pytest.mark.slow
def test_live_plotting_soak_survives(tmp_path) -> None:
    seconds = float(os.environ.get("DTF_SOAK_SECONDS", "12"))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", DTF_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", SOAK, str(seconds)], env=env, capture_output=True, text=True,
                          timeout=seconds + 60)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"the window died during live plotting (exit {proc.returncode}):\n{tail}"
    assert "none_dealloc" not in proc.stderr, tail
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SOAK-OK")]
    assert line, tail
    fields = dict(kv.split("=") for kv in line[0].split()[1:])
    assert float(fields["seconds"]) >= seconds * 0.95
    # At 30 fps for >= 10 s: well over 200 frames even on a loaded 2-core machine.
    assert int(fields["frames"]) >= 200, line[0]
    assert int(fields["completed"]) > 0, line[0]
