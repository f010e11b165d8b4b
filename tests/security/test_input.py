"""Hostile input gets a clear refusal, never a 500 (issue 18; Part 11 §11.10(e), (h))."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.errors import ValidationFailed
from mes.users import operations as ops
from mes.validation import BODY_STRING_MAX, required_text
from tests.helpers import SEED, Session, logged_in, seed


def _raw_post(s: Session, url: str, body: str):
    return s.client.post(url, data=body, content_type="application/json", headers=s._h())


def test_tare_and_zero_are_audited_and_only_from_a_terminal(app: Flask) -> None:
    seeded = seed()
    nowhere = Session(app.test_client(), None)
    assert nowhere.login("supervisor1").status_code == 200
    for action in ("tare", "zero"):
        r = nowhere.post(f"/api/v1/devices/SCALE-01/{action}")
        assert r.status_code == 403 and r.get_json()["type"].endswith("/terminal-required"), action
    op = logged_in(app.test_client(), seeded, "operator")  # on KIOSK-01
    for action in ("tare", "zero"):
        r = op.post(f"/api/v1/devices/SCALE-01/{action}")
        assert r.status_code == 503  # no gateway runs here: refused, and still on the record
    entries = [json.loads(e.entry_bytes) for e in db.session.execute(
        select(AuditEntry).where(AuditEntry.action.in_(["device.tare", "device.zero"])).order_by(AuditEntry.seq)).scalars()]
    assert [(e["action"], e["actor"]["id"], e["terminal"], e["entity"]["id"], e["after"]["ok"]) for e in entries] == [
        ("device.tare", "operator1", "KIOSK-01", "SCALE-01", False), ("device.zero", "operator1", "KIOSK-01", "SCALE-01", False)]


def test_free_text_and_evidence_are_limited(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    huge = "x" * (3 * 1024 * 1024)
    r = admin.post("/api/v1/users/qa1/deactivate", {"reason": huge})
    assert r.status_code == 413 and r.mimetype == "application/problem+json"
    r = admin.post("/api/v1/users/qa1/deactivate", {"reason": "y" * (BODY_STRING_MAX + 1)})
    assert r.status_code == 422
    op = logged_in(app.test_client(), seeded, "operator")
    r = op.post("/api/v1/batches/B-1/deviations", {"severity": "minor", "category": "equipment", "description": "d",
                                                    "evidence": {"note": "z" * (BODY_STRING_MAX + 1)}})
    assert r.status_code == 422 and "evidence/note" in r.get_json()["detail"]
    assert not db.session.execute(select(AuditEntry).where(AuditEntry.action.like("deviation%"))).first()


@pytest.mark.parametrize("body", [
    '{"reason": "a", "reason": "b"}',                        # a member twice: not 'last one wins'
    '{"reason": "a", "x": ' + "[" * 5000 + "]" * 5000 + "}",  # nested thousands deep
    '{"reason": "a", "x": ' + "[" * 40 + "]" * 40 + "}",      # beyond the documented depth
    '{"reason": NaN}',
    '{"reason": "a", "n": 123456789012345678901234567890}',  # beyond 64 bits
    '{"reason": "a", "n": 1e999}',
    '{"reason": "stop\\u202eevil"}',                          # right-to-left override
    '{"reason": "nul\\u0000byte"}',
])
def test_hostile_json_bodies_are_refused_with_422(app: Flask, body: str) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    r = _raw_post(admin, "/api/v1/users/qa1/deactivate", body)
    assert r.status_code == 422 and r.mimetype == "application/problem+json", r.get_json()
    assert db.session.get(ops.User, "qa1").active


def test_names_refuse_control_and_direction_override_characters(app: Flask) -> None:
    seed()
    for name in ("Eve\u202eevil", "Nul\u0000l", "Two\nlines", "Bell\u0007"):
        with pytest.raises(ValidationFailed, match="control or direction-override"):
            required_text(name, "The printed name", "full_name", 200)
        with pytest.raises(ValidationFailed):
            ops.create_user(SEED, "x1", name, {"qa"}, password="Corr3ct-Horse-Battery")
        db.session.rollback()
    assert required_text("line one\nline two", "A reason", "reason") == "line one\nline two"  # free text may break lines


def test_absurd_numbers_and_dates_are_refused_not_500(app: Flask) -> None:
    seeded = seed()
    qa = logged_in(app.test_client(), seeded, "qa")
    admin = logged_in(app.test_client(), seeded, "admin")
    for url in ("/api/v1/audit/entries?limit=0", "/api/v1/audit/entries?limit=-5",
                "/api/v1/audit/entries?limit=99999999999999999999999", "/api/v1/audit/entries?after=99999999999999999999999",
                "/api/v1/audit/entries?since=9999-12-31T23:00:00-05:00", "/api/v1/audit/entries?since=2026-13-45T00:00:00Z",
                "/api/v1/audit/entries?until=0001-01-01T00:00:00+05:00"):
        r = qa.get(url)
        assert r.status_code == 422 and r.mimetype == "application/problem+json", url
    for alarm in ("99999999999999999999999", str(2**40)):  # beyond 64 bits; beyond the 32-bit id column
        r = admin.post(f"/api/v1/alarms/{alarm}/acknowledge", {})
        assert r.status_code == 404 and r.mimetype == "application/problem+json", alarm
    for when in ("9999-12-31T00:00:00Z", "0001-01-01T00:00:00+05:00"):
        r = admin.post("/api/v1/users/qa1/roles", {"role": "qa", "qualified_until": when, "reason": "r"})
        assert r.status_code == 422, when


def test_a_calibration_cannot_be_due_in_9999(app: Flask) -> None:
    """Absurd dates are refused by the domain rule, whichever way they come in (issue 18)."""
    from datetime import date, timedelta

    from mes.audit.log import Actor
    from mes.equipment import operations as eq
    from mes.plant_time import plant_date

    seeded = seed()
    sup = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
    eq.register_equipment(sup, "BL-P11", "vessel", "blender", "Blender", location="Room 2.14", line="LINE-1")
    today = plant_date(utcnow())
    for due in (date(9999, 12, 31), date(2199, 1, 1), today + timedelta(days=3654)):
        with pytest.raises(ValidationFailed, match="at most ten years") as refused:
            eq.record_calibration(sup, "BL-P11", "pass", "CAL-1", due=due)
        assert refused.value.extra.get("field") == "due"
        db.session.rollback()
    assert not eq.calibrations("BL-P11")
    qa = logged_in(app.test_client(), seeded, "qa")
    for due in ("9999-12-31", (today + timedelta(days=3654)).isoformat()):
        r = qa.post("/api/v1/equipment/BL-P11/calibrations", {"result": "pass", "certificate": "CAL-1", "due": due})
        assert r.status_code == 422 and r.mimetype == "application/problem+json", (due, r.get_json())
    r = qa.post("/api/v1/equipment/BL-P11/calibrations", {"result": "pass", "certificate": "CAL-1",
                                                          "due": (today + timedelta(days=365)).isoformat()})
    assert r.status_code == 201, r.get_json()
