"""Configuration files: the generic YAML loader and the agent's worker.yaml schema.

Each config file is a mapping of sections; each section is a msgspec Struct whose fields all
have defaults, so a missing file, an empty file or a partial file are all valid. The loader:

1. reads the file and parses it with PyYAML's safe loader, keeping each key's line number;
2. refuses unknown keys (with a did-you-mean) and duplicate keys, naming file, line and key;
3. expands ``${VAR}`` and ``${VAR:-default}`` from the environment in every string value
   (``$${`` stands for a literal ``${``);
4. converts with ``msgspec.convert(strict=False)``, so ``"8080"`` that came from an
   environment variable becomes an int, and rewrites msgspec's errors to name file, line, key.

Every field carries a one-line ``description`` in its ``msgspec.Meta``: ``dump_config`` turns
those into the comments of the example files, so the docs cannot drift from the schema.

The coordinator's schema lives in ``dtf_gui.coordinator.config`` and reuses this loader; this
module must not import anything from ``dtf_gui`` (the agent runs without it).
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import msgspec
import yaml
from msgspec import Meta

__all__ = [
    "ConfigError",
    "CoordinatorSection",
    "ExecutionSection",
    "HealthSection",
    "ReportingSection",
    "WorkerConfig",
    "WorkerSection",
    "dump_config",
    "dump_defaults",
    "expand_env",
    "load_config",
    "load_config_text",
    "load_worker_config",
]

T = TypeVar("T", bound=msgspec.Struct)

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file, the line and the key.

    ``file``, ``key`` (dotted, or None for file-level problems) and ``line`` (1-based, or None
    when unknown) are kept as attributes so that a caller (the window) can point at the spot.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.key = key
        self.line = line


# --------------------------------------------------------------------------------------------
# Environment expansion

_REF = re.compile(r"\$(\$)?\{([^}]*)(\})?")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def expand_env(text: str, env: Mapping[str, str], *, where: str = "") -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``text``; ``$${`` is a literal ``${``.

    ``where`` prefixes error messages (for example ``"worker.yaml:4: coordinator.address"``).
    An unset variable without a default, a malformed name or a missing ``}`` raise ConfigError.
    """
    if "${" not in text:
        return text
    prefix = f"{where}: " if where else ""

    def substitute(match: re.Match[str]) -> str:
        escaped, body, closed = match.group(1), match.group(2), match.group(3)
        if escaped:
            return "${" + body + (closed or "")
        if not closed:
            raise ConfigError(f"{prefix}'${{' without a closing '}}' in {text!r}")
        name, has_default, default = body.partition(":-")
        if not _VAR_NAME.match(name):
            raise ConfigError(f"{prefix}'${{{body}}}' is not a valid variable reference "
                              "(expected ${NAME} or ${NAME:-default})")
        if name in env:
            return env[name]
        if has_default:
            return default
        raise ConfigError(f"{prefix}environment variable {name!r} is not set "
                          f"(set it, or write ${{{name}:-default}} to give a default)")

    return _REF.sub(substitute, text)


