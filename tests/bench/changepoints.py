"""Change-point accuracy: TCPD (univariate series), a synthetic benchmark-like set, and a second,
independent synthetic set (held out from tuning; see synthetic_heldout), and a synthetic set of
series with a load cycle (see synthetic_seasonal).

Scoring as TCPDBench does (../shared/datasets/README.md): F1 with a margin of 5 points, index 0
added to every annotator's set and to the predictions, precision against the union of the
annotators' points, recall the mean over annotators. The "zero" baseline (no change points) is
reported beside the detector for every set; heldout_drift_false_changes counts the change points
reported on the held-out set's drift-only series (should be 0), seasonal_trend_false_changes those on
the seasonal set's cycle-plus-trend series (should be 0).

    .venv/bin/python tests/bench/changepoints.py [--data PATH]

Last line of output: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dtf_gui.coordinator.aggregator import detect_change_points

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared/datasets/tcpd"
MARGIN = 5


def true_positives(truth: Sequence[int], pred: Sequence[int], margin: int = MARGIN) -> set[int]:
    """TCPDBench's matching: each true point is matched at most once, to the closest free prediction."""
    used: set[int] = set()
    tps: set[int] = set()
    preds = set(pred)
    for t in truth:
        close = [(abs(t - p), p) for p in preds if abs(t - p) <= margin and p not in used]
        if not close:
            continue
        _, best = min(close)
        used.add(best)
        tps.add(t)
    return tps


def f_measure(annotations: dict[str, list[int]], predictions: Sequence[int], margin: int = MARGIN) -> float:
    annotations = {k: sorted(set(v) | {0}) for k, v in annotations.items()}
    predictions = sorted(set(predictions) | {0})
    union = sorted(set().union(*annotations.values()))
    precision = len(true_positives(union, predictions, margin)) / len(predictions)
    recalls = [len(true_positives(a, predictions, margin)) / len(a) for a in annotations.values()]
    recall = float(np.mean(recalls))
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def load_tcpd(root: Path) -> list[tuple[str, np.ndarray, dict[str, list[int]]]]:
    ann_path = root / "annotations.json"
    if not ann_path.is_file():
        raise SystemExit(f"TCPD not found: {ann_path} does not exist (pass --data PATH)")
    annotations = json.loads(ann_path.read_text())
    out = []
    for path in sorted((root / "datasets").glob("*/*.json")):
        data = json.loads(path.read_text())
        if data["n_dim"] != 1:
            continue
        raw = np.array([np.nan if v is None else v for v in data["series"][0]["raw"]], dtype=np.float64)
        # A few series have gaps; carry the previous value forward (as the TCPDBench wrappers do).
        if np.isnan(raw).any():
            idx = np.where(~np.isnan(raw), np.arange(raw.size), 0)
            np.maximum.accumulate(idx, out=idx)
            raw = raw[idx]
            raw[np.isnan(raw)] = np.nanmean(raw)
        out.append((data["name"], raw, annotations[data["name"]]))
    return out


def synthetic(n_series: int = 100, n: int = 500, seed: int = 20240501) -> list[tuple[str, np.ndarray, list[int]]]:
    """Benchmark-like series: 3% Gaussian noise, 1% single-point spikes, level shifts of 2-8%."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_series):
        k = int(rng.integers(0, 5))
        cps: list[int] = []
        while len(cps) < k:
            c = int(rng.integers(30, n - 30))
            if all(abs(c - o) >= 30 for o in cps):
                cps.append(c)
        cps.sort()
        level = np.full(n, 100.0)
        lvl = 100.0
        for c in cps:
            lvl *= 1 + rng.choice([-1, 1]) * rng.uniform(0.02, 0.08)
            level[c:] = lvl
        x = level * (1 + 0.03 * rng.standard_normal(n))
        spikes = rng.random(n) < 0.01
        x[spikes] *= 1 + rng.choice([-1, 1], spikes.sum()) * rng.uniform(0.15, 0.4, spikes.sum())
        out.append((f"synthetic_{s}", x, cps))
    return out


def synthetic_heldout(n_series: int = 120, seed: int = 7319) -> list[tuple[str, np.ndarray, list[int]]]:
    """A second, independent set (other seed and shapes), to guard against tuning to the first:
    Student-t noise (4 dof) of 1-5%, steps of 3-15%, short series (60-200 points), and a quarter of
    the series a slow linear drift of 3-10% over the whole series with no step (truth: none)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_series):
        n = int(rng.integers(60, 201))
        noise = rng.uniform(0.01, 0.05)
        eps = noise * rng.standard_t(4, n) / np.sqrt(2.0)  # t(4) has variance 2: scale to sd `noise`
        if s % 4 == 3:
            drift = rng.choice([-1, 1]) * rng.uniform(0.03, 0.10)
            x = 100.0 * np.linspace(1.0, 1.0 + drift, n) * (1 + eps)
            out.append((f"heldout_drift_{s}", x, []))
            continue
        k = int(rng.integers(0, 4))
        gap = 20
        cps: list[int] = []
        for _ in range(200):
            if len(cps) >= k:
                break
            c = int(rng.integers(gap, n - gap))
            if all(abs(c - o) >= gap for o in cps):
                cps.append(c)
        cps.sort()
        level = np.full(n, 100.0)
        lvl = 100.0
        for c in cps:
            lvl *= 1 + rng.choice([-1, 1]) * rng.uniform(0.03, 0.15)
            level[c:] = lvl
        x = level * (1 + eps)
        out.append((f"heldout_{s}", x, cps))
    return out


