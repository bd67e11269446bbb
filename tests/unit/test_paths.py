"""Where DTF keeps its state."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs
import pytest

from dtf_agent.paths import default_home, dtf_home


@pytest.mark.parametrize("xdg", [None, "", "/srv/lab-data"])
def test_default_home_is_what_platformdirs_says(monkeypatch: pytest.MonkeyPatch, xdg: str | None) -> None:
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert default_home() == Path(platformdirs.user_data_dir("dtf", appauthor=False))


def test_dtf_home_wins_and_is_created(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DTF_HOME", str(tmp_path / "state"))
    assert dtf_home() == tmp_path / "state" and (tmp_path / "state").is_dir()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shortcut is Linux's")
def test_the_linux_default_does_not_import_platformdirs() -> None:
    import subprocess

    code = ("import sys; from dtf_agent.paths import default_home; default_home(); "
            "print('platformdirs' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
