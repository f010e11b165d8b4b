"""Log-in, lockout, idle timeout, deactivation, terminals, CSRF, tokens (Part 11 §11.10(d), 11.100, 11.300)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import insert, select

from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.users import operations as ops
from mes.users.models import User, WebSession
from tests.helpers import PASSWORD, SEED, Session, logged_in, seed


def _actions(entity_id: str) -> list[str]:
    return list(db.session.execute(select(AuditEntry.action).where(AuditEntry.entity_id == entity_id)
                                   .order_by(AuditEntry.seq)).scalars())


def test_password_login_and_me(app: Flask) -> None:
    seeded = seed()
    s = logged_in(app.test_client(), seeded, "qa")
    me = s.get("/api/v1/auth/me").get_json()
    assert me["user"]["id"] == "qa1" and me["terminal"] == "QA-WS-01"
    assert "auth.login" in _actions("qa1")


def test_lockout_after_five_failures_is_audited_and_alarmed(app: Flask) -> None:
    seeded = seed()
    s = Session(app.test_client(), seeded.workstation)
    for attempt in range(5):
        r = s.login("qa1", "wrong-Password-1")
        assert r.status_code == 401, attempt
    # a wrong password on the locked account answers like any other failure; only the
    # right one learns that the account is locked, and it no longer works
    assert s.login("qa1", "wrong-Password-1").get_json()["type"].endswith("/authentication-failed")
    r = s.login("qa1")
    assert r.status_code == 423 and r.get_json()["type"].endswith("/account-locked")
    user = db.session.get(User, "qa1")
    db.session.refresh(user)
    assert user.locked and user.failed_attempts == 5
    actions = _actions("qa1")
    assert actions.count("auth.login.failed") >= 5 and "user.locked" in actions
    admin = logged_in(app.test_client(), seeded, "admin")
    alarms = admin.get("/api/v1/alarms").get_json()["alarms"]
    assert any(a["kind"] == "security" and "qa1" in a["message"] for a in alarms)
    # an admin unlocks with a reason and a temporary password, which must then be changed
    r = admin.post("/api/v1/users/qa1/reset", {"reason": "user called the help desk", "password": "Tempor4ry-Passw0rd"})
    assert r.status_code == 200
    assert s.login("qa1", "Tempor4ry-Passw0rd").get_json()["type"].endswith("/password-expired")
    r = s.post("/api/v1/auth/password", {"user_id": "qa1", "old_password": "Tempor4ry-Passw0rd", "new_password": "N3w-Secret-Phrase"})
    assert r.status_code == 200, r.get_json()
    assert s.login("qa1", "N3w-Secret-Phrase").status_code == 200


def test_unknown_user_and_wrong_password_look_the_same(app: Flask) -> None:
    seeded = seed()
    s = Session(app.test_client(), seeded.workstation)
    a = s.login("nobody", "whatever-Passw0rd")
    b = s.login("qa1", "whatever-Passw0rd")
    assert a.status_code == b.status_code == 401
    assert a.get_json()["detail"] == b.get_json()["detail"]


def test_an_unknown_account_costs_the_same_hash_check_as_a_known_one(app: Flask, monkeypatch) -> None:
    """Timing must not tell which user ids and badges exist: every refused log-in runs one
    argon2 verification, whether the account exists, is locked or has the wrong secret."""
    from mes.users import secrets

    seeded = seed()
    checks: list[str] = []
    real = secrets.hasher()

    class Counting:
        def hash(self, value: str) -> str:
            return real.hash(value)

        def verify(self, stored: str, value: str) -> bool:
            checks.append(stored)
            return real.verify(stored, value)

    counting = Counting()
    monkeypatch.setattr(secrets, "hasher", lambda: counting)
    s = Session(app.test_client(), seeded.workstation)
    kiosk = Session(app.test_client(), seeded.kiosk)
    for attempt in (lambda: s.login("nobody", "whatever-Passw0rd"), lambda: s.login("qa1", "whatever-Passw0rd"),
                    lambda: kiosk.badge_login("B-nobody", "1357"), lambda: kiosk.badge_login("B-operator", "1357")):
        checks.clear()
        assert attempt().status_code == 401
        assert len(checks) == 1 and checks[0].startswith("$argon2id$")
    assert not secrets.verify_secret(None, "anything") and not secrets.verify_secret("", "")


def _idle_for(s: Session, seconds: float) -> None:
    """Move the session's last activity back, as if the terminal had been left alone."""
    with s.client.session_transaction() as cookie:
        cookie["last"] = time.time() - seconds


