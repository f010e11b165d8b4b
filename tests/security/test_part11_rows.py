"""Rows of shared/specs/part11.md that issue 18 names, each with a test that fails when its
behaviour breaks: 11.10(h), 11.300 on every way in, and "an administrator account cannot
enter or sign GMP data"."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit import log
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.errors import AuthenticationFailed, Forbidden
from mes.signatures import operations as esig
from mes.users import operations as ops
from mes.users.models import User, UserSession
from tests.helpers import PASSWORD, SEED, Session, logged_in, seed


def test_11_10_h_input_from_an_unregistered_terminal_is_refused(app: Flask) -> None:
    seeded = seed()
    op = logged_in(app.test_client(), seeded, "operator")
    for forged in ({"X-MES-Terminal": "KIOSK-99:guessed-key"}, {"X-MES-Terminal": f"{seeded.kiosk[0]}:wrong-key"}):
        r = op.post("/api/v1/batches/B-1/deviations", {"severity": "minor", "category": "equipment",
                                                        "description": "d"}, headers=forged)
        assert r.status_code in (401, 403) and r.mimetype == "application/problem+json", forged
    sup = Session(app.test_client(), None)
    assert sup.login("supervisor1").status_code == 200
    r = sup.post("/api/v1/batches/B-1/deviations", {"severity": "minor", "category": "equipment", "description": "d"})
    assert r.status_code == 403 and r.get_json()["type"].endswith("/terminal-required")
    assert not db.session.execute(select(AuditEntry).where(AuditEntry.action.like("deviation%"))).first()


def test_an_administrator_account_cannot_sign_gmp_data(app: Flask) -> None:
    seed()
    row = UserSession(id="s-admin", user_id="admin1", terminal_id="QA-WS-01", method="password", started_at=utcnow())
    db.session.add(row)
    log.record(SEED, "auth.login", ("user", "admin1"), after={"method": "password"})
    db.session.commit()
    ops.acknowledge_esig_accountability("admin1", None)
    for role in ("admin", "qa", "operator"):
        with pytest.raises(Forbidden):
            esig.sign(row, esig.Credentials(PASSWORD, user_id="admin1"), "audit_review", "x", "reviewed",
                      role=role, terminal="QA-WS-01")
        db.session.rollback()


def test_11_300_a_wrong_password_on_the_command_line_counts_toward_lockout(app: Flask) -> None:
    seed()
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            ops.check_password("qa1", "Wrong-Passw0rd-1", "cli")
    user = db.session.get(User, "qa1")
    db.session.refresh(user)
    assert user.locked
    entries = db.session.execute(select(AuditEntry.terminal_id).where(AuditEntry.action == "auth.login.failed",
                                                                      AuditEntry.entity_id == "qa1")).scalars().all()
    assert entries == ["cli"] * 5
    with pytest.raises(AuthenticationFailed):  # the right password no longer authorises a command
        ops.check_password("qa1", PASSWORD, "cli")
