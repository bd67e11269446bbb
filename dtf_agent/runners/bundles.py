"""Bundles: a test suite's directory shipped to test machines as one content-addressed archive.

The engineer's machine builds the bundle (``build_bundle``), the coordinator stores it by digest,
and each agent fetches it once, keeps it in a size-capped LRU cache (``BundleCache``), checks it
and unpacks it into each task's work directory.

The digest is taken over a manifest of (path, mode, content hash), not over the compressed bytes:
what the tests see is what is named, so a gzip or tarfile change between Python versions never
makes an unchanged suite look new, and an agent can check what it got without trusting the
archive's own headers. The archive is deterministic anyway (sorted entries, zero times and
owners), so the same directory also gives the same bytes.

Archives reaching an agent are untrusted network input: only regular files with normalised
relative names are accepted, expansion is bounded, and extraction never follows a symlink that
already exists in the destination.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from dtf_agent.filelock import try_lock

__all__ = [
    "DEFAULT_EXCLUDES",
    "DEFAULT_MAX_BUNDLE_BYTES",
    "DIGEST_RE",
    "Bundle",
    "BundleCache",
    "BundleError",
    "build_bundle",
    "digest_of",
    "list_files",
]

log = logging.getLogger(__name__)

# Never part of a bundle, whatever the ignore files say (a negation cannot bring them back):
# tool state and environments that are large, machine-specific, or both.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/", ".hg/", ".svn/", ".venv/", "venv/", "__pycache__/", "*.pyc", ".pytest_cache/",
    ".mypy_cache/", ".ruff_cache/", ".tox/", ".nox/", "node_modules/", ".dtf/", "*.egg-info/",
)
DEFAULT_MAX_BUNDLE_BYTES = 256 * 1024 * 1024
# \Z, not $: "$" also matches before a trailing newline, which would let "sha256-…\n" through.
DIGEST_RE: re.Pattern[str] = re.compile(r"\Asha256-[0-9a-f]{64}\Z")

IGNORE_FILES = (".gitignore", ".dtfignore")  # in this order: .dtfignore has the last word
_MAX_FILES = 100_000          # files in one bundle; the agent refuses more, so the builder does too
_MAX_NAME = 4096              # bytes of one relative path (Linux PATH_MAX)
_CHUNK = 64 * 1024            # content is read in pieces this size
# tarfile reads a whole pax/GNU long-name header in one call, and only those; content is read in
# _CHUNK pieces. So a bigger read is a hostile header, refused before it is held in memory.
_MAX_READ = _CHUNK
_MAX_PAX = 16 * 1024          # bytes of pax header data kept for one member
# Headers and padding allowed on top of the content: a tar header, a pax header for a long or
# non-ASCII name and the padding of each stay well under 8 KiB.
_HEADER_ALLOWANCE = _MAX_FILES * 8 * 1024 + 1024 * 1024
_READY = ".dtf-ready"         # written last into a venv: without it the venv is half-made
_STALE_TMP_S = 3600.0


class BundleError(Exception):
    """A bundle was refused or could not be made, stored, unpacked or given a venv."""


@dataclass(frozen=True)
class Bundle:
    digest: str                 # "sha256-<hex>" of the manifest, not of ``data``
    data: bytes = field(repr=False)  # the .tar.gz; a repr holding megabytes helps nobody
    files: tuple[str, ...]      # relative posix paths, sorted
    size: int                   # sum of the files' sizes, uncompressed
    skipped: tuple[str, ...] = ()  # notes on what was left out and why (links, sockets, …)


# ---------------------------------------------------------------------------------------------
# Ignore patterns (the common gitignore subset)
# ---------------------------------------------------------------------------------------------

# Trailing spaces are dropped unless escaped with a backslash (git's rule).
_TRAILING_SPACES = re.compile(r"(?<!\\) +\Z")


@dataclass(frozen=True)
class _Pattern:
    base: str                   # directory of the ignore file, relative to the bundle root
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.base:
            if not path.startswith(self.base + "/"):
                return False
            path = path[len(self.base) + 1:]
        return self.regex.fullmatch(path) is not None


def _class_char(c: str) -> str:
    # Escaping every non-alphanumeric keeps "[", "&&", "~~" from meaning anything to `re`;
    # an escaped ASCII letter would be a class like \d, so letters stay bare.
    return c if c.isalnum() else "\\" + c


def _bracket(seg: str, start: int) -> tuple[str | None, int]:
    """The regex for the ``[...]`` at ``seg[start]`` and the index after it; None when unclosed
    (git then takes the "[" literally)."""
    j = start + 1
    negate = j < len(seg) and seg[j] in "!^"
    if negate:
        j += 1
    body: list[str] = []
    first = True
    while j < len(seg):
        c = seg[j]
        if c == "]" and not first:
            inner = "".join(body)
            # A bracket never matches "/": patterns match path components.
            return ("[^/" + inner + "]" if negate else "(?!/)[" + inner + "]"), j + 1
        first = False
        if c == "\\" and j + 1 < len(seg):
            body.append(_class_char(seg[j + 1]))
            j += 2
            continue
        body.append("-" if c == "-" else _class_char(c))
        j += 1
    return None, start


def _glob_segment(seg: str) -> str:
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(seg[i + 1]))
            i += 2
        elif c == "*":
            out.append("[^/]*")
            while i < n and seg[i] == "*":  # "**" inside a component is a plain "*" (git)
                i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            cls, after = _bracket(seg, i)
            if cls is None:
                out.append(re.escape(c))
                i += 1
            else:
                out.append(cls)
                i = after
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _glob_path(pattern: str) -> str:
    """Regex source for a slash-separated pattern, with "**" as whole components spanning
    directories: leading "**/" (any depth, also none), middle "/**/", trailing "/**" (all inside)."""
    segs = pattern.split("/")
    last = len(segs) - 1
    out: list[str] = []
    after_globstar = False  # the "**" before already ended with a slash
    for i, seg in enumerate(segs):
        if seg == "**":
            if i == 0:
                out.append(".*" if i == last else "(?:.*/)?")
            elif i == last:
                out.append(".*" if after_globstar else "/.*")
            else:
                out.append("(?:.*/)?" if after_globstar else "/(?:.*/)?")
            after_globstar = True
            continue
        if i > 0 and not after_globstar:
            out.append("/")
        out.append(_glob_segment(seg))
        after_globstar = False
    return "".join(out)


def _parse_pattern(line: str, base: str) -> _Pattern | None:
    line = _TRAILING_SPACES.sub("", line)
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    # A slash at the start or in the middle ties the pattern to the ignore file's directory;
    # without one it matches a name at any depth below it.
    anchored = "/" in line
    if line.startswith("/"):
        line = line[1:]
    source = _glob_path(line)
    if not anchored:
        source = "(?:.*/)?" + source
    try:
        regex = re.compile(source, re.DOTALL)
    except re.error as e:  # e.g. "[z-a]": git ignores a pattern it cannot use, and so do we
        log.warning("ignore pattern %r (in %s) is not valid (%s); it is not used", line, base or ".", e)
        return None
    return _Pattern(base, regex, negate, dir_only)


def _parse_patterns(lines: Sequence[str], base: str) -> list[_Pattern]:
    return [p for p in (_parse_pattern(x, base) for x in lines) if p is not None]


_DEFAULT_PATTERNS = _parse_patterns(DEFAULT_EXCLUDES, "")


def _read_ignore_file(path: Path, base: str) -> list[_Pattern]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return []
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror}); fix its permissions or remove it") from e
    return _parse_patterns(text.removeprefix("\ufeff").splitlines(), base)


# ---------------------------------------------------------------------------------------------
# Choosing the files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    rel: str      # path in the bundle
    path: str     # what to read: the file, or the file a link inside the root points to
    size: int
    mode: int     # 0o644 or 0o755


def _mode_of(st_mode: int) -> int:
    return 0o755 if st_mode & 0o111 else 0o644


def _check_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root)
    if not path.exists():
        raise BundleError(f"{path}: no such directory; give the directory of the test suite to bundle")
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; a bundle is made from a directory (the test suite's root)")
    return path


def _select(root: Path, excludes: Sequence[str]) -> tuple[list[_Source], list[str]]:
    """The files a bundle of ``root`` holds, sorted, and notes on what was skipped."""
    real_root = os.path.realpath(root)
    # Patterns given by the caller come last, so they win over the ignore files (as git's
    # command-line patterns do): "--exclude data/" holds even where a .gitignore says "!data/".
    extra = _parse_patterns(excludes, "")
    sources: list[_Source] = []
    notes: list[str] = []

    def excluded(rel: str, is_dir: bool, patterns: list[_Pattern]) -> bool:
        if any(p.matches(rel, is_dir) for p in _DEFAULT_PATTERNS):
            return True
        # The last matching pattern decides, and deeper ignore files come after shallower ones.
        for group in (extra, patterns):
            for p in reversed(group):
                if p.matches(rel, is_dir):
                    return not p.negate
        return False

    def note(rel: str, why: str) -> None:
        notes.append(f"{rel}: {why}")
        log.info("bundle of %s: skipped %s: %s", root, rel, why)

    stack: list[tuple[str, list[_Pattern]]] = [("", [])]
    while stack:
        dir_rel, inherited = stack.pop()
        dir_path = Path(real_root, dir_rel) if dir_rel else Path(real_root)
        patterns = list(inherited)
        for name in IGNORE_FILES:
            patterns.extend(_read_ignore_file(dir_path / name, dir_rel))
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise BundleError(
                f"{root / dir_rel}: cannot read directory ({e.strerror}); fix its permissions "
                f"or list it in {root / '.dtfignore'}") from e
        for entry in entries:
            rel = f"{dir_rel}/{entry.name}" if dir_rel else entry.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError(
                    f"{root / rel!r}: the name is not valid UTF-8; rename it or list it in "
                    f"{root / '.dtfignore'}") from None
            try:
                if entry.is_symlink():
                    if excluded(rel, False, patterns):
                        continue
                    target = os.path.realpath(entry.path)
                    if not os.path.exists(target):
                        note(rel, "symlink to nothing (dangling); skipped")
                    elif os.path.commonpath([real_root, target]) != real_root:
                        note(rel, f"symlink to {target}, outside the bundle root; skipped (copy the file in)")
                    elif os.path.isdir(target):
                        # Not followed: a link to a parent would loop, and the directory is
                        # either in the bundle already or outside it.
                        note(rel, "symlink to a directory; skipped (directory links are not followed)")
                    else:
                        st = os.stat(target)
                        if stat.S_ISREG(st.st_mode):
                            sources.append(_Source(rel, target, st.st_size, _mode_of(st.st_mode)))
                        else:
                            note(rel, "symlink to something that is not a regular file; skipped")
                elif entry.is_dir(follow_symlinks=False):
                    if not excluded(rel, True, patterns):
                        stack.append((rel, patterns))
                elif entry.is_file(follow_symlinks=False):
                    if not excluded(rel, False, patterns):
                        st = entry.stat(follow_symlinks=False)
                        sources.append(_Source(rel, entry.path, st.st_size, _mode_of(st.st_mode)))
                elif not excluded(rel, False, patterns):
                    note(rel, "not a regular file (socket, fifo or device); skipped")
            except OSError as e:
                raise BundleError(
                    f"{root / rel}: cannot read ({e.strerror}); fix it or list it in "
                    f"{root / '.dtfignore'}") from e
    sources.sort(key=lambda s: s.rel)
    return sources, notes


def list_files(root: str | os.PathLike[str], *, excludes: Sequence[str] = ()) -> list[str]:
    """The relative paths ``build_bundle(root, excludes=excludes)`` would include, sorted."""
    return [s.rel for s in _select(_check_root(root), excludes)[0]]


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def _fmt_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _manifest_line(path: str, mode: int, content_hash: str) -> bytes:
    return f"{path}\0{mode:o}\0{content_hash}\n".encode()


def _manifest_digest(entries: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for path, mode, content_hash in sorted(entries):
        h.update(_manifest_line(path, mode, content_hash))
    return "sha256-" + h.hexdigest()


def _too_big(root: Path, sizes: list[tuple[str, int]], total: int, max_bytes: int) -> BundleError:
    largest = sorted(sizes, key=lambda x: (-x[1], x[0]))[:5]
    listing = ", ".join(f"{rel} ({_fmt_size(size)})" for rel, size in largest)
    return BundleError(
        f"{root}: the bundle would hold {_fmt_size(total)}, over the limit of {_fmt_size(max_bytes)}. "
        f"Largest files: {listing}. List what the tests do not need in {root / '.dtfignore'} "
        f"(gitignore syntax), or raise the limit.")


def build_bundle(root: str | os.PathLike[str], *, excludes: Sequence[str] = (),
                 max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Bundle:
    """Pack ``root`` into a deterministic .tar.gz; see the module's docstring for the digest."""
    base = _check_root(root)
    sources, notes = _select(base, excludes)
    if not sources:
        raise BundleError(
            f"{base}: nothing to bundle: the directory is empty or every file in it is excluded "
            f"(by .gitignore, .dtfignore or the default excludes)")
    if len(sources) > _MAX_FILES:
        raise BundleError(
            f"{base}: {len(sources)} files, over the limit of {_MAX_FILES}; list what the tests "
            f"do not need in {base / '.dtfignore'}")
    total = sum(s.size for s in sources)
    if total > max_bytes:
        raise _too_big(base, [(s.rel, s.size) for s in sources], total, max_bytes)

    buf = io.BytesIO()
    entries: list[tuple[str, int, str]] = []
    total = 0
    # GzipFile with mtime=0 and no file name: tarfile's own "w:gz" would stamp the current time.
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=buf, mtime=0) as gz, \
            tarfile.open(fileobj=cast(IO[bytes], gz), mode="w", format=tarfile.PAX_FORMAT,
                         encoding="utf-8") as tar:
        for s in sources:
            try:
                with open(s.path, "rb") as f:
                    content = f.read()
            except OSError as e:
                raise BundleError(f"{base / s.rel}: cannot read ({e.strerror}); fix it or list it in "
                                  f"{base / '.dtfignore'}") from e
            total += len(content)
            if total > max_bytes:  # a file grew since it was listed
                raise _too_big(base, [(x.rel, x.size) for x in sources], total, max_bytes)
            info = tarfile.TarInfo(s.rel)
            info.size = len(content)
            info.mode = s.mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(content))
            entries.append((s.rel, s.mode, hashlib.sha256(content).hexdigest()))
    return Bundle(digest=_manifest_digest(entries), data=buf.getvalue(),
                  files=tuple(s.rel for s in sources), size=total, skipped=tuple(notes))


