"""Where DTF keeps its state: $DTF_HOME when set, else the platform's user data dir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import platformdirs

COORDINATOR_FILE = "coordinator.json"


def dtf_home() -> Path:
    home = os.environ.get("DTF_HOME")
    path = Path(home).expanduser() if home else Path(platformdirs.user_data_dir("dtf", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_coordinator_file(home: Path | None = None) -> dict[str, Any] | None:
    """The running local coordinator's endpoints, as `dtf serve` or the window wrote them."""
    path = (home or dtf_home()) / COORDINATOR_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_coordinator_file(info: dict[str, Any], home: Path | None = None) -> Path:
    path = (home or dtf_home()) / COORDINATOR_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def remove_coordinator_file(pid: int, home: Path | None = None) -> None:
    """Remove the file only if it is still ours (another coordinator may have started since)."""
    info = read_coordinator_file(home)
    if info and info.get("pid") == pid:
        try:
            ((home or dtf_home()) / COORDINATOR_FILE).unlink()
        except OSError:
            pass
