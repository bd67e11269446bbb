"""YAML test plans: a run's tasks declared as steps, each step a matrix of variants.

A plan names its steps; a step is one command run for every combination of its matrix values,
on every worker variant it lists, ``repeat`` times. A step that ``needs`` others waits for every
task of theirs. ``expand`` turns a plan into the ``create_task`` arguments of one run (see
``api.CreateTask``), in dependency order, with ids that depend only on the run id and the plan.

Plans are read by the shared config loader's parser (``dtf_agent.config``), so they speak its
language: errors name the file, the line and the key, unknown keys come with a did-you-mean,
``${VAR}`` expands from the environment of whoever loads the plan. The loader's own key check
stops at lists and mappings of sections (a plan is mostly those: ``steps[i]``, ``metrics.NAME``),
and msgspec reports a path inside a mapping as ``[...]``, so this module walks the document
itself and checks every value against the schema where the line is still known; msgspec then
only builds the Structs.

``{key}`` in a step's command, env values and test_id is replaced by the matrix value of
``key`` (``str.format`` rules: ``{{`` and ``}}`` are literal braces, ``{n:03d}`` formats).
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
import string
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

from dtf_agent import protocol as p
from dtf_agent.config import (
    ConfigError,
    KeyPath,
    _at,
    _dotted,
    _hints,
    _parse_yaml,
    _rewrite_validation_error,
    _strip_annotated,
    _struct_type,
    expand_env,
)

__all__ = [
    "Defaults",
    "MetricSpec",
    "Plan",
    "PlanError",
    "Requirements",
    "Step",
    "count",
    "default_test_id",
    "describe",
    "expand",
    "load_plan",
    "load_plan_text",
    "ordered_steps",
    "step_count",
]

# The API's limits (api.CreateTasks, api.CreateTask.dependencies): a plan past them could never be
# submitted, so `dtf plan check` says so rather than the coordinator at `plan run`.
MAX_TASKS = p.MAX_LIST
MAX_DEPENDENCIES = 10_000
# Step names become part of task ids (at most p.MAX_ID characters with the run id).
_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# Matrix keys are placeholder names: no braces, colons or "!" (str.format syntax).
_MATRIX_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")

Seconds = Annotated[float, Meta(gt=0, le=p.MAX_TIMEOUT)]
Retries = Annotated[int, Meta(ge=0, le=1000)]
Priority = Annotated[int, Meta(ge=-p.MAX_PRIORITY, le=p.MAX_PRIORITY)]
Scalar = str | int | float | bool


class PlanError(ConfigError):
    """A plan that cannot be run; the message starts with ``file:line:`` like every config error."""


class Requirements(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a worker must offer to run a variant (api.RequirementArgs)."""

    tags: list[str] = msgspec.field(default_factory=list)
    hardware: str | None = None
    worker: str | None = None
    group: str | None = None
    min_memory_gb: Annotated[float, Meta(ge=0)] = 0.0
    gpu_count: Annotated[int, Meta(ge=0, le=1024)] = 0
    gpu_memory_gb: Annotated[float, Meta(ge=0)] = 0.0
    os: str | None = None


