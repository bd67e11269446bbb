"""Shipping a directory to the coordinator as a bundle (`dtf submit --bundle`, `dtf pytest`, plans).

The bundle is built here (content-addressed: an unchanged directory has the same digest), and
only sent when the coordinator does not have it yet; an upload cut short resumes where it stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dtf_agent import protocol as p
from dtf_agent.runners.bundles import Bundle, build_bundle


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def upload_bundle(client: Any, directory: str | Path, *, quiet: bool = False) -> str:
    """Build the bundle of ``directory`` and make sure the coordinator has it; returns its digest.
    Raises BundleError (what is wrong with the directory) or ClientError (what the coordinator said)."""
    bundle = build_bundle(directory)
    send(client, bundle, quiet=quiet, what=str(directory))
    return bundle.digest


def send(client: Any, bundle: Bundle, *, quiet: bool = False, what: str = "") -> int:
    """Upload ``bundle`` unless the coordinator has it; returns the bytes sent (0: nothing to send)."""
    state = client.call("bundle_missing", {"digest": bundle.digest})
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    if not state["missing"]:
        say(f"bundle {bundle.digest[:19]} of {what or 'the directory'}: {len(bundle.files)} files, "
            f"already on the coordinator")
        return 0
    total = len(bundle.data)
    offset = int(state.get("received") or 0)
    sent = 0
    say(f"bundle {bundle.digest[:19]} of {what or 'the directory'}: {len(bundle.files)} files, "
        f"{_size(bundle.size)} ({_size(total)} compressed), sending")
    while True:
        piece = bundle.data[offset:offset + p.MAX_BUNDLE_CHUNK]
        answer = client.call("put_bundle", {"digest": bundle.digest, "offset": offset, "total": total,
                                            "data": piece}, timeout=120.0)
        sent += len(piece)
        if answer["complete"]:
            return sent
        if int(answer["received"]) <= offset and piece:
            # The coordinator went back (another upload of the same bundle was cut): follow it.
            offset = int(answer["received"])
            continue
        offset = int(answer["received"])
