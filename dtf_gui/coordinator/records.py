"""Records that cross rooms inside the coordinator, as Structs: a renamed field fails loudly.

A :class:`Result` is built once by the loop when an agent reports an attempt, written by the
store, and read by the live detector on the analysis thread (it is frozen, so handing it to
another thread shares nothing mutable that either side changes).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Result"]


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt's outcome as the coordinator stores it (the seed's Result model).

    ``timestamp`` is when the attempt ended (the agent's clock, display data); ``metrics`` are the
    numbers the task reported, ``raw_data`` the tails of its output."""

    result_id: str
    task_id: str
    worker_id: str
    test_id: str = ""
    timestamp: float = 0.0
    status: str = "success"
    execution_time: float | None = None
    exit_code: int | None = None
    error: str = ""
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    hardware_metrics: dict[str, float] = msgspec.field(default_factory=dict)
    environment: dict[str, Any] | None = None
    raw_data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    attempt: int = 1
