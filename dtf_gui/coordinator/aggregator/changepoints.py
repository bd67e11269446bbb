"""Change-point detection for benchmark series.

Windowed E-Divisive with a t-test merge, the scheme of Apache Otava (Fleming et al., "Hunter",
ICPE 2023), with three differences that matter on real data:

* a spike filter runs first, so a single outlier is reported as an anomaly and never as a level
  change (E-Divisive alone happily splits a window around one wild point);
* every window's best split is found at once for the whole series (one batched numpy computation
  over a stack of windows), instead of one recursive Python search per window;
* the merge drops the weakest candidate until every survivor is significant (Welch t-test between
  the neighbouring segments), shows a large enough standardised effect, and leaves ``min_size``
  points on each side. A candidate's strength depends only on its two surviving neighbours, so
  every (left, candidate, right) triple is scored in one batched call up front and the drop loop
  only looks scores up.

A last guard handles series that move in smooth runs (a growing population, a warming cache): there
every bend looks like a step to the t-tests, so when consecutive first differences are much alike a
change point is kept only where one first difference stands out, as a real level step on such a
curve must.

Series with a strong cycle (a nightly or weekly load pattern in a lab metric) are searched once the
cycle is taken out, since the cycle's swings otherwise hide a step or mimic one; see
:func:`_season_period`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray
from scipy import special

__all__ = [
    "ChangePoint",
    "detect_change_points",
    "spike_mask",
]

_EPS = 1e-12


class ChangePoint(msgspec.Struct, kw_only=True):
    """One level change. ``index`` is the first index of the new level."""

    index: int
    mean_before: float
    std_before: float
    mean_after: float
    std_after: float
    rel_change: float
    p_value: float
    direction: str
    n_before: int = 0
    n_after: int = 0
    effect: float = 0.0


# --------------------------------------------------------------------------------------------
# helpers


def _as_array(values: Sequence[float] | NDArray[np.float64]) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"detect_change_points: values must be one-dimensional, got shape {arr.shape}")
    return arr


def _welch_p(m1: NDArray, v1: NDArray, n1: NDArray, m2: NDArray, v2: NDArray, n2: NDArray) -> NDArray:
    """Two-sided Welch t-test p-values from summary statistics (vectorised)."""
    a = v1 / np.maximum(n1, 1)
    b = v2 / np.maximum(n2, 1)
    se2 = a + b
    diff = np.abs(m2 - m1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(se2)
        df = se2**2 / (a**2 / np.maximum(n1 - 1, 1) + b**2 / np.maximum(n2 - 1, 1))
    df = np.where(np.isfinite(df) & (df > 0), df, np.maximum(n1 + n2 - 2, 1))
    p = 2.0 * special.stdtr(df, -np.where(np.isfinite(t), t, 0.0))
    # Two constant segments at different levels: infinitely significant; at the same level: not.
    p = np.where(se2 <= _EPS, np.where(diff > _EPS, 0.0, 1.0), p)
    return np.clip(p, 0.0, 1.0)


def _direction(delta: float, higher_is_better: bool) -> str:
    return "improvement" if (delta > 0) == higher_is_better else "regression"


def spike_mask(values: Sequence[float] | NDArray[np.float64], *, threshold: float = 5.0,
               half_window: int = 3, max_run: int = 1) -> NDArray[np.bool_]:
    """Points that stand alone far from their neighbourhood: True where a spike is.

    A point is a spike when it deviates from the median of its ``half_window`` neighbours on each
    side (itself excluded) by more than ``threshold`` robust standard deviations of the series'
    local noise, and no more than ``max_run`` consecutive points do so in the same direction (a
    longer run is a level change, not a spike)."""
    x = _as_array(values)
    n = x.size
    out = np.zeros(n, dtype=bool)
    if n < 2 * half_window + 1 or half_window < 1:
        return out
    pad = np.pad(x, half_window, mode="reflect")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half_window + 1)
    resid = x - np.median(np.delete(win, half_window, axis=1), axis=1)
    # Local noise from first differences: robust to level shifts (they are one difference each).
    d = np.diff(x)
    scale = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)
    if scale <= _EPS:
        scale = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    if scale <= _EPS:
        out = np.abs(resid) > _EPS
    else:
        out = np.abs(resid) > threshold * scale
    if max_run >= 1 and out.any():
        sign = np.sign(resid) * out
        # Length of each run of equal nonzero sign: a run longer than max_run is a level, not a spike.
        change = np.flatnonzero(np.diff(sign) != 0) + 1
        starts = np.concatenate(([0], change))
        lengths = np.diff(np.concatenate((starts, [n])))
        run_len = np.repeat(lengths, lengths)
        out &= run_len <= max_run
    return out


def _despike(x: NDArray[np.float64], mask: NDArray[np.bool_], half_window: int) -> NDArray[np.float64]:
    if not mask.any():
        return x
    y = x.copy()
    good = ~mask
    idx = np.flatnonzero(mask)
    # Replace each spike by the median of its non-spike neighbours (vectorised over spikes).
    offs = np.arange(-half_window, half_window + 1)
    nb = np.clip(idx[:, None] + offs[None, :], 0, x.size - 1)
    vals = np.where(good[nb], x[nb], np.nan)
    med = np.nanmedian(np.where(np.all(np.isnan(vals), axis=1)[:, None], x[nb], vals), axis=1)
    y[idx] = med
    return y


# --------------------------------------------------------------------------------------------
# E-Divisive core


class _SplitGrid:
    """The (tau, kappa) pairs of a window of w points with >= 2 points on each side, and the weights
    of Q(tau, kappa) = a*P[tau,kappa] - b*P[tau,tau] - c*P[kappa,kappa] on them.

    Expanding the E-Divisive statistic over the 2-D prefix sums P of the distance matrix (P is
    symmetric, as the distance matrix is) leaves one weight per term; they depend only on w, so they
    are computed once per w, and only on the valid upper triangle (under half the grid)."""

    def __init__(self, w: int) -> None:
        t = np.arange(w + 1)
        tau, kap = np.meshgrid(t, t, indexing="ij")
        valid = (tau >= 2) & (kap - tau >= 2)
        self.flat = np.flatnonzero(valid.ravel())
        self.tau = tau.ravel()[self.flat]
        self.kap = kap.ravel()[self.flat]
        n = self.tau.astype(np.float64)
        m = (self.kap - self.tau).astype(np.float64)
        h = n * m / (n + m)
        # Q = h * (2 cross/(nm) - Wx/(n(n-1)) - Wy/(m(m-1))), with cross = P - Ptt,
        # Wx = Ptt and Wy = Pkk - 2P + Ptt.
        self.a = h * (2.0 / (n * m) + 2.0 / (m * (m - 1)))
        self.b = h * (2.0 / (n * m) + 1.0 / (n * (n - 1)) + 1.0 / (m * (m - 1)))
        self.c = h / (m * (m - 1))


_GRIDS: dict[int, _SplitGrid] = {}
# Per-size caches stay small: a grid is O(w^2), and a caller choosing its own window per series
# (or a series shorter than the window) meets a new size each time.
_CACHE_SIZES = 8


_CACHE_LOCK = threading.Lock()


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    # Under a lock: detection runs on the API's threads as well as the ingest thread.
    with _CACHE_LOCK:
        while len(cache) >= _CACHE_SIZES:
            del cache[next(iter(cache))]
        cache[key] = value
    return value


def _window_best_splits(x: NDArray[np.float64], starts: NDArray[np.intp], w: int,
                        alpha: float = 1.0) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Best E-Divisive split (tau maximising Q over kappa as well) of every window x[s:s+w].

    Returns (tau as an absolute index, qhat) per window. All windows in one batched computation:
    2-D prefix sums of the pairwise distance matrix give every block sum in O(1); the statistic is
    a weighted sum of the prefix-sum grid and its diagonal, evaluated on the valid pairs only."""
    nw = starts.size
    if w < 4:
        return starts.copy(), np.full(nw, -np.inf)
    grid = _GRIDS.get(w)
    if grid is None:
        grid = _remember(_GRIDS, w, _SplitGrid(w))
    z = np.lib.stride_tricks.sliding_window_view(x, w)[starts]  # (nw, w)
    d = np.abs(z[:, :, None] - z[:, None, :])
    if alpha != 1.0:
        d **= alpha
    p = np.zeros((nw, w + 1, w + 1))
    np.cumsum(d, axis=1, out=d)
    np.cumsum(d, axis=2, out=p[:, 1:, 1:])
    diag = np.ascontiguousarray(np.diagonal(p, axis1=1, axis2=2))
    q = grid.a * np.take(p.reshape(nw, -1), grid.flat, axis=1)
    q -= grid.b * np.take(diag, grid.tau, axis=1)  # P[tau, tau]
    q -= grid.c * np.take(diag, grid.kap, axis=1)  # P[kappa, kappa]
    best = np.argmax(q, axis=1)
    return starts + grid.tau[best], q[np.arange(nw), best]


