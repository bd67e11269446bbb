"""Entry point of the one-file dtf-agent bundle (installers/pyinstaller/dtf-agent.spec)."""

from __future__ import annotations

import sys

from frozen_python import dispatch, restore_environment

from dtf_agent.cli import main

if __name__ == "__main__":
    restore_environment()
    code = dispatch(sys.argv, {"dtf_agent.cli": main})
    sys.exit(main() if code is None else code)
