"""Accounts, tested directly on the services: the login throttle, sessions and their refresh
tokens, password change, disabling; the signing key and the access tokens; the hash gate."""

from __future__ import annotations

import os
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import security
from api.clock import FakeClock
from api.models import AuditEvent, LoginThrottle, RefreshToken, User, UserSession
from api.services import accounts
from api.services.logins import LoginPolicy
from api.settings import CoordinatorSettings
from api.tokens import KEY_FILE, LocalTokens, signing_key
from tessera.errors import ConfigInvalid, Forbidden, RateLimited, Unauthorized

PASSWORD = "correct horse battery"
POLICY = LoginPolicy(max_failures=5, max_failures_per_address=8, lockout_s=30, lockout_max_s=600)
OLD_CONSTANT = "tessera-local-development-only"  # the key the source held before


@pytest.fixture
def alice(db: Session) -> User:
    user = User(username="alice", password_hash=security.hash_password(PASSWORD), role="admin")
    db.add(user)
    db.flush()
    return user


def actions(db: Session) -> list[str]:
    return [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def fail(db: Session, username: str = "alice", address: str = "10.0.0.1") -> None:
    with pytest.raises(Unauthorized, match="wrong username or password"):
        accounts.authenticate(db, username, "wrong password", address, POLICY)


# ---- the login throttle ---------------------------------------------------------------


def test_five_failures_lock_the_username_out_with_a_retry_after(
    db: Session, alice: User, clock: FakeClock
) -> None:
    for _ in range(5):
        fail(db)
    with pytest.raises(RateLimited) as refused:
        accounts.authenticate(db, "alice", PASSWORD, "10.0.0.2", POLICY)  # even the right one
    assert refused.value.details["retry_after_s"] == 30
    clock.advance(31)
    assert accounts.authenticate(db, "alice", PASSWORD, "10.0.0.2", POLICY).id == alice.id
    assert db.get(LoginThrottle, "user:alice") is None, "a success starts the username afresh"
    assert actions(db).count("login.failed") == 5 and "login.locked" in actions(db)


def test_each_failure_after_a_lockout_doubles_the_next(
    db: Session, alice: User, clock: FakeClock
) -> None:
    for _ in range(5):
        fail(db)
    waits = []
    for _ in range(4):
        with pytest.raises(RateLimited) as refused:
            fail(db)
        waits.append(refused.value.details["retry_after_s"])
        clock.advance(waits[-1])
        fail(db)  # allowed again, fails, locks for twice as long
    assert waits == [30, 60, 120, 240]
    clock.advance(10_000)
    fail(db)
    with pytest.raises(RateLimited) as capped:
        fail(db)
    assert capped.value.details["retry_after_s"] <= POLICY.lockout_max_s


def test_an_unknown_username_is_throttled_the_same(db: Session) -> None:
    for _ in range(5):
        fail(db, "nobody")
    with pytest.raises(RateLimited):
        fail(db, "nobody")


def test_an_address_is_locked_after_its_own_allowance_across_usernames(
    db: Session, alice: User
) -> None:
    for n in range(8):
        fail(db, f"guess{n}", "10.9.9.9")
    with pytest.raises(RateLimited):
        accounts.authenticate(db, "alice", PASSWORD, "10.9.9.9", POLICY)
    assert accounts.authenticate(db, "alice", PASSWORD, "10.0.0.7", POLICY).id == alice.id


def test_successes_give_the_address_its_attempts_back(db: Session, alice: User) -> None:
    for _ in range(20):  # a ward of colleagues behind one NAT address, all logging in fine
        accounts.authenticate(db, "alice", PASSWORD, "10.1.1.1", POLICY)
    row = db.get(LoginThrottle, "address:10.1.1.1")
    assert row is not None and row.failures == 0 and row.locked_until is None


def test_old_failures_are_forgotten(db: Session, alice: User, clock: FakeClock) -> None:
    for _ in range(4):
        fail(db)
    clock.advance(POLICY.window_s + 1)
    for _ in range(4):
        fail(db)  # 4 + 4 failures, but the first four are older than the window
    assert accounts.authenticate(db, "alice", PASSWORD, "10.0.0.1", POLICY).id == alice.id


# ---- sessions and refresh tokens --------------------------------------------------------


def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_session(
    db: Session, alice: User
) -> None:
    session, first = accounts.start_session(db, alice, 3600)
    _, same, second = accounts.refresh(db, first)
    assert same.id == session.id and second != first
    _, _, third = accounts.refresh(db, second)
    with pytest.raises(Unauthorized, match="used before"):
        accounts.refresh(db, first)  # a stolen, already rotated token comes back
    with pytest.raises(Unauthorized, match="ended"):
        accounts.refresh(db, third)  # the whole family is gone, the thief's and the user's
    with pytest.raises(Unauthorized, match="ended"):
        accounts.session_user(db, session.id, alice.id)
    assert "session.refresh_reused" in actions(db)
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        accounts.refresh(db, "tr_" + "x" * 43)


def test_a_session_ends_at_its_lifetime(db: Session, alice: User, clock: FakeClock) -> None:
    _, token = accounts.start_session(db, alice, 3600)
    clock.advance(3601)
    with pytest.raises(Unauthorized, match="expired"):
        accounts.refresh(db, token)


def test_ended_sessions_are_forgotten_a_day_later(
    db: Session, alice: User, clock: FakeClock
) -> None:
    ended, _ = accounts.start_session(db, alice, 3600)
    accounts.start_session(db, alice, 60)
    live, live_refresh = accounts.start_session(db, alice, 10 * 86400)
    accounts.refresh(db, live_refresh)
    accounts.logout(db, alice, ended.id)
    assert accounts.forget_ended_sessions(db) == 0
    clock.advance(86400 + 61)
    assert accounts.forget_ended_sessions(db) == 2
    db.expire_all()
    assert [s.id for s in db.scalars(select(UserSession))] == [live.id]
    assert len(db.scalars(select(RefreshToken)).all()) == 2, "the live session's, used and new"


def test_logout_ends_the_session_and_only_it(db: Session, alice: User) -> None:
    mine, token = accounts.start_session(db, alice, 3600)
    other, _ = accounts.start_session(db, alice, 3600)
    accounts.logout(db, alice, mine.id)
    with pytest.raises(Unauthorized):
        accounts.session_user(db, mine.id, alice.id)
    with pytest.raises(Unauthorized):
        accounts.refresh(db, token)
    assert accounts.session_user(db, other.id, alice.id).id == alice.id
    with pytest.raises(Unauthorized):
        accounts.session_user(db, other.id, alice.id + 1)  # a session is its user's only


def test_a_password_change_keeps_this_session_and_ends_the_others(db: Session, alice: User) -> None:
    mine, _ = accounts.start_session(db, alice, 3600)
    _, other_refresh = accounts.start_session(db, alice, 3600)
    with pytest.raises(Forbidden, match="current password is wrong"):
        accounts.change_password(db, alice, mine.id, "not it", "a new passphrase", policy=POLICY)
    with pytest.raises(Exception, match="8 to 256"):
        accounts.change_password(db, alice, mine.id, PASSWORD, "short", policy=POLICY)
    assert accounts.change_password(db, alice, mine.id, PASSWORD, "a new passphrase") == 1
    assert accounts.session_user(db, mine.id, alice.id).id == alice.id
    with pytest.raises(Unauthorized):
        accounts.refresh(db, other_refresh)
    with pytest.raises(Unauthorized):
        accounts.authenticate(db, "alice", PASSWORD, None, POLICY)
    assert accounts.authenticate(db, "alice", "a new passphrase", None, POLICY).id == alice.id
    assert "password.changed" in actions(db) and "password.change_failed" in actions(db)


def test_a_disabled_user_is_refused_everywhere_until_enabled(db: Session, alice: User) -> None:
    bob = User(username="bob", password_hash=security.hash_password(PASSWORD), role="researcher")
    db.add(bob)
    db.flush()
    session, token = accounts.start_session(db, bob, 3600)
    with pytest.raises(Exception, match="cannot disable their own"):
        accounts.set_disabled(db, alice, alice.id, True)
    accounts.set_disabled(db, alice, bob.id, True)
    with pytest.raises(Unauthorized):
        accounts.session_user(db, session.id, bob.id)
    with pytest.raises(Unauthorized):
        accounts.refresh(db, token)
    with pytest.raises(Forbidden, match="disabled"):
        accounts.authenticate(db, "bob", PASSWORD, None, POLICY)
    with pytest.raises(Unauthorized, match="wrong username or password"):
        accounts.authenticate(db, "bob", "a wrong guess", None, POLICY)  # no state to a guesser
    accounts.set_disabled(db, alice, bob.id, False)
    assert accounts.authenticate(db, "bob", PASSWORD, None, POLICY).id == bob.id
    assert accounts.user_view(bob)["disabled"] is False
    assert {"user.disabled", "user.enabled", "login.refused"} <= set(actions(db))


def test_an_old_hash_still_verifies_and_is_made_again(db: Session) -> None:
    old = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4).hash(PASSWORD)
    user = User(username="carol", password_hash=old, role="researcher")
    db.add(user)
    db.flush()
    assert security.needs_rehash(old)
    accounts.authenticate(db, "carol", PASSWORD, None, POLICY)
    assert user.password_hash != old and not security.needs_rehash(user.password_hash)
    assert f"m={security.ARGON2_MEMORY_KIB},t=2,p=1" in user.password_hash


