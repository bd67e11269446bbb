"""(stub: being written) Whether a window can open here, asked before Qt is imported."""

from __future__ import annotations


def display_problem() -> str | None:
    return None
