"""Part 11 e-signatures: manifestation, binding, components, qualification, second person."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit import log
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.errors import AuthenticationFailed, Conflict, Forbidden, ValidationFailed
from mes.signatures import operations as esig
from mes.users import operations as ops
from mes.users.models import UserSession
from tests.helpers import PASSWORD, SEED, logged_in, seed

RECORDS: dict[str, dict] = {}


@esig.record_provider("test_record")
def _test_record(record_id: str) -> dict:
    return RECORDS[record_id]


@pytest.fixture
def people(app: Flask):
    seeded = seed()
    for uid in ("operator1", "supervisor1", "qa1"):
        ops.acknowledge_esig_accountability(uid, None)
    RECORDS.clear()
    RECORDS["R-1"] = {"step": "dispense", "value": "12.50", "unit": "kg"}
    RECORDS["R-2"] = {"step": "dispense", "value": "3.10", "unit": "kg"}
    return seeded


def _session(user_id: str, terminal: str | None = "KIOSK-01", method: str = "password") -> UserSession:
    row = UserSession(id=f"s-{user_id}-{utcnow().timestamp()}", user_id=user_id, terminal_id=terminal, method=method,
                      started_at=utcnow())
    db.session.add(row)
    log.record(SEED, "auth.login", ("user", user_id), after={"method": method})
    db.session.commit()
    return row


def test_signature_manifestation_and_binding(people) -> None:
    s = _session("operator1")
    entry = esig.sign(s, esig.Credentials(PASSWORD, user_id="operator1"), "test_record", "R-1", "performed",
                      role="operator", terminal="KIOSK-01", batch="B-1")
    data = json.loads(entry.entry_bytes)
    sig = data["signature"]
    assert data["action"] == "esig.signed" and data["entity"] == {"type": "test_record", "id": "R-1"}
    assert sig["signer"] == "operator1" and sig["name"] == "Operator One" and sig["meaning"] == "performed"
    assert sig["record_hash"] == esig.record_hash(RECORDS["R-1"]) and sig["at"].endswith("Z")
    assert log.latest_checkpoint().size == log.tree_size()  # a checkpoint right after a signature
    checks = esig.signatures_for("test_record", "R-1")
    assert [c.valid for c in checks] == [True]
    # the record changed after signing: the signature no longer verifies
    RECORDS["R-1"]["value"] = "12.40"
    assert [c.valid for c in esig.signatures_for("test_record", "R-1")] == [False]
    # copied onto another record, it does not verify either
    assert not esig.check_entry(data, esig.record_hash(RECORDS["R-2"])).valid


def test_components_first_then_secret_only(people) -> None:
    s = _session("operator1")
    with pytest.raises(AuthenticationFailed, match="first signature"):
        esig.sign(s, esig.Credentials(PASSWORD), "test_record", "R-1", "performed", role="operator", terminal="KIOSK-01")
    db.session.rollback()
    with pytest.raises(AuthenticationFailed, match="do not belong"):
        esig.sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "test_record", "R-1", "performed", role="operator",
                  terminal="KIOSK-01")
    db.session.rollback()
    esig.sign(s, esig.Credentials(PASSWORD, user_id="operator1"), "test_record", "R-1", "performed", role="operator",
              terminal="KIOSK-01")
    # same continuous session: the secret alone is enough, but it must be right
    esig.sign(s, esig.Credentials(PASSWORD), "test_record", "R-2", "performed", role="operator", terminal="KIOSK-01")
    with pytest.raises(AuthenticationFailed, match="wrong password"):
        esig.sign(s, esig.Credentials("nope"), "test_record", "R-2", "performed", role="operator", terminal="KIOSK-01")
    db.session.rollback()
    # a new session (after log-out or timeout) needs both again
    ops.end_session(s, "logout")
    s2 = _session("operator1")
    with pytest.raises(AuthenticationFailed, match="first signature"):
        esig.sign(s2, esig.Credentials(PASSWORD), "test_record", "R-2", "performed", role="operator", terminal="KIOSK-01")
    db.session.rollback()


def test_badge_sessions_sign_with_badge_and_pin(people) -> None:
    s = _session("operator1", method="badge")
    # the first signature of a badge session needs the badge, not the user id, and the PIN, not the password
    with pytest.raises(AuthenticationFailed, match="needs your badge and PIN"):
        esig.sign(s, esig.Credentials("2468", user_id="operator1"), "test_record", "R-1", "performed",
                  role="operator", terminal="KIOSK-01")
    db.session.rollback()
    with pytest.raises(AuthenticationFailed, match="That badge is not yours; sign with your own badge"):
        esig.sign(s, esig.Credentials("2468", badge="B-supervisor"), "test_record", "R-1", "performed",
                  role="operator", terminal="KIOSK-01")
    db.session.rollback()
    with pytest.raises(AuthenticationFailed, match="wrong PIN"):
        esig.sign(s, esig.Credentials(PASSWORD, badge="B-operator"), "test_record", "R-1", "performed",
                  role="operator", terminal="KIOSK-01")
    db.session.rollback()
    first = esig.sign(s, esig.Credentials("2468", badge="B-operator"), "test_record", "R-1", "performed",
                      role="operator", terminal="KIOSK-01")
    # later in the same session the PIN alone is enough, and it must be right
    with pytest.raises(AuthenticationFailed, match="wrong PIN"):
        esig.sign(s, esig.Credentials("1357"), "test_record", "R-2", "performed", role="operator", terminal="KIOSK-01")
    db.session.rollback()
    second = esig.sign(s, esig.Credentials("2468"), "test_record", "R-2", "performed", role="operator",
                       terminal="KIOSK-01")
    for entry, record_id in ((first, "R-1"), (second, "R-2")):
        sig = json.loads(entry.entry_bytes)["signature"]
        assert sig["signer"] == "operator1" and sig["meaning"] == "performed"
        assert sig["record_hash"] == esig.record_hash(RECORDS[record_id])
        assert [(c.signer, c.valid) for c in esig.signatures_for("test_record", record_id)] == [("operator1", True)]


def test_second_person_must_differ_and_hold_a_permitted_role(people) -> None:
    op = _session("operator1")
    esig.sign(op, esig.Credentials(PASSWORD, user_id="operator1"), "test_record", "R-1", "performed", role="operator",
              terminal="KIOSK-01")
    with pytest.raises(Conflict, match="different person"):
        esig.sign(op, esig.Credentials(PASSWORD), "test_record", "R-1", "verified", role="operator", terminal="KIOSK-01",
                  performed_by="operator1")
    db.session.rollback()
    sup = _session("supervisor1")
    esig.sign(sup, esig.Credentials(PASSWORD, user_id="supervisor1"), "test_record", "R-1", "verified", role="supervisor",
              terminal="KIOSK-01", performed_by="operator1")
    adm = _session("admin1", terminal="QA-WS-01")
    with pytest.raises(Forbidden):
        esig.sign(adm, esig.Credentials(PASSWORD, user_id="admin1"), "test_record", "R-1", "verified", role="admin",
                  terminal="QA-WS-01")
    db.session.rollback()


def test_expired_qualification_refuses_signing(people) -> None:
    ops.grant_role(SEED, "qa1", "qa", utcnow() - timedelta(days=1), "training lapsed")
    s = _session("qa1", terminal="QA-WS-01")
    with pytest.raises(Forbidden, match="qualification as qa expired"):
        esig.sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "test_record", "R-1", "approved", role="qa",
                  terminal="QA-WS-01")
    db.session.rollback()
    ops.grant_role(SEED, "qa1", "qa", utcnow() + timedelta(days=365), "retrained")
    esig.sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "test_record", "R-1", "approved", role="qa",
              terminal="QA-WS-01")


def test_acknowledgement_and_meaning_are_required(app: Flask) -> None:
    seed()
    RECORDS["R-1"] = {"x": "1"}
    s = _session("qa1", terminal="QA-WS-01")
    with pytest.raises(Forbidden, match="Acknowledge"):
        esig.sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "test_record", "R-1", "approved", role="qa", terminal=None)
    db.session.rollback()
    ops.acknowledge_esig_accountability("qa1", None)
    with pytest.raises(ValidationFailed, match="meaning"):
        esig.sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "test_record", "R-1", "looked at", role="qa", terminal=None)
    db.session.rollback()
    acks = db.session.execute(select(AuditEntry).where(AuditEntry.action == "user.esig.acknowledged")).scalars().all()
    assert len(acks) == 1


def test_audit_trail_review_is_a_signed_record(app: Flask, client) -> None:
    seeded = seed()
    log.record(SEED, "batch.started", ("batch", "B-9"), batch="B-9", after={"status": "in_progress"})
    db.session.commit()
    qa = logged_in(client, seeded, "qa")
    assert qa.post("/api/v1/auth/esig-acknowledgement").status_code == 200
    r = qa.post("/api/v1/audit/reviews", {"batch": "B-9", "comment": "no anomalies"})
    assert r.status_code == 422  # no password given
    r = qa.post("/api/v1/audit/reviews", {"batch": "B-9", "comment": "no anomalies", "password": PASSWORD})
    assert r.status_code == 401 and "first signature" in r.get_json()["detail"]
    r = qa.post("/api/v1/audit/reviews", {"batch": "B-9", "comment": "no anomalies", "password": PASSWORD, "user_id": "qa1"})
    assert r.status_code == 201, r.get_json()
    review = r.get_json()["review"]
    assert review["entries_reviewed"] == 1 and review["signatures"][0]["meaning"] == "reviewed"
    assert review["signatures"][0]["valid"] is True
    listed = qa.get("/api/v1/audit/reviews?batch=B-9").get_json()["reviews"]
    assert [x["id"] for x in listed] == [review["id"]]
    sigs = qa.get(f"/api/v1/signatures/audit_review/{review['id']}").get_json()["signatures"]
    assert sigs[0]["name"] == "Qa One"


def test_qa_audit_viewer_pages(app: Flask, client) -> None:
    seeded = seed()
    log.record(SEED, "batch.started", ("batch", "B-7"), batch="B-7", after={"status": "in_progress", "qty": "12.50"})
    db.session.commit()
    r = client.get("/qa/audit")
    assert r.status_code == 302 and "/qa/login" in r.headers["Location"]
    from tests.helpers import terminal_header

    h = terminal_header(seeded.workstation)
    page = client.get("/qa/login", headers=h).get_data(as_text=True)
    import re

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/qa/login", data={"user_id": "qa1", "password": "wrong", "csrf_token": csrf}, headers=h)
    assert r.status_code == 401 and "wrong" in r.get_data(as_text=True)
    r = client.post("/qa/login", data={"user_id": "qa1", "password": PASSWORD, "csrf_token": csrf}, headers=h)
    assert r.status_code == 302
    page = client.get("/qa/audit?batch=B-7", headers=h)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "batch.started" in html and "12.50" in html and "UTC" in html
    assert "<script" not in html
    csv_text = client.get("/qa/audit.csv?batch=B-7", headers=h).get_data(as_text=True)
    assert csv_text.startswith("\ufeff")  # the UTF-8 BOM
    assert csv_text.lstrip("\ufeff").splitlines()[0].startswith("seq,at,actor_id") and "batch.started" in csv_text
    data = client.get("/qa/audit.json?batch=B-7", headers=h).get_json()
    assert [e["action"] for e in data] == ["batch.started"]
    # an operator may not read the audit trail
    op = logged_in(app.test_client(), seeded, "operator")
    assert op.get("/qa/audit").status_code == 403