def test_idle_timeout_ends_the_session(app: Flask) -> None:
    seeded = seed()
    app.config["MES_WORKSTATION_IDLE_SECONDS"] = 60
    s = logged_in(app.test_client(), seeded, "qa")
    assert s.get("/api/v1/auth/me").status_code == 200
    _idle_for(s, 59)
    assert s.get("/api/v1/auth/me").status_code == 200  # activity resets the clock
    _idle_for(s, 61)
    r = s.get("/api/v1/auth/me")
    assert r.status_code == 401 and r.get_json()["type"].endswith("/session-expired")
    assert "idle_timeout" in json.dumps([json.loads(e.entry_bytes) for e in db.session.execute(
        select(AuditEntry).where(AuditEntry.action == "auth.logout")).scalars()])


def _stored_last(s: Session) -> float:
    with s.client.session_transaction() as cookie:
        return cookie["last"]


def test_the_idle_clock_is_stored_at_most_every_twentieth_of_the_idle_time(app: Flask) -> None:
    """The last activity is written (a transaction after the response) only when it lags by
    more than 5 % of the idle time-out (at most 30 s): a session may end that much early,
    never late, and a kiosk tapping every second does not write its session on every tap."""
    seeded = seed()
    app.config["MES_WORKSTATION_IDLE_SECONDS"] = 200  # lag allowed: 10 s
    s = logged_in(app.test_client(), seeded, "qa")
    _idle_for(s, 9)
    before = _stored_last(s)
    assert s.get("/api/v1/auth/me").status_code == 200
    assert _stored_last(s) == before  # 9 s behind: not written
    _idle_for(s, 11)
    assert s.get("/api/v1/auth/me").status_code == 200
    assert time.time() - _stored_last(s) < 5  # 11 s behind: written now
    app.config["MES_WORKSTATION_IDLE_SECONDS"] = 3600  # 5 % would be 180 s: capped at 30 s
    _idle_for(s, 31)
    assert s.get("/api/v1/auth/me").status_code == 200
    assert time.time() - _stored_last(s) < 5


def test_a_get_ends_a_session_that_ran_out_although_another_terminal_wrote_meanwhile(app: Flask, monkeypatch) -> None:
    """On SQLite a GET reads in a plain BEGIN. Ending an idle session from there failed at
    once with "database is locked" (a 500, the kiosk's idle log-out lost) whenever another
    connection had committed after the read began: the log-out must start its own writing
    transaction (mes.db.begin_writing)."""
    seeded = seed()
    app.config["MES_WORKSTATION_IDLE_SECONDS"] = 60
    s = logged_in(app.test_client(), seeded, "qa")
    real = ops.Policy.current.__func__
    wrote: list[str] = []

    def current_after_another_write(cls):  # called after the request has read its session
        with db.engine.connect() as other:  # another terminal's commit, in between
            other.execute(insert(WebSession.__table__).values(id=f"{len(wrote):064d}", data="{}", created_at=utcnow(),
                                                              expires_at=utcnow() + timedelta(hours=1)))
            other.commit()
        wrote.append("x")
        return real(cls)

    monkeypatch.setattr(ops.Policy, "current", classmethod(current_after_another_write))
    _idle_for(s, 61)
    r = s.get("/api/v1/auth/me")
    assert wrote, "the other write did not happen inside the request"
    assert r.status_code == 401 and r.get_json()["type"].endswith("/session-expired"), r.get_data(as_text=True)
    assert "idle_timeout" in json.dumps([json.loads(e.entry_bytes) for e in db.session.execute(
        select(AuditEntry).where(AuditEntry.action == "auth.logout")).scalars()])


