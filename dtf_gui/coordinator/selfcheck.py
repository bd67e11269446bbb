"""`python -m dtf_gui.coordinator.selfcheck`: the coordinator runs headless, with no Qt installed.

`make core-only` runs it in a venv holding only `dtf[server]`: a coordinator starts on free ports,
answers a client, stores a task in SQLite and stops, while PySide6 and pyqtgraph are absent.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path


def main() -> int:
    from dtf_gui.client import Client, find_credentials
    from dtf_gui.coordinator.config import ephemeral_settings
    from dtf_gui.coordinator.server import Coordinator

    present = [m for m in ("PySide6", "pyqtgraph") if importlib.util.find_spec(m) is not None]
    if present:
        print(f"coordinator self-check FAILED: {', '.join(present)} installed in a server-only environment")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(ephemeral_settings(Path(tmp) / "check.sqlite", home=Path(tmp))).start()
        try:
            # Over CURVE, with the admin key the coordinator made in its home.
            with Client(coord.endpoint("clients"), timeout=10, credentials=find_credentials(home=Path(tmp))) as c:
                task = c.call("create_task", {"type": "noop"})
                status = c.call("get_status")
        finally:
            coord.stop()
    if status["tasks"]["pending"] != 1 or not task.get("task_id"):
        print(f"coordinator self-check FAILED: unexpected status {status['tasks']}")
        return 1
    loaded = [m for m in ("PySide6", "pyqtgraph") if m in sys.modules]
    if loaded:
        print(f"coordinator self-check FAILED: imported {loaded}")
        return 1
    print("coordinator self-check ok: served a client and stored a task without Qt installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
