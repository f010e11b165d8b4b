"""Browser sessions are kept on the server (issue 18; Part 11 §11.10(d), §11.300)."""

from __future__ import annotations

import json
from datetime import timedelta

from flask import Flask
from sqlalchemy import select, update

from mes.audit import log
from mes.audit.models import AuditEntry
from mes.db import db
from mes.users import secrets as hashing
from mes.users.models import UserSession, WebSession
from tests.helpers import SEED, logged_in, seed


def _cookie(client) -> str:
    cookie = client.get_cookie("mes_session")
    assert cookie is not None
    return cookie.value


def test_the_session_cookie_holds_an_id_only(app: Flask) -> None:
    seeded = seed()
    client = app.test_client()
    r = client.post("/terminal/enroll", data={"terminal": seeded.kiosk[0], "key": seeded.kiosk[1],
                                              "csrf_token": client.get("/api/v1/auth/csrf").get_json()["csrf_token"]})
    assert r.status_code == 200 and "now terminal" in r.get_data(as_text=True)
    csrf = client.get("/api/v1/auth/csrf").get_json()["csrf_token"]
    before = _cookie(client)
    r = client.post("/api/v1/auth/login", json={"badge": "B-operator", "pin": "2468"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.get_json()
    value = _cookie(client)
    assert value != before  # a new id at log-in: no session fixation
    assert len(value) <= 64 and "." not in value and seeded.kiosk[1] not in value
    assert client.get("/api/v1/auth/me").get_json()["terminal"] == "KIOSK-01"
    assert _cookie(client) == value  # activity is kept on the server, not in the cookie


def test_a_session_has_an_absolute_lifetime(app: Flask) -> None:
    seeded = seed()
    app.config["MES_SESSION_MAX_HOURS"] = 1
    qa = logged_in(app.test_client(), seeded, "qa")
    assert qa.get("/api/v1/auth/me").status_code == 200
    row = db.session.execute(select(UserSession).where(UserSession.user_id == "qa1")).scalar_one()
    row.started_at = row.started_at - timedelta(hours=1, minutes=1)
    log.record(SEED, "test.clock", ("user", "qa1"), after={"session started": "61 minutes ago"})
    db.session.commit()
    r = qa.get("/api/v1/auth/me")
    assert r.status_code == 401 and r.get_json()["type"].endswith("/session-expired")
    assert "absolute_timeout" in json.dumps([json.loads(e.entry_bytes) for e in db.session.execute(
        select(AuditEntry).where(AuditEntry.action == "auth.logout")).scalars()])


def test_a_replayed_cookie_after_log_out_opens_nothing(app: Flask) -> None:
    seeded = seed()
    qa = logged_in(app.test_client(), seeded, "qa")
    value = _cookie(qa.client)
    assert qa.post("/api/v1/auth/logout").status_code == 200
    replay = app.test_client()
    replay.set_cookie("mes_session", value)
    assert replay.get("/api/v1/auth/me", headers=qa.headers).status_code == 401


def test_a_browser_session_row_written_by_hand_is_no_session_and_no_500(app: Flask) -> None:
    seeded = seed()
    qa = logged_in(app.test_client(), seeded, "qa")
    assert qa.get("/api/v1/auth/me").status_code == 200
    row_id = hashing.digest(_cookie(qa.client))
    db.session.execute(update(WebSession).where(WebSession.id == row_id).values(data="not json {"))
    db.session.commit()
    r = qa.get("/api/v1/auth/me")
    assert r.status_code == 401 and r.get_json()["type"].endswith("/authentication-failed"), r.get_json()


def test_each_browser_session_resolves_to_its_own_user(app: Flask) -> None:
    """The browser session and the user session it names are read together (PostgreSQL):
    two people logged in side by side each get their own identity, request after request."""
    seeded = seed()
    qa = logged_in(app.test_client(), seeded, "qa")
    sup = logged_in(app.test_client(), seeded, "supervisor")
    for _ in range(3):
        assert qa.get("/api/v1/auth/me").get_json()["user"]["id"] == "qa1"
        assert sup.get("/api/v1/auth/me").get_json()["user"]["id"] not in ("qa1", None)
