"""Where DTF keeps its state: $DTF_HOME when set, else the platform's user data dir."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

COORDINATOR_FILE = "coordinator.json"


def default_home() -> Path:
    """The platform's user data directory for DTF (platformdirs' user_data_dir)."""
    if sys.platform.startswith("linux"):
        # The XDG rule platformdirs applies on Linux, spelled out: importing platformdirs (it brings
        # tempfile, shutil, random ...) was a tenth of every `dtf status`. A test keeps the two equal.
        base = os.environ.get("XDG_DATA_HOME", "").strip() or os.path.expanduser("~/.local/share")
        return Path(base) / "dtf"
    import platformdirs

    return Path(platformdirs.user_data_dir("dtf", appauthor=False))


def dtf_home() -> Path:
    home = os.environ.get("DTF_HOME")
    path = Path(home).expanduser() if home else default_home()
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
