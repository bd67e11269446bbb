"""Entry point of the one-folder dtf-gui bundle (installers/pyinstaller/dtf-gui.spec)."""

from __future__ import annotations

import sys

from frozen_python import dispatch, restore_environment

from dtf_agent.cli import main as agent_main
from dtf_gui.cli import dtf_main, gui_main

if __name__ == "__main__":
    restore_environment()
    # The window starts its local agent as `sys.executable -m dtf_agent.cli` (local_agent.py) and
    # its dialogs' commands as `sys.executable -m dtf_gui.cli` (ui/submit_cli.py): in the bundle
    # that is this program again, which then runs them.
    code = dispatch(sys.argv, {"dtf_agent.cli": agent_main, "dtf_gui.cli": dtf_main})
    sys.exit(gui_main() if code is None else code)
