"""What a bundled dtf-agent or dtf-gui does when DTF asks its own interpreter for Python.

DTF starts Python with ``sys.executable``: the agent ``-m pytest`` for a pytest shard, ``-c`` and
``-m venv`` to make a bundle's virtual environment; the window ``-m dtf_agent.cli`` for its local
agent and ``-m dtf_gui.cli`` for the commands its dialogs run. In a PyInstaller bundle
``sys.executable`` is the bundle itself, which has no interpreter for a task's code (and must not
carry pytest: the suite's own pytest runs its tests). So the bundle takes those command lines
here: its own programs it runs itself, anything else goes to the machine's Python, and where there
is none the task fails with a message saying what to do.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping

# The interpreter for a task's Python when the bundle was asked for one: $DTF_PYTHON (a name on
# PATH or a path), else python3 on PATH.
PYTHON_ENV = "DTF_PYTHON"


def restore_environment() -> None:
    """Give the tasks the environment the bundle was started with.

    The bootloader points the dynamic linker at the bundle's own libraries (LD_LIBRARY_PATH, the
    caller's value kept in LD_LIBRARY_PATH_ORIG). Every task inherits os.environ, and a task's
    python3, curl or compiler must load the machine's libraries, not the bundle's libssl or libz.
    This process keeps what it has: the linker read the variable once, when the process started.
    """
    if not getattr(sys, "frozen", False):
        return
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original


def _system_python() -> str | None:
    wanted = os.environ.get(PYTHON_ENV)
    if wanted:
        return shutil.which(wanted)
    return shutil.which("python3") or shutil.which("python")


def dispatch(argv: list[str], own: Mapping[str, Callable[[], int]]) -> int | None:
    """Handle ``argv`` (sys.argv) when it is an interpreter's command line; None when it is not
    (then the bundle's own program runs). ``own``: the modules this bundle runs itself, by name,
    each a main() that reads sys.argv. From source ``sys.executable`` is a real interpreter and
    never comes here, so only a frozen bundle looks."""
    if not getattr(sys, "frozen", False) or len(argv) < 2 or argv[1] not in ("-m", "-c"):
        return None
    if argv[1] == "-m" and len(argv) > 2 and argv[2] in own:
        sys.argv = [argv[0], *argv[3:]]
        return own[argv[2]]()
    python = _system_python()
    what = " ".join(argv[1:3])
    if python is None:
        where = (f"${PYTHON_ENV} ({os.environ[PYTHON_ENV]!r}) on PATH" if os.environ.get(PYTHON_ENV)
                 else "python3 on PATH")
        print(f"{os.path.basename(argv[0])}: this bundle has no Python interpreter for tasks and found no "
              f"{where} to run `python {what} ...`. Install Python 3 on this machine, set ${PYTHON_ENV} to "
              "an interpreter, or give the task a 'python' parameter naming one (a pytest task needs pytest "
              "installed there).", file=sys.stderr)
        return 127
    os.execv(python, [python, *argv[1:]])
    return 0  # not reached: execv replaces this process
