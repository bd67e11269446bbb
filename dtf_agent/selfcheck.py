"""`python -m dtf_agent.selfcheck`: prove the agent stands alone on a test machine.

Run in an environment where only the base `dtf` distribution is installed (`make agent-only`):
the agent's modules import, and nothing of the coordinator's world (Qt, numpy, scipy,
sqlite-utils, dtf_gui) is importable or imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

AGENT_MODULES = ("dtf_agent.agent", "dtf_agent.cli", "dtf_agent.protocol", "dtf_agent.config",
                 "dtf_agent.hardware", "dtf_agent.transport", "dtf_agent.runners.command")
FORBIDDEN = ("PySide6", "pyqtgraph", "numpy", "scipy", "sqlite_utils")


def main() -> int:
    problems = []
    for name in AGENT_MODULES:
        importlib.import_module(name)
    for name in FORBIDDEN + ("dtf_gui",):
        if name in sys.modules:
            problems.append(f"{name} was imported by the agent")
    installed = [n for n in FORBIDDEN if importlib.util.find_spec(n) is not None]
    if installed:
        problems.append(f"the base install pulled in {', '.join(installed)}")
    if problems:
        print("agent self-check FAILED: " + "; ".join(problems))
        return 1
    print(f"agent self-check ok: {len(AGENT_MODULES)} modules import without Qt, numpy, scipy or sqlite-utils")
    return 0


if __name__ == "__main__":
    sys.exit(main())
