"""CURVE key pairs, fingerprints, key files, pins and join tokens (both sides).

Keys are Z85 text (40 characters) as libzmq writes them. A public key is no secret: it goes in
mDNS, in tokens and in lists. A secret key lives only in a key file (mode 0600) and in the memory
of the process that owns it; it is never logged and never sent.

A *fingerprint* names a public key for people: ``SHA256:`` and the unpadded base64 of the SHA-256
of the raw 32-byte key, as SSH prints host keys. Lists show its first characters; anything that
accepts a fingerprint accepts a unique prefix of it (at least 8 characters after ``SHA256:``).

Home layout (``$DTF_HOME``): ``keys/coordinator.key`` (the coordinator's pair), ``keys/admin.key``
(the admin client key local `dtf` commands use), ``keys/local-agents.secret`` (agents started from
the same home enroll with it, no click), ``agent/<worker id>/agent.key`` (an agent's own pair) and
``agent/<worker id>/coordinator.pin`` (the coordinator key that agent trusts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import struct
import tempfile
import time
from pathlib import Path
from typing import Annotated, Literal

import msgspec

__all__ = [
    "ADMIN_KEY", "COORDINATOR_KEY", "LOCAL_SECRET", "KeyFileError", "KeyFile", "Pin", "Token", "TokenError",
    "agent_dir", "decode_token", "encode_token", "fingerprint", "generate", "load_or_create", "matches",
    "read_key_file", "read_pin", "short", "write_key_file", "write_pin", "write_secret_file",
]

COORDINATOR_KEY = Path("keys") / "coordinator.key"
ADMIN_KEY = Path("keys") / "admin.key"
LOCAL_SECRET = Path("keys") / "local-agents.secret"
TOKEN_PREFIX = "dtf1-"
MIN_PREFIX = 8

Z85Key = Annotated[str, msgspec.Meta(min_length=40, max_length=40, pattern=r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")]
Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[str, ...] = ("viewer", "operator", "admin")  # each allows what the one before it does


class KeyFileError(Exception):
    """A key file that cannot be read or is not a DTF key file; the message names the file."""


class TokenError(ValueError):
    """A join token that cannot be read; the message says what is wrong with it."""


class KeyFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One key pair and what its owner needs to use it. A client key file written by
    `dtf clients add` carries the coordinator's key and address too: one file is all a client needs."""

    kind: Literal["coordinator", "agent", "client"]
    name: str
    public: Z85Key
    secret: Z85Key
    role: Role | Literal[""] = ""
    coordinator_key: Z85Key | Literal[""] = ""
    endpoint: str = ""
    events_endpoint: str = ""

    def __repr__(self) -> str:
        return f"KeyFile(kind={self.kind!r}, name={self.name!r}, public={self.public!r})"  # never the secret