# --------------------------------------------------------------------------------------------
# merge


class _Segs:
    """O(1) segment mean/variance and straight-line fit residuals from prefix sums."""

    def __init__(self, x: NDArray[np.float64]) -> None:
        i = np.arange(x.size, dtype=np.float64) / max(x.size, 1)
        self.c1 = np.concatenate(([0.0], np.cumsum(x)))
        self.c2 = np.concatenate(([0.0], np.cumsum(x * x)))
        self.ci = np.concatenate(([0.0], np.cumsum(i)))
        self.cii = np.concatenate(([0.0], np.cumsum(i * i)))
        self.cix = np.concatenate(([0.0], np.cumsum(i * x)))

    def stats(self, a: NDArray, b: NDArray) -> tuple[NDArray, NDArray, NDArray]:
        n = (b - a).astype(np.float64)
        s1 = self.c1[b] - self.c1[a]
        s2 = self.c2[b] - self.c2[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = s1 / n
            var = np.maximum(s2 - n * mean**2, 0.0) / np.maximum(n - 1, 1)
        return mean, var, n

    def jump_given_trend(self, a: NDArray, t: NDArray, b: NDArray) -> tuple[NDArray, NDArray]:
        """p-value of a jump at t on top of one common straight line through x[a:b] (the t-test of
        the step coefficient in the regression x ~ 1 + i + [i >= t]), and the jump in residual sds."""
        tstat, dof, jump = self.jump_stat(a, t, b)
        return 2.0 * special.stdtr(dof, -tstat), jump

    def jump_stat(self, a: NDArray, t: NDArray, b: NDArray) -> tuple[NDArray, NDArray, NDArray]:
        """(|t| of the step coefficient, its degrees of freedom, the jump in residual sds); see
        :meth:`jump_given_trend`.

        Closed form (Frisch-Waugh): residualise the step dummy and x on the line [1, i]; the step
        coefficient is their residual covariance over the dummy's residual variance, and the line's
        RSS drops by exactly that coefficient times the covariance."""
        n = (b - a).astype(np.float64)
        nd = (b - t).astype(np.float64)
        si, sid = self.ci[b] - self.ci[a], self.ci[b] - self.ci[t]
        sii = self.cii[b] - self.cii[a]
        sx, sdx = self.c1[b] - self.c1[a], self.c1[b] - self.c1[t]
        six = self.cix[b] - self.cix[a]
        sxx = self.c2[b] - self.c2[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            # Centred cross-products (dummy d, index i, value x), then residuals on i.
            cii = sii - si * si / n
            cix = six - si * sx / n
            cxx = sxx - sx * sx / n
            cdd = nd - nd * nd / n
            cdi = sid - nd * si / n
            cdx = sdx - nd * sx / n
            has_line = cii > 0
            rss_lin = np.maximum(cxx - np.where(has_line, cix * cix / cii, 0.0), 0.0)
            rdd = cdd - np.where(has_line, cdi * cdi / cii, 0.0)
            rdx = cdx - np.where(has_line, cdi * cix / cii, 0.0)
            ok = rdd > _EPS
            beta = np.where(ok, rdx / rdd, 0.0)
            rss_full = np.maximum(rss_lin - beta * rdx, 0.0)
            dof = np.maximum(n - 3, 1)
            f = (rss_lin - rss_full) / (rss_full / dof)
        f = np.where(rss_full > _EPS, np.maximum(f, 0.0), np.where(rss_lin > _EPS, np.inf, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            jump = np.abs(beta) / np.sqrt(rss_full / dof)
        jump = np.where(np.isfinite(jump), jump, np.where(np.abs(beta) > _EPS, np.inf, 0.0))
        return np.sqrt(f), dof, jump


_T_CRIT: dict[float, NDArray[np.float64]] = {}


def _t_crit(dof: NDArray, alpha: float) -> NDArray[np.float64]:
    """Two-sided critical |t| at level ``alpha`` for integer ``dof`` >= 1: p > alpha exactly when
    |t| < _t_crit. A table per alpha, grown as longer segments come, replaces one Student-t CDF
    per candidate triple (the costliest call of the merge)."""
    need = int(dof.max()) + 1 if dof.size else 2
    table = _T_CRIT.get(alpha)
    if table is None or table.size < need:
        size = max(64, 1 << (need - 1).bit_length())
        table = -special.stdtrit(np.maximum(np.arange(size, dtype=np.float64), 1.0), alpha / 2.0)
        _remember(_T_CRIT, alpha, table)
    return table[dof.astype(np.intp)]


def _score(segs: _Segs, cps: NDArray[np.intp], n: int) -> tuple[NDArray, ...]:
    bounds = np.concatenate(([0], cps, [n]))
    return _score_abt(segs, bounds[:-2], bounds[1:-1], bounds[2:])


def _rel(segs: _Segs, a: NDArray, t: NDArray, b: NDArray) -> NDArray:
    m1, _v1, _n1 = segs.stats(a, t)
    m2, _v2, _n2 = segs.stats(t, b)
    return _rel_change(m1, m2)


def _rel_change(m1: NDArray, m2: NDArray) -> NDArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(m1) > _EPS, (m2 - m1) / np.abs(m1), np.where(np.abs(m2 - m1) > _EPS, np.inf, 0.0))


def _effect(m1: NDArray, v1: NDArray, n1: NDArray, m2: NDArray, v2: NDArray, n2: NDArray) -> NDArray:
    """|mean difference| / pooled standard deviation."""
    pooled = np.sqrt((v1 * np.maximum(n1 - 1, 0) + v2 * np.maximum(n2 - 1, 0)) / np.maximum(n1 + n2 - 2, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.abs(m2 - m1) / pooled
    return np.where(np.isfinite(effect), effect, np.where(np.abs(m2 - m1) > _EPS, np.inf, 0.0))


def _score_abt(segs: _Segs, a: NDArray, t: NDArray, b: NDArray) -> tuple[NDArray, ...]:
    """Statistics of a change at t between the segments x[a:t] and x[t:b] (vectorised over triples)."""
    m1, v1, n1 = segs.stats(a, t)
    m2, v2, n2 = segs.stats(t, b)
    p = _welch_p(m1, v1, n1, m2, v2, n2)
    effect = _effect(m1, v1, n1, m2, v2, n2)
    rel = _rel_change(m1, m2)
    # A step explains the two segments better than one straight line through both? On a steady
    # trend every split looks "significant" to a t-test; this ratio is what tells a trend from a step.
    jump_p, jump_effect = segs.jump_given_trend(a, t, b)
    return p, effect, rel, m1, v1, n1, m2, v2, n2, jump_p, jump_effect


# Up to this many candidates the merge scores every (left, candidate, right) triple it could ever
# meet in one batched call (C(k+2, 3) triples); above it, it rescores round by round first.
_TABLE_MAX = 60
_TRIPLES: dict[int, tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]] = {}


def _triples(m: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """All index triples i < j < l below m (cached per m)."""
    hit = _TRIPLES.get(m)
    if hit is None:
        lo, mid, hi = np.meshgrid(np.arange(m), np.arange(m), np.arange(m), indexing="ij")
        keep = (lo < mid) & (mid < hi)
        hit = (lo[keep], mid[keep], hi[keep])
        _remember(_TRIPLES, m, hit)
    return hit


def _merge(x: NDArray[np.float64], cands: NDArray[np.intp], *, max_pvalue: float, min_effect: float,
           min_magnitude: float, min_size: int, max_trend_pvalue: float,
           min_jump_effect: float, raw: NDArray[np.float64] | None = None) -> NDArray[np.intp]:
    """Drop the weakest candidate until every survivor is strong (see the module docstring).

    A candidate's strength depends only on itself and its two surviving neighbours, so with few
    candidates every possible (left, candidate, right) triple is scored in one batched call and the
    drop loop becomes table look-ups; the answer is the same as rescoring after every drop."""
    n = x.size
    segs = _Segs(x)
    raw_segs = _Segs(raw) if raw is not None and min_magnitude > 0 else None
    cps = np.unique(cands)
    cps = cps[(cps >= min_size) & (cps <= n - min_size)]

    def weakness(a: NDArray, t: NDArray, b: NDArray) -> NDArray[np.float64]:
        """Drop priority of a change at t between a and b; -inf when it is strong enough to keep."""
        m1, v1, n1 = segs.stats(a, t)
        m2, v2, n2 = segs.stats(t, b)
        p = _welch_p(m1, v1, n1, m2, v2, n2)
        effect = _effect(m1, v1, n1, m2, v2, n2)
        rel = _rel_change(m1, m2)
        jt, jdof, je = segs.jump_stat(a, t, b)
        if raw_segs is not None:
            # Relative change only means something in the caller's units, not the standardised ones.
            rel = _rel(raw_segs, a, t, b)
        short = np.minimum(n1, n2) < min_size
        weak = short | (p > max_pvalue) | (effect < min_effect) | (np.abs(rel) < min_magnitude)
        weak |= (jt < _t_crit(jdof, max_trend_pvalue)) | (je < min_jump_effect)
        # Drop the weakest offender: short segments first, then the highest p-value, then the
        # smallest effect.
        key = np.where(short, 10.0, 0.0) + p - np.minimum(effect, 1e6) * 1e-9
        # NaN would never win a max(); np.argmax (the reference behaviour) picks it first.
        key = np.where(np.isnan(key), np.inf, key)
        return np.where(weak, key, -np.inf)

    while cps.size > _TABLE_MAX:
        bounds = np.concatenate(([0], cps, [n]))
        key = weakness(bounds[:-2], bounds[1:-1], bounds[2:])
        best = int(np.argmax(key))
        if key[best] == -np.inf:
            return cps
        # Its neighbours' statistics change, so rescore before the next drop.
        cps = np.delete(cps, best)
    if cps.size == 0:
        return cps
    pts = np.concatenate(([0], cps, [n]))
    m = pts.size
    lo, mid, hi = _triples(m)
    table = np.full(m * m * m, -np.inf)
    table[(lo * m + mid) * m + hi] = weakness(pts[lo], pts[mid], pts[hi])
    look = table.tolist() if m <= 40 else table
    mm = m * m
    bnd = list(range(m))  # positions in pts of the survivors, with both ends
    keys = [float(look[bnd[q] * mm + bnd[q + 1] * m + bnd[q + 2]]) for q in range(m - 2)]
    while keys:
        best = max(range(len(keys)), key=keys.__getitem__)
        if keys[best] == -np.inf:
            break
        del bnd[best + 1], keys[best]
        for q in (best - 1, best):
            if 0 <= q < len(keys):
                keys[q] = float(look[bnd[q] * mm + bnd[q + 1] * m + bnd[q + 2]])
    return pts[bnd[1:-1]]


def _build(x: NDArray[np.float64], cps: NDArray[np.intp], higher_is_better: bool) -> list[ChangePoint]:
    if cps.size == 0:
        return []
    p, effect, rel, m1, v1, n1, m2, v2, n2, _jp, _je = _score(_Segs(x), cps, x.size)
    out = []
    for i, c in enumerate(cps.tolist()):
        out.append(ChangePoint(
            index=int(c), mean_before=float(m1[i]), std_before=float(np.sqrt(v1[i])), mean_after=float(m2[i]),
            std_after=float(np.sqrt(v2[i])), rel_change=float(rel[i]), p_value=float(p[i]),
            direction=_direction(float(m2[i] - m1[i]), higher_is_better), n_before=int(n1[i]),
            n_after=int(n2[i]), effect=float(effect[i]),
        ))
    return out


# --------------------------------------------------------------------------------------------
# public API

DEFAULTS: dict[str, Any] = {
    "window": 48,
    "max_pvalue": 0.001,
    "min_effect": 0.5,
    "min_magnitude": 0.0,
    "min_size": 3,
    "max_trend_pvalue": 1e-6,
    "min_jump_effect": 1.0,
    "spike_threshold": 5.0,
    "spike_half_window": 3,
    "max_curve_ratio": 1.0,
    "season_min_corr": 0.5,
    "max_season": 24,
}


def _edivisive_candidates(x: NDArray[np.float64], window: int, min_size: int) -> NDArray[np.intp]:
    n = x.size
    w = min(window, n)
    if w < 2 * max(min_size, 2):
        return np.empty(0, dtype=np.intp)
    step = max(w // 4, 1)
    starts = np.arange(0, n - w + 1, step)
    if starts[-1] != n - w:
        starts = np.append(starts, n - w)
    taus, _q = _window_best_splits(x, starts.astype(np.intp), w)
    return np.unique(taus)


def detect_change_points(values: Sequence[float] | NDArray[np.float64], *, higher_is_better: bool = True, window: int | None = None,
                         max_pvalue: float | None = None, min_effect: float | None = None,
                         min_magnitude: float | None = None, min_size: int | None = None,
                         spike_threshold: float | None = None, max_trend_pvalue: float | None = None,
                         min_jump_effect: float | None = None,
                         max_curve_ratio: float | None = None, season_min_corr: float | None = None,
                         max_season: int | None = None) -> list[ChangePoint]:
    """Change points of a series in time order; see the module docstring for the method.

    ``min_magnitude`` is a minimum relative change (0.05 = 5 %); ``min_effect`` a minimum
    standardised change (|mean difference| / pooled std); ``spike_threshold`` (robust z) controls
    the spike filter (``0`` disables it). ``max_curve_ratio`` sets the smooth-curve guard: when the
    robust spread of second differences is below this multiple of that of first differences, only
    change points at an outlying first difference survive, since a step on a smooth curve is one
    jump while the curve's bends are not (``0`` disables it). ``season_min_corr`` and ``max_season``
    set the cycle check (see :func:`_season_period`; ``0`` disables it): on a series with a cycle of
    up to ``max_season`` points, change points are searched with the cycle taken out and each must
    still pass the step-versus-trend gate on the values as they are."""
    x = _as_array(values)
    if not np.all(np.isfinite(x)):
        raise ValueError("detect_change_points: values contain NaN or infinity; drop or fill them first")
    opt = dict(DEFAULTS)
    for k, v in (("window", window), ("max_pvalue", max_pvalue), ("min_effect", min_effect),
                 ("min_magnitude", min_magnitude), ("min_size", min_size), ("spike_threshold", spike_threshold),
                 ("max_trend_pvalue", max_trend_pvalue), ("min_jump_effect", min_jump_effect),
                 ("max_curve_ratio", max_curve_ratio), ("season_min_corr", season_min_corr),
                 ("max_season", max_season)):
        if v is not None:
            opt[k] = v
    ms = int(opt["min_size"])
    if x.size < 2 * ms:
        return []
    period = _season_period(x, int(opt["max_season"]), float(opt["season_min_corr"]))
    if period:
        cps = _season_gate(x, _search(_deseason(x, period), opt), opt)
    else:
        cps = _search(x, opt)
    # Report statistics on the raw values (what the user sees).
    return _build(x, cps, higher_is_better)


def _search(x: NDArray[np.float64], opt: dict[str, Any]) -> NDArray[np.intp]:
    """Change point indices of ``x``: spike filter, E-Divisive candidates, merge, refine, curve guard."""
    ms = int(opt["min_size"])
    if opt["spike_threshold"]:
        mask = spike_mask(x, threshold=float(opt["spike_threshold"]), half_window=int(opt["spike_half_window"]))
        xc = _despike(x, mask, int(opt["spike_half_window"]))
    else:
        xc = x
    # Detection is scale-free; standardising keeps the prefix sums of squares well conditioned.
    scale = float(np.std(xc))
    xc = (xc - float(np.median(xc))) / (scale if scale > _EPS else 1.0)
    cands = _edivisive_candidates(xc, int(opt["window"]), ms)
    cps = _merge(xc, cands, max_pvalue=float(opt["max_pvalue"]), min_effect=float(opt["min_effect"]),
                 min_magnitude=float(opt["min_magnitude"]), min_size=ms,
                 max_trend_pvalue=float(opt["max_trend_pvalue"]),
                 min_jump_effect=float(opt["min_jump_effect"]), raw=x)
    cps = _refine(x, cps, 1)
    return _curve_guard(x, cps, float(opt["max_curve_ratio"]), float(opt["spike_threshold"]) or 5.0,
                        int(opt["spike_half_window"]))


def _season_period(x: NDArray[np.float64], max_period: int, min_corr: float) -> int:
    """The length of a strong cycle in ``x`` (4 to ``max_period`` points), or 0 when there is none.

    First differences remove the level and any trend; a cycle of p points then shows as differences
    that correlate at lag p and move against each other half a cycle apart (a trend's or a random
    walk's do not). The cycle is the lag with the highest such correlation, at least ``min_corr``."""
    if min_corr <= 0:
        return 0
    d = np.diff(x)
    d = d - d.mean()
    hi = min(max_period, d.size // 4)
    den = float(d @ d)
    if hi < 4 or den <= _EPS:
        return 0
    ac = np.array([float(d[p:] @ d[:-p]) for p in range(1, hi + 1)]) / den
    lags = np.arange(4, hi + 1)
    ok = ac[lags // 2 - 1] < 0
    if not ok.any():
        return 0
    best = int(np.argmax(np.where(ok, ac[lags - 1], -np.inf)))
    return int(lags[best]) if ac[lags[best] - 1] >= min_corr else 0


def _deseason(x: NDArray[np.float64], p: int) -> NDArray[np.float64]:
    """``x`` less its cycle of ``p`` points: the median, per phase, of the departures from a centred
    moving average over one cycle. On the logarithm when every value is positive, since a load
    cycle scales with the level (a step moves the night's throughput by the same fraction as the
    day's)."""
    positive = bool(np.all(x > 0))
    z = np.log(x) if positive else x
    n = z.size
    k = np.ones(p) / p
    if p % 2 == 0:
        k = np.convolve(k, [0.5, 0.5])
    h = (k.size - 1) // 2
    resid = z - np.convolve(z, k, mode="same")
    idx = np.arange(n)
    valid = (idx >= h) & (idx < n - h)
    prof = np.array([np.median(resid[ph::p][valid[ph::p]]) for ph in range(p)])
    prof -= prof.mean()
    y = z - np.tile(prof, n // p + 1)[:n]
    return np.exp(y) if positive else y


def _season_gate(x: NDArray[np.float64], cps: NDArray[np.intp], opt: dict[str, Any]) -> NDArray[np.intp]:
    """Keep the change points found with the cycle taken out that pass the step-versus-trend gate on
    ``x`` itself, between their neighbours. Taking a cycle out leaves slow wiggles that the t-tests
    read as steps; against the spread of the series around a line, the cycle included, only a step
    at least comparable with the cycle stands out."""
    if cps.size == 0:
        return cps
    scale = float(np.std(x))
    segs = _Segs((x - float(np.median(x))) / (scale if scale > _EPS else 1.0))
    bounds = np.concatenate(([0], cps, [x.size]))
    tstat, dof, jump = segs.jump_stat(bounds[:-2], bounds[1:-1], bounds[2:])
    keep = (tstat >= _t_crit(dof, float(opt["max_trend_pvalue"]))) & (jump >= float(opt["min_jump_effect"]))
    return cps[keep]


def _refine(x: NDArray[np.float64], cps: NDArray[np.intp], reach: int) -> NDArray[np.intp]:
    """Move each change point by up to ``reach`` to where the raw series splits best.

    The spike filter can pull the first point of a new level half-way back (its neighbourhood
    median straddles the step), which would put the change one point late."""
    if cps.size == 0:
        return cps
    n = x.size
    segs = _Segs(x)
    bounds = np.concatenate(([0], cps, [n]))
    offs = np.arange(-reach, reach + 1)
    a = bounds[:-2, None]
    b = bounds[2:, None]
    t = np.clip(cps[:, None] + offs[None, :], a + 1, b - 1)
    m1, _v1, n1 = segs.stats(np.broadcast_to(a, t.shape), t)
    m2, _v2, n2 = segs.stats(t, np.broadcast_to(b, t.shape))
    score = np.abs(m2 - m1) * np.sqrt(n1 * n2 / (n1 + n2))
    best = t[np.arange(cps.size), np.argmax(score, axis=1)]
    return np.unique(best)


def _robust_sd(v: NDArray[np.float64]) -> float:
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _curve_guard(x: NDArray[np.float64], cps: NDArray[np.intp], max_ratio: float, threshold: float,
                 half_window: int) -> NDArray[np.intp]:
    """On a smooth curve, keep only the change points where the curve itself jumps.

    When consecutive first differences are strongly alike (robust sd of the second differences below
    ``max_ratio`` times that of the first: 1.73 for white noise, 1.41 for a random walk), the series
    moves in smooth runs, and every bend of it looks like a step to the t-tests. A level step on such
    a curve is one outlying first difference, i.e. a spike of the differenced series."""
    if cps.size == 0 or x.size < 2 * half_window + 3 or max_ratio <= 0:
        return cps
    d1 = np.diff(x)
    s1 = _robust_sd(d1)
    if s1 <= _EPS or _robust_sd(np.diff(d1)) >= max_ratio * s1:
        return cps
    jumps = spike_mask(d1, threshold=threshold, half_window=half_window)
    # x[c] - x[c-1] is d1[c-1]; one point of slack either side, as _refine moves a change by one.
    keep = [bool(jumps[max(c - 2, 0):c + 1].any()) for c in cps.tolist()]
    return cps[np.asarray(keep, dtype=bool)]