def test_no_secret_reaches_the_audit_log(db: Session, alice: User) -> None:
    session, token = accounts.start_session(db, alice, 3600)
    accounts.refresh(db, token)
    fail(db)
    accounts.change_password(db, alice, session.id, PASSWORD, "another passphrase")
    text = " ".join(f"{e.subject} {e.details}" for e in db.scalars(select(AuditEvent)))
    for secret in (PASSWORD, "another passphrase", "wrong password", token, session.id):
        assert secret not in text


# ---- the signing key and the access tokens -------------------------------------------------


def test_a_key_is_made_on_first_start_kept_private_and_reused(tmp_path: Path) -> None:
    settings = CoordinatorSettings(database_url=f"sqlite:///{tmp_path / 'db' / 'c.db'}")
    assert settings.resolved_data_dir() == tmp_path / "db"
    key = signing_key(settings)
    path = tmp_path / "db" / KEY_FILE
    assert len(key) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing_key(settings) == key, "the same key at the next start"
    other = CoordinatorSettings(database_url="sqlite://", data_dir=tmp_path / "elsewhere")
    assert signing_key(other) != key
    os.chmod(path, 0o644)
    with pytest.raises(ConfigInvalid, match="chmod 600"):
        signing_key(settings)
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(ConfigInvalid, match="shorter than 32"):
        signing_key(settings)