def synthetic_seasonal(n_series: int = 90, seed: int = 4242) -> list[tuple[str, np.ndarray, list[int]]]:
    """Series with a load cycle (a nightly or weekly pattern): period 7, 12 or 24, sine or square,
    3-15% of the level, 1-3% Gaussian noise, 150-400 points, the cycle scaling with the level in half
    of them. A third have no change, a third one step of 5-15%, a third a linear trend of 5-30% over
    the series and no step (truth: none)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_series):
        kind = ("flat", "step", "trend")[s % 3]
        p = int(rng.choice([7, 12, 24]))
        n = max(int(rng.integers(8 * p if p < 24 else 6 * p, 401)), 150)
        ph = np.arange(n) % p
        amp = rng.uniform(0.03, 0.15)
        cycle = np.sin(2 * np.pi * ph / p) if s % 2 == 0 else np.where(ph < p // 2, 1.0, -1.0)
        noise = rng.uniform(0.01, 0.03)
        level = np.full(n, 100.0)
        cps: list[int] = []
        if kind == "step":
            c = int(rng.integers(2 * p, n - 2 * p))
            level[c:] *= 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.15)
            cps = [c]
        elif kind == "trend":
            level *= np.linspace(1.0, 1.0 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.3), n)
        scales_with_level = rng.random() < 0.5
        seasonal = (level if scales_with_level else 100.0) * amp * cycle
        x = (level + seasonal) * (1 + noise * rng.standard_normal(n))
        out.append((f"seasonal_{kind}_p{p}_{s}", x, cps))
    return out


def run(detector: Callable[[np.ndarray], list[int]], data_root: Path) -> dict[str, object]:
    tcpd = load_tcpd(data_root)
    t0 = time.perf_counter()
    per_series = {}
    zero = {}
    for name, x, ann in tcpd:
        per_series[name] = f_measure(ann, detector(x))
        zero[name] = f_measure(ann, [])
    t_tcpd = time.perf_counter() - t0
    syn = synthetic()
    t0 = time.perf_counter()
    syn_f1 = [f_measure({"truth": cps}, detector(x)) for _name, x, cps in syn]
    syn_zero = [f_measure({"truth": cps}, []) for _name, x, cps in syn]
    t_syn = time.perf_counter() - t0
    held = synthetic_heldout()
    held_f1 = [f_measure({"truth": cps}, detector(x)) for _name, x, cps in held]
    held_zero = [f_measure({"truth": cps}, []) for _name, x, cps in held]
    drift_fp = sum(len(detector(x)) for name, x, _cps in held if "drift" in name)
    seas = synthetic_seasonal()
    seas_pred = {name: detector(x) for name, x, _cps in seas}
    seas_f1 = [f_measure({"truth": cps}, seas_pred[name]) for name, _x, cps in seas]
    seas_zero = [f_measure({"truth": cps}, []) for _name, _x, cps in seas]
    return {
        "tcpd_series": len(tcpd),
        "tcpd_f1": round(float(np.mean(list(per_series.values()))), 4),
        "tcpd_zero_f1": round(float(np.mean(list(zero.values()))), 4),
        "tcpd_goal": 0.80,
        "synthetic_series": len(syn),
        "synthetic_f1": round(float(np.mean(syn_f1)), 4),
        "synthetic_zero_f1": round(float(np.mean(syn_zero)), 4),
        "synthetic_goal": 0.80,
        "heldout_series": len(held),
        "heldout_f1": round(float(np.mean(held_f1)), 4),
        "heldout_zero_f1": round(float(np.mean(held_zero)), 4),
        "heldout_drift_series": sum("drift" in name for name, _x, _c in held),
        "heldout_drift_false_changes": drift_fp,
        "seasonal_series": len(seas),
        "seasonal_f1": round(float(np.mean(seas_f1)), 4),
        "seasonal_zero_f1": round(float(np.mean(seas_zero)), 4),
        "seasonal_flat_false_changes": sum(len(v) for k, v in seas_pred.items() if "_flat_" in k),
        "seasonal_trend_false_changes": sum(len(v) for k, v in seas_pred.items() if "_trend_" in k),
        "tcpd_seconds": round(t_tcpd, 3),
        "synthetic_seconds": round(t_syn, 3),
        "per_series": {k: round(v, 3) for k, v in per_series.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="TCPD root (holds annotations.json)")
    args = ap.parse_args()

    def detector(x: np.ndarray) -> list[int]:
        return [cp.index for cp in detect_change_points(x)]

    result = run(detector, args.data)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