# --------------------------------------------------------------------------------------------
# Schema introspection helpers


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _description(tp: Any) -> str | None:
    if typing.get_origin(tp) is Annotated:
        for extra in getattr(tp, "__metadata__", ()):
            if isinstance(extra, Meta) and extra.description:
                return extra.description
    return None


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct class ``tp`` names, also through Annotated and ``X | None``; else None."""
    tp = _strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1 and typing.get_origin(tp) in (Union, types.UnionType):
        return _struct_type(args[0])
    return None


def _mapping_item_type(tp: Any) -> Any:
    """The value type of a ``dict[str, X]`` field (also through Annotated and ``| None``); else None."""
    tp = _strip_annotated(tp)
    if typing.get_origin(tp) is dict:
        kv = typing.get_args(tp)
        return kv[1] if len(kv) == 2 else None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1 and typing.get_origin(tp) in (Union, types.UnionType):
        return _mapping_item_type(args[0])
    return None


def _literal_choices(tp: Any) -> tuple[Any, ...]:
    tp = _strip_annotated(tp)
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    choices: list[Any] = []
    for arg in typing.get_args(tp):
        if typing.get_origin(_strip_annotated(arg)) is Literal:
            choices.extend(typing.get_args(_strip_annotated(arg)))
    return tuple(choices)


def _allows_none(tp: Any) -> bool:
    tp = _strip_annotated(tp)
    return tp is None or type(None) in typing.get_args(tp)


def _field_type_at(schema: type, path: KeyPath) -> Any:
    """The annotated type of the field at ``path`` (list indices skipped), or None."""
    tp: Any = schema
    for part in path:
        if isinstance(part, int):
            args = typing.get_args(_strip_annotated(tp))
            tp = args[0] if args else None
            continue
        struct = _struct_type(tp)
        if struct is None:
            # A key of a mapping of sections (result_aggregator.metrics.NAME): the item type.
            tp = _mapping_item_type(tp)
            if tp is None:
                return None
            continue
        tp = _hints(struct).get(part)
        if tp is None:
            return None
    return tp


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------------------------
# YAML parsing with line numbers


def _parse_yaml(text: str, label: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse ``text``; return the data and the 1-based line of each key path."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[KeyPath, int] = {}
        _index_lines(node, (), lines, label)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        problem = exc.problem or exc.context or "malformed YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}", file=label,
                          line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {exc}", file=label) from None
    finally:
        loader.dispose()
    return data, lines


def _index_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], label: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                # PyYAML keeps the last value silently; a lab engineer who pasted a section twice
                # would wonder why the first one is ignored.
                dotted = _dotted((*path, key))
                raise ConfigError(f"{label}:{line}: duplicate key '{dotted}' (first on line {seen[key]})",
                                  file=label, key=dotted, line=line)
            seen[key] = line
            lines[path + (key,)] = line
            _index_lines(value_node, path + (key,), lines, label)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index_lines(item, path + (i,), lines, label)


# --------------------------------------------------------------------------------------------
# Validation passes before msgspec


def _at(label: str, lines: Mapping[KeyPath, int], path: KeyPath) -> tuple[str, int | None]:
    """``file:line`` for the nearest known ancestor of ``path``."""
    for cut in range(len(path), 0, -1):
        line = lines.get(path[:cut])
        if line is not None:
            return f"{label}:{line}", line
    return label, None


def _check_keys(data: Any, schema: type[msgspec.Struct], path: KeyPath, label: str,
                lines: Mapping[KeyPath, int], root: type[msgspec.Struct]) -> Any:
    """Refuse unknown keys with a suggestion; a section left empty (``server:``) means defaults.

    Returns ``data`` with empty sections replaced by ``{}``.
    """
    if not isinstance(data, dict):
        return data  # msgspec reports the wrong type with the path
    hints = _hints(schema)
    out: dict[Any, Any] = {}
    for key, value in data.items():
        if key not in hints:
            dotted = _dotted((*path, str(key)))
            where, line = _at(label, lines, (*path, key))
            hint = _suggest(str(key), list(hints), path, root)
            raise ConfigError(f"{where}: unknown key '{dotted}'{hint}", file=label, key=dotted, line=line)
        sub = _struct_type(hints[key])
        item = _struct_type(_mapping_item_type(hints[key]))
        if sub is not None:
            if value is None and not _allows_none(hints[key]):
                value = {}
            value = _check_keys(value, sub, (*path, key), label, lines, root)
        elif item is not None and isinstance(value, dict):
            # A mapping of small sections, one per free-form name: each is checked like a section.
            value = {name: _check_keys({} if entry is None else entry, item, (*path, key, name), label, lines, root)
                     for name, entry in value.items()}
        else:
            value = _ints_to_str(hints[key], value)
        out[key] = value
    return out


def _is_str_type(tp: Any) -> bool:
    tp = _strip_annotated(tp)
    return tp is str or (typing.get_origin(tp) in (Union, types.UnionType)
                         and str in typing.get_args(tp) and int not in typing.get_args(tp))


def _ints_to_str(tp: Any, value: Any) -> Any:
    """YAML reads ``name: 42`` or ``tags: [2024]`` as ints; for text fields the user meant text."""
    if isinstance(value, int) and not isinstance(value, bool) and _is_str_type(tp):
        return str(value)
    if isinstance(value, list) and typing.get_origin(_strip_annotated(tp)) is list:
        (item_tp,) = typing.get_args(_strip_annotated(tp)) or (Any,)
        return [_ints_to_str(item_tp, item) for item in value]
    return value


def _suggest(key: str, known: list[str], path: KeyPath, root: type[msgspec.Struct]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    # A key placed in the wrong section is the other common slip: say where it belongs.
    homes = [name for name, tp in _hints(root).items()
             if (sub := _struct_type(tp)) is not None and key in _hints(sub)]
    if homes and (not path or homes != [path[0]]):
        return f" (it belongs under '{homes[0]}')"
    if not path:
        return f" (sections are: {', '.join(known)})"
    return ""


def _expand_tree(data: Any, env: Mapping[str, str], path: KeyPath, label: str,
                 lines: Mapping[KeyPath, int]) -> Any:
    if isinstance(data, str):
        where, line = _at(label, lines, path)
        try:
            return expand_env(data, env, where=f"{where}: {_dotted(path)}")
        except ConfigError as exc:
            raise ConfigError(str(exc), file=label, key=_dotted(path), line=line) from None
    if isinstance(data, dict):
        return {k: _expand_tree(v, env, (*path, k), label, lines) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_tree(v, env, (*path, i), label, lines) for i, v in enumerate(data)]
    return data


# --------------------------------------------------------------------------------------------
# msgspec error rewriting

_MSGSPEC_ERR = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _value_at(data: Any, path: KeyPath) -> tuple[bool, Any]:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, data


def _name_mapping_keys(parts: KeyPath, data: Any, schema: type) -> KeyPath:
    """``parts`` with each "..." (msgspec's stand-in for a mapping key) replaced by the key of the
    first entry that fails to convert on its own, so the error can name it and find its line."""
    out: list[str | int] = []
    node = data
    for part in parts:
        if part == "...":
            item_tp = _mapping_item_type(_field_type_at(schema, tuple(out)))
            if item_tp is None or not isinstance(node, dict):
                break
            bad = None
            for key, value in node.items():
                try:
                    msgspec.convert(value, item_tp, strict=False)
                except msgspec.ValidationError:
                    bad = key
                    break
            if bad is None:
                break
            part = bad
        out.append(part)
        _found, node = _value_at(node, (part,))
    return tuple(out)


def _rewrite_validation_error(exc: msgspec.ValidationError, data: Any, schema: type,
                              label: str, lines: Mapping[KeyPath, int]) -> ConfigError:
    match = _MSGSPEC_ERR.match(str(exc))
    msg = match.group("msg") if match else str(exc)
    raw_path = (match.group("path") if match else None) or ""
    path: KeyPath = tuple(int(i) if i.isdigit() else (name or i) for name, i in _PATH_PART.findall(raw_path))
    if "..." in path:
        path = _name_mapping_keys(path, data, schema)
    # Speak YAML, not msgspec: YAML has lists and mappings, not arrays and objects.
    msg = re.sub(r"\bobject\b", "mapping", re.sub(r"\barray\b", "list", msg.replace("`", "")))
    # Cross-field checks in __post_init__ start their message with the field they blame, so
    # that the error can point at that key rather than at the whole section.
    blamed = re.match(r"(\w+): (.*)\Z", msg, re.S)
    struct = _struct_type(_field_type_at(schema, path))
    if blamed and struct is not None and blamed.group(1) in _hints(struct):
        path, msg = (*path, blamed.group(1)), blamed.group(2)
    found, value = _value_at(data, path)
    if msg.startswith("Expected") and ", got " in msg and found:
        msg = f"{msg[0].lower()}{msg[1:]} {_clip(repr(value))}"
    elif msg.startswith("Expected"):
        msg = f"{msg[0].lower()}{msg[1:]}" + (f", got {_clip(repr(value))}" if found else "")
    elif msg.startswith("Invalid enum value"):
        choices = _literal_choices(_field_type_at(schema, path))
        msg = f"invalid value {_clip(repr(value))}"
        if choices:
            msg += f"; choose one of: {', '.join(repr(c) for c in choices)}"
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
    where, line = _at(label, lines, path)
    dotted = _dotted(path)
    text = f"{where}: {dotted}: {msg}" if dotted else f"{where}: {msg}"
    return ConfigError(text, file=label, key=dotted or None, line=line)


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# The loader


def load_config(path: str | os.PathLike[str] | None, schema: type[T], *,
                env: Mapping[str, str] | None = None,
                default_path: str | os.PathLike[str] | None = None) -> T:
    """Load and validate one config file into ``schema`` (a Struct of section Structs).

    ``path``: the file the user named; it must exist. ``None``: use ``default_path`` when that
    file exists (the per-user default location), otherwise every key takes its default.
    ``env``: the variables for ``${VAR}`` expansion; ``None`` means ``os.environ``.
    Raises ConfigError naming the file, line and dotted key of the first problem.
    """
    if path is None:
        if default_path is None or not Path(default_path).is_file():
            return schema()
        path = default_path
    label = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: config file not found", file=label) from None
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a directory, not a config file", file=label) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=label) from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read config file: {exc.strerror or exc}", file=label) from None
    return load_config_text(text, schema, label=label, env=env)


def load_config_text(text: str, schema: type[T], *, label: str = "<config>",
                     env: Mapping[str, str] | None = None) -> T:
    """Like ``load_config`` for text already in memory; ``label`` names it in errors."""
    data, lines = _parse_yaml(text, label)
    if data is None:
        return schema()
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: the top level must be a mapping of sections "
                          f"({', '.join(_hints(schema))}), got {type(data).__name__}", file=label)
    data = _check_keys(data, schema, (), label, lines, schema)
    data = _expand_tree(data, os.environ if env is None else env, (), label, lines)
    try:
        return msgspec.convert(data, schema, strict=False)
    except msgspec.ValidationError as exc:
        raise _rewrite_validation_error(exc, data, schema, label, lines) from None


# --------------------------------------------------------------------------------------------
# Dumping defaults as commented YAML


def _escape_refs(value: Any) -> Any:
    """Protect a literal ``${`` so that loading the dump does not expand it."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, list):
        return [_escape_refs(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape_refs(v) for k, v in value.items()}
    return value


def _scalar_yaml(value: Any) -> str:
    if isinstance(value, (list, dict)) and not value:
        return "[]" if isinstance(value, list) else "{}"
    text = yaml.safe_dump(_escape_refs(value), default_flow_style=True, width=10_000, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _iter_sections(config: msgspec.Struct) -> Iterator[tuple[str, msgspec.Struct, type]]:
    for name in config.__struct_fields__:
        section = getattr(config, name)
        yield name, section, type(section)


def dump_config(config: msgspec.Struct, *, header: str = "") -> str:
    """YAML text of ``config`` with each section's docstring and each key's description as comments.

    Loading the result with the same schema gives back an equal config.
    """
    out: list[str] = [f"# {line}".rstrip() for line in header.strip().splitlines()]
    for name, section, cls in _iter_sections(config):
        if out:
            out.append("")
        doc = (cls.__doc__ or "").strip().splitlines()
        if doc:
            out.append(f"# {doc[0]}")
        out.append(f"{name}:")
        hints = _hints(cls)
        for field in section.__struct_fields__:
            desc = _description(hints[field])
            if desc:
                out.append(f"  # {desc}")
            value = msgspec.to_builtins(getattr(section, field))
            out.append(f"  {field}: {_scalar_yaml(value)}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# worker.yaml


class WorkerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Who this agent is."""

    worker_id: Annotated[str | None, Meta(
        description="stable id; null derives one from the machine and DTF home")] = None
    name: Annotated[str | None, Meta(description="display name in the window; null uses the host name")] = None
    tags: Annotated[list[str], Meta(
        description="free labels that tasks can require (e.g. [gpu, lab-3])")] = msgspec.field(
        default_factory=list)
    groups: Annotated[list[str], Meta(
        description="worker groups this agent belongs to, for targeting whole groups")] = msgspec.field(
        default_factory=list)


class CoordinatorSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where the coordinator is and how to trust it."""

    address: Annotated[str | None, Meta(
        description="agent endpoint, e.g. tcp://host:8081; null finds it on the LAN via mDNS")] = None
    enrollment_token: Annotated[str | None, Meta(
        description="a join token from `dtf token create` (or the coordinator's security.enrollment_token): "
                    "this agent's key is accepted without a click")] = None
    fingerprint: Annotated[str | None, Meta(
        description="the coordinator key to trust: its fingerprint (SHA256:...) or its public key; null pins "
                    "the first one that accepts this agent (unless trust is pinned)")] = None
    trust: Annotated[Literal["first-use", "pinned"], Meta(
        description="first-use: pin the coordinator key of the first acceptance (as SSH does); pinned: only a "
                    "key from a token, the fingerprint key or the local home")] = "first-use"
    insecure: Annotated[bool, Meta(
        description="plain-text sockets, for a coordinator started with --insecure")] = False
    interfaces: Annotated[list[str], Meta(
        description="IP addresses mDNS browses on; empty means all interfaces")] = msgspec.field(
        default_factory=list)
    service_name: Annotated[str | None, Meta(
        description="with several coordinators on the LAN, the mDNS name of the one to join")] = None

    def __post_init__(self) -> None:
        # `${DTF_COORDINATOR:-}` in a container's worker.yaml expands to "" when the variable is unset:
        # the same as leaving the key out.
        for name in ("address", "enrollment_token", "fingerprint", "service_name"):
            if not (getattr(self, name) or "").strip():
                setattr(self, name, None)
        if self.address is not None and not re.match(r"(tcp|ipc|inproc)://\S+\Z", self.address):
            raise ValueError(f"address: expected tcp://HOST:PORT, got {self.address!r}")


class ExecutionSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How tasks run on this machine."""

    concurrent_tasks: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(
        description="tasks run at once; null means one per CPU core")] = None
    default_timeout: Annotated[Annotated[float, Meta(gt=0)] | None, Meta(
        description="seconds before a task without its own timeout is killed; null means never")] = None
    work_dir: Annotated[str | None, Meta(
        description="directory tasks run in (one subdirectory each); null is under DTF home")] = None
    output_tail_bytes: Annotated[int, Meta(
        ge=0, description="bytes of stdout and of stderr kept from the end of each task's output")] = 4096
    spool_dir: Annotated[str | None, Meta(
        description="directory of the results not yet acknowledged (kept across restarts); "
                    "null is <DTF home>/agent/<worker id>/spool")] = None
    shell: Annotated[str, Meta(
        min_length=1, description="the shell that runs a command written with shell syntax (pipes, &&, "
                                  "$VARS...); plain commands are run directly")] = "/bin/sh"
    max_log_bytes: Annotated[int, Meta(
        ge=1024, description="bytes of each task's stdout and of its stderr streamed to the coordinator: "
                             "the first half and the last half are kept, the middle is dropped with a marker")
    ] = 64 * 1024 * 1024
    cache_dir: Annotated[str | None, Meta(
        description="directory of the bundles (shipped test suites) kept by content hash, and their "
                    "virtual environments; null is <DTF home>/agent/<worker id>/cache")] = None
    cache_max_bytes: Annotated[int, Meta(
        ge=0, description="bytes of bundles kept; the least recently used go first")] = 2 * 1024**3

    def slots(self) -> int:
        """``concurrent_tasks`` with ``None`` resolved to the number of CPU cores."""
        return self.concurrent_tasks or os.cpu_count() or 1


class ReportingSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How results and live metrics reach the coordinator."""

    result_resend_interval: Annotated[float, Meta(
        gt=0, description="seconds between resends of a result the coordinator has not acknowledged")] = 2.0
    metrics_interval: Annotated[float, Meta(
        gt=0, description="seconds between samples of CPU, memory and disk use")] = 5.0


class HealthSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Liveness towards the coordinator."""

    heartbeat_interval: Annotated[float, Meta(
        gt=0, description="seconds between heartbeats (keep well below the coordinator's timeout)")] = 5.0


class WorkerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """worker.yaml: every key is optional."""

    worker: WorkerSection = msgspec.field(default_factory=WorkerSection)
    coordinator: CoordinatorSection = msgspec.field(default_factory=CoordinatorSection)
    execution: ExecutionSection = msgspec.field(default_factory=ExecutionSection)
    reporting: ReportingSection = msgspec.field(default_factory=ReportingSection)
    health: HealthSection = msgspec.field(default_factory=HealthSection)


def load_worker_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None, *,
                       default_path: str | os.PathLike[str] | None = None) -> WorkerConfig:
    """Load worker.yaml (see ``load_config`` for how ``path``, ``env`` and ``default_path`` work)."""
    return load_config(path, WorkerConfig, env=env, default_path=default_path)


_WORKER_HEADER = """\
worker.yaml: configuration of a DTF agent (dtf-agent --config worker.yaml).
Every key is optional and shows its default. ${VAR} and ${VAR:-default} expand from the environment."""


def dump_defaults() -> str:
    """worker.yaml with every key at its default and a comment each (resources/worker.example.yaml)."""
    return dump_config(WorkerConfig(), header=_WORKER_HEADER)
