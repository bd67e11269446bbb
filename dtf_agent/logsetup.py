"""Logging for the long-running programs (`dtf serve`, `dtf-agent`, `dtf-gui`): text or JSON lines on
stderr, and a size-rotated copy under ``$DTF_HOME/logs/``.

It lives in the agent's package because the agent must not import ``dtf_gui``; the coordinator's CLI
imports it from here. Standard library only (the agent's self-check forbids the heavy packages).

- ``--log-format json``: one object a line, ``time`` (UTC, ISO 8601), ``level``, ``logger``,
  ``message``, ``program``, ``pid``, and ``task_id`` / ``worker_id`` / ``attempt`` when the record
  carries them (``log.info(..., extra={"task_id": tid})``); ``exception`` holds a traceback. The
  agent stamps its own worker id on every record (:func:`set_context`), so
  ``jq 'select(.task_id == "T")'`` over a coordinator's and its agents' logs follows one task.
- The file: ``$DTF_HOME/logs/<name>.log`` plus ``.1`` ... ``.N`` (RotatingFileHandler: 10 MiB and 5
  backups, at most 60 MiB, by default). Rotation is done by the writing process itself, because DTF
  is not a distribution package that installs a logrotate rule (WatchedFileHandler is only right
  when logrotate moves the file), a PyInstaller bundle on a test machine may have no logrotate at
  all, and a file that rotates itself is bounded whatever the machine has. Each file has one
  writer: the coordinator holds its home's lock, and each agent writes a file named by its worker
  id (two agents may share a home), since RotatingFileHandler's rollover is not safe between
  processes.
- The file is on by default except when stderr is the journal (systemd sets ``$JOURNAL_STREAM``):
  journald already keeps, rotates and bounds those lines, and a second copy in the state directory
  would only double the writes. Run by hand, in a terminal, under nohup or in a container, the
  lines are kept in the file too. ``--log-file PATH`` moves it, ``--no-log-file`` (or
  ``DTF_LOG_FILE=off``) turns it off, ``DTF_LOG_FILE=PATH`` and ``DTF_LOG_FORMAT=json`` set the
  defaults for containers.
- The names cannot clash with the task output that the coordinator's LogStore keeps in the same
  directory: it uses two-character bucket directories (``logs/<id[:2]>/<id>/``) and its retention
  sweep looks only at entries two levels down, while these are files at the top level, longer
  than two characters.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

__all__ = [
    "CONTEXT_FIELDS", "DEFAULT_BACKUPS", "DEFAULT_MAX_BYTES", "FORMATS", "LOG_DIR", "ContextFilter",
    "JsonFormatter", "LogOptions", "add_log_args", "configure", "current_file", "default_log_file", "log_file_name",
    "open_log_file", "options_from_args", "parse_size", "reset", "set_context", "stderr_is_journal",
]

FORMATS = ("text", "json")
LOG_DIR = "logs"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
# Attributes a record may carry (logging's ``extra=``) that the JSON lines keep as fields of their own.
CONTEXT_FIELDS = ("task_id", "worker_id", "attempt")

_OFF = ("off", "none", "no", "false", "0", "-")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_MARK = "_dtf_logsetup"  # set on the handlers configure() installs, so a second call replaces them


def parse_size(text: str) -> int:
    """``"10M"``, ``"512K"``, ``"1G"`` or plain bytes; K, M, G are powers of 1024."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (bytes, or a number with K, M or G, e.g. 10M)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _size_arg(text: str) -> int:
    try:
        n = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if n < 1024:
        raise argparse.ArgumentTypeError(f"--log-max-size must be at least 1K, got {text!r}")
    return n


def _backups_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of files: {text!r}") from None
    # RotatingFileHandler never rotates with no backups: the file would grow without bound.
    if not 1 <= n <= 100:
        raise argparse.ArgumentTypeError(f"--log-backups must be 1 to 100, got {n}")
    return n


@dataclass(frozen=True)
class LogOptions:
    level: str = "INFO"
    format: str = "text"
    # None: the default file (see module docstring); "" : no file; else this path.
    file: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS


def add_log_args(ap: argparse.ArgumentParser, *, level: bool = True,
                 env: Mapping[str, str] | None = None) -> None:
    """--log-level (unless the parser has its own), --log-format, --log-file, --no-log-file,
    --log-max-size, --log-backups."""
    env = os.environ if env is None else env
    if level:
        ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    fmt = (env.get("DTF_LOG_FORMAT") or "text").strip().lower()
    if fmt not in FORMATS:
        # argparse checks choices only on the command line, never a default: say it here.
        print(f"{ap.prog}: DTF_LOG_FORMAT={env.get('DTF_LOG_FORMAT')!r} is not one of {', '.join(FORMATS)}: "
              "logging as text", file=sys.stderr)
    ap.add_argument("--log-format", choices=FORMATS, default=fmt if fmt in FORMATS else "text",
                    help="text, or json: one object a line with time, level, logger, message and the task and "
                         "worker ids where known (default: $DTF_LOG_FORMAT, else text)")
    ap.add_argument("--log-file", metavar="PATH", default=None,
                    help="also write the log here, rotated by size (default: $DTF_LOG_FILE, else "
                         "$DTF_HOME/logs/dtf-serve.log, dtf-agent-WORKER.log or dtf-gui.log, except under "
                         "systemd, whose journal keeps stderr)")
    ap.add_argument("--no-log-file", action="store_true", help="log to stderr only (DTF_LOG_FILE=off)")
    ap.add_argument("--log-max-size", metavar="SIZE", type=_size_arg, default=DEFAULT_MAX_BYTES,
                    help="rotate the log file at this size (default 10M)")
    ap.add_argument("--log-backups", metavar="N", type=_backups_arg, default=DEFAULT_BACKUPS,
                    help="rotated files kept: NAME.log.1 ... NAME.log.N (default 5)")


def options_from_args(args: argparse.Namespace, *, level: str | None = None,
                      env: Mapping[str, str] | None = None) -> LogOptions:
    env = os.environ if env is None else env
    file: str | None
    if args.no_log_file:
        file = ""
    elif args.log_file:
        file = "" if args.log_file.strip().lower() in _OFF else args.log_file
    else:
        from_env = env.get("DTF_LOG_FILE")
        if from_env is None:
            file = None
        else:
            file = "" if from_env.strip().lower() in _OFF or not from_env.strip() else from_env
    return LogOptions(level=level or args.log_level, format=args.log_format, file=file,
                      max_bytes=args.log_max_size, backups=args.log_backups)


# -- formatting -----------------------------------------------------------------------------------