# ---------------------------------------------------------------------------------------------
# Reading untrusted archives
# ---------------------------------------------------------------------------------------------


class _Bounded:
    """The decompressed stream as tarfile sees it: at most ``limit`` bytes in all and no read
    bigger than _MAX_READ, so a small hostile archive cannot make us hold or churn through
    gigabytes."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._limit = limit

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_READ:
            raise BundleError(f"archive refused: a header of {size} bytes (more than {_MAX_READ})")
        data = self._raw.read(size)
        if self._raw.tell() > self._limit:
            raise BundleError(f"archive refused: it expands past {_fmt_size(self._limit)}")
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == os.SEEK_SET and offset > self._limit:
            raise BundleError(f"archive refused: it expands past {_fmt_size(self._limit)}")
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _bad_name(name: str) -> str:
    """Why ``name`` is not an acceptable relative path in a bundle, or "" when it is."""
    if not name:
        return "empty name"
    if "\0" in name:
        return "NUL in the name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if size > _MAX_NAME:
        return f"name longer than {_MAX_NAME} bytes"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if os.sep == "\\" and "\\" in name:  # a separator where the agent runs
        return "backslash in the name"
    parts = name.split("/")
    if ".." in parts:
        return "'..' in the path"
    if any(p in ("", ".") for p in parts):
        return "path is not normalised (empty or '.' component)"
    return ""


_KINDS = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.DIRTYPE: "directory",
          tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo",
          tarfile.CONTTYPE: "contiguous file", tarfile.GNUTYPE_SPARSE: "sparse file"}
# Where data_filter judges a member: a directory that never exists, so its verdict rests on the
# member alone. Symlinks already in the real destination are _create's business (it replaces a
# file link and refuses a directory link, on every Python version alike).
_NOWHERE = os.path.join(os.path.abspath(os.sep), "nonexistent-dtf-bundle-root")
_HAVE_DIR_FD = {os.open, os.mkdir, os.unlink} <= os.supports_dir_fd


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
        kind = _KINDS.get(member.type, f"type {member.type!r}")
        raise BundleError(f"archive refused: {name!r} is a {kind}; a bundle holds regular files only")
    reason = _bad_name(name)
    if reason:
        raise BundleError(f"archive refused: member {name!r}: {reason}")
    if sum(len(k) + len(v) for k, v in member.pax_headers.items()) > _MAX_PAX:
        raise BundleError(f"archive refused: member {name!r} has oversized pax headers")
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:  # a second opinion where Python has it (3.10.12+, 3.11.4+)
        try:
            data_filter(member, _NOWHERE)
        except tarfile.FilterError as e:
            raise BundleError(f"archive refused: member {name!r}: {e}") from e


def _create(dest_fd: int, dest: Path, name: str) -> int:
    """Open ``dest/name`` for writing as a new file; never through a symlink already in dest."""
    parts = name.split("/")
    try:
        if not _HAVE_DIR_FD:  # pragma: no cover - Windows: check by path (racy, but no *at calls)
            current = dest
            for part in parts[:-1]:
                current = current / part
                if current.is_symlink():
                    raise BundleError(f"cannot unpack {name!r}: {current} is a symlink")
                current.mkdir(exist_ok=True)
            target = current / parts[-1]
            if target.is_symlink() or target.exists():
                target.unlink()
            return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        fd = os.dup(dest_fd)
        try:
            for part in parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                # O_NOFOLLOW: a symlink planted in dest fails here instead of being followed.
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = sub
            # A new inode, not O_TRUNC: truncating would write through a hard link in dest.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=fd)
            return os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise BundleError(f"cannot unpack {name!r} into {dest}: {e.strerror or e} "
                          f"(a symlink or a directory in the way?)") from e


def _write_all(fd: int, data: bytes, dest: Path, name: str) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise BundleError(f"cannot write {dest / name}: {e.strerror}") from e


def _set_mode(fd: int, dest: Path, name: str, mode: int) -> None:
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # exactly 0o644/0o755, whatever the umask
        else:  # pragma: no cover - Windows
            os.chmod(dest / name, mode)
    except OSError as e:
        raise BundleError(f"cannot set the mode of {dest / name}: {e.strerror}") from e


def _scan(src: BinaryIO, *, max_bytes: int, dest: Path | None = None,
          want: str | None = None) -> tuple[str, bytes | None]:
    """Check every member of the .tar.gz in ``src`` and return its manifest digest; with ``dest``,
    also write the files under it; with ``want``, also return that member's content (None when
    absent)."""
    entries: list[tuple[str, int, str]] = []
    names: set[str] = set()
    dirs: set[str] = set()
    total = 0
    wanted: bytes | None = None
    dest_fd = -1
    if dest is not None and _HAVE_DIR_FD:
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with gzip.GzipFile(fileobj=src, mode="rb") as gz, \
                tarfile.open(fileobj=cast(IO[bytes], _Bounded(gz, max_bytes + _HEADER_ALLOWANCE)), mode="r:") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                cast(Any, tar).members.clear()  # tarfile keeps every header it read; we need none of them
                _check_member(member)
                name = member.name
                parents = name.split("/")[:-1]
                prefixes = {"/".join(parents[:i]) for i in range(1, len(parents) + 1)}
                if name in names or name in dirs or prefixes & names:
                    raise BundleError(f"archive refused: {name!r} appears twice or is both a file and a directory")
                names.add(name)
                dirs |= prefixes
                if len(names) > _MAX_FILES:
                    raise BundleError(f"archive refused: more than {_MAX_FILES} files")
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"archive refused: its files hold more than {_fmt_size(max_bytes)}")
                mode = _mode_of(member.mode)
                f = tar.extractfile(member)
                if f is None:  # pragma: no cover - regular members always have a file object
                    raise BundleError(f"archive refused: no content for {name!r}")
                h = hashlib.sha256()
                keep: list[bytes] | None = [] if name == want else None
                out = _create(dest_fd, dest, name) if dest is not None else -1
                try:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        if out >= 0:
                            _write_all(out, chunk, cast(Path, dest), name)
                        if keep is not None:
                            keep.append(chunk)
                    if out >= 0:
                        _set_mode(out, cast(Path, dest), name, mode)
                finally:
                    if out >= 0:
                        os.close(out)
                if keep is not None:
                    wanted = b"".join(keep)
                entries.append((name, mode, h.hexdigest()))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise BundleError(f"not a valid bundle archive: {e}") from e
    except OSError as e:  # our own writes raise BundleError; this is the archive being read
        raise BundleError(f"not a valid bundle archive: {e}") from e
    finally:
        if dest_fd >= 0:
            os.close(dest_fd)
    if not entries:
        raise BundleError("archive refused: it holds no files")
    return _manifest_digest(entries), wanted


def digest_of(data: bytes, *, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> str:
    """The manifest digest of the archive ``data``, recomputed from its contents; BundleError when
    the archive is damaged, unsafe, or its files hold more than ``max_bytes``."""
    return _scan(io.BytesIO(data), max_bytes=max_bytes)[0]


def _check_digest(digest: str) -> None:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise BundleError(f"not a bundle digest: {digest!r:.100} (expected 'sha256-' and 64 lowercase hex digits)")


# ---------------------------------------------------------------------------------------------
# The agent's cache
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Interpreter:
    version: str
    site_dirs: tuple[str, ...]  # what the interpreter imports from, beyond its standard library


# Asked of the interpreter a venv is made from: where its packages are. A venv made from a venv
# gets the *base* interpreter's site-packages with --system-site-packages, not the agent venv's,
# so those directories are added back with a .pth file.
_PROBE = """\
import json, os, site, sys
dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
if site.ENABLE_USER_SITE:
    dirs.append(site.getusersitepackages())
