"""The live detector's per-value stage (aggregator/online.py): the level, the CUSUM pairs, spike
resistance, the onset estimate, and the anomaly rule of a young level (issue 13)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from dtf_gui.coordinator.aggregator.online import WARM_UP, Level, LevelMonitor, widen


def _noise(n: int, seed: int, level: float = 100.0, sd: float = 3.0) -> list[float]:
    return (level + sd * np.random.default_rng(seed).standard_normal(n)).tolist()


def _first_suspicion(mon: LevelMonitor, values: list[float]) -> tuple[int, int, int] | None:
    """(position fed, onset, sign) of the first suspected change, or None."""
    for i, v in enumerate(values):
        s = mon.push(v).suspected
        if s is not None:
            return i, s.onset, s.sign
    return None


def _steady(mon: LevelMonitor, values: list[float]) -> None:
    """Feed steady values, retracting any (false) suspicion at once, as the caller would in time."""
    for i, v in enumerate(values):
        mon.push(v)
        if mon.pending is not None:
            mon.retract(values[max(0, i + 1 - 100):i + 1])


def test_level_median_and_robust_sigma_follow_a_bounded_window() -> None:
    values = _noise(300, 1)
    lvl = Level(100)
    for v in values:
        lvl.add(v)
    assert len(lvl) == 100
    assert lvl.median() == pytest.approx(statistics.median(values[-100:]))
    mad = statistics.median(abs(v - statistics.median(values[-100:])) for v in values[-100:])
    # Recomputed every few values: within one refresh of the exact MAD / 0.6745.
    assert lvl.sigma() == pytest.approx(mad / 0.6745, rel=0.1)


def test_widening_covers_a_young_median_and_vanishes_with_many_values() -> None:
    assert widen(1.0, 4) > 1.5 * widen(1.0, 100)
    assert widen(1.0, 100) == pytest.approx(1.0, abs=0.04)
    assert widen(1.0, 10, errors=3.0) > widen(1.0, 10)


def test_flat_noise_with_spikes_raises_no_suspicion_in_long_runs() -> None:
    """Lone spikes of 5 to 13 sigma add nothing to the CUSUM; a clipped spike would add 2.5 each."""
    raised = 0
    for seed in range(5):
        values = _noise(2000, seed)
        rng = np.random.default_rng(100 + seed)
        for i in rng.choice(np.arange(50, 2000), 40, replace=False):
            values[int(i)] *= 1.0 + rng.uniform(0.15, 0.40)
        mon = LevelMonitor()
        for v in values:
            raised += mon.push(v).suspected is not None
            if mon.pending is not None:
                mon.retract(values[max(0, mon.n - 100):mon.n])
    # Two-sided h = 6, k = 0.5 CUSUMs: a false alarm every ~1,300 steady values per pair without
    # spikes; 200 spikes among 10,000 values must not add a multiple of that.
    assert raised <= 20, raised


def test_spike_alone_leaves_the_sums_untouched() -> None:
    mon = LevelMonitor()
    for v in _noise(60, 3):
        mon.push(v)
    before = (mon.pos, mon.neg, mon.slow_pos, mon.slow_neg)
    mon.push(mon.level.median() + 12 * mon.sigma())
    after = (mon.pos, mon.neg, mon.slow_pos, mon.slow_neg)
    # Each sum can only lose its drift: the spike itself counted as 0.
    assert all(a <= b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.parametrize(("shift", "within"), [(5.0 / 3, 15), (10.0 / 3, 6), (2.0 / 3, 100)])
def test_a_step_is_suspected_soon_and_located_near_its_onset(shift: float, within: int) -> None:
    delays: list[int] = []
    errors: list[int] = []
    for seed in range(10):
        values = _noise(200, seed) + _noise(150, 50 + seed, level=100.0 + 3.0 * shift)
        mon = LevelMonitor()
        _steady(mon, values[:200])
        hit = _first_suspicion(mon, values[200:])
        assert hit is not None, seed
        hit = (hit[0] + 200, hit[1], hit[2])
        at, onset, sign = hit
        assert sign == 1 and onset <= at, (seed, onset)
        delays.append(at - 200)
        errors.append(onset - 200)
    assert statistics.median(delays) <= within, delays
    # A clear step is located within a few results (the windowed test places it exactly when it
    # confirms); a small one, found by the slow pair after dozens, less well. A stretch of
    # ordinary values on the step's side just before it may be taken in (seed 6: 31 early).
    assert statistics.median(abs(e) for e in errors) <= (3 if shift > 1 else 25), errors
    assert all(-48 <= e for e in errors), errors


def test_a_held_excursion_stays_out_of_the_level_until_the_sums_fall_back() -> None:
    """A small step must not drag the reference along with it before it is suspected."""
    mon = LevelMonitor()
    _steady(mon, _noise(200, 4))
    reference = mon.level.median()
    for v in _noise(20, 5, level=102.0):  # +0.67 sigma: the slow pair accumulates
        mon.push(v)
        if mon.pending is not None:
            break
    assert abs(mon.level.median() - reference) < 0.3, (reference, mon.level.median())


def test_young_series_has_no_cusum_and_no_suspicion() -> None:
    mon = LevelMonitor()
    values = [100.0] * (WARM_UP - 1) + [200.0] * 3
    assert _first_suspicion(mon, values) is None
    assert mon.warming() or len(mon.level) >= WARM_UP


def test_young_level_after_a_change_flags_only_values_extreme_against_both_levels() -> None:
    mon = LevelMonitor()
    _steady(mon, _noise(150, 6))
    hit = _first_suspicion(mon, _noise(30, 7, level=110.0))
    assert hit is not None and mon.pending is not None
    k = len(mon.level)
    assert k < 30
    old_like = mon.push(101.0)  # ordinary for the old level, 3 sigma under the new one
    assert abs(old_like.score) <= mon.thr_anomaly
    wild = mon.push(150.0)
    assert wild.score > mon.thr_anomaly
    assert wild.median == pytest.approx(110.0, abs=3.0)


def test_evidence_is_signed_in_the_suspected_direction() -> None:
    mon = LevelMonitor()
    _steady(mon, _noise(150, 8))
    assert _first_suspicion(mon, _noise(40, 9, level=95.0)) is not None
    assert mon.pending is not None and mon.pending.sign == -1
    assert mon.evidence() > 3.0
    for v in _noise(120, 10):  # back at the old level, for longer than the level's window
        mon.push(v)
    assert mon.evidence() < 1.0
    assert not math.isnan(mon.evidence())