def test_a_configured_key_or_key_file_wins(tmp_path: Path) -> None:
    assert signing_key(CoordinatorSettings(jwt_secret="k" * 40, data_dir=tmp_path)) == "k" * 40
    shared = tmp_path / "shared.key"
    shared.write_text("s" * 40 + "\n")
    shared.chmod(0o600)
    assert signing_key(CoordinatorSettings(jwt_secret_file=shared, data_dir=tmp_path)) == "s" * 40
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(ConfigInvalid, match="TESSERA_JWT_SECRET"):
        CoordinatorSettings.load(environment="production")


def test_access_tokens_need_every_claim_and_the_right_key(db: Session, alice: User) -> None:
    key = "k" * 40
    tokens = LocalTokens(key, 900)
    session, _ = accounts.start_session(db, alice, 3600)
    token = tokens.issue(alice.id, session.id)
    claims = tokens.claims(token)
    assert set(claims) >= {"iss", "sub", "sid", "jti", "iat", "exp"}
    assert claims["exp"] - claims["iat"] == 900
    assert tokens.user(db, token).id == alice.id
    assert tokens.claims(tokens.issue(alice.id, session.id))["jti"] != claims["jti"]
    now = datetime.now(UTC)
    full = {**claims, "iat": now, "exp": now + timedelta(hours=1)}
    for missing in ("exp", "iat", "jti", "sid"):
        partial = {k: v for k, v in full.items() if k != missing}
        with pytest.raises(Unauthorized, match="invalid access token"):
            tokens.claims(jwt.encode(partial, key, algorithm="HS256"))
    with pytest.raises(Unauthorized):
        tokens.claims(jwt.encode({**full, "typ": "user"}, key, algorithm="HS256"))
    with pytest.raises(Unauthorized):
        tokens.claims(jwt.encode(full, "x" * 40, algorithm="HS256"))
    with pytest.raises(Unauthorized, match="expired"):
        tokens.claims(jwt.encode({**full, "exp": now - timedelta(1)}, key, algorithm="HS256"))
    unsigned = jwt.encode(full, None, algorithm="none")
    with pytest.raises(Unauthorized):
        tokens.claims(unsigned)
    assert not tokens.recognises(unsigned) and not tokens.recognises("not a token")
    old = jwt.encode({"sub": str(alice.id), "typ": "user"}, OLD_CONSTANT, algorithm="HS256")
    assert not tokens.recognises(old)
    with pytest.raises(Unauthorized):
        tokens.claims(old)
    assert key not in repr(tokens)


# ---- the hash gate ---------------------------------------------------------------------


def test_the_gate_bounds_concurrent_hashing() -> None:
    gate = security.HashGate(3)
    inside: list[int] = []

    def work() -> None:
        inside.append(gate.active)
        time.sleep(0.02)

    threads = [threading.Thread(target=gate.run, args=(work,)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gate.close()
    assert len(inside) == 12 and gate.peak == 3 and max(inside) <= 3 and gate.active == 0
