"""Credential checks that hold under attack (issue 18; Part 11 §11.200, §11.300(d))."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit import log
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.errors import AuthenticationFailed, Forbidden
from mes.signatures import operations as esig
from mes.users import operations as ops
from mes.users.models import Alarm, User, UserSession
from tests.helpers import PASSWORD, SEED, Session, logged_in, seed


def _actions(user_id: str) -> list[str]:
    return list(db.session.execute(select(AuditEntry.action).where(AuditEntry.entity_id == user_id)
                                   .order_by(AuditEntry.seq)).scalars())


def _user(user_id: str) -> User:
    user = db.session.get(User, user_id)
    db.session.refresh(user)
    return user


def test_wrong_signature_secrets_count_toward_lockout_are_audited_and_alarmed(app: Flask) -> None:
    """Twelve wrong passwords on an audit-trail review: audited, the account locks at the
    threshold with a security alarm, and the session ends."""
    seeded = seed()
    log.record(SEED, "batch.started", ("batch", "B-9"), batch="B-9", after={"status": "in_progress"})
    db.session.commit()
    qa = logged_in(app.test_client(), seeded, "qa")
    assert qa.post("/api/v1/auth/esig-acknowledgement").status_code == 200
    codes = [qa.post("/api/v1/audit/reviews", {"batch": "B-9", "password": f"Wrong-Passw0rd-{i}",
                                               "user_id": "qa1"}).status_code for i in range(12)]
    assert codes[:4] == [401] * 4 and 200 not in codes and 201 not in codes
    user = _user("qa1")
    assert user.locked and user.failed_attempts == 5
    actions = _actions("qa1")
    assert actions.count("auth.signature.failed") >= 5 and "user.locked" in actions
    assert db.session.execute(select(Alarm).where(Alarm.kind == "security", Alarm.message.contains("qa1"))).first()
    # the locked account's session has ended: even the right password does not sign
    r = qa.post("/api/v1/audit/reviews", {"batch": "B-9", "password": PASSWORD, "user_id": "qa1"})
    assert r.status_code == 401


def test_failed_signatures_are_rate_limited_per_account(app: Flask) -> None:
    seeded = seed()
    app.config["MES_ACCOUNT_RATE_PER_MINUTE"] = 3
    app.config["MES_LOCKOUT_THRESHOLD"] = 100
    ops.acknowledge_esig_accountability("qa1", None)
    log.record(SEED, "batch.started", ("batch", "B-9"), batch="B-9", after={"status": "in_progress"})
    db.session.commit()
    qa = logged_in(app.test_client(), seeded, "qa")
    codes = [qa.post("/api/v1/audit/reviews", {"batch": "B-9", "password": "Wrong-Passw0rd-1", "user_id": "qa1"})
             .status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    # the limit is the account's, wherever the next attempt comes from
    r = Session(app.test_client(), seeded.workstation).login("qa1", "Wrong-Passw0rd-1")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_a_wrong_signature_in_a_step_rolls_back_the_step_and_keeps_the_failure(app: Flask) -> None:
    """The failed attempt is recorded in its own transaction; nothing of the refused change stays."""
    seed()
    ops.acknowledge_esig_accountability("operator1", None)
    row = UserSession(id="s-op-1", user_id="operator1", terminal_id="KIOSK-01", method="badge", started_at=utcnow())
    db.session.add(row)
    log.record(SEED, "auth.login", ("user", "operator1"), after={"method": "badge"})
    db.session.commit()
    log.record(SEED, "batch.note", ("batch", "B-1"), batch="B-1", after={"note": "refused with the signature"})
    with pytest.raises(AuthenticationFailed, match="wrong PIN"):
        esig.sign(row, esig.Credentials("1357", badge="B-operator"), "audit_review", "x", "performed",
                  role="operator", terminal="KIOSK-01", commit=False)
    assert not db.session.execute(select(AuditEntry).where(AuditEntry.action == "batch.note")).first()
    assert _user("operator1").failed_attempts == 1 and "auth.signature.failed" in _actions("operator1")


def test_first_signature_needs_both_components_per_session(app: Flask) -> None:
    """§11.200(a)(1): a signature in one session does not spare another live session of the
    same person the identification component."""
    seed()
    ops.acknowledge_esig_accountability("qa1", None)
    esig.record_provider("sec_record")(lambda record_id: {"id": record_id})
    a = UserSession(id="s-a", user_id="qa1", terminal_id="QA-WS-01", method="password", started_at=utcnow())
    b = UserSession(id="s-b", user_id="qa1", terminal_id=None, method="password", started_at=utcnow())
    db.session.add_all([a, b])
    log.record(SEED, "auth.login", ("user", "qa1"), after={"method": "password"})
    db.session.commit()
    esig.sign(a, esig.Credentials(PASSWORD, user_id="qa1"), "sec_record", "R-1", "reviewed", role="qa", terminal=None)
    esig.sign(a, esig.Credentials(PASSWORD), "sec_record", "R-2", "reviewed", role="qa", terminal=None)
    with pytest.raises(AuthenticationFailed, match="first signature"):
        esig.sign(b, esig.Credentials(PASSWORD), "sec_record", "R-3", "reviewed", role="qa", terminal=None)
    db.session.rollback()


def test_password_change_is_not_a_password_oracle(app: Flask) -> None:
    """A wrong current password and the right one with a weak new password answer alike;
    failures are audited and count toward the lockout."""
    seeded = seed()
    s = Session(app.test_client(), seeded.workstation)
    wrong = s.post("/api/v1/auth/password", {"user_id": "qa1", "old_password": "Wrong-Passw0rd-1", "new_password": "short"})
    right = s.post("/api/v1/auth/password", {"user_id": "qa1", "old_password": PASSWORD, "new_password": "short"})
    assert (wrong.status_code, wrong.get_json()["type"], wrong.get_json()["detail"]) == \
        (right.status_code, right.get_json()["type"], right.get_json()["detail"])
    for _ in range(5):
        r = s.post("/api/v1/auth/password", {"user_id": "qa1", "old_password": "Wrong-Passw0rd-1",
                                             "new_password": "An0ther-Good-Phrase"})
        assert r.status_code == 401
    assert _user("qa1").locked
    assert _actions("qa1").count("auth.password.failed") == 5


def test_a_locked_account_answers_wrong_credentials_like_any_failure(app: Flask) -> None:
    seeded = seed()
    s = Session(app.test_client(), seeded.workstation)
    unknown = s.login("nobody", "Wrong-Passw0rd-1").get_json()
    for _ in range(5):
        s.login("qa1", "Wrong-Passw0rd-1")
    assert _user("qa1").locked
    locked = s.login("qa1", "Wrong-Passw0rd-1")
    assert locked.status_code == 401
    assert {k: locked.get_json()[k] for k in ("type", "title", "detail")} == \
        {k: unknown[k] for k in ("type", "title", "detail")}


def test_an_admin_reset_is_temporary_audited_and_never_signs(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    r = admin.post("/api/v1/users/operator1/reset", {"reason": "forgot PIN", "pin": "7391"})
    assert r.status_code == 200
    entry = json.loads(db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.action == "user.credentials.reset")).scalar())
    assert entry["actor"]["id"] == "admin1" and entry["entity"]["id"] == "operator1"
    assert entry["after"]["owner"] == "operator1" and entry["after"]["reset_by"] == "admin1"
    # the reset PIN opens no session: the owner must set their own first
    kiosk = Session(app.test_client(), seeded.kiosk)
    r = kiosk.badge_login("B-operator", "7391")
    assert r.status_code == 403 and r.get_json()["type"].endswith("/password-expired")
    # a session opened before the reset cannot sign with the reset PIN
    ops.acknowledge_esig_accountability("operator1", None)
    row = UserSession(id="s-op-2", user_id="operator1", terminal_id="KIOSK-01", method="badge", started_at=utcnow())
    db.session.add(row)
    log.record(SEED, "auth.login", ("user", "operator1"), after={"method": "badge"})
    db.session.commit()
    with pytest.raises(Forbidden, match="reset"):
        esig.sign(row, esig.Credentials("7391", badge="B-operator"), "audit_review", "x", "performed",
                  role="operator", terminal="KIOSK-01")
    db.session.rollback()
    # the owner sets their own PIN on the kiosk, then logs in with it
    r = kiosk.post("/api/v1/auth/pin", {"badge": "B-operator", "old_pin": "7391", "new_pin": "4826"})
    assert r.status_code == 200, r.get_json()
    assert kiosk.badge_login("B-operator", "4826").status_code == 200


def test_a_temporary_password_expires_unused(app: Flask) -> None:
    seeded = seed()
    ops.reset_credentials(SEED, "qa1", "forgot password", password="Tempor4ry-Passw0rd")
    user = _user("qa1")
    user.password_reset_at = utcnow() - ops.TEMPORARY_CREDENTIAL_LIFETIME - timedelta(minutes=1)
    log.record(SEED, "test.clock", ("user", "qa1"), after={"password_reset_at": "a day ago"})
    db.session.commit()
    s = Session(app.test_client(), seeded.workstation)
    assert s.login("qa1", "Tempor4ry-Passw0rd").status_code == 401
    r = s.post("/api/v1/auth/password", {"user_id": "qa1", "old_password": "Tempor4ry-Passw0rd",
                                         "new_password": "N3w-Secret-Phrase"})
    assert r.status_code == 401


def test_failed_signature_attempts_raise_one_security_alarm_per_account_with_a_count(app: Flask) -> None:
    """A failed signature attempt raises the account's security alarm at once (before any
    lockout); later attempts count on that open alarm (audited) instead of flooding; once it
    is acknowledged, the next attempt raises a new one."""
    seeded = seed()
    app.config["MES_LOCKOUT_THRESHOLD"] = 100
    ops.acknowledge_esig_accountability("qa1", None)
    log.record(SEED, "batch.started", ("batch", "B-9"), batch="B-9", after={"status": "in_progress"})
    db.session.commit()
    qa = logged_in(app.test_client(), seeded, "qa")

    def sign_wrong() -> int:
        return qa.post("/api/v1/audit/reviews", {"batch": "B-9", "password": "Wrong-Passw0rd-1",
                                                 "user_id": "qa1"}).status_code

    def signature_alarms() -> list[Alarm]:
        db.session.expire_all()
        return [a for a in db.session.execute(select(Alarm).where(Alarm.kind == "security").order_by(Alarm.id))
                .scalars() if (a.details or {}).get("user") == "qa1"]

    assert sign_wrong() == 401
    [alarm] = signature_alarms()
    assert alarm.acknowledged_at is None and alarm.details["count"] == 1 and "qa1" in alarm.message
    assert _user("qa1").locked is False
    assert sign_wrong() == 401 and sign_wrong() == 401
    [alarm] = signature_alarms()
    assert alarm.details["count"] == 3 and alarm.message.startswith("3 failed signature attempts")
    updates = [json.loads(e.entry_bytes) for e in db.session.execute(select(AuditEntry).where(
        AuditEntry.action == "alarm.updated", AuditEntry.entity_id == str(alarm.id)).order_by(AuditEntry.seq)).scalars()]
    assert [(u["before"]["count"], u["after"]["count"]) for u in updates] == [(1, 2), (2, 3)]
    # the alarm as QA and admin see it
    admin = logged_in(app.test_client(), seeded, "admin")
    shown = [a for a in admin.get("/api/v1/alarms").get_json()["alarms"] if a["id"] == alarm.id]
    assert shown[0]["details"]["count"] == 3
    ops.acknowledge_alarm(SEED, alarm.id, "looked into it")
    assert sign_wrong() == 401
    first, second = signature_alarms()
    assert first.acknowledged_at is not None and second.acknowledged_at is None and second.details["count"] == 1