def _iso(created: float) -> str:
    return _dt.datetime.fromtimestamp(created, tz=_dt.timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line (newlines inside a message are escaped, so a line is a record)."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "program": self.program,
            "pid": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # default=str: an id that is not a string (a UUID) is written, not a logging error.
        # ASCII only: a stderr without UTF-8 (a C locale) would otherwise escape bytes in a way JSON does not read.
        return json.dumps(doc, default=str)


def _text_formatter(program: str) -> logging.Formatter:
    # The format these programs always had (tests and people read it).
    return logging.Formatter(f"%(asctime)s {program} %(levelname)s %(message)s")


class ContextFilter(logging.Filter):
    """Stamps fields on every record that does not carry its own (the agent's worker id)."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


# -- where the file goes --------------------------------------------------------------------------


def log_file_name(program: str, instance: str | None = None) -> str:
    """``dtf-serve.log``, ``dtf-agent-<worker>.log``: safe as a file name whatever the worker id is."""
    name = program if not instance else f"{program}-{_UNSAFE_NAME.sub('_', instance)[:100]}"
    return f"{name}.log"


def default_log_file(home: Path, program: str, instance: str | None = None) -> Path:
    return home / LOG_DIR / log_file_name(program, instance)


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when stderr is the systemd journal's stream (systemd.exec(5), $JOURNAL_STREAM): compare
    the device and inode it names with those of our stderr, as the manual says to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


# -- installing the handlers ----------------------------------------------------------------------


@dataclass
class _State:
    program: str = "dtf"
    options: LogOptions = LogOptions()
    context: ContextFilter | None = None
    file: Path | None = None
    hooks: bool = False


_state = _State()


def _handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, _MARK, False)]


def _formatter(program: str, fmt: str) -> logging.Formatter:
    return JsonFormatter(program) if fmt == "json" else _text_formatter(program)


def _install(handler: logging.Handler) -> None:
    setattr(handler, _MARK, True)
    handler.setFormatter(_formatter(_state.program, _state.options.format))
    if _state.context is not None:
        handler.addFilter(_state.context)
    logging.getLogger().addHandler(handler)


def reset() -> None:
    """Remove what configure() and open_log_file() installed (a test's teardown; a program's exit
    closes them anyway)."""
    root = logging.getLogger()
    for h in _handlers():
        root.removeHandler(h)
        h.close()
    if _state.hooks:
        sys.excepthook, threading.excepthook = sys.__excepthook__, threading.__excepthook__
    _state.program, _state.options, _state.context, _state.file, _state.hooks = "dtf", LogOptions(), None, None, False
    logging.captureWarnings(False)


def configure(program: str, options: LogOptions, *, stream: TextIO | None = None) -> None:
    """The stderr handler, at ``options.level``, in ``options.format``. The file comes later, with
    :func:`open_log_file`, once the program knows its home (and the agent its worker id).

    Replaces what an earlier call installed (a test may call a program's main twice)."""
    reset()
    _state.program = program
    _state.options = options
    logging.getLogger().setLevel(options.level)
    _install(logging.StreamHandler(stream if stream is not None else sys.stderr))
    # Warnings become records, so that a JSON stderr stays JSON (in text they read as before).
    logging.captureWarnings(True)
    if options.format == "json":
        _json_excepthooks()


def set_context(**fields: Any) -> None:
    """Fields every later record carries unless it has its own (the agent's ``worker_id``)."""
    values = {k: v for k, v in fields.items() if v is not None}
    if _state.context is None:
        _state.context = ContextFilter(values)
        for h in _handlers():
            h.addFilter(_state.context)
    else:
        _state.context.fields.update(values)


def open_log_file(home: Path | None, instance: str | None = None, *,
                  stream: TextIO | None = None) -> Path | None:
    """Add the rotated file (see the module docstring for when); its path, or None when there is
    none. A file that cannot be opened is said on stderr and skipped: losing the copy of the log
    is no reason to refuse to run."""
    opts = _state.options
    if opts.file == "":
        return None
    if opts.file is None:
        if home is None or stderr_is_journal(stream):
            return None
        path = default_log_file(home, _state.program, instance)
    else:
        path = Path(opts.file).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=opts.max_bytes, backupCount=opts.backups,
                                                       encoding="utf-8")
    except OSError as exc:
        logging.getLogger("dtf.logs").warning(
            "cannot write the log file %s (%s); logging to stderr only (--log-file PATH elsewhere, or "
            "--no-log-file)", path, exc.strerror or exc)
        return None
    _install(handler)
    _state.file = path
    return path


def current_file() -> Path | None:
    return _state.file


def _json_excepthooks() -> None:
    """An uncaught exception as a JSON record too (otherwise its traceback breaks the one-object-a-
    line promise of stderr)."""
    crash = logging.getLogger("dtf.crash")

    def main_hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        crash.critical("uncaught exception: %s", "".join(traceback.format_exception_only(kind, exc)).strip(),
                       exc_info=(kind, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        exc = args.exc_value if args.exc_value is not None else args.exc_type()
        crash.error("uncaught exception in thread %s: %s", name,
                    "".join(traceback.format_exception_only(args.exc_type, exc)).strip(),
                    exc_info=(args.exc_type, exc, args.exc_traceback))

    sys.excepthook = main_hook
    threading.excepthook = thread_hook
    _state.hooks = True