def test_an_audited_change_inside_a_read_transaction_fails_every_time(app: Flask) -> None:
    """The audit log refuses an entry in a SQLite read transaction outright, so a write that
    a GET can reach without begin_writing() fails in the tests, not at random under load."""
    from mes.audit.log import Actor, record

    seed()
    db.session.rollback()
    db.session.connection(execution_options={"mes_read_only": True})
    if db.engine.dialect.name == "sqlite":
        with pytest.raises(RuntimeError, match="begin_writing"):
            record(Actor.system("tests"), "user.noted", ("user", "qa1"), after={})
    else:  # PostgreSQL's transactions can always write
        record(Actor.system("tests"), "user.noted", ("user", "qa1"), after={})
    db.session.rollback()


def test_kiosk_idle_timeout_is_separate(app: Flask) -> None:
    seeded = seed()
    app.config["MES_KIOSK_IDLE_SECONDS"] = 60
    op = logged_in(app.test_client(), seeded, "operator")
    qa = logged_in(app.test_client(), seeded, "qa")
    _idle_for(op, 61)
    _idle_for(qa, 61)
    assert op.get("/api/v1/auth/me").status_code == 401
    r = qa.get("/api/v1/auth/me")
    assert r.status_code == 200, r.get_json()


def test_deactivation_refuses_the_user_everywhere(app: Flask) -> None:
    seeded = seed()
    qa = logged_in(app.test_client(), seeded, "qa")
    admin = logged_in(app.test_client(), seeded, "admin")
    r = admin.post("/api/v1/users/qa1/deactivate", {"reason": "left the company"})
    assert r.status_code == 200 and r.get_json()["user"]["active"] is False
    assert qa.get("/api/v1/auth/me").status_code == 401
    assert Session(app.test_client(), seeded.workstation).login("qa1").status_code == 401
    # the id is never reused, in any letter case
    r = admin.post("/api/v1/users", {"id": "QA1", "full_name": "Someone Else", "roles": ["qa"], "password": "An0ther-Good-One"})
    assert r.status_code == 409
    assert db.session.get(User, "qa1") is not None  # never deleted


