"""The window's reads: pages of the task table, result series, report data, exports.

Every operation here only reads, over possibly millions of rows, so all are deferred: they run on
the analysis thread through a read-only connection of its own (the store's connection belongs to
the loop thread). Each concern keeps its queries in its own pure module (taskview, explore,
reports), which hands its operations over as ``ops(conn) -> {name: (args type, handler)}``; this
room only merges them, so the API table stays one table.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtf_gui.coordinator import explore, reports, taskview
from dtf_gui.coordinator.store import connect_readonly

OpTable = dict[str, tuple[type[Any], Callable[[Any], Any]]]


class ViewsApi:
    def __init__(self, db_path: str | Path) -> None:
        self.db_path = db_path
        self._local = threading.local()
        self.deferred_ops: OpTable = {**taskview.ops(self.conn), **explore.ops(self.conn), **reports.ops(self.conn)}

    def conn(self) -> sqlite3.Connection:
        """This thread's read-only connection (made on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_readonly(self.db_path)
            self._local.conn = conn
        return conn
