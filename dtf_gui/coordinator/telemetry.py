"""The coordinator's own figures: frame counters and the dispatch round-trip latency.

Written by the loop thread only; read by `get_status` (in the loop) and the stats events.
"""

from __future__ import annotations

import array
import dataclasses
import logging
import time

import numpy as np

__all__ = ["Counters", "DispatchLatency", "Throttled"]


@dataclasses.dataclass
class Counters:
    frames_in: int = 0
    bad_frames: int = 0
    failed_handshakes: int = 0  # CURVE handshakes that failed (see Coordinator._drain_monitor)
    unroutable: int = 0
    results_stored: int = 0
    duplicate_results: int = 0
    tasks_dispatched: int = 0
    loop_errors: int = 0
    oversize: int = 0
    reregister_asked: int = 0
    submissions: int = 0  # batches of tasks the scheduler accepted (create_task, create_tasks, a plan)
    tasks_submitted: int = 0
    submissions_refused: int = 0


class Throttled:
    """A warning that a flood of bad input could repeat thousands of times a second: logged at
    most once per ``interval`` seconds, with the count of those held back since the last line."""

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last = -interval
        self.held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self.held += 1
            return
        if self.held:
            msg += f" (and {self.held} more like it in the last {now - self._last:.0f} s)"
        self._last = now
        self.held = 0
        self.logger.warning(msg, *args)


class DispatchLatency:
    """Round trips (task sent -> its result held) of the most recent tasks, in seconds.

    A ring buffer of doubles: one item store per result on the hot path, and the percentiles read
    it without a copy (numpy over the same memory), at most twice a second however often asked."""

    def __init__(self, samples: int = 20_000) -> None:
        self.samples = samples
        self._ring = array.array("d", bytes(8 * samples))
        self.n = 0
        self._at = 0.0
        self._cached: dict[str, float] = {"p50": 0.0, "p99": 0.0, "n": 0}

    def add(self, seconds: float) -> None:
        self._ring[self.n % self.samples] = seconds
        self.n += 1

    def summary(self) -> dict[str, float]:
        """{"p50", "p99"} in microseconds and "n", the samples they rest on."""
        now = time.monotonic()
        if now - self._at < 0.5:
            return self._cached
        self._at = now
        n = min(self.n, self.samples)
        if n:
            p50, p99 = np.percentile(np.frombuffer(self._ring, dtype=np.float64)[:n], [50, 99]) * 1e6
            self._cached = {"p50": float(p50), "p99": float(p99), "n": n}
        return self._cached