print(json.dumps({"version": sys.version, "dirs": [d for d in dirs if os.path.isdir(d)]}))
"""
_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def _venv_python(venv: Path) -> Path:
    if os.name == "nt":  # pragma: no cover
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _has_requirements(content: bytes) -> bool:
    for line in content.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return True
    return False


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)  # pip's own children (build backends) too
        else:  # pragma: no cover
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _run(cmd: list[str], *, deadline: float, cwd: Path | None, what: str) -> str:
    """Run ``cmd`` to completion; BundleError with the tail of its output when it fails or runs
    past ``deadline`` (time.monotonic)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BundleError(f"{what}: out of time before it started")
    env = dict(os.environ, PIP_NO_INPUT="1")
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=os.name == "posix")
    except OSError as e:
        raise BundleError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from e
    try:
        out, _ = proc.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild that left the group holds the pipe
            out = b""
        text = out.decode("utf-8", "replace")
        raise BundleError(f"{what}: still running when its time was up; stopped. Last output:\n{text[-2000:]}") from None
    except BaseException:
        _kill_tree(proc)
        proc.wait()
        raise
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise BundleError(f"{what} failed (exit code {proc.returncode}). Last output:\n{text[-2000:]}")
    return text


class BundleCache:
    """Bundles by digest under ``root/bundles`` (least recently used dropped past ``max_bytes``)
    and venvs by requirements under ``root/venvs``.

    Venvs count towards no size cap: they are shared by every suite with the same requirements
    and rebuilding one costs minutes, so they stay until someone removes ``root/venvs``.

    Thread-safe: the agent's task threads share one cache. A bundle listed by ``has`` may still
    be evicted before ``unpack`` (another task's ``put``); unpack then says so and the caller
    fetches it again.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = 2 * 1024**3) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._bundles = self.root / "bundles"
        self._venvs = self.root / "venvs"
        self._bundles.mkdir(parents=True, exist_ok=True)
        self._venvs.mkdir(parents=True, exist_ok=True)
        # An archive from the network may expand to this much; a bundle built with a raised
        # limit is still accepted, up to what the cache is meant to hold.
        self._expand_cap = max(DEFAULT_MAX_BUNDLE_BYTES, max_bytes)
        self._lock = threading.Lock()
        self._venv_locks: dict[str, threading.Lock] = {}
        self._interpreters: dict[str, _Interpreter] = {}
        self._last_stamp = 0
        now = time.time()
        for p in self._bundles.iterdir():
            with contextlib.suppress(OSError):
                st = p.stat()
                if p.name.startswith(".tmp-") and now - st.st_mtime > _STALE_TMP_S:
                    p.unlink()  # left by a crash mid-put; a recent one may be another cache's
                else:
                    self._last_stamp = max(self._last_stamp, st.st_mtime_ns)

    # -- bundles --------------------------------------------------------------------------

    def _path(self, digest: str) -> Path:
        _check_digest(digest)  # before it becomes part of a path
        return self._bundles / f"{digest}.tar.gz"

    def _touch(self, path: Path) -> None:
        # Strictly increasing stamps: file times from the clock tick coarsely, and two uses in
        # one tick would leave the LRU order to chance.
        stamp = max(time.time_ns(), self._last_stamp + 1_000_000)
        self._last_stamp = stamp
        os.utime(path, ns=(stamp, stamp))

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def total_bytes(self) -> int:
        total = 0
        for p in self._bundles.glob("sha256-*.tar.gz"):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def put(self, digest: str, data: bytes) -> Path:
        """Store ``data`` as bundle ``digest`` after checking that it is; then drop the least
        recently used other bundles while the cache holds more than ``max_bytes``."""
        path = self._path(digest)
        got = digest_of(data, max_bytes=self._expand_cap)
        if got != digest:
            raise BundleError(f"bundle {digest}: the data received is bundle {got}; refused (fetch it again)")
        # No fsync: a file torn by a power cut fails the digest check on unpack and is dropped.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar.gz", dir=self._bundles)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            with self._lock:
                os.replace(tmp, path)  # same digest put twice at once: same bytes, either wins
                self._touch(path)
                self._evict(keep=path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def _evict(self, keep: Path) -> None:
        found: list[tuple[int, str, Path, int]] = []
        for p in self._bundles.glob("sha256-*.tar.gz"):
            with contextlib.suppress(OSError):
                st = p.stat()
                found.append((st.st_mtime_ns, p.name, p, st.st_size))
        total = sum(x[3] for x in found)
        for _stamp, _name, p, size in sorted(found):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:  # e.g. open elsewhere on Windows; try again at the next put
                log.warning("bundle cache: cannot remove %s: %s", p, e)
                continue
            total -= size
            log.info("bundle cache: evicted %s (%s) to stay under %s", p.name, _fmt_size(size), _fmt_size(self.max_bytes))

    @contextlib.contextmanager
    def _open(self, digest: str) -> Iterator[BinaryIO]:
        path = self._path(digest)
        with self._lock:
            try:
                f = open(path, "rb")  # open under the lock: eviction may unlink it next
            except FileNotFoundError:
                raise BundleError(f"bundle {digest} is not in the cache ({self._bundles}); fetch it first") from None
            self._touch(path)
        with f:
            yield f

    def _drop_damaged(self, digest: str, got: str) -> BundleError:
        with self._lock, contextlib.suppress(OSError):
            self._path(digest).unlink()
        return BundleError(f"cached bundle {digest} is damaged (its content is {got}); removed it, fetch it again")

    def unpack(self, digest: str, dest: str | os.PathLike[str]) -> Path:
        """Extract bundle ``digest`` into ``dest`` (created) and mark it used. The content is
        checked against the digest again; on a mismatch the cached copy is dropped (what was
        written into ``dest`` stays, for the caller to remove with its work dir)."""
        target = Path(dest)
        with self._open(digest) as f:
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BundleError(f"{target}: cannot create the directory to unpack into ({e.strerror})") from e
            got, _ = _scan(f, max_bytes=self._expand_cap, dest=target)
        if got != digest:
            raise self._drop_damaged(digest, got)
        return target

    def _member(self, digest: str, name: str) -> bytes:
        with self._open(digest) as f:
            got, content = _scan(f, max_bytes=self._expand_cap, want=name)
        if got != digest:
            raise self._drop_damaged(digest, got)
        if content is None:
            raise BundleError(f"bundle {digest} has no file {name!r} (the path is relative to the bundle root)")
        return content

    # -- venvs ----------------------------------------------------------------------------

    def _interpreter(self, python: str, deadline: float) -> _Interpreter:
        with self._lock:
            known = self._interpreters.get(python)
        if known is not None:
            return known
        out = _run([python, "-c", _PROBE], deadline=deadline, cwd=None, what=f"asking {python} about itself")
        try:
            info: Any = json.loads(out.strip().splitlines()[-1])
            found = _Interpreter(str(info["version"]), tuple(str(d) for d in info["dirs"]))
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise BundleError(f"{python} did not answer as a Python interpreter: {out[-500:]!r}") from e
        with self._lock:
            self._interpreters[python] = found
        return found

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._venv_locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def _process_lock(self, key: str, deadline: float) -> Iterator[None]:
        # Another process on the same cache root (a second agent) could build the same venv;
        # try_lock does not block, so wait for it in short steps.
        fd = os.open(self._venvs / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not try_lock(fd):
                if time.monotonic() > deadline:
                    raise BundleError(f"venv {self._venvs / key}: another process is still building it; out of time")
                time.sleep(0.2)
            yield
        finally:
            os.close(fd)  # releases the lock

    def venv(self, digest: str, requirements: str, *, python: str = sys.executable, timeout: float = 900) -> Path:
        """A venv with the packages of ``requirements`` (a path relative to the root of bundle
        ``digest``) installed, made from ``python`` with its packages (pytest, the agent's)
        still importable. Suites with the same requirements file and interpreter share one.
        ``timeout`` bounds the whole call: waiting for another builder, the venv and pip.
        Returns the venv's directory; its python is ``<venv>/bin/python``."""
        reason = _bad_name(requirements)
        if reason:
            raise BundleError(f"requirements file {requirements!r}: {reason}; give a path relative to the "
                              f"bundle root, such as 'requirements.txt'")
        deadline = time.monotonic() + timeout
        content = self._member(digest, requirements)
        interpreter = self._interpreter(python, deadline)
        # The interpreter's path is part of the key as well as its version: the venv imports the
        # packages of the interpreter it was made from.
        key = hashlib.sha256(b"\0".join([
            content, interpreter.version.encode(), os.path.abspath(python).encode()])).hexdigest()[:32]
        target = self._venvs / key
        if (target / _READY).is_file():
            return target
        lock = self._key_lock(key)
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise BundleError(f"venv {target}: another task is still building it; out of time")
        try:
            with self._process_lock(key, deadline):
                if not (target / _READY).is_file():
                    self._build_venv(digest, requirements, content, python, interpreter, target, deadline)
        finally:
            lock.release()
        return target

    def _build_venv(self, digest: str, requirements: str, content: bytes, python: str,
                    interpreter: _Interpreter, target: Path, deadline: float) -> None:
        # Built in place, not in a temporary directory renamed at the end: scripts pip writes
        # (bin/pip, bin/pytest, …) name the venv's path in their "#!" line, so a moved venv is
        # broken. The ready marker, written last, is what says "done"; a venv without it is
        # half-made by a crash and built again.
        if target.exists():
            log.info("venv %s was left half-made; building it again", target)
            shutil.rmtree(target)
        src = Path(tempfile.mkdtemp(prefix=".src-", dir=self._venvs))
        try:
            # The whole suite, so "-r other.txt" and "-c constraints.txt" in the file resolve.
            self.unpack(digest, src)
            with_pip = _has_requirements(content)
            cmd = [python, "-m", "venv", "--system-site-packages"]
            if not with_pip:
                cmd.append("--without-pip")  # ten times faster, and nothing to install
            _run([*cmd, str(target)], deadline=deadline, cwd=src, what=f"creating venv {target}")
            vpy = str(_venv_python(target))
            if interpreter.site_dirs:
                purelib = Path(_run([vpy, "-c", _PURELIB], deadline=deadline, cwd=src,
                                    what=f"asking venv {target} for its site-packages").strip())
                # addsitedir, not a bare path: the agent's own .pth files (editable installs)
                # are processed too. The venv's own packages still come first.
                lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in interpreter.site_dirs)
                (purelib / "_dtf_agent_env.pth").write_text(lines, encoding="utf-8")
            if with_pip:
                _run([vpy, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                      "-r", str(src / requirements)],
                     deadline=deadline, cwd=src, what=f"pip install -r {requirements} (bundle {digest})")
            ready = json.dumps({"requirements": requirements, "bundle": digest, "python": python,
                                "version": interpreter.version}, indent=1)
            tmp = target / (_READY + ".tmp")
            tmp.write_text(ready, encoding="utf-8")
            os.replace(tmp, target / _READY)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(src, ignore_errors=True)
