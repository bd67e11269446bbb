"""What every `dtf` client command shares: the client it talks through, and how tables are printed.

Light on purpose (see cli.py): the client (ZeroMQ, the wire protocol) and the standard library only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from dtf_agent.keys import KeyFileError
from dtf_gui.client import Client, ClientError


def client_for(args: argparse.Namespace) -> Client:
    endpoint = args.coordinator
    if endpoint is None:  # an empty --coordinator is a malformed address, not "look it up"
        from dtf_agent.paths import read_coordinator_file

        info = read_coordinator_file()
        if not info:
            raise ClientError("no coordinator found: start `dtf serve` (or the window), or pass "
                              "--coordinator tcp://HOST:8080")
        endpoint = info["client_endpoint"]
    try:
        # --key FILE, else $DTF_CLIENT_KEY, else this home's admin key (local use: nothing to type).
        return Client(endpoint, timeout=args.timeout_s, credentials=_credentials(args))
    except KeyFileError as exc:
        raise ClientError(str(exc)) from None


def _credentials(args: argparse.Namespace) -> Any:
    from dtf_gui.client import find_credentials

    return find_credentials(getattr(args, "key", None))


# Columns that hold a Unix time, shown as the local time of day.
TIME_COLUMNS = frozenset({"create_time", "start_time", "end_time", "last_seen", "timestamp"})


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Columns left-aligned, two spaces apart, headers in capitals; "-" where a row has no value."""
    cells = [[fmt(r.get(c), c in TIME_COLUMNS) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def fmt(v: Any, is_time: bool = False) -> str:
    if v is None or v == "":
        return "-"
    if is_time and isinstance(v, (int, float)):
        return time.strftime("%H:%M:%S", time.localtime(v))
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)[:40]
    return str(v)[:60]