def test_admin_cannot_be_given_a_production_role(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    r = admin.post("/api/v1/users", {"id": "boss", "full_name": "Boss", "roles": ["admin", "qa"], "password": "An0ther-Good-One"})
    assert r.status_code == 422
    r = admin.post("/api/v1/users/admin1/roles", {"role": "operator", "reason": "try"})
    assert r.status_code == 422


def test_password_strength_and_history(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    for weak in ("short1A!", "alllowercaseletters", "Password123!", "newuser-Passw0rd-X"):
        r = admin.post("/api/v1/users", {"id": "newuser", "full_name": "New", "roles": ["qa"], "password": weak})
        assert r.status_code == 422, weak
        assert "password" in r.get_json()["detail"].lower()
    r = Session(app.test_client(), seeded.workstation).post(
        "/api/v1/auth/password", {"user_id": "qa1", "old_password": PASSWORD, "new_password": PASSWORD})
    assert r.status_code == 422


def test_password_ageing(app: Flask) -> None:
    seeded = seed()
    user = db.session.get(User, "qa1")
    # age the password as if 91 days had passed (done through the service layer's own audit)
    from mes.audit.log import record

    user.password_changed_at = utcnow() - timedelta(days=91)
    record(SEED, "test.clock", ("user", "qa1"), after={"password_changed_at": "91 days ago"})
    db.session.commit()
    r = Session(app.test_client(), seeded.workstation).login("qa1")
    assert r.status_code == 403 and r.get_json()["type"].endswith("/password-expired")


def test_badge_login_needs_a_registered_kiosk(app: Flask) -> None:
    seeded = seed()
    kiosk = Session(app.test_client(), seeded.kiosk)
    assert kiosk.badge_login("B-operator", "2468").status_code == 200
    ws = Session(app.test_client(), seeded.workstation)
    assert ws.badge_login("B-operator", "2468").status_code == 403
    rogue = Session(app.test_client(), ("KIOSK-01", "not-the-key"))
    r = rogue.badge_login("B-operator", "2468")
    assert r.status_code == 403 and r.get_json()["type"].endswith("/terminal-required")
    assert kiosk.badge_login("B-operator", "1357").status_code == 401


def test_session_is_bound_to_its_terminal(app: Flask) -> None:
    seeded = seed()
    s = logged_in(app.test_client(), seeded, "qa")
    s.headers = {"X-MES-Terminal": f"{seeded.kiosk[0]}:{seeded.kiosk[1]}"}
    assert s.get("/api/v1/auth/me").status_code == 401


def test_deactivated_terminal_is_refused(app: Flask) -> None:
    seeded = seed()
    ops.deactivate_terminal(SEED, "KIOSK-01", "panel replaced")
    assert Session(app.test_client(), seeded.kiosk).badge_login("B-operator", "2468").status_code == 403


def test_csrf_is_required_for_cookie_writes(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    r = admin.client.post("/api/v1/terminals", json={"id": "K2", "kind": "kiosk"}, headers=admin.headers)
    assert r.status_code == 403 and "CSRF" in r.get_json()["detail"]
    assert admin.post("/api/v1/terminals", {"id": "K2", "kind": "kiosk"}).status_code == 201


def test_logout_ends_the_session(app: Flask) -> None:
    seeded = seed()
    s = logged_in(app.test_client(), seeded, "qa")
    assert s.post("/api/v1/auth/logout").status_code == 200
    assert s.get("/api/v1/auth/me").status_code == 401


def test_login_is_rate_limited(app: Flask) -> None:
    seeded = seed()
    app.config["MES_LOGIN_RATE_PER_MINUTE"] = 3
    s = Session(app.test_client(), seeded.workstation)
    codes = [s.login("nobody", "x").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    r = s.login("nobody", "x")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_api_token_lifecycle(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    r = admin.post("/api/v1/tokens", {"user": "integrator1", "scopes": ["system.monitor"], "description": "prom"})
    assert r.status_code == 201
    secret, token_id = r.get_json()["secret"], r.get_json()["token"]["id"]
    listed = admin.get("/api/v1/tokens").get_json()["tokens"]
    assert secret not in json.dumps(listed)
    c = app.test_client()
    assert c.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 403  # scope
    assert c.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert admin.post(f"/api/v1/tokens/{token_id}/revoke", {"reason": "rotated"}).status_code == 200
    assert c.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer garbage"}).status_code == 401


def test_access_changes_are_audited(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    admin.post("/api/v1/users/qa1/roles", {"role": "qa", "qualified_until": "2030-01-01T00:00:00Z", "reason": "requalified"})
    entries = [json.loads(e.entry_bytes) for e in db.session.execute(
        select(AuditEntry).where(AuditEntry.action == "user.role.granted")).scalars()]
    assert entries and entries[-1]["actor"]["id"] == "admin1" and entries[-1]["reason"] == "requalified"
    assert entries[-1]["terminal"] == "QA-WS-01"


def test_a_session_works_only_from_its_own_active_terminal(app: Flask) -> None:
    """The terminal check reads the session's terminal in the same query as the session."""
    seeded = seed()
    op = logged_in(app.test_client(), seeded, "operator")  # on KIOSK-01
    assert op.get("/api/v1/auth/me").get_json()["terminal"] == "KIOSK-01"
    other = {"X-MES-Terminal": f"{seeded.workstation[0]}:{seeded.workstation[1]}"}
    r = op.get("/api/v1/auth/me", headers=other)
    assert r.status_code == 401 and r.get_json()["type"].endswith("/session-expired")
    op = logged_in(app.test_client(), seeded, "operator")
    wrong_key = {"X-MES-Terminal": f"{seeded.kiosk[0]}:not-the-key"}
    assert op.get("/api/v1/auth/me", headers=wrong_key).status_code == 401
    op = logged_in(app.test_client(), seeded, "operator")
    ops.deactivate_terminal(SEED, "KIOSK-01", "panel PC replaced")
    assert op.get("/api/v1/auth/me").status_code == 401


def test_roles_are_read_on_every_request(app: Flask) -> None:
    """A role granted (or a user deactivated) counts from the next request of a live session."""
    seeded = seed()
    op = logged_in(app.test_client(), seeded, "operator")
    body = {"item": "FG-1", "quantity": "1", "unit": "kg", "recipe_version_id": "none@1"}
    assert op.post("/api/v1/work-orders", body).status_code == 403
    ops.grant_role(SEED, seeded.users["operator"], "supervisor", None, "covers the night shift")
    assert op.post("/api/v1/work-orders", body).status_code != 403
    ops.deactivate_user(SEED, seeded.users["operator"], "left the company")
    assert op.get("/api/v1/auth/me").status_code == 401