class Defaults(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What every step gets unless it says otherwise; ``tags`` are added to every variant's."""

    timeout: Seconds | None = None
    retries: Retries | None = None
    priority: Priority | None = None
    tags: list[str] = msgspec.field(default_factory=list)


class MetricSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A metric the plan's tasks report: its unit, and which way is better."""

    direction: Literal["higher", "lower"]
    unit: Annotated[str, Meta(max_length=64)] = ""  # the coordinator's limit (declare_metrics)


class Step(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One command, run for every matrix combination x worker variant, ``repeat`` times."""

    name: str
    description: str = ""
    type: Literal["command", "noop"] = "command"
    command: str | list[str] | None = None
    needs: list[str] = msgspec.field(default_factory=list)
    matrix: dict[str, list[Scalar]] = msgspec.field(default_factory=dict)
    workers: list[Requirements] | None = None
    repeat: Annotated[int, Meta(ge=1, le=MAX_TASKS)] = 1
    timeout: Seconds | None = None
    retries: Retries | None = None
    priority: Priority | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    test_id: str | None = None


class Plan(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A loaded plan. ``bundle`` is the absolute directory once loaded (written relative to the file)."""

    name: Annotated[str, Meta(max_length=p.MAX_NAME)]  # the run's name (create_run's limit)
    description: str = ""
    bundle: str | None = None
    defaults: Defaults = msgspec.field(default_factory=Defaults)
    metrics: dict[str, MetricSpec] = msgspec.field(default_factory=dict)
    steps: list[Step] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Loading


def load_plan(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Plan:
    """Read and check a plan file; ``bundle`` is taken relative to the file's directory."""
    label = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{label}: plan file not found", file=label) from None
    except IsADirectoryError:
        raise PlanError(f"{label}: is a directory, not a plan file", file=label) from None
    except UnicodeDecodeError as exc:
        raise PlanError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=label) from None
    except OSError as exc:
        raise PlanError(f"{label}: cannot read the plan: {exc.strerror or exc}", file=label) from None
    return load_plan_text(text, file=label, base_dir=Path(path).parent, env=env)


def load_plan_text(text: str, *, file: str = "plan.yaml", base_dir: Path = Path("."),
                   env: Mapping[str, str] | None = None) -> Plan:
    """Like ``load_plan`` for text in memory; ``file`` names it in errors, ``base_dir`` anchors ``bundle``.

    ``env``: the variables for ``${VAR}``; None means ``os.environ``.
    """
    try:
        data, lines = _parse_yaml(text, file)
    except ConfigError as exc:
        raise PlanError(str(exc), file=exc.file, key=exc.key, line=exc.line) from None
    if data is None:
        raise PlanError(f"{file}: the plan is empty: it needs at least a name and steps", file=file)
    if not isinstance(data, dict):
        raise PlanError(f"{file}: the top level must be a mapping (name, steps, ...), got "
                        f"{type(data).__name__}", file=file)
    checker = _Checker(file, lines, os.environ if env is None else env)
    data = checker.walk(data, Plan, ())
    try:
        plan = msgspec.convert(data, Plan, strict=False)
    except msgspec.ValidationError as exc:  # the walk should have caught it; keep the line anyway
        err = _rewrite_validation_error(exc, data, Plan, file, lines)
        raise PlanError(str(err), file=err.file, key=err.key, line=err.line) from None
    checker.check(plan)
    if plan.bundle is not None:
        bundle = (Path(base_dir) / plan.bundle).resolve()
        if not bundle.is_dir():
            what = "is not a directory" if bundle.exists() else "does not exist"
            checker.fail(("bundle",), f"bundle: {bundle} {what} (it is taken relative to the plan's directory)")
        plan = msgspec.structs.replace(plan, bundle=str(bundle))
    return plan


def _union_arms(tp: Any) -> tuple[Any, ...]:
    bare = _strip_annotated(tp)
    if typing.get_origin(bare) in (Union, types.UnionType):
        return typing.get_args(bare)
    return (tp,)


def _arm_of(tp: Any, origin: type) -> Any:
    """The member of ``tp`` (a type or a union) whose origin is ``origin`` (list or dict), or None."""
    for arm in _union_arms(tp):
        if typing.get_origin(_strip_annotated(arm)) is origin:
            return _strip_annotated(arm)
    return None


def _allows_none(tp: Any) -> bool:
    return any(_strip_annotated(arm) is type(None) for arm in _union_arms(tp))


def _is_text(tp: Any) -> bool:
    """A text field (``name: 2024`` was meant as text), but not one that also takes numbers."""
    arms = {_strip_annotated(arm) for arm in _union_arms(tp)}
    return str in arms and not arms & {int, float, bool}


def _choices(tp: Any) -> tuple[Any, ...]:
    return tuple(c for arm in _union_arms(tp) if typing.get_origin(_strip_annotated(arm)) is Literal
                 for c in typing.get_args(_strip_annotated(arm)))


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


_FORMATTER = string.Formatter()


def _placeholders(text: str) -> list[tuple[str, str, str | None]]:
    """The ``{field:spec!conv}`` of ``text`` (ValueError for an unbalanced brace)."""
    return [(field, spec or "", conv) for _, field, spec, conv in _FORMATTER.parse(text) if field is not None]


def _render(text: str, values: Mapping[str, Any]) -> str:
    # By hand rather than str.format_map: a key is looked up as a whole ("batch.size", "0" are
    # keys, not an attribute access or a positional index).
    out: list[str] = []
    for literal, field, spec, conv in _FORMATTER.parse(text):
        out.append(literal)
        if field is None:
            continue
        value = values[field]
        if conv == "r":
            value = repr(value)
        elif conv == "a":
            value = ascii(value)
        elif conv == "s":
            value = str(value)
        out.append(format(value, spec or ""))
    return "".join(out)


class _Checker:
    """Walks the parsed YAML against the schema, then checks the plan as a whole; every error
    names the line of the value it is about."""

    def __init__(self, file: str, lines: Mapping[KeyPath, int], env: Mapping[str, str]) -> None:
        self.file = file
        self.lines = lines
        self.env = env

    def fail(self, path: KeyPath, message: str) -> typing.NoReturn:
        where, line = _at(self.file, self.lines, path)
        raise PlanError(f"{where}: {message}", file=self.file, key=_dotted(path) or None, line=line)

    # -- the document against the schema ------------------------------------------------------

    def walk(self, data: Any, tp: Any, path: KeyPath) -> Any:
        struct = _struct_type(tp)
        if struct is not None and (isinstance(data, dict) or (data is None and not _allows_none(tp))):
            return self._struct(data or {}, struct, path)
        list_tp, dict_tp = _arm_of(tp, list), _arm_of(tp, dict)
        if isinstance(data, list) and list_tp is not None:
            (item_tp,) = typing.get_args(list_tp)
            return [self.walk(item, item_tp, (*path, i)) for i, item in enumerate(data)]
        if isinstance(data, dict) and dict_tp is not None:
            _, value_tp = typing.get_args(dict_tp)
            # Keys as the YAML text has them (`1:` is the key "1"), as the line index has them.
            return {str(k): self.walk(v, value_tp, (*path, str(k))) for k, v in data.items()}
        if data is None and not _allows_none(tp) and (list_tp is not None or dict_tp is not None):
            return [] if list_tp is not None else {}  # `needs:` left empty means none
        return self._leaf(data, tp, path)

    def _struct(self, data: dict[Any, Any], struct: type[msgspec.Struct], path: KeyPath) -> dict[str, Any]:
        hints = _hints(struct)
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key)
            if name not in hints:
                hint = _did_you_mean(name, list(hints)) or f" (known keys: {', '.join(hints)})"
                self.fail((*path, name), f"unknown key '{_dotted((*path, name))}'{hint}")
            out[name] = self.walk(value, hints[name], (*path, name))
        for field in msgspec.structs.fields(struct):
            if field.required and field.name not in out:
                where = f"{_dotted(path)}: " if path else ""
                self.fail(path, f"{where}missing required key '{field.name}'")
        return out

    def _leaf(self, value: Any, tp: Any, path: KeyPath) -> Any:
        dotted = _dotted(path)
        if isinstance(value, str):
            where, line = _at(self.file, self.lines, path)
            try:
                value = expand_env(value, self.env, where=f"{where}: {dotted}")
            except ConfigError as exc:
                raise PlanError(str(exc), file=self.file, key=dotted, line=line) from None
        choices = _choices(tp)
        if choices and value not in choices and not (value is None and _allows_none(tp)):
            self.fail(path, f"{dotted}: invalid value {_clip(repr(value))}; choose one of: "
                            f"{', '.join(repr(c) for c in choices)}{_did_you_mean(str(value), choices)}")
        if _is_text(tp) and isinstance(value, (int, float)):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            return msgspec.convert(value, tp, strict=False)
        except msgspec.ValidationError as exc:
            # Speak YAML, not msgspec: lists and mappings, no backticks, and the value we got.
            msg = re.sub(r" - at `\$[^`]*`\Z", "", str(exc)).replace("`", "")
            msg = re.sub(r"\bobject\b", "mapping", re.sub(r"\barray\b", "list", msg))
            msg = re.sub(r", got \w+\Z", "", msg)
            msg = msg[:1].lower() + msg[1:]
            self.fail(path, f"{dotted}: {msg}, got {_clip(repr(value))}")

    # -- the plan as a whole ------------------------------------------------------------------

    def check(self, plan: Plan) -> None:
        if not plan.name.strip():
            self.fail(("name",), "name: the plan needs a name (runs of one name are each other's baselines)")
        if not plan.steps:
            self.fail(("steps",), "steps: a plan needs at least one step")
        first: dict[str, int] = {}
        for i, step in enumerate(plan.steps):
            if not _STEP_NAME.match(step.name):
                self.fail(("steps", i, "name"), f"step name {step.name!r}: use letters, digits, '_', '.', '-' "
                                                "(at most 64, starting with a letter or digit)")
            if step.name in first:
                line = self.lines.get(("steps", first[step.name], "name"))
                self.fail(("steps", i, "name"), f"duplicate step name '{step.name}'"
                                                + (f" (first on line {line})" if line else ""))
            first[step.name] = i
        for i, step in enumerate(plan.steps):
            self._check_step(plan, i, step, first)
        self._check_cycles(plan)
        total = 0
        for i, step in enumerate(plan.steps):
            waits = sum(step_count(plan.steps[first[need]]) for need in dict.fromkeys(step.needs))
            if waits > MAX_DEPENDENCIES:
                self.fail(("steps", i, "needs"), f"step '{step.name}' waits for {waits} tasks, more than the "
                                                 f"{MAX_DEPENDENCIES} one task may wait for: split the step")
            total += step_count(step)
        if total > MAX_TASKS:
            self.fail(("steps",), f"the plan expands to {total} tasks, more than the {MAX_TASKS} one run may "
                                  "submit: split it into several plans")

    def _check_step(self, plan: Plan, i: int, step: Step, first: Mapping[str, int]) -> None:
        at: KeyPath = ("steps", i)
        for j, need in enumerate(step.needs):
            if need == step.name:
                self.fail((*at, "needs", j), f"step '{step.name}' needs itself")
            if need not in first:
                hint = _did_you_mean(need, list(first))
                self.fail((*at, "needs", j), f"step '{step.name}' needs '{need}': no such step{hint}")
        if step.type == "command" and not step.command:
            self.fail(at, f"step '{step.name}' has no command (give one, or say `type: noop`)")
        if step.workers is not None and not step.workers:
            self.fail((*at, "workers"), f"step '{step.name}': workers: empty list (leave it out to run on "
                                        "any worker)")
        for key, values in step.matrix.items():
            if not _MATRIX_KEY.match(key):
                self.fail((*at, "matrix", key), f"step '{step.name}': matrix key {key!r} cannot be a "
                                                "placeholder: use letters, digits, '_', '.', '-'")
            if not values:
                self.fail((*at, "matrix", key), f"step '{step.name}': matrix.{key} is an empty list "
                                                "(the step would have no tasks)")
            seen: dict[Any, int] = {}
            for j, value in enumerate(values):
                # 1 and True are equal in Python, not in a command line: compare as typed.
                mark = (type(value), value)
                if mark in seen:
                    self.fail((*at, "matrix", key, j), f"step '{step.name}': matrix.{key} lists {value!r} "
                                                       "twice (use repeat: to run a variant several times)")
                seen[mark] = j
        texts: list[tuple[KeyPath, str, str]] = []
        if isinstance(step.command, str):
            texts.append(((*at, "command"), "command", step.command))
        elif step.command is not None:
            texts += [((*at, "command", j), f"command[{j}]", arg) for j, arg in enumerate(step.command)]
        texts += [((*at, "env", k), f"env.{k}", v) for k, v in step.env.items()]
        if step.test_id is not None:
            texts.append(((*at, "test_id"), "test_id", step.test_id))
        for path, what, text in texts:
            self._check_placeholders(step, path, what, text)

    def _check_placeholders(self, step: Step, path: KeyPath, what: str, text: str) -> None:
        prefix = f"step '{step.name}': {what}"
        try:
            fields = _placeholders(text)
        except ValueError as exc:
            self.fail(path, f"{prefix}: {exc} (write {{{{ and }}}} for a literal brace)")
        brace = "write {{ and }} for a literal brace"
        for field, spec, conv in fields:
            if field not in step.matrix:
                close = _did_you_mean(field, list(step.matrix)) if field else ""
                if close:
                    why = f"{{{field}}} is no matrix key{close}"
                elif not field:
                    why = f"an empty placeholder {{}}: name a matrix key, or {brace}"
                elif step.matrix:
                    why = f"{{{field}}} is no matrix key (keys: {', '.join(step.matrix)}; {brace})"
                else:
                    why = f"{{{field}}}: the step has no matrix ({brace})"
                self.fail(path, f"{prefix}: {why}")
            try:  # a format spec that does not fit a value (`{size:03d}` with size "1M")
                for value in step.matrix[field]:
                    _render(f"{{{field}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}", {field: value})
            except (ValueError, TypeError) as exc:
                self.fail(path, f"{prefix}: {{{field}}} cannot be formatted: {exc}")

    def _check_cycles(self, plan: Plan) -> None:
        index = {s.name: i for i, s in enumerate(plan.steps)}
        needs = {s.name: list(dict.fromkeys(s.needs)) for s in plan.steps}
        done: set[str] = set()

        def visit(name: str, trail: list[str]) -> None:
            if name in done:
                return
            if name in trail:
                cycle = [*trail[trail.index(name):], name]
                last = cycle[-2]
                j = plan.steps[index[last]].needs.index(name)
                self.fail(("steps", index[last], "needs", j),
                          f"steps need each other in a cycle: {' -> '.join(cycle)} (each needs the next)")
            for need in needs[name]:
                visit(need, [*trail, name])
            done.add(name)

        for step in plan.steps:
            visit(step.name, [])


# --------------------------------------------------------------------------------------------
# Expansion


def _variants(step: Step, defaults: Defaults) -> list[dict[str, Any] | None]:
    """Each worker variant's requirements as api.RequirementArgs fields (None: any worker)."""
    out: list[dict[str, Any] | None] = []
    for req in step.workers or [Requirements()]:
        fields: dict[str, Any] = {}
        tags = list(dict.fromkeys([*defaults.tags, *req.tags]))
        if tags:
            fields["tags"] = tags
        for name in ("hardware", "min_memory_gb", "gpu_count", "gpu_memory_gb", "os", "worker", "group"):
            value = getattr(req, name)
            if value:
                fields[name] = value
        out.append(fields or None)
    return out


def _combinations(step: Step) -> Iterator[dict[str, Any]]:
    keys = list(step.matrix)
    for values in itertools.product(*(step.matrix[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def step_count(step: Step) -> int:
    """How many tasks ``step`` expands to."""
    variants = len(step.workers) if step.workers else 1
    return variants * math.prod(len(v) for v in step.matrix.values()) * step.repeat


def count(plan: Plan) -> int:
    """How many tasks ``plan`` expands to, without building them."""
    return sum(step_count(step) for step in plan.steps)


def ordered_steps(plan: Plan) -> list[Step]:
    """The steps with every step after the ones it needs; otherwise in the order written."""
    placed: list[Step] = []
    names: set[str] = set()
    left = list(plan.steps)
    while left:
        step = next((s for s in left if all(n in names for n in s.needs)), None)
        if step is None:  # a cycle: load_plan refuses those
            raise ValueError(f"steps need each other in a cycle: {', '.join(s.name for s in left)}")
        placed.append(step)
        names.add(step.name)
        left.remove(step)
    return placed


def default_test_id(step: Step, values: Mapping[str, Any]) -> str:
    if not values:
        return step.name
    return f"{step.name}[{','.join(f'{k}={v}' for k, v in values.items())}]"


def expand(plan: Plan, *, run_id: str, bundle: str | None = None) -> list[dict[str, Any]]:
    """The ``create_task`` arguments (api.CreateTask's fields) of one run of ``plan``, in dependency order.

    Task ids are ``{run_id}-{step}-{n}``, n counting from 1 within the step; ``bundle`` (the
    digest of the uploaded bundle) goes into every task's parameters.
    """
    d = plan.defaults
    ids: dict[str, list[str]] = {}
    tasks: list[dict[str, Any]] = []
    for step in ordered_steps(plan):
        deps = [tid for need in dict.fromkeys(step.needs) for tid in ids[need]]
        variants = _variants(step, d)
        combos = list(_combinations(step))
        mine: list[str] = []
        # Repeats outermost: the samples of one variant are spread over the run rather than run
        # back to back, so a drift (a warming machine, a neighbour's load) shows as noise, not bias.
        for rep in range(1, step.repeat + 1):
            for req in variants:
                for values in combos:
                    task_id = f"{run_id}-{step.name}-{len(mine) + 1}"
                    mine.append(task_id)
                    command: str | list[str] | None
                    if isinstance(step.command, list):
                        command = [_render(arg, values) for arg in step.command]
                    else:
                        command = _render(step.command, values) if step.command else None
                    params: dict[str, Any] = {}
                    if step.env:
                        params["env"] = {k: _render(v, values) for k, v in step.env.items()}
                    if bundle is not None:
                        params["bundle"] = bundle
                    tasks.append({
                        "type": step.type,
                        "command": command,
                        "parameters": params,
                        "priority": d.priority if step.priority is None else step.priority,
                        "timeout": d.timeout if step.timeout is None else step.timeout,
                        "dependencies": list(deps),
                        "requirements": req,
                        "metadata": {"step": step.name, "matrix": dict(values), "repeat": rep, "plan": plan.name},
                        "task_id": task_id,
                        "retry_limit": d.retries if step.retries is None else step.retries,
                        "test_id": (_render(step.test_id, values) if step.test_id is not None
                                    else default_test_id(step, values)),
                    })
        ids[step.name] = mine
    return tasks


def describe(plan: Plan) -> list[str]:
    """Short lines saying what the plan expands to, step by step (for `dtf plan check`)."""
    lines = [f"plan {plan.name}" + (f": {plan.description.strip().splitlines()[0]}" if plan.description.strip()
                                    else "")]
    if plan.bundle:
        lines.append(f"bundle: {plan.bundle}")
    if plan.metrics:
        lines.append("metrics: " + ", ".join(
            f"{name} ({spec.unit + ', ' if spec.unit else ''}{spec.direction} is better)"
            for name, spec in plan.metrics.items()))
    width = max(len(s.name) for s in ordered_steps(plan)) if plan.steps else 0
    for step in ordered_steps(plan):
        n = step_count(step)
        parts = []
        if step.matrix:
            sizes = " x ".join(f"{k}({len(v)})" for k, v in step.matrix.items())
            parts.append(f"matrix {sizes}")
        if step.workers:
            parts.append(f"{len(step.workers)} worker variants")
        if step.repeat > 1:
            parts.append(f"repeat {step.repeat}")
        text = f"step {step.name.ljust(width)}  {n} task{'s' if n != 1 else ''}"
        if parts:
            text += f" = {', '.join(parts)}"
        if step.type == "noop":
            text += " (noop)"
        if step.needs:
            text += f"; needs {', '.join(dict.fromkeys(step.needs))}"
        lines.append(text)
        values = next(_combinations(step))
        if step.command:
            shown = (_render(step.command, values) if isinstance(step.command, str)
                     else " ".join(_render(a, values) for a in step.command))
            test_id = _render(step.test_id, values) if step.test_id is not None else default_test_id(step, values)
            label = "first task" if n > 1 else "task"
            lines.append(f"  {label} {test_id}: {_clip(' '.join(shown.split()))}")
    return lines
