"""A sample alert handler: each alert POSTed as JSON to a web hook (Slack, Teams, Mattermost,
a chat bridge, your own service).

Enable it in coordinator.yaml, with the hook's URL in the coordinator's environment::

    health_monitor:
      alert_handlers:
        - dtf_gui.coordinator.webhook:post

    $ DTF_ALERT_WEBHOOK=https://hooks.example.org/T000/B000/XXXX dtf serve

Each raised or cleared alert that is not muted arrives as one request, body::

    {"alert_id": "memory:lab-3:1718000000000", "kind": "memory", "worker_id": "lab-3",
     "state": "raised", "severity": "warning", "message": "lab-3: memory above 90% for 30 s (93%)",
     "value": 93.0, "threshold": 90.0, "time": 1718000000.0, "acked": false, "muted": false}

The coordinator calls handlers on a thread of its own, so a slow hook never holds up the
scheduling; a failed request is logged by that thread (with this handler's name) and the next
alert is sent as usual. The request goes through the proxy that ``https_proxy`` / ``http_proxy`` name
(``no_proxy`` exempts hosts), as urllib does: a lab may need one to reach a chat service. Write your own handler the same way: ``fn(alert: dict) -> None``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

__all__ = ["ENV", "TIMEOUT_S", "post"]

ENV = "DTF_ALERT_WEBHOOK"
TIMEOUT_S = 5.0


def post(alert: dict[str, Any]) -> None:
    """POST ``alert`` as JSON to the URL in $DTF_ALERT_WEBHOOK. Raises on a missing URL, a
    network error or an HTTP error status (the handler thread logs it)."""
    url = os.environ.get(ENV, "").strip()
    if not url:
        raise RuntimeError(f"{ENV} is not set: set it to the web hook's URL, or remove "
                           "dtf_gui.coordinator.webhook:post from health_monitor.alert_handlers")
    if not url.startswith(("http://", "https://")):
        raise RuntimeError(f"{ENV}={url!r} is not an http:// or https:// URL")
    body = json.dumps(alert).encode("utf-8")
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "dtf-alerts"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        resp.read()
