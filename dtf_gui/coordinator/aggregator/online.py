"""The live detector's per-value stage: one series' level, its anomalies, and a suspected change.

Pure Python on floats, no numpy and no I/O: a value costs a few microseconds, which is what lets
the coordinator judge every result of a thousand live series as it is committed (numpy's per-call
overhead alone would be most of the budget). The windowed change-point test that confirms or
retracts a suspicion is the caller's (:mod:`~dtf_gui.coordinator.aggregator.live`); this module
only says when to ask, and keeps the level the anomalies are judged against.

How a change is suspected: a two-sided CUSUM (Page 1954) of the values standardised by the level's
median and robust sigma, each step clipped to +-``clip`` so that a spike adds at most a bounded
amount (a run of ordinary values above the level does the accumulating, not one wild value).
The values the CUSUM is accumulating over are held out of the level until it falls back to zero:
the level is estimated only from values believed to belong to it, so a small step cannot drag
the reference along with it and hide itself (the weakness of a rolling median), while a slow
drift, which never accumulates, is followed.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass

__all__ = ["Level", "LevelMonitor", "Suspicion", "Verdict", "widen"]

# Fewest values of a level that anomalies are judged against (median and MAD of fewer are noise).
MIN_REFERENCE = 5
# A level estimates its own noise from this many values; below it the noise carries over from the
# level before (a step moves the level, rarely the noise).
OWN_NOISE = 30
# Before the first level has this many values the CUSUM does not run: no reference yet.
WARM_UP = 24
# At most this many values are held out of the level while the CUSUM sums are above zero.
HOLD = 48
# The MAD of a level is recomputed every this many values (it moves slowly; sorting each time
# would be most of a value's cost).
MAD_EVERY = 8
_K = 0.6745  # Phi^-1(0.75): MAD / 0.6745 estimates the standard deviation under normality
_HALF_PI = 0.5 * math.pi
# A young level after a change allows its median this many standard errors: which values belong
# to it is itself uncertain (its onset is an estimate), not only its median.
_YOUNG_ERRORS = 3.0
# A value beyond the monitor's ``spike`` sigmas counts in the CUSUM only when the value before it
# was already this far out on the same side.
_SPIKE_COMPANION = 2.0
# The smallest shift (in sigmas) the onset of a change the fast CUSUM pair suspects is located for.
_MIN_SHIFT = 1.5


def widen(sigma: float, count: int, errors: float = 2.0) -> float:
    """The spread a new value has around the median of ``count`` values, allowing that median to
    be ``errors`` of its standard errors off (its variance is about pi/2 sigma^2 / count):
    sigma * sqrt(1 + errors^2 pi / (2 count)).

    A value inside the level's true +-2 sigma then stays under a threshold of 2.5 of these even
    when the median is that far off, which a new level's median of a handful of values often is;
    with 100 values and 2 errors the widening is 3 %."""
    return sigma * math.sqrt(1.0 + errors * errors * _HALF_PI / max(count, 1))


class Level:
    """The latest values of one level (at most ``capacity``), with their median and robust sigma."""

    __slots__ = ("_mad", "_mad_age", "_sorted", "capacity", "values")

    def __init__(self, capacity: int, values: list[float] | None = None) -> None:
        self.capacity = capacity
        self.values: deque[float] = deque()
        self._sorted: list[float] = []
        self._mad = 0.0
        self._mad_age = MAD_EVERY
        for v in values or ():
            self.add(v)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, v: float) -> None:
        self.values.append(v)
        insort(self._sorted, v)
        if len(self.values) > self.capacity:
            old = self.values.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
        self._mad_age += 1

    def median(self) -> float:
        s = self._sorted
        n = len(s)
        if n == 0:
            return math.nan
        h = n // 2
        return s[h] if n % 2 else 0.5 * (s[h - 1] + s[h])

    def sigma(self) -> float:
        """MAD / 0.6745 (1.2533 * the mean absolute deviation where the MAD is 0), as
        :func:`~dtf_gui.coordinator.aggregator.anomalies.robust_z` estimates it."""
        n = len(self._sorted)
        if n == 0:
            return math.nan
        if self._mad_age >= MAD_EVERY or n < OWN_NOISE:
            med = self.median()
            dev = sorted(abs(v - med) for v in self._sorted)
            h = n // 2
            mad = dev[h] if n % 2 else 0.5 * (dev[h - 1] + dev[h])
            self._mad = mad / _K if mad > 0 else 1.2533 * sum(dev) / n
            self._mad_age = 0
        return self._mad


@dataclass(slots=True)
class Suspicion:
    """A change suspected at absolute index ``onset`` (the first value of the new level), upward
    when ``sign`` is +1; the level before it as it was then."""

    onset: int
    sign: int
    old_median: float
    old_sigma: float
    old_count: int
    raised_at: int


@dataclass(slots=True)
class Verdict:
    """What one value did: its anomaly score against its level (0 when it could not be judged),
    the level's median and the widened sigma the score used, how many values that level held, and a
    change suspected at this value (None almost always)."""

    score: float
    median: float
    sigma: float
    count: int
    suspected: Suspicion | None = None


class LevelMonitor:
    """One series: its current level, its CUSUM, and the change it suspects (``pending``).

    ``push`` is the only per-value call. A suspicion is settled by the caller: :meth:`confirm`
    (the new level is the values from the confirmed index on) or :meth:`retract` (the old level
    goes on, the held values back in it)."""

    __slots__ = ("_hold", "_prev", "before", "capacity", "clip", "drift", "level", "n", "neg", "noise", "pending", "pos",
                 "slow_factor", "slow_neg", "slow_pos", "spike", "threshold", "thr_anomaly", "young")

    def __init__(self, *, capacity: int = 100, anomaly_threshold: float = 2.5, drift: float = 0.5,
                 threshold: float = 6.0, clip: float = 3.0, young: float = 0.5, spike: float = 4.0,
                 slow_factor: float = 2.0) -> None:
        self.capacity = capacity
        self.thr_anomaly = anomaly_threshold
        self.drift = drift
        self.threshold = threshold
        self.clip = clip
        self.young = young
        self.spike = spike
        self.slow_factor = slow_factor
        self._prev = 0.0
        self.level = Level(capacity)
        self.noise = math.nan  # the carried-over sigma while the level is too young for its own
        self.n = 0  # absolute index of the next value
        self.pos = 0.0
        self.neg = 0.0
        self.slow_pos = 0.0
        self.slow_neg = 0.0
        # Values the CUSUM is accumulating over, with their indices: out of the level until it
        # falls back to zero (or the hold outgrows the level's capacity).
        self._hold: deque[tuple[int, float]] = deque()
        self.pending: Suspicion | None = None
        # The change the current level began with, while that level is young (None otherwise).
        self.before: Suspicion | None = None

    # -- the level -------------------------------------------------------------------------------

    def sigma(self) -> float:
        """The level's noise: its own once it has OWN_NOISE values, else the carried-over one."""
        own = self.level.sigma()
        if len(self.level) >= OWN_NOISE or not self.noise == self.noise:
            return own
        return self.noise

    def _start_level(self, values: list[float]) -> None:
        carried = self.sigma()
        self.level = Level(self.capacity, values)
        if carried == carried and carried > 0:
            self.noise = carried
        self.pos = self.neg = self.slow_pos = self.slow_neg = 0.0
        self._hold.clear()

    # -- one value -------------------------------------------------------------------------------

    def push(self, v: float) -> Verdict:
        i = self.n
        self.n += 1
        lvl = self.level
        k = len(lvl)
        med = lvl.median()
        sig = self.sigma() if k else math.nan
        verdict = self._judge(v, med, sig, k)
        if self.pending is not None:
            lvl.add(v)  # the new level's values, all of them: it is the reference from the suspicion on
            return verdict
        if self.before is not None and k >= OWN_NOISE:
            self.before = None
        if k < WARM_UP or not sig >= 0:
            lvl.add(v)
            return verdict
        # CUSUM on the standardised, clipped value. The drift grows by a share of the median's
        # standard error: a young level's median is off by a constant, which would accumulate.
        # A constant level (sigma 0): any other value is infinitely far, so a step of such a
        # metric is suspected on its fourth value (the first one waits, as a spike would).
        raw = (v - med) / sig if sig > 0 else (0.0 if v == med else math.copysign(math.inf, v - med))
        prev, self._prev = self._prev, raw
        if (raw > self.spike and prev < _SPIKE_COMPANION) or (raw < -self.spike and prev > -_SPIKE_COMPANION):
            # A lone extreme value is a spike: it adds nothing either way (clipped, it would
            # still push one sum up and, as bad, knock the other side's sum back to zero). A
            # step's first extreme value waits for the second one to count.
            z = 0.0
        else:
            z = self.clip if raw > self.clip else -self.clip if raw < -self.clip else raw
        drift = self.drift + self.young * math.sqrt(_HALF_PI / k)
        self.pos = max(0.0, self.pos + z - drift)
        self.neg = max(0.0, self.neg - z - drift)
        # The slow pair, tuned to shifts of half the fast pair's (k/2, a threshold twice as high
        # keeps its false alarms as rare): it finds the small steps the fast pair never adds up.
        slow = drift - 0.5 * self.drift
        self.slow_pos = max(0.0, self.slow_pos + z - slow)
        self.slow_neg = max(0.0, self.slow_neg - z - slow)
        h, hs = self.threshold, self.slow_factor * self.threshold
        if self.pos > h or self.neg > h or self.slow_pos > hs or self.slow_neg > hs:
            fast = self.pos > h or self.neg > h
            up = self.pos > h or (not fast and self.slow_pos > hs)
            # The shift the alarming pair is tuned to (2k) is the least the onset is located for.
            least = _MIN_SHIFT if fast else self.drift
            verdict.suspected = self._suspect(i, v, 1 if up else -1, med, sig, least)
            return verdict
        if self.pos == 0.0 and self.neg == 0.0 and self.slow_pos == 0.0 and self.slow_neg == 0.0:
            for _j, h in self._hold:
                lvl.add(h)
            self._hold.clear()
            lvl.add(v)
        else:
            self._hold.append((i, v))
            if len(self._hold) > HOLD:
                # The slow pair can stay above zero for long in steady noise: past HOLD values the
                # oldest held value joins the level anyway, or the level would go stale.
                lvl.add(self._hold.popleft()[1])
        return verdict

    def _judge(self, v: float, med: float, sig: float, k: int) -> Verdict:
        """Score ``v`` against the level (see :func:`widen`). While a suspected level is younger
        than MIN_REFERENCE values, a value is an anomaly only when it is extreme against the old
        level as well (its score is then the new level's)."""
        if not sig > 0:
            return Verdict(0.0, med, sig, k)
        s = self.before
        if k < MIN_REFERENCE and (s is None or k == 0):
            return Verdict(0.0, med, sig, k)
        young = s is not None and k < OWN_NOISE
        w = widen(sig, k, _YOUNG_ERRORS if young else 2.0)
        score = (v - med) / w
        if young and s is not None:
            # A young level after a change: its median is still uncertain, so a value that the
            # level before would take as ordinary is no anomaly (its score is capped).
            if abs(v - s.old_median) <= self.thr_anomaly * widen(s.old_sigma, s.old_count):
                score = max(-self.thr_anomaly, min(self.thr_anomaly, score))
        return Verdict(score, med, w, k)

    def _suspect(self, i: int, v: float, sign: int, med: float, sig: float, least: float) -> Suspicion:
        """Start the suspected level at its most likely onset among the held values (the split that
        maximises the mean shift's likelihood ratio, sum of z over sqrt(count), in the suspected
        direction): the held values before it join the old level (which they belonged to), those
        from it on make the new one."""
        self._hold.append((i, v))
        zs = [(j, sign * (h - med) / sig) for j, h in self._hold]
        zs = [(j, self.clip if z > self.clip else -self.clip if z < -self.clip else z) for j, z in zs]
        best, shift, acc = -math.inf, 0.0, 0.0
        for count, (_j, z) in enumerate(reversed(zs), 1):
            acc += z
            if acc / math.sqrt(count) > best:
                best, shift = acc / math.sqrt(count), acc / count
        # Then the split of a shift of that size (at least ``least``): each value before the true
        # onset costs half of it, so a quiet stretch before the step is not taken into it.
        half = 0.5 * max(shift, least)
        best, onset, acc = -math.inf, i, 0.0
        for j, z in reversed(zs):
            acc += z - half
            if acc > best:
                best, onset = acc, j
        before = [h for j, h in self._hold if j < onset]
        after = [h for j, h in self._hold if j >= onset]
        for h in before:
            self.level.add(h)
        s = Suspicion(onset=onset, sign=sign, old_median=self.level.median(), old_sigma=self.sigma(),
                      old_count=len(self.level), raised_at=i)
        self._start_level(after)
        self.noise = s.old_sigma
        self.pending = self.before = s
        return s

    # -- settling a suspicion --------------------------------------------------------------------

    def evidence(self) -> float:
        """How far the suspected level stands from the old one, in standard errors of the two
        medians, signed in the suspected direction (0 without a suspicion)."""
        s = self.pending
        if s is None or not len(self.level):
            return 0.0
        # The larger of the two levels' noise: a young old level's sigma may be far too small
        # (from a couple of dozen values), and would keep a false suspicion alive for ever.
        sig = max(s.old_sigma, self.level.sigma()) if len(self.level) >= OWN_NOISE else s.old_sigma
        se = sig * math.sqrt(0.5 * math.pi * (1.0 / len(self.level) + 1.0 / max(s.old_count, 1)))
        return s.sign * (self.level.median() - s.old_median) / se if se > 0 else 0.0

    def retract(self, values: list[float]) -> None:
        """No change after all: the level goes on as ``values`` (the latest of the series), with
        the noise it had."""
        s = self.pending
        self.pending = self.before = None
        self._start_level(values)
        if s is not None:
            self.noise = s.old_sigma

    def restart(self, values: list[float], before: Suspicion | None = None) -> None:
        """A change found otherwise (a windowed scan): the level starts again as ``values``;
        ``before`` describes the level it left, for judging the young one."""
        self.pending = None
        self._start_level(values)
        self.before = before
        if before is not None and before.old_sigma > 0:
            self.noise = before.old_sigma

    def warming(self) -> bool:
        """Whether the level is too young for the CUSUM (and nothing is pending)."""
        return self.pending is None and len(self.level) < WARM_UP
