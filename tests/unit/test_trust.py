"""trust.py's rules without sockets: enrollment states, names bound to keys, join secrets, roles."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtf_agent import keys
from dtf_agent import protocol as p
from dtf_gui.coordinator.events import EventHub
from dtf_gui.coordinator.store import Store
from dtf_gui.coordinator.trust import Trust, role_allows, role_needed


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "dtf.sqlite")
    try:
        yield s
    finally:
        s.close()


def _trust(store: Store, home: Path, **kw: object) -> Trust:
    return Trust(store, EventHub(), home, insecure=False, coordinator_name="lab", **kw)  # type: ignore[arg-type]


def _reg(name: str, join: str = "") -> p.Register:
    return p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id=name, hostname="h", join=join)


def _key() -> str:
    return keys.generate("agent", "x").public


def test_a_new_key_waits_and_an_accepted_name_belongs_to_its_key(store: Store, tmp_path: Path) -> None:
    t = _trust(store, tmp_path)
    k1, k2 = _key(), _key()
    assert t.register(k1, _reg("bench-1"), "10.0.0.5").kind == "pending"
    assert t.register(k1, _reg("bench-1"), "10.0.0.5").kind == "pending"  # asking again changes nothing
    assert t.accept(t.select(["bench-1"])) == ["bench-1"]
    assert t.register(k1, _reg("bench-1"), "10.0.0.5").kind == "welcome"
    v = t.register(k2, _reg("bench-1"), "10.0.0.6")
    assert v.kind == "refuse" and v.fatal and "belongs to another agent's key" in v.reason
    # The same key under another name is refused too: a key is one agent.
    v = t.register(k1, _reg("bench-2"), "10.0.0.5")
    assert v.kind == "refuse" and "enrolled as 'bench-1'" in v.reason
    # Revoked: refused, and the name is free for a new key (once accepted).
    t.revoke(t.select(["bench-1"]))
    assert t.register(k1, _reg("bench-1"), "10.0.0.5").kind == "refuse"
    assert t.authenticate("agents", "10.0.0.5", k1)[0] is False
    assert t.register(k2, _reg("bench-1"), "10.0.0.6").kind == "pending"


def test_selecting_by_a_shared_name_needs_the_fingerprint(store: Store, tmp_path: Path) -> None:
    t = _trust(store, tmp_path)
    k1, k2 = _key(), _key()
    t.register(k1, _reg("same"), "a")
    t.register(k2, _reg("same"), "b")
    with pytest.raises(ValueError, match="2 keys go by the name 'same'"):
        t.select(["same"])
    fp = keys.fingerprint(k2)
    assert [a.key for a in t.select([fp[:16]])] == [k2]
    with pytest.raises(ValueError, match="no agent"):
        t.select(["SHA256:ab"])  # too short to name anything
    assert {a.key for a in t.select([], all_pending=True)} == {k1, k2}


def test_join_secrets_local_config_and_tokens(store: Store, tmp_path: Path) -> None:
    t = _trust(store, tmp_path, config_token="lab-shared-secret-123")
    local = keys.read_secret(tmp_path / keys.LOCAL_SECRET)
    assert local and t.register(_key(), _reg("local", local), "127.0.0.1").kind == "welcome"
    assert t.register(_key(), _reg("cfg", "lab-shared-secret-123"), "x").kind == "welcome"
    made = t.create_token(2, 60.0, ["gpu"], ["tcp://10.0.0.1:8081"])
    secret = keys.decode_token(made["token"]).secret
    v = t.register(_key(), _reg("tok-1", secret), "x")
    assert v.kind == "welcome" and v.tags == ("gpu",)
    assert t.register(_key(), _reg("tok-2", secret), "x").kind == "welcome"
    v = t.register(_key(), _reg("tok-3", secret), "x")
    assert v.kind == "refuse" and "no uses left" in v.reason
    v = t.register(_key(), _reg("bad", "not-a-secret-we-made"), "x")
    assert v.kind == "refuse" and "unknown token" in v.reason
    expired = keys.decode_token(t.create_token(1, 60.0, [], ["tcp://x:1"])["token"]).secret
    t.tokens[keys.secret_hash(expired)].expires = time.time() - 1
    assert "expired" in t.register(_key(), _reg("late", expired), "x").reason
    # Only a hash of each secret is kept, in memory and in the database.
    store.flush(wait=True)
    rows = store.load_rows("tokens")
    assert rows and all(secret not in str(r) for r in rows)


def test_enrollment_survives_a_restart(store: Store, tmp_path: Path) -> None:
    t = _trust(store, tmp_path)
    k = _key()
    t.register(k, _reg("keeper"), "x")
    t.accept(t.select(["keeper"]))
    server_key = t.server.public
    store.flush(wait=True)
    again = _trust(store, tmp_path)
    assert again.server.public == server_key, "the coordinator key is kept in its home"
    assert again.register(k, _reg("keeper"), "x").kind == "welcome"
    assert again.register(_key(), _reg("keeper"), "x").kind == "refuse"


def test_key_files_are_the_owners_only(store: Store, tmp_path: Path) -> None:
    _trust(store, tmp_path)
    for rel in (keys.COORDINATOR_KEY, keys.ADMIN_KEY, keys.LOCAL_SECRET):
        assert (tmp_path / rel).stat().st_mode & 0o777 == 0o600, rel


def test_roles_each_allow_what_the_one_below_does() -> None:
    assert role_needed("get_task") == "viewer" and role_needed("create_tasks") == "operator"
    assert role_needed("create_token") == "admin" and role_needed("revoke_agents") == "admin"
    assert role_needed("some_future_op") == "admin"  # unlisted: the strictest
    assert role_allows("viewer", "list_tasks") and not role_allows("viewer", "cancel_task")
    assert role_allows("operator", "cancel_task") and not role_allows("operator", "add_client")
    assert role_allows("admin", "add_client")


def test_a_wrong_join_secret_leaves_nothing_behind_and_a_full_queue_shuts_the_door(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dtf_gui.coordinator.trust as trust_mod

    monkeypatch.setattr(trust_mod, "MAX_PENDING", 3)
    t = _trust(store, tmp_path)
    for i in range(10):  # strangers with made-up secrets: refused, and not one row kept
        assert t.register(_key(), _reg(f"junk-{i}", "made-up-secret"), "x").kind == "refuse"
    assert t.agents == {}
    for i in range(3):
        assert t.register(_key(), _reg(f"wait-{i}"), "x").kind == "pending"
    late = _key()
    assert t.register(late, _reg("late"), "x").kind == "refuse"
    assert t.authenticate("agents", "x", late) == (False, "too many agents pending")
    assert t.authenticate("agents", "x", next(iter(t.agents))) == (True, "")  # the waiting ones still may
    # A token's agent still gets in at the handshake's next step (its Register carries the secret).
    secret = keys.decode_token(t.create_token(1, 60.0, [], ["tcp://x:1"])["token"]).secret
    assert t.register(_key(), _reg("with-token", secret), "x").kind == "welcome"


def test_accepting_two_keys_of_one_name_at_once_is_refused(store: Store, tmp_path: Path) -> None:
    t = _trust(store, tmp_path)
    real, copycat = _key(), _key()
    t.register(real, _reg("gpu01"), "10.0.0.7")
    t.register(copycat, _reg("gpu01"), "10.0.0.66")
    with pytest.raises(ValueError, match="2 keys go by the name 'gpu01'.*nothing accepted"):
        t.accept(t.select([], all_pending=True))
    assert {a.state for a in t.agents.values()} == {"pending"}
    t.accept(t.select([keys.fingerprint(real)]))
    assert t.register(copycat, _reg("gpu01"), "10.0.0.66").kind == "refuse"
    assert t.register(real, _reg("gpu01"), "10.0.0.7").kind == "welcome"


def test_a_revoked_token_enrolls_nobody_and_tags_survive_a_restart(store: Store, tmp_path: Path) -> None:
    t = _trust(store, tmp_path)
    made = t.create_token(5, 60.0, ["lab-3"], ["tcp://x:1"])
    secret = keys.decode_token(made["token"]).secret
    k = _key()
    assert t.register(k, _reg("tagged", secret), "x").tags == ("lab-3",)
    assert [r["id"] for r in t.list_tokens()] == [made["id"]]
    t.revoke_token(made["id"])
    assert "unknown token" in t.register(_key(), _reg("after", secret), "x").reason
    with pytest.raises(ValueError, match="no token"):
        t.revoke_token("nope")
    store.flush(wait=True)
    again = _trust(store, tmp_path)
    assert again.register(k, _reg("tagged"), "x").tags == ("lab-3",)
    assert "unknown token" in again.register(_key(), _reg("after2", secret), "x").reason
