"""(stub: being written)"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any


def ops(conn: Callable[[], sqlite3.Connection]) -> dict[str, tuple[type[Any], Callable[[Any], Any]]]:
    return {}
