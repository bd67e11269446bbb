"""`dtf pytest` against pytest-xdist: a suite spread over local agents, wall clock side by side.

  .venv/bin/python tests/bench/pytest_spread.py [--tests 400] [--seed 1] [--agents 2,4] [--runs 3]
  .venv/bin/python tests/bench/pytest_spread.py --suite DIR [--agents 2] [--runs 3]

Without --suite, a suite is generated in a temporary directory (seeded): --tests tests that sleep
for lognormal durations (median --median-ms, shape --sigma, capped at --cap-s), spread at random
over --files files, a few of them failing and a few skipped. With --suite DIR, DIR's own suite
is used as it is (a third-party library's tests, run from its source directory).

Plain `pytest` runs once, serially, for the reference counts. Then, for each agent count N, each
of --runs repetitions starts a fresh coordinator home (so the first run truly has no duration
history: history is kept per test id, across run names) with N agents of one slot each, and
times, as wall clock of the whole command:
- `pytest -n N` (pytest-xdist), before the dtf pair in even repetitions and after it in odd ones,
  so that a drift of the machine's load does not favour one side;
- `dtf pytest`, first run: nothing known, shards by file;
- `dtf pytest`, second run: every test's duration known, shards by LPT.
The passed/failed/skipped/... counts of every run must equal plain pytest's; a mismatch is
printed and the script exits 1 (after the JSON).

Reported per N, as medians over the repetitions: the three walls, the ratios dtf/xdist (each the
median of the per-repetition ratios, measured in the same repetition), the lower bound of any
schedule on N workers from the second run's per-test durations (max(sum / N, longest test)),
the second run's expected makespan (its plan), and where the dtf walls went: before the first
shard started (CLI start, local collection, bundle, dispatch, bundle fetch and unpack), the span
of the shards, after the last one ended, and the per-shard overhead (a shard's time minus the
sum of its tests' durations: pytest starting and collecting on the agent), the longest shard by
its tests' durations alone (how well the plan balanced) and the test files a shard collects.
--no-autoload sets PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 for every pytest (plain, xdist, dtf's local
collection, the shards): each pytest start then skips the entry-point plugins installed next to
pytest, which can cost seconds a start (hypothesis's plugin alone, in the project's own venv).
pytest-xdist must be installed (the script says how and exits 2 when it is not).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dtf_gui.shards import lower_bound  # noqa: E402
from tests.helpers import ProcessTracker, Serve, dtf_command  # noqa: E402

PYTHON = sys.executable
INSTALL_XDIST = f"{Path(PYTHON).parent / 'pip'} install pytest-xdist"
# The outcomes both sides count; pytest's "warnings" and "deselected" are not test outcomes.
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error", "crashed", "flaky")
# "765 passed, 21194 subtests passed in 51.73s": a count's words may be two (pytest 9's subtests).
SUMMARY_RE = re.compile(r"^=*\s*(\d+ [a-z][a-z ]*(?:, \d+ [a-z][a-z ]*)*) in ([\d.]+)s")


# -------------------------------------------------------------------------------------------
# the generated suite


def make_suite(dest: Path, *, tests: int, seed: int, files: int, median_ms: float, sigma: float, cap_s: float,
               failing: int, skipped: int) -> list[float]:
    """Write the suite into ``dest``; returns the sleep of each test (skipped ones sleep 0)."""
    rng = random.Random(seed)
    durations = [min(cap_s, max(0.001, rng.lognormvariate(math.log(median_ms / 1000), sigma)))
                 for _ in range(tests)]
    picked = rng.sample(range(tests), min(tests, failing + skipped))
    fail, skip = set(picked[:failing]), set(picked[failing:])
    per_file: dict[int, list[str]] = {}
    for i, d in enumerate(durations):
        # Files of uneven length, as real suites have: a first run balanced by file is then uneven too.
        f = rng.randrange(files)
        if i in skip:
            body = (f'@pytest.mark.skip(reason="generated skip")\n'
                    f'def test_g{i:04d}():\n    time.sleep({d:.6f})\n')
        elif i in fail:
            body = (f'def test_g{i:04d}():\n    time.sleep({d:.6f})\n'
                    f'    assert {i} == -1, "generated failure"\n')
        else:
            body = f"def test_g{i:04d}():\n    time.sleep({d:.6f})\n"
        per_file.setdefault(f, []).append(body)
    dest.mkdir(parents=True, exist_ok=True)
    for f, bodies in sorted(per_file.items()):
        (dest / f"test_gen_{f:02d}.py").write_text("import time\n\nimport pytest\n\n\n" + "\n\n".join(bodies),
                                                   encoding="utf-8")
    # A conftest as most suites have one: every test module imports through it.
    (dest / "conftest.py").write_text(textwrap.dedent("""\
        import pytest


        @pytest.fixture(autouse=True, scope="module")
        def _module_marker(request):
            yield request.module.__name__
    """), encoding="utf-8")
    return [0.0 if i in skip else d for i, d in enumerate(durations)]


# -------------------------------------------------------------------------------------------
# commands


@dataclass
class Timed:
    seconds: float
    code: int
    out: str
    started: float  # time.time() at the start, to set the coordinator's task times against


def timed(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Timed:
    """Run ``argv`` to completion in its own process group; the wall clock of the whole command.
    Whatever it leaves running (xdist workers after a timeout) goes with the group."""
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        seconds = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(argv)} took more than {timeout:g} s") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return Timed(seconds, proc.returncode, out.decode("utf-8", "replace"), started)


def counts_of(out: str) -> dict[str, int] | None:
    """The outcome counts of pytest's (or dtf pytest's) last summary line; None when there is none."""
    for line in reversed(out.splitlines()):
        m = SUMMARY_RE.match(line.strip())
        if m:
            counts: dict[str, int] = {}
            for part in m.group(1).split(", "):
                n, word = part.split(" ", 1)
                word = {"errors": "error"}.get(word, word)
                if word in OUTCOMES:
                    counts[word] = int(n)
            return counts
    return None


def pytest_cmd(*extra: str) -> list[str]:
    return [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-q", *extra]


def xdist_cmd(n: int, autoload: bool) -> list[str]:
    # Without entry-point plugins xdist must be named; its workers inherit the -p.
    return pytest_cmd(*([] if autoload else ["-p", "xdist.plugin"]), "-n", str(n))


# -------------------------------------------------------------------------------------------
# a coordinator with N agents


@dataclass
class Lab:
    """A fresh `dtf serve` home with ``agents`` agents of one slot; close() stops every process."""

    agents: int
    base: Path
    base_env: dict[str, str]
    tracker: ProcessTracker = field(init=False)
    serve: Serve | None = field(init=False, default=None)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        home, logs = self.base / "home", self.base / "logs"
        home.mkdir(parents=True)
        logs.mkdir()
        self.env = dict(self.base_env, DTF_HOME=str(home), PYTHONUNBUFFERED="1")
        self.tracker = ProcessTracker(logs)
        try:
            self.serve = Serve(self.tracker, home, self.env, "--no-mdns")
            names = [f"spread-{i}" for i in range(self.agents)]
            for name in names:
                self.serve.start_agent(name, slots=1)
            self.serve.wait_workers_online(*names, timeout=60)
        except BaseException:
            self.close()
            raise

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        assert self.serve is not None
        return self.serve.call(op, args)

    def close(self) -> None:
        if self.serve is not None:
            self.serve.close()
        self.tracker.close()


@dataclass
class DtfRun:
    timed: Timed
    run_id: str
    counts: dict[str, int] | None
    meta: dict[str, Any]
    durations: list[float]  # each test's latest row
    pre_s: float  # command start to the first shard's start
    span_s: float  # first shard's start to the last one's end
    post_s: float  # the last shard's end to the command's end
    shard_overhead_s: float  # median over shards: shard time minus its tests' durations
    tests_makespan_s: float  # the longest shard's sum of test durations: the plan's balance, overheads aside

    @property
    def files_per_shard(self) -> float:
        """Test files a shard collects, on average: each costs its import on every shard that has it."""
        plan = self.meta.get("plan") or []
        return statistics.mean(len({t.split("::", 1)[0] for t in tests}) for tests in plan) if plan else 0.0


def dtf_pytest(lab: Lab, suite: Path, timeout: float) -> DtfRun:
    t = timed(dtf_command("dtf") + ["pytest"], suite, lab.env, timeout)
    m = re.search(r"dtf pytest: run (\S+)", t.out)
    if not m:
        raise RuntimeError(f"dtf pytest printed no run id (exit {t.code}):\n{t.out[-4000:]}")
    run_id = m.group(1)
    meta = lab.call("get_run", {"run_id": run_id}).get("meta") or {}
    rows = lab.call("run_tests", {"run_id": run_id})
    latest: dict[str, dict[str, Any]] = {}
    per_task: dict[str, float] = {}
    for r in rows:
        latest[r["test_id"]] = r
        per_task[r["task_id"]] = per_task.get(r["task_id"], 0.0) + float(r["duration"] or 0.0)
    spans = []
    for tid in per_task:
        task = lab.call("get_task", {"task_id": tid})
        start, end = task.get("start_time"), task.get("end_time")
        if start and end:
            spans.append((float(start), float(end), per_task[tid]))
    end_of_cmd = t.started + t.seconds
    first = min((s for s, _, _ in spans), default=end_of_cmd)
    last = max((e for _, e, _ in spans), default=end_of_cmd)
    return DtfRun(t, run_id, counts_of(t.out), meta, [float(r["duration"] or 0.0) for r in latest.values()],
                  pre_s=first - t.started, span_s=last - first, post_s=end_of_cmd - last,
                  shard_overhead_s=statistics.median([e - s - d for s, e, d in spans]) if spans else 0.0,
                  tests_makespan_s=max(per_task.values(), default=0.0))


# -------------------------------------------------------------------------------------------


def describe(run: DtfRun) -> str:
    return (f"{run.timed.seconds:.2f} s ({run.meta.get('shards')} shards of {run.files_per_shard:.1f} files, "
            f"expected {float(run.meta.get('expected_makespan') or 0):.2f} s, longest by its tests "
            f"{run.tests_makespan_s:.2f} s; before the first shard {run.pre_s:.2f} s, shards "
            f"{run.span_s:.2f} s, after {run.post_s:.2f} s, per-shard overhead {run.shard_overhead_s:.2f} s)")


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def check_counts(what: str, got: dict[str, int] | None, want: dict[str, int], out: str) -> bool:
    if got == want:
        return True
    print(f"COUNTS MISMATCH: {what} gave {got}, plain pytest {want}; the end of its output:\n{out[-3000:]}",
          flush=True)
    return False


def measure(n: int, suite: Path, runs: int, want: dict[str, int], timeout: float, work: Path,
            env: dict[str, str], autoload: bool) -> tuple[dict[str, Any], bool]:
    xdist_s: list[float] = []
    first_s: list[float] = []
    second_s: list[float] = []
    ratio_first: list[float] = []
    ratio_second: list[float] = []
    bounds: list[float] = []
    expected: list[float] = []
    parts: dict[str, list[float]] = {}
    ok = True
    collected = 0
    for rep in range(runs):
        lab = Lab(n, work / f"lab-{n}-{rep}", env)
        xdist = xdist_cmd(n, autoload)
        try:
            x = timed(xdist, suite, lab.env, timeout) if rep % 2 == 0 else None
            first = dtf_pytest(lab, suite, timeout)
            second = dtf_pytest(lab, suite, timeout)
            if x is None:
                x = timed(xdist, suite, lab.env, timeout)
        finally:
            lab.close()
        ok &= check_counts(f"pytest -n {n} (repetition {rep + 1})", counts_of(x.out), want, x.out)
        ok &= check_counts(f"dtf pytest first run (N={n}, repetition {rep + 1})", first.counts, want,
                           first.timed.out)
        ok &= check_counts(f"dtf pytest second run (N={n}, repetition {rep + 1})", second.counts, want,
                           second.timed.out)
        if first.meta.get("known"):
            print(f"warning: the first run knew {first.meta['known']} durations already", flush=True)
        collected = int(first.meta.get("collected") or 0)
        xdist_s.append(x.seconds)
        first_s.append(first.timed.seconds)
        second_s.append(second.timed.seconds)
        ratio_first.append(first.timed.seconds / x.seconds)
        ratio_second.append(second.timed.seconds / x.seconds)
        bounds.append(lower_bound(second.durations, n))
        expected.append(float(second.meta.get("expected_makespan") or 0.0))
        for label, run in (("first", first), ("second", second)):
            parts.setdefault(f"{label}_shards", []).append(float(run.meta.get("shards") or 0))
            parts.setdefault(f"{label}_pre_s", []).append(run.pre_s)
            parts.setdefault(f"{label}_span_s", []).append(run.span_s)
            parts.setdefault(f"{label}_post_s", []).append(run.post_s)
            parts.setdefault(f"{label}_shard_overhead_s", []).append(run.shard_overhead_s)
            parts.setdefault(f"{label}_tests_makespan_s", []).append(run.tests_makespan_s)
            parts.setdefault(f"{label}_files_per_shard", []).append(run.files_per_shard)
        print(f"N={n} rep {rep + 1}: xdist {x.seconds:.2f} s; dtf first {describe(first)}; dtf second "
              f"{describe(second)}, lower bound {bounds[-1]:.2f} s", flush=True)
    result = {"xdist_s": med(xdist_s), "dtf_first_s": med(first_s), "dtf_second_s": med(second_s),
              "ratio_first": med(ratio_first), "ratio_second": med(ratio_second),
              "lower_bound_s": med(bounds), "expected_makespan_s": med(expected),
              "second_vs_lower_bound": med([s / b for s, b in zip(second_s, bounds, strict=True) if b > 0]),
              "breakdown": {k: med(v) for k, v in parts.items()}, "collected": collected}
    return result, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--median-ms", type=float, default=20.0, help="the median test's sleep")
    ap.add_argument("--sigma", type=float, default=1.5, help="the lognormal's shape: the tail's weight")
    ap.add_argument("--cap-s", type=float, default=2.0, help="the longest sleep")
    ap.add_argument("--failing", type=int, default=4)
    ap.add_argument("--skipped", type=int, default=8)
    ap.add_argument("--agents", help="agent counts, comma-separated (default 2,4; 2 with --suite)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--suite", type=Path, help="an existing suite's directory instead of the generated one")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for any one command")
    ap.add_argument("--no-autoload", action="store_true",
                    help="PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 for every pytest (plain, xdist, dtf's collection, "
                         "the shards): the comparison without the start-up cost of the installed plugins")
    args = ap.parse_args()
    if importlib.util.find_spec("xdist") is None:
        print(f"pytest-xdist is needed for the comparison; install it with:\n  {INSTALL_XDIST}",
              file=sys.stderr)
        sys.exit(2)
    agents = [int(a) for a in (args.agents or ("2" if args.suite else "2,4")).split(",")]

    work = Path(tempfile.mkdtemp(prefix="dtf-bench-spread-"))
    # In the order the reader wants them; "tests" is filled in once dtf has collected the suite.
    report: dict[str, Any] = {"bench": "pytest_spread", "tests": args.tests}
    try:
        if args.suite:
            suite = args.suite.resolve()
            report["suite"] = str(suite)
        else:
            suite = work / "spread_suite"
            sleeps = make_suite(suite, tests=args.tests, seed=args.seed, files=args.files,
                                median_ms=args.median_ms, sigma=args.sigma, cap_s=args.cap_s,
                                failing=args.failing, skipped=args.skipped)
            report.update(seed=args.seed, sleep_total_s=round(sum(sleeps), 3),
                          longest_s=round(max(sleeps), 3))
            print(f"generated {args.tests} tests in {args.files} files: {sum(sleeps):.1f} s of sleep, "
                  f"longest {max(sleeps):.2f} s, median {statistics.median(sleeps) * 1000:.0f} ms",
                  flush=True)
        env = dict(os.environ)
        if args.no_autoload:
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        report["autoload"] = not args.no_autoload
        plain = timed(pytest_cmd(), suite, env, args.timeout)
        want = counts_of(plain.out)
        if want is None:
            print(f"plain pytest printed no summary line (exit {plain.code}):\n{plain.out[-4000:]}",
                  file=sys.stderr)
            sys.exit(1)
        print(f"plain pytest: {want} in {plain.seconds:.2f} s", flush=True)
        report["plain_s"] = round(plain.seconds, 3)
        report["agents"] = {}
        ok = True
        for n in agents:
            result, good = measure(n, suite, args.runs, want, args.timeout, work, env, not args.no_autoload)
            report["agents"][str(n)] = result
            # What dtf collected: plain pytest's counts may name one test twice (a failed call and
            # an error in its teardown are "1 failed, 1 error").
            report["tests"] = result.pop("collected") or sum(want.values())
            ok &= good
        report["runs"] = args.runs
        report["counts"] = want
        report["counts_match"] = ok
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))
    if not report.get("counts_match"):
        sys.exit(1)


if __name__ == "__main__":
    main()