class Pin(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The coordinator an agent trusts, and how it came to."""

    key: Z85Key
    fingerprint: str
    how: str  # token, flag, first use, local home
    when: float
    name: str = ""
    endpoint: str = ""


class Token(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """What `dtf token create` prints: the coordinator's key, where to reach it, a one-time secret."""

    key: Z85Key
    addresses: Annotated[list[Annotated[str, msgspec.Meta(max_length=300)]], msgspec.Meta(max_length=32)]
    secret: Annotated[str, msgspec.Meta(min_length=16, max_length=128)]
    name: Annotated[str, msgspec.Meta(max_length=255)] = ""


def generate(kind: Literal["coordinator", "agent", "client"], name: str, **extra: str) -> KeyFile:
    import zmq  # only here: keys.py is read by commands that never open a socket

    public, secret = zmq.curve_keypair()
    return KeyFile(kind=kind, name=name, public=public.decode("ascii"), secret=secret.decode("ascii"),
                   **extra)  # type: ignore[arg-type]


def fingerprint(public: str) -> str:
    """``SHA256:`` + base64 of the SHA-256 of the raw key (SSH's style)."""
    import zmq.utils.z85 as z85

    try:
        raw = z85.decode(public.encode("ascii"))
    except (ValueError, TypeError, KeyError, AssertionError, struct.error):  # KeyError: not in the alphabet; struct.error: a group over 32 bits
        raise ValueError(f"not a Z85 public key: {public[:50]!r}") from None
    if len(raw) != 32:
        raise ValueError(f"not a 32-byte public key: {public[:50]!r}")
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def short(fp: str, n: int = 12) -> str:
    """The first characters of a fingerprint, for lists (``SHA256:AbCd…``)."""
    body = fp.removeprefix("SHA256:")
    return f"SHA256:{body[:n]}"


def matches(fp: str, given: str) -> bool:
    """Does ``given`` (a whole fingerprint or a prefix of at least MIN_PREFIX characters) name ``fp``?"""
    body, want = fp.removeprefix("SHA256:"), given.strip().removeprefix("SHA256:")
    return len(want) >= MIN_PREFIX and body.startswith(want)


# -- files -----------------------------------------------------------------------------------------


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only, atomically (never a moment world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A fresh name, made with O_EXCL and never through a link: a file or symlink planted in a
    # shared directory (`-o /tmp/...`) cannot catch the secret.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_key_file(path: Path, kf: KeyFile) -> None:
    write_secret_file(path, msgspec.json.format(msgspec.json.encode(kf)) + b"\n")


def read_key_file(path: Path) -> KeyFile:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    try:
        kf = msgspec.json.decode(data, type=KeyFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KeyFileError(f"{path} is not a DTF key file: {exc}") from None
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)  # tightened, not refused; but the secret may have been read already
            import logging

            logging.getLogger(__name__).warning("%s was readable by others (mode tightened to 0600 now): if others "
                                                "could log in here, make a new key", path)
    except OSError:
        pass
    return kf


def load_or_create(path: Path, kind: Literal["coordinator", "agent", "client"], name: str, **extra: str) -> KeyFile:
    """The key pair in ``path``; made (and written, mode 0600) the first time."""
    if path.exists():
        return read_key_file(path)
    kf = generate(kind, name, **extra)
    try:
        # O_EXCL through a link: two processes starting together agree on one key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        write_secret_file(tmp, msgspec.json.format(msgspec.json.encode(kf)) + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_key_file(path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot write the key file {path}: {exc.strerror or exc}") from None
    return kf


def read_secret(path: Path, *, create: bool = False) -> str | None:
    """A shared secret stored alone in a file (the local agents' enrollment secret)."""
    try:
        text = path.read_text(encoding="ascii").strip()
        if text:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    if not create:
        return None
    write_secret_file(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
    return path.read_text(encoding="ascii").strip()


def agent_dir(home: Path, worker_id: str) -> Path:
    return home / "agent" / worker_id


def read_pin(path: Path) -> Pin | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Pin)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KeyFileError(f"{path} is not a readable coordinator pin: {exc}") from None


def write_pin(path: Path, key: str, how: str, *, name: str = "", endpoint: str = "") -> Pin:
    pin = Pin(key=key, fingerprint=fingerprint(key), how=how, when=time.time(), name=name, endpoint=endpoint)
    write_secret_file(path, msgspec.json.format(msgspec.json.encode(pin)) + b"\n")
    return pin


# -- tokens ----------------------------------------------------------------------------------------


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def secret_hash(secret: str) -> str:
    """What the coordinator stores of a token: enough to recognise it, not to use it."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def encode_token(t: Token) -> str:
    raw = msgspec.msgpack.encode(t)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(text: str) -> Token:
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError(f"not a DTF join token (it should start with {TOKEN_PREFIX!r}; copy the whole line "
                         "that `dtf token create` printed)")
    body = text[len(TOKEN_PREFIX):]
    if len(body) > 8192:
        raise TokenError("the join token is too long to be one")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        token = msgspec.msgpack.decode(raw, type=Token)
        fingerprint(token.key)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TokenError(f"the join token is damaged ({exc}); copy the whole line again") from None
    if not token.addresses:
        raise TokenError("the join token names no coordinator address")
    return token
