"""YAML test plans: loading with line-exact errors, expansion into create_task arguments, `dtf plan`."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dtf_agent.config import ConfigError
from dtf_gui import cli_common, cli_plans
from dtf_gui.coordinator.plans import (
    Plan,
    PlanError,
    count,
    describe,
    expand,
    load_plan,
    load_plan_text,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "resources" / "plans" / "example.yaml"

NIGHTLY = """\
name: nightly-bench
description: nightly numbers
defaults: {timeout: 600, retries: 1, priority: 0, tags: [linux]}
metrics:
  throughput_mb_s: {unit: MB/s, direction: higher}
  latency_ms: {unit: ms, direction: lower}
steps:
  - name: build
    command: make -C src
  - name: bench
    needs: [build]
    command: python bench.py --size {size} --threads {threads}
    matrix: {size: [1M, 16M], threads: [1, 4]}
    workers: [{tags: [gpu]}, {tags: [cpu], min_memory_gb: 8}]
    repeat: 3
    timeout: 120
    retries: 2
    env: {MODE: "{size}", LEVEL: 3}
    test_id: "bench/{size}/t{threads}"
  - name: report
    type: noop
    needs: [bench]
"""


def load(text: str, **kw: Any) -> Plan:
    return load_plan_text(textwrap.dedent(text), env=kw.pop("env", {}), **kw)


def error(text: str, **kw: Any) -> PlanError:
    with pytest.raises(PlanError) as info:
        load(text, **kw)
    return info.value


def assert_error(text: str, line: int | None, message: str, **kw: Any) -> PlanError:
    """The error is at ``line`` and its message is exactly ``plan.yaml:LINE: message``."""
    err = error(text, **kw)
    assert err.line == line, str(err)
    assert err.file == "plan.yaml"
    prefix = f"plan.yaml:{line}: " if line is not None else "plan.yaml: "
    assert str(err) == prefix + message
    return err


# ------------------------------------------------------------------------------------- expansion


def test_counts_ids_and_order() -> None:
    plan = load(NIGHTLY)
    assert count(plan) == 1 + 2 * 2 * 2 * 3 + 1
    tasks = expand(plan, run_id="r7")
    assert len(tasks) == count(plan)
    assert [t["task_id"] for t in tasks[:3]] == ["r7-build-1", "r7-bench-1", "r7-bench-2"]
    assert tasks[-1]["task_id"] == "r7-report-1"
    assert [t["task_id"] for t in tasks if t["metadata"]["step"] == "bench"] == [
        f"r7-bench-{n}" for n in range(1, 25)]
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    # Deterministic: the same run id gives the same tasks.
    assert expand(plan, run_id="r7") == tasks


def test_task_dicts_have_exactly_the_create_task_keys_and_are_accepted_by_the_api() -> None:
    from dtf_gui.coordinator import api  # here: the rest of this file needs no coordinator

    tasks = expand(load(NIGHTLY), run_id="r1")
    keys = {"type", "command", "parameters", "priority", "timeout", "dependencies", "requirements",
            "metadata", "task_id", "retry_limit", "test_id"}
    assert all(set(t) == keys for t in tasks)
    assert keys <= set(api.CreateTask.__struct_fields__)
    converted = msgspec.convert({"tasks": tasks}, api.CreateTasks)
    assert len(converted.tasks) == len(tasks)


def test_dependencies_are_every_task_of_the_needed_steps_in_dependency_order() -> None:
    tasks = expand(load(NIGHTLY), run_id="r1")
    build = [t for t in tasks if t["metadata"]["step"] == "build"]
    bench = [t for t in tasks if t["metadata"]["step"] == "bench"]
    (report,) = [t for t in tasks if t["metadata"]["step"] == "report"]
    assert build[0]["dependencies"] == []
    assert all(t["dependencies"] == ["r1-build-1"] for t in bench)
    assert report["dependencies"] == [t["task_id"] for t in bench]
    position = {t["task_id"]: i for i, t in enumerate(tasks)}
    assert all(position[d] < position[t["task_id"]] for t in tasks for d in t["dependencies"])


def test_steps_are_ordered_after_what_they_need_even_when_written_before() -> None:
    plan = load("""\
        name: p
        steps:
          - {name: last, command: c, needs: [middle]}
          - {name: middle, command: b, needs: [first]}
          - {name: first, command: a}
          - {name: free, command: d}
        """)
    assert [t["metadata"]["step"] for t in expand(plan, run_id="r")] == ["first", "middle", "last", "free"]


def test_substitution_in_command_env_and_test_id_and_metadata() -> None:
    tasks = expand(load(NIGHTLY), run_id="r1")
    first = tasks[1]
    assert first["command"] == "python bench.py --size 1M --threads 1"
    assert first["parameters"] == {"env": {"MODE": "1M", "LEVEL": "3"}}
    assert first["test_id"] == "bench/1M/t1"
    assert first["metadata"] == {"step": "bench", "matrix": {"size": "1M", "threads": 1}, "repeat": 1,
                                 "plan": "nightly-bench"}
    bench = [t for t in tasks if t["metadata"]["step"] == "bench"]
    combos = {(t["metadata"]["matrix"]["size"], t["metadata"]["matrix"]["threads"]) for t in bench}
    assert combos == {("1M", 1), ("1M", 4), ("16M", 1), ("16M", 4)}
    # Repeats are the outer loop: every variant once before any is run a second time.
    assert [t["metadata"]["repeat"] for t in bench] == [1] * 8 + [2] * 8 + [3] * 8
    assert {t["test_id"] for t in bench} == {"bench/1M/t1", "bench/1M/t4", "bench/16M/t1", "bench/16M/t4"}


def test_format_rules_literal_braces_specs_and_list_commands() -> None:
    plan = load("""\
        name: p
        steps:
          - name: s
            command: ["awk", "{{print $1}}", "--n={n:03d}", "{label!r}"]
            matrix: {n: [7], label: [x]}
        """)
    (task,) = expand(plan, run_id="r")
    assert task["command"] == ["awk", "{print $1}", "--n=007", "'x'"]


def test_default_test_id_names_the_step_and_its_matrix_values() -> None:
    plan = load("""\
        name: p
        steps:
          - {name: single, command: a}
          - {name: grid, command: "b {x} {y}", matrix: {x: [1], y: [fast]}}
        """)
    assert [t["test_id"] for t in expand(plan, run_id="r")] == ["single", "grid[x=1,y=fast]"]


def test_requirements_per_worker_variant_with_the_default_tags() -> None:
    tasks = expand(load(NIGHTLY), run_id="r1")
    assert tasks[0]["requirements"] == {"tags": ["linux"]}
    bench = [t for t in tasks if t["metadata"]["step"] == "bench"]
    assert bench[0]["requirements"] == {"tags": ["linux", "gpu"]}
    assert bench[4]["requirements"] == {"tags": ["linux", "cpu"], "min_memory_gb": 8.0}
    assert sum(t["requirements"]["tags"] == ["linux", "gpu"] for t in bench) == 12
    plan = load("""\
        name: p
        steps:
          - name: s
            command: a
            workers: [{}, {hardware: cuda, gpu_count: 2, os: linux, worker: w1, group: lab}]
        """)
    assert [t["requirements"] for t in expand(plan, run_id="r")] == [
        None, {"hardware": "cuda", "gpu_count": 2, "os": "linux", "worker": "w1", "group": "lab"}]


def test_defaults_and_step_overrides() -> None:
    tasks = expand(load(NIGHTLY), run_id="r1")
    build, bench = tasks[0], tasks[1]
    assert (build["timeout"], build["retry_limit"], build["priority"]) == (600, 1, 0)
    assert (bench["timeout"], bench["retry_limit"], bench["priority"]) == (120, 2, 0)
    plain = expand(load("name: p\nsteps: [{name: s, command: a}]\n"), run_id="r")[0]
    assert (plain["timeout"], plain["retry_limit"], plain["priority"], plain["requirements"]) == (
        None, None, None, None)
    assert plain["parameters"] == {}


def test_noop_step_and_bundle_digest_in_parameters(tmp_path: Path) -> None:
    (tmp_path / "kit").mkdir()
    plan = load("""\
        name: p
        bundle: kit
        steps:
          - {name: a, command: run.sh}
          - {name: done, type: noop, needs: [a]}
        """, base_dir=tmp_path)
    assert plan.bundle == str((tmp_path / "kit").resolve())
    tasks = expand(plan, run_id="r", bundle="sha256:abc")
    assert [t["parameters"] for t in tasks] == [{"bundle": "sha256:abc"}] * 2
    assert (tasks[1]["type"], tasks[1]["command"]) == ("noop", None)


def test_env_expansion_happens_at_load() -> None:
    plan = load("name: p\nsteps: [{name: s, command: 'make ${TARGET:-all} -j${JOBS}'}]\n", env={"JOBS": "8"})
    assert expand(plan, run_id="r")[0]["command"] == "make all -j8"


def test_describe_lists_steps_variants_tasks_and_needs() -> None:
    lines = describe(load(NIGHTLY))
    assert lines[0] == "plan nightly-bench: nightly numbers"
    assert lines[1] == "metrics: throughput_mb_s (MB/s, higher is better), latency_ms (ms, lower is better)"
    assert "step build   1 task" in lines
    assert ("step bench   24 tasks = matrix size(2) x threads(2), 2 worker variants, repeat 3; needs build"
            in lines)
    assert "  first task bench/1M/t1: python bench.py --size 1M --threads 1" in lines
    assert "step report  1 task (noop); needs bench" in lines


# ----------------------------------------------------------------------------------------- errors


def test_unknown_keys_with_did_you_mean_at_every_depth() -> None:
    assert_error("""\
        name: p
        stpes: []
        """, 2, "unknown key 'stpes' (did you mean 'steps'?)")
    assert_error("""\
        name: p
        steps:
          - name: s
            comand: a
        """, 4, "unknown key 'steps[0].comand' (did you mean 'command'?)")
    assert_error("""\
        name: p
        steps:
          - name: s
            command: a
            workers:
              - tags: [gpu]
              - tag: [cpu]
        """, 7, "unknown key 'steps[0].workers[1].tag' (did you mean 'tags'?)")
    assert_error("""\
        name: p
        metrics:
          speed:
            unit: MB/s
            directoin: higher
        steps: [{name: s, command: a}]
        """, 5, "unknown key 'metrics.speed.directoin' (did you mean 'direction'?)")
    assert_error("""\
        name: p
        defaults:
          timeout: 5
          retires: 1
        steps: [{name: s, command: a}]
        """, 4, "unknown key 'defaults.retires' (did you mean 'retries'?)")
    err = assert_error("name: p\nsteps: [{name: s, command: a, zzz: 1}]\n", 2,
                       "unknown key 'steps[0].zzz' (known keys: name, description, type, command, needs, matrix, "
                       "workers, repeat, timeout, retries, priority, env, test_id)")
    assert isinstance(err, ConfigError) and err.key == "steps[0].zzz"


def test_needs_an_unknown_step_names_the_line_of_that_entry() -> None:
    assert_error("""\
        name: p
        steps:
          - name: build
            command: make
          - name: bench
            needs:
              - build
              - biuld
            command: b
        """, 8, "step 'bench' needs 'biuld': no such step (did you mean 'build'?)")
    assert_error("""\
        name: p
        steps:
          - {name: a, command: a, needs: [zzz]}
        """, 3, "step 'a' needs 'zzz': no such step")


def test_duplicate_step_names() -> None:
    assert_error("""\
        name: p
        steps:
          - name: build
            command: a
          - name: test
            command: b
          - name: build
            command: c
        """, 7, "duplicate step name 'build' (first on line 3)")


def test_cycles_are_named() -> None:
    assert_error("""\
        name: p
        steps:
          - name: a
            command: a
            needs: [c]
          - name: b
            command: b
            needs: [a]
          - name: c
            command: c
            needs:
              - b
        """, 8, "steps need each other in a cycle: a -> c -> b -> a (each needs the next)")
    assert_error("name: p\nsteps:\n  - {name: a, command: a, needs: [a]}\n", 3, "step 'a' needs itself")


def test_placeholders_must_be_matrix_keys() -> None:
    assert_error("""\
        name: p
        steps:
          - name: bench
            matrix: {size: [1M], threads: [1]}
            command: run --size {size} --threads {thread}
        """, 5, "step 'bench': command: {thread} is no matrix key (did you mean 'threads'?)")
    assert_error("""\
        name: p
        steps:
          - name: bench
            matrix: {size: [1M]}
            command: run
            env:
              A: "{size}"
              B: "{zzz}"
        """, 8, "step 'bench': env.B: {zzz} is no matrix key (keys: size; write {{ and }} for a literal brace)")
    assert_error("""\
        name: p
        steps:
          - name: bench
            matrix: {size: [1M]}
            command: run
            test_id: "b/{sise}"
        """, 6, "step 'bench': test_id: {sise} is no matrix key (did you mean 'size'?)")
    assert_error("""\
        name: p
        steps:
          - name: bench
            command:
              - run
              - "{x}"
        """, 6, "step 'bench': command[1]: {x}: the step has no matrix (write {{ and }} for a literal brace)")
    assert_error("name: p\nsteps:\n  - {name: s, command: 'awk {print}'}\n", 3,
                 "step 's': command: {print}: the step has no matrix (write {{ and }} for a literal brace)")
    assert_error("name: p\nsteps:\n  - {name: s, command: 'echo {'}\n", 3,
                 "step 's': command: Single '{' encountered in format string (write {{ and }} for a literal brace)")
    assert_error("name: p\nsteps:\n  - {name: s, command: 'echo {}'}\n", 3,
                 "step 's': command: an empty placeholder {}: name a matrix key, or write {{ and }} for a literal "
                 "brace")
    err = error("name: p\nsteps:\n  - {name: s, command: 'x {n:03d}', matrix: {n: [1, a]}}\n")
    assert err.line == 3 and "{n} cannot be formatted" in str(err)


def test_matrix_errors() -> None:
    assert_error("""\
        name: p
        steps:
          - name: s
            command: "{a} {b}"
            matrix:
              a: [1, 2]
              b: []
        """, 7, "step 's': matrix.b is an empty list (the step would have no tasks)")
    assert_error("""\
        name: p
        steps:
          - name: s
            command: "{a}"
            matrix:
              a:
                - x
                - y
                - x
        """, 9, "step 's': matrix.a lists 'x' twice (use repeat: to run a variant several times)")
    assert_error("""\
        name: p
        steps:
          - name: s
            command: "{a}"
            matrix:
              a:
                - [1, 2]
        """, 7, "steps[0].matrix.a[0]: expected bool | int | float | str, got [1, 2]")


def test_bad_direction_repeat_and_values() -> None:
    assert_error("""\
        name: p
        metrics:
          latency_ms: {unit: ms, direction: lowre}
        steps: [{name: s, command: a}]
        """, 3, "metrics.latency_ms.direction: invalid value 'lowre'; choose one of: 'higher', 'lower' "
                "(did you mean 'lower'?)")
    assert_error("""\
        name: p
        metrics:
          latency_ms: {unit: ms}
        steps: [{name: s, command: a}]
        """, 3, "metrics.latency_ms: missing required key 'direction'")
    assert_error("""\
        name: p
        steps:
          - name: s
            command: a
            repeat: 0
        """, 5, "steps[0].repeat: expected int >= 1, got 0")
    assert_error("""\
        name: p
        steps:
          - name: s
            command: a
            type: shell
        """, 5, "steps[0].type: invalid value 'shell'; choose one of: 'command', 'noop'")
    assert_error("""\
        name: p
        steps:
          - name: s
            command: a
            timeout: soon
        """, 5, "steps[0].timeout: expected float | null, got 'soon'")


def test_steps_are_required_and_not_empty() -> None:
    assert_error("name: p\nsteps: []\n", 2, "steps: a plan needs at least one step")
    assert_error("name: p\nsteps:\n", 2, "steps: a plan needs at least one step")
    assert_error("name: p\n", None, "steps: a plan needs at least one step")
    assert_error("steps: [{name: s, command: a}]\n", None, "missing required key 'name'")
    assert_error("name: p\nsteps:\n  - command: a\n", 3, "steps[0]: missing required key 'name'")
    assert_error("name: p\nsteps:\n  - name: s\n", 3, "step 's' has no command (give one, or say `type: noop`)")
    assert_error("name: p\nsteps:\n  - {name: s, command: a, workers: []}\n", 3,
                 "step 's': workers: empty list (leave it out to run on any worker)")
    assert_error("name: p\nsteps:\n  - {name: 'a b', command: a}\n", 3,
                 "step name 'a b': use letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)")


def test_bundle_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    err = assert_error("name: p\nsteps: [{name: s, command: a}]\nbundle: nope\n", 3,
                       f"bundle: {(tmp_path / 'nope').resolve()} does not exist (it is taken relative to the "
                       "plan's directory)", base_dir=tmp_path)
    assert err.key == "bundle"
    assert error("name: p\nbundle: file\nsteps: [{name: s, command: a}]\n", base_dir=tmp_path).line == 2


def test_yaml_and_file_level_errors(tmp_path: Path) -> None:
    assert error("name: p\nsteps: [\n").line is not None
    assert_error("name: p\nname: q\nsteps: [{name: s, command: a}]\n", 2, "duplicate key 'name' (first on line 1)")
    assert_error("- a\n", None, "the top level must be a mapping (name, steps, ...), got list")
    assert_error("", None, "the plan is empty: it needs at least a name and steps")
    assert_error("name: p\nsteps: [{name: s, command: 'x ${NOPE}'}]\n", 2,
                 "steps[0].command: environment variable 'NOPE' is not set (set it, or write ${NOPE:-default} "
                 "to give a default)")
    with pytest.raises(PlanError, match="plan file not found"):
        load_plan(tmp_path / "missing.yaml")


def test_limits_of_the_api_are_checked_up_front() -> None:
    err = error("""\
        name: p
        steps:
          - {name: many, command: "{a}", matrix: {a: [1, 2, 3]}, repeat: 4000}
          - {name: after, command: b, needs: [many]}
        """)
    assert err.line == 4 and "waits for 12000 tasks" in str(err)
    err = error("name: p\nsteps:\n  - {name: s, command: a, repeat: 100000}\n  - {name: t, command: a}\n")
    assert "expands to 100001 tasks" in str(err)


def test_load_plan_reads_the_file_relative_to_its_directory(tmp_path: Path) -> None:
    (tmp_path / "kit").mkdir()
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nbundle: kit\nsteps:\n  - {name: s, command: a, needs: [t]}\n")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value) == f"{path}:4: step 's' needs 't': no such step"
    assert info.value.file == str(path)


def test_example_plan_checks_ok() -> None:
    from dtf_gui.coordinator import api

    plan = load_plan(EXAMPLE)
    assert [s.name for s in plan.steps] == ["prepare", "bench", "report"]
    assert count(plan) == 14
    assert plan.bundle is not None and (Path(plan.bundle) / "bench.py").is_file()
    assert {m: s.direction for m, s in plan.metrics.items()} == {"throughput_mb_s": "higher", "latency_ms": "lower"}
    tasks = expand(plan, run_id="r")
    assert msgspec.convert({"tasks": tasks}, api.CreateTasks)
    assert tasks[-1]["dependencies"] == [f"r-bench-{n}" for n in range(1, 13)]


def test_example_bench_script_writes_metrics_with_units_and_directions(tmp_path: Path) -> None:
    import subprocess

    result = tmp_path / "result.json"
    plan = load_plan(EXAMPLE)
    bench = next(t for t in expand(plan, run_id="r") if t["metadata"]["step"] == "bench")
    argv = bench["command"].replace("python3", sys.executable).split() + ["--rounds", "2"]
    subprocess.run(argv, cwd=plan.bundle, env={"DTF_RESULT_FILE": str(result)}, check=True, capture_output=True,
                   timeout=60)
    data = json.loads(result.read_text())
    assert set(data["metrics"]) == {"throughput_mb_s", "latency_ms"}
    assert all(isinstance(v, float) and v > 0 for v in data["metrics"].values())
    assert data["units"] == {"throughput_mb_s": "MB/s", "latency_ms": "ms"}
    assert data["directions"] == {m: s.direction for m, s in plan.metrics.items()}


# ------------------------------------------------------------------------------------------ dtf plan


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="dtf")
    sub = ap.add_subparsers(dest="cmd", required=True)
    cli_plans.add_plan_parser(sub)
    return ap.parse_args(argv)


def test_plan_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["plan", "check", str(EXAMPLE)])
    assert args.fn(args) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == "plan OK: 14 tasks in 3 steps"
    assert "step bench    12 tasks = matrix size(2) x threads(2), repeat 3; needs prepare" in out.out
    assert out.err == ""


def test_plan_check_error_is_file_line_message_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: p\nsteps:\n  - name: build\n    command: make\n  - name: bench\n"
                    "    command: b\n    needs: [biuld]\n")
    args = parse(["plan", "check", str(path)])
    assert cli_plans.cmd_plan(args) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"{path}:7: step 'bench' needs 'biuld': no such step (did you mean 'build'?)\n"


class FakeClient:
    """Records every call; answers like the coordinator would."""

    def __init__(self, statuses: dict[str, str] | None = None, baseline: str | None = "run-0",
                 fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.statuses = statuses or {}
        self.baseline = baseline
        self.fail_on = fail_on
        self.waits = 0

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        self.calls.append((op, args or {}))
        if op == self.fail_on:
            raise cli_common.ClientError(f"{op} refused")
        if op == "create_run":
            return {"run_id": "run-1", "baseline": self.baseline}
        if op == "create_tasks":
            return {"task_ids": [t["task_id"] for t in (args or {})["tasks"]]}
        if op == "wait":
            self.waits += 1
            ids = (args or {})["task_ids"]
            # First answer: half of them; then the rest.
            done = ids[: len(ids) // 2] if self.waits == 1 else ids
            return {"finished": {t: self.statuses.get(t, "completed") for t in done},
                    "pending": [t for t in ids if t not in done]}
        return {}

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_plan_run_makes_the_calls_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    plan = load(NIGHTLY)
    client = FakeClient()
    assert cli_plans.run_plan(client, plan, path="plans/nightly.yaml") == 0
    assert client.ops() == ["create_run", "declare_metrics", "create_tasks"]
    metrics = {"throughput_mb_s": {"unit": "MB/s", "direction": "higher"},
               "latency_ms": {"unit": "ms", "direction": "lower"}}
    assert client.calls[0][1] == {"name": "nightly-bench", "kind": "plan",
                                  "meta": {"plan": str(Path("plans/nightly.yaml").resolve()), "metrics": metrics}}
    assert client.calls[1][1] == {"metrics": metrics}
    submitted = client.calls[2][1]
    assert submitted["run_id"] == "run-1"
    assert submitted["tasks"] == expand(plan, run_id="run-1")
    assert capsys.readouterr().out == "run run-1: 26 tasks submitted (baseline: run run-0)\n"


def test_plan_run_without_metrics_declares_none_and_takes_the_name(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(baseline=None)
    plan = load("name: p\nsteps: [{name: s, command: a}]\n")
    assert cli_plans.run_plan(client, plan, path="p.yaml", name="mine", as_json=True) == 0
    assert client.ops() == ["create_run", "create_tasks"]
    assert client.calls[0][1]["name"] == "mine"
    assert json.loads(capsys.readouterr().out) == {"run_id": "run-1", "baseline": None, "task_ids": ["run-1-s-1"]}


def test_plan_run_wait_follows_the_run_and_finishes_it(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    plan = load(NIGHTLY)
    assert cli_plans.run_plan(client, plan, path="p.yaml", wait=True) == 0
    assert client.ops() == ["create_run", "declare_metrics", "create_tasks", "wait", "wait", "finish_run"]
    ids = client.calls[2][1]["tasks"]
    assert client.calls[3][1]["task_ids"] == [t["task_id"] for t in ids]
    assert len(client.calls[4][1]["task_ids"]) == 13  # only those still pending
    assert client.calls[5][1] == {"run_id": "run-1", "status": "passed",
                                 "summary": {"tasks": 26, "failed": 0, "status": "passed"}}
    out = capsys.readouterr()
    assert out.err.splitlines() == ["13/26 done, 0 failed", "26/26 done, 0 failed"]
    assert out.out.splitlines()[-1].startswith("run run-1 passed: 26 completed in ")


def test_plan_run_wait_exits_1_when_a_task_failed(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(statuses={"run-1-bench-3": "failed", "run-1-report-1": "cancelled"})
    assert cli_plans.run_plan(client, load(NIGHTLY), path="p.yaml", wait=True, as_json=True) == 1
    assert client.calls[-1] == ("finish_run", {"run_id": "run-1", "status": "failed",
                                               "summary": {"tasks": 26, "failed": 2, "status": "failed"}})
    out = json.loads(capsys.readouterr().out)
    assert (out["status"], out["failed"], out["tasks"]) == ("failed", 2, 26)
    assert out["statuses"]["run-1-bench-3"] == "failed"


def test_plan_run_uploads_the_bundle_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kit").mkdir()
    uploaded: list[tuple[Any, Path]] = []

    def upload_bundle(client: Any, directory: Path) -> str:
        uploaded.append((client, directory))
        client.call("put_bundle", {})
        return "sha256:feed"

    monkeypatch.setitem(sys.modules, "dtf_gui.cli_bundles", types.SimpleNamespace(upload_bundle=upload_bundle))
    plan = load("name: p\nbundle: kit\nsteps: [{name: s, command: a, repeat: 2}]\n", base_dir=tmp_path)
    client = FakeClient()
    assert cli_plans.run_plan(client, plan, path="p.yaml") == 0
    assert uploaded == [(client, (tmp_path / "kit").resolve())]
    assert client.ops() == ["put_bundle", "create_run", "create_tasks"]
    assert [t["parameters"] for t in client.calls[2][1]["tasks"]] == [{"bundle": "sha256:feed"}] * 2


def test_a_refused_submission_closes_the_run_as_an_error() -> None:
    client = FakeClient(fail_on="create_tasks")
    with pytest.raises(cli_common.ClientError, match="create_tasks refused"):
        cli_plans.run_plan(client, load(NIGHTLY), path="p.yaml")
    assert client.ops() == ["create_run", "declare_metrics", "create_tasks", "finish_run"]
    assert client.calls[-1][1] == {"run_id": "run-1", "status": "error",
                                   "summary": {"tasks": 0, "failed": 0, "status": "error"}}


def test_cmd_plan_run_goes_through_client_for(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    seen: list[argparse.Namespace] = []

    def client_for(args: argparse.Namespace) -> FakeClient:
        seen.append(args)
        return client

    monkeypatch.setattr(cli_common, "client_for", client_for)
    args = parse(["plan", "run", str(EXAMPLE), "--name", "laptop", "--wait", "--coordinator", "tcp://h:1"])
    monkeypatch.setitem(sys.modules, "dtf_gui.cli_bundles",
                        types.SimpleNamespace(upload_bundle=lambda c, d: "sha256:0"))
    assert cli_plans.cmd_plan(args) == 0
    assert seen[0].coordinator == "tcp://h:1" and seen[0].timeout_s == 30.0
    assert client.calls[0][1]["name"] == "laptop"
    assert client.ops()[-1] == "finish_run"


def test_cmd_plan_run_with_a_bad_plan_makes_no_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_common, "client_for", lambda args: pytest.fail("no client for a bad plan"))
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsteps: []\n")
    assert cli_plans.cmd_plan(parse(["plan", "run", str(path)])) == 2
    assert capsys.readouterr().err == f"{path}:2: steps: a plan needs at least one step\n"
