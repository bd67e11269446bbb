"""keys.py: fingerprints, key files, tokens; every bad input a clear error, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtf_agent import keys
from dtf_agent.transport import CurveClient, CurveServer


def test_fingerprints_look_like_ssh_and_prefixes_match() -> None:
    k = keys.generate("agent", "a").public
    fp = keys.fingerprint(k)
    assert fp.startswith("SHA256:") and len(fp) == 7 + 43
    assert keys.matches(fp, fp) and keys.matches(fp, fp[7:15]) and keys.matches(fp, fp[:15])
    assert not keys.matches(fp, fp[:10])  # fewer than 8 characters after SHA256: name nothing
    assert keys.fingerprint(keys.generate("agent", "b").public) != fp
    for bad in ("", "abc", "#" * 40, '"' * 40, "0" * 41):
        with pytest.raises(ValueError):
            keys.fingerprint(bad)


def test_key_files_are_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "me.key"
    kf = keys.load_or_create(path, "client", "me", role="viewer")
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.load_or_create(path, "client", "me") == kf  # made once, then read
    os.chmod(path, 0o644)
    assert keys.read_key_file(path) == kf and path.stat().st_mode & 0o777 == 0o600  # tightened
    (tmp_path / "junk.key").write_text('{"kind": "client"}')
    with pytest.raises(keys.KeyFileError, match="junk.key is not a DTF key file"):
        keys.read_key_file(tmp_path / "junk.key")
    with pytest.raises(keys.KeyFileError, match="cannot read the key file .*missing.key"):
        keys.read_key_file(tmp_path / "missing.key")
    # A secret never shows in a repr (a traceback, a log line).
    curve = CurveClient(kf.public, kf.secret, kf.public)
    assert kf.secret not in repr(curve) and kf.secret not in repr(CurveServer(kf.secret, "agents"))


def test_tokens_round_trip_and_damage_is_named() -> None:
    k = keys.generate("coordinator", "lab").public
    t = keys.Token(key=k, addresses=["tcp://10.0.0.1:8081"], secret=keys.new_secret(), name="lab")
    text = keys.encode_token(t)
    assert text.startswith("dtf1-") and " " not in text
    assert keys.decode_token(f"  {text}\n") == t
    with pytest.raises(keys.TokenError, match="not a DTF join token"):
        keys.decode_token("hello")
    with pytest.raises(keys.TokenError, match="damaged"):
        keys.decode_token(text[:-10])
    with pytest.raises(keys.TokenError, match="too long"):
        keys.decode_token("dtf1-" + "A" * 9000)
