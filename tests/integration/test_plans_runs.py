"""Plans, runs and baselines for real: `dtf plan check|run` against a `dtf serve` with an agent,
`dtf runs`, and `dtf analyze compare --run` using the direction a task declared for its metric."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Serve, dtf_command, serve_lab

AGENT = "plan-box"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("plans")
    with serve_lab(root, {AGENT: 2}) as (serve, env):
        yield serve, env, root


def dtf(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dtf_command("dtf") + list(args), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=180, check=False)


def test_a_typo_in_a_plan_is_refused_with_its_line(lab: tuple[Serve, dict[str, str], Path]) -> None:
    _, env, root = lab
    bad = root / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - name: build\n    comand: make\n  - name: test\n    needs: [biuld]\n"
                   "    command: make test\n")
    proc = dtf(env, "plan", "check", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:4:" in proc.stderr and "'command'" in proc.stderr, proc.stderr


def test_the_example_plan_runs_and_is_a_run(lab: tuple[Serve, dict[str, str], Path]) -> None:
    serve, env, _ = lab
    example = REPO / "resources" / "plans" / "example.yaml"
    check = dtf(env, "plan", "check", str(example))
    assert check.returncode == 0 and "plan OK: 14 tasks in 3 steps" in check.stdout, check.stdout + check.stderr
    proc = dtf(env, "plan", "run", str(example), "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = serve.call("list_runs", {"name": "example-bench"})
    assert len(runs) == 1 and runs[0]["kind"] == "plan" and runs[0]["status"] == "passed"
    assert runs[0]["results"] == {"success": 14}
    # Every result carries its run; the metrics of the bench step landed with their declared units.
    rows = serve.db().execute("SELECT count(*), count(DISTINCT run_id) FROM results WHERE run_id = ?",
                              (runs[0]["run_id"],)).fetchone()
    assert tuple(rows) == (14, 1)
    info = serve.call("metric_info", {"names": ["throughput_mb_s", "latency_ms"]})
    assert (info["throughput_mb_s"]["unit"], info["throughput_mb_s"]["direction"]) == ("MB/s", "higher")
    assert info["latency_ms"]["direction"] == "lower"
    listed = dtf(env, "runs")
    assert listed.returncode == 0 and runs[0]["run_id"] in listed.stdout and "14 success" in listed.stdout


PLAN = """\
name: drop-test
steps:
  - name: measure
    command: python3 {script}
    repeat: 4
    test_id: copy
"""

# Writes VALUE (from a file beside it) as copy_mb_s, and declares it lower-is-better:
# the opposite of what the name suggests, so only a declared direction can give "improved".
SCRIPT = """\
import json, os, pathlib, random
value = float(pathlib.Path({value!r}).read_text()) * random.uniform(0.99, 1.01)
json.dump({{"metrics": {{"copy_mb_s": value}}, "units": {{"copy_mb_s": "MB/s"}},
           "directions": {{"copy_mb_s": "lower"}}}}, open(os.environ["DTF_RESULT_FILE"], "w"))
"""


def test_a_declared_lower_is_better_drop_is_an_improvement(lab: tuple[Serve, dict[str, str], Path]) -> None:
    serve, env, root = lab
    value, script, plan = root / "value", root / "measure.py", root / "drop.yaml"
    script.write_text(SCRIPT.format(value=str(value)))
    plan.write_text(PLAN.format(script=script))
    value.write_text("100")
    first = dtf(env, "plan", "run", str(plan), "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    value.write_text("79")  # 21 % less
    second = dtf(env, "plan", "run", str(plan), "--wait")
    assert second.returncode == 0, second.stdout + second.stderr
    runs = serve.call("list_runs", {"name": "drop-test"})
    assert len(runs) == 2
    newest, older = runs[0]["run_id"], runs[1]["run_id"]
    out = dtf(env, "analyze", "compare", "--run", newest, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["baseline"]["run_id"] == older  # the previous run of the same name, by default
    (row,) = [r for r in data["metrics"] if r["metric"] == "copy_mb_s"]
    assert row["verdict"] == "improved" and row["direction"] == "lower" and row["direction_source"] == "declared"
    assert row["unit"] == "MB/s" and -0.23 < row["rel_change"] < -0.19
    shown = dtf(env, "analyze", "compare", "--run", newest, "--baseline", older)
    assert shown.returncode == 0 and "improved" in shown.stdout and "lower (declared)" in shown.stdout, shown.stdout
