"""Rows of shared/specs/part11.md about people, access and signing, one test per row (marked
with its ref; the records rows are in ``test_part11_records.py``), and the test that every
row of the spec's table has one."""

from __future__ import annotations

import ast
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit import canonical, log
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.errors import AuthenticationFailed, Conflict, Forbidden, ValidationFailed
from mes.execution import operations as ex
from mes.signatures import operations as esig
from mes.users import operations as ops
from mes.users.models import Alarm, User, UserRole, UserSession
from mes.users.permissions import MATRIX, Permission, allowed
from mes.web import access_of
from tests.execution_helpers import run_until
from tests.helpers import PASSWORD, SEED, Session, logged_in, seed
from tests.security.part11 import row, spec_rows
from tests.security.test_part11_records import _batch, _record
from tests.test_permissions import _endpoints

HERE = Path(__file__).resolve().parent


@esig.record_provider("p11_record")
def _p11_record(record_id: str) -> dict[str, str]:
    return {"id": record_id, "value": "12.50", "unit": "kg"}


def _session(user_id: str, terminal: str | None, method: str = "password") -> UserSession:
    row_ = UserSession(id=f"s-{user_id}-{utcnow().timestamp()}", user_id=user_id, terminal_id=terminal,
                       method=method, started_at=utcnow())
    db.session.add(row_)
    log.record(SEED, "auth.login", ("user", user_id), after={"method": method})
    db.session.commit()
    return row_


def _sign(session_row: UserSession, creds: esig.Credentials, record_id: str, role: str = "qa",
          meaning: str = "reviewed") -> Any:
    return esig.sign(session_row, creds, "p11_record", record_id, meaning, role=role, terminal=session_row.terminal_id)


def _entries(action: str, entity_id: str) -> list[dict[str, Any]]:
    return [json.loads(e.entry_bytes) for e in db.session.execute(
        select(AuditEntry).where(AuditEntry.action == action, AuditEntry.entity_id == entity_id)
        .order_by(AuditEntry.seq)).scalars()]


def test_every_part11_row_has_a_test() -> None:
    """Each row of shared/specs/part11.md is proved by one test here marked ``@row(ref)``; a new
    row without its test fails, as does a marker naming no row."""
    marked: dict[str, list[str]] = {}
    for path in sorted(HERE.glob("test_part11*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "row":
                    marked.setdefault(ast.literal_eval(deco.args[0]), []).append(f"{path.name}::{node.name}")
    refs = spec_rows()
    assert len(refs) >= 19 and len(set(refs)) == len(refs), refs
    assert [ref for ref in refs if ref not in marked] == [], "rows of part11.md without a test"
    assert sorted(set(marked) - set(refs)) == [], "markers naming no row of part11.md"
    assert {ref: tests for ref, tests in marked.items() if len(tests) > 1} == {}, "one test per row"


def test_the_row_parser_reads_a_new_row() -> None:
    table = "| ref | behaviour |\n|---|---|\n| 11.10(a) | x |\n| A11 §99 | a new row |\n"
    assert spec_rows(table) == ["11.10(a)", "A11 §99"]


@row("11.10(h)")
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


@row("11.10(d)")
def test_11_10_d_every_endpoint_refuses_unauthenticated_and_deactivated_users(app: Flask) -> None:
    seeded = seed()
    callers: dict[str, tuple[Any, dict[str, str]]] = {}
    anonymous = Session(app.test_client(), seeded.workstation)
    callers["anonymous"] = (anonymous.client, anonymous._h())
    for role in ("operator", "qa", "supervisor"):
        s = logged_in(app.test_client(), seeded, role)
        callers[role] = (s.client, s._h())
    scopes = [p.value for p in Permission if allowed({"integrator"}, p)]
    _, secret = ops.issue_token(SEED, seeded.users["integrator"], scopes, "p11")
    callers["integrator"] = (app.test_client(), {"Authorization": f"Bearer {secret}"})
    for role in ("operator", "qa", "supervisor", "integrator"):
        ops.deactivate_user(SEED, seeded.users[role], "left the company")
    checked = 0
    for method, url, view in _endpoints(app):
        access = access_of(view)
        assert access is not None
        if access.permission is None:
            continue
        for who, (client, headers) in callers.items():
            r = client.open(url, method=method, headers=headers, json={} if method != "GET" else None)
            if url.startswith("/qa/"):  # pages send everyone they refuse to the log-in page
                assert r.status_code == 302 and "/qa/login" in r.headers["Location"], (method, url, who, r.status_code)
            else:
                assert r.status_code == 401, (method, url, who, r.status_code)
            checked += 1
    assert checked >= 5 * 50


#: the actions the row names, the permission each needs, and who holds it
ACTIONS = {
    "execute": (Permission.BATCH_EXECUTE, {"operator", "supervisor"}),
    "verify": (Permission.BATCH_VERIFY, {"operator", "supervisor", "qa"}),
    "sign": (Permission.ESIG_SIGN, {"operator", "supervisor", "qa"}),
    "dispose": (Permission.DEVIATION_DISPOSE, {"qa"}),
    "release": (Permission.BATCH_RELEASE, {"qa"}),
    "administer": (Permission.USERS_ADMIN, {"admin"}),
}


@row("11.10(g)")
def test_11_10_g_the_role_action_matrix_is_enforced_on_the_server_for_every_action(app: Flask) -> None:
    seeded = seed()
    for action, (permission, holders) in ACTIONS.items():
        assert {r.value for r in MATRIX[permission]} == holders, action
    guarded = [(m, u) for m, u, view in _endpoints(app)
               if (a := access_of(view)) is not None and a.permission in {p for p, _ in ACTIONS.values()}]
    assert len(guarded) >= 10
    for role in ("operator", "supervisor", "qa", "admin", "integrator"):
        s = logged_in(app.test_client(), seeded, role)
        for method, url, view in _endpoints(app):
            access = access_of(view)
            if access is None or (method, url) not in guarded:
                continue
            r = s.client.open(url, method=method, headers=s._h(), json={} if method != "GET" else None)
            if allowed({role}, access.permission):
                assert r.status_code not in (401, 403), (method, url, role, r.status_code)
            else:
                assert r.status_code == 403, (method, url, role, r.status_code)
    # the service layer holds the matrix too: a signature in a role the signer does not hold is refused
    ops.acknowledge_esig_accountability("operator1", None)
    with pytest.raises(Forbidden):
        _sign(_session("operator1", "KIOSK-01"), esig.Credentials(PASSWORD, user_id="operator1"), "R-1", role="qa")
    db.session.rollback()


@row("11.10(i)")
def test_11_10_i_signing_is_refused_when_the_qualification_for_the_role_expired(app: Flask) -> None:
    seed()
    ops.acknowledge_esig_accountability("qa1", None)
    ops.grant_role(SEED, "qa1", "qa", utcnow() - timedelta(minutes=1), "training lapsed")
    s = _session("qa1", "QA-WS-01")
    with pytest.raises(Forbidden, match="qualification as qa expired"):
        _sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "R-1")
    db.session.rollback()
    assert not esig.signatures_for("p11_record", "R-1")
    ops.grant_role(SEED, "qa1", "qa", utcnow() + timedelta(days=365), "retrained")
    _sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "R-1")
    assert [c.signer for c in esig.signatures_for("p11_record", "R-1")] == ["qa1"]


@row("11.100")
def test_11_100_user_ids_are_never_reused_and_users_are_deactivated_never_deleted(app: Flask) -> None:
    seed()
    with pytest.raises(Conflict, match="never reused"):
        ops.create_user(SEED, "QA1", "Another Person", {"qa"}, password="An0ther-Good-Phrase")
    db.session.rollback()
    ops.deactivate_user(SEED, "qa1", "left the company")
    for reuse in ("qa1", "Qa1"):
        with pytest.raises(Conflict, match="never reused"):
            ops.create_user(SEED, reuse, "Another Person", {"qa"}, password="An0ther-Good-Phrase")
        db.session.rollback()
    user = db.session.get(User, "qa1")
    assert user is not None and not user.active and user.full_name == "Qa One"
    db.session.delete(user)
    with pytest.raises(log.UnauditedChangeError, match="never deleted"):
        db.session.flush()
    db.session.rollback()
    assert db.session.get(User, "qa1") is not None
    with pytest.raises(Conflict, match="already deactivated"):
        ops.deactivate_user(SEED, "qa1", "again")
    db.session.rollback()


@row("11.200")
def test_11_200_first_signing_in_a_session_needs_both_components_later_ones_the_secret(app: Flask) -> None:
    seed()
    for uid in ("qa1", "operator1"):
        ops.acknowledge_esig_accountability(uid, None)
    s = _session("qa1", "QA-WS-01")
    other = _session("qa1", None)  # another live session of the same person, open since before
    with pytest.raises(AuthenticationFailed, match="first signature"):
        _sign(s, esig.Credentials(PASSWORD), "R-1")
    db.session.rollback()
    _sign(s, esig.Credentials(PASSWORD, user_id="qa1"), "R-1")
    _sign(s, esig.Credentials(PASSWORD), "R-2")  # the same continuous session: the secret alone
    with pytest.raises(AuthenticationFailed, match="wrong password"):
        _sign(s, esig.Credentials("Wrong-Passw0rd-1"), "R-2")
    db.session.rollback()
    with pytest.raises(AuthenticationFailed, match="first signature"):
        _sign(other, esig.Credentials(PASSWORD), "R-3")  # a signature in another session does not count
    db.session.rollback()
    ops.end_session(s, "idle_timeout")  # after timeout or log-out: both again
    again = _session("qa1", "QA-WS-01")
    with pytest.raises(AuthenticationFailed, match="first signature"):
        _sign(again, esig.Credentials(PASSWORD), "R-3")
    db.session.rollback()
    # badge sessions: the badge and the PIN first, then the PIN
    badge = _session("operator1", "KIOSK-01", method="badge")
    with pytest.raises(AuthenticationFailed, match="badge and PIN"):
        _sign(badge, esig.Credentials("2468"), "R-4", role="operator", meaning="performed")
    db.session.rollback()
    _sign(badge, esig.Credentials("2468", badge="B-operator"), "R-4", role="operator", meaning="performed")
    _sign(badge, esig.Credentials("2468"), "R-5", role="operator", meaning="performed")
    assert [c.valid for c in esig.signatures_for("p11_record", "R-5")] == [True]


@row("11.300")
def test_11_300_passwords_age_have_a_minimum_strength_and_failures_lock_with_an_alarm(app: Flask) -> None:
    seeded = seed()
    for weak in ("short1A!", "alllowercaseletters", "Password123!"):
        with pytest.raises(ValidationFailed, match="(?i)password"):
            ops.create_user(SEED, "newuser", "New User", {"qa"}, password=weak)
        db.session.rollback()
    user = db.session.get(User, "supervisor1")
    user.password_changed_at = utcnow() - timedelta(days=91)
    log.record(SEED, "test.clock", ("user", "supervisor1"), after={"password_changed_at": "91 days ago"})
    db.session.commit()
    r = Session(app.test_client(), seeded.workstation).login("supervisor1")
    assert r.status_code == 403 and r.get_json()["type"].endswith("/password-expired")
    s = Session(app.test_client(), seeded.workstation)
    threshold = app.config.get("MES_LOCKOUT_THRESHOLD", 5)
    for _ in range(threshold):
        assert s.login("qa1", "Wrong-Passw0rd-1").status_code == 401
    user = db.session.get(User, "qa1")
    db.session.refresh(user)
    assert user.locked
    assert s.login("qa1").status_code == 423  # the right password no longer opens it
    assert [e["action"] for e in _entries("user.locked", "qa1")] == ["user.locked"]
    assert db.session.execute(select(Alarm).where(Alarm.kind == "security", Alarm.message.contains("qa1"))).first()


@row("A11 §12.3")
def test_a11_12_3_granting_changing_and_removing_access_rights_are_audited(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    r = admin.post("/api/v1/users", {"id": "qa2", "full_name": "Qa Two", "roles": ["qa"], "password": "An0ther-Good-Phrase"})
    assert r.status_code == 201, r.get_json()
    r = admin.post("/api/v1/users/qa2/roles", {"role": "qa", "qualified_until": "2030-01-01T00:00:00Z",
                                               "reason": "requalified"})
    assert r.status_code == 200, r.get_json()
    r = admin.post("/api/v1/users/qa2/deactivate", {"reason": "moved to another site"})
    assert r.status_code == 200, r.get_json()
    [created] = _entries("user.created", "qa2")
    [changed] = _entries("user.role.granted", "qa2")
    [removed] = _entries("user.deactivated", "qa2")
    for entry in (created, changed, removed):
        assert entry["actor"]["id"] == "admin1" and entry["terminal"] == "QA-WS-01"
    assert created["after"]["roles"] == ["qa"]
    assert changed["before"]["qualified_until"] is None and changed["after"]["qualified_until"].startswith("2030-01-01")
    assert changed["reason"] == "requalified"
    assert (removed["before"], removed["after"], removed["reason"]) == (
        {"active": True}, {"active": False}, "moved to another site")
    # a role is removed on the record, and from that request on it grants nothing
    supervisor = logged_in(app.test_client(), seeded, "supervisor")
    assert supervisor.get("/api/v1/oee/rates?line=LINE-1").status_code != 403
    ops.grant_role(SEED, "supervisor1", "operator", None, "covers the night shift")
    r = admin.post("/api/v1/users/supervisor1/roles/supervisor/revoke", {"reason": "moved to the warehouse"})
    assert r.status_code == 200, r.get_json()
    assert [x["role"] for x in r.get_json()["user"]["roles"]] == ["operator"]
    [revoked] = _entries("user.role.revoked", "supervisor1")
    assert (revoked["actor"]["id"], revoked["before"]["role"], revoked["after"], revoked["reason"]) == (
        "admin1", "supervisor", {"role": "supervisor", "revoked": True}, "moved to the warehouse")
    assert supervisor.get("/api/v1/oee/rates?line=LINE-1").status_code == 403
    assert db.session.get(UserRole, ("supervisor1", "supervisor")).revoked_by == "admin1"  # kept, not deleted
    r = admin.post("/api/v1/users/supervisor1/roles/operator/revoke", {"reason": "last one"})
    assert r.status_code == 409  # the last role: the account is deactivated instead
    # an integration's access (a token) is granted and removed on the record too
    r = admin.post("/api/v1/tokens", {"user": "integrator1", "scopes": ["system.monitor"], "description": "prom"})
    token = r.get_json()["token"]["id"]
    assert admin.post(f"/api/v1/tokens/{token}/revoke", {"reason": "rotated"}).status_code == 200
    assert [e["actor"]["id"] for e in _entries("api_token.issued", token) + _entries("api_token.revoked", token)] \
        == ["admin1", "admin1"]


@row("MHRA/FDA DI")
def test_mhra_fda_di_personal_accounts_no_admin_gmp_data_server_time_and_corrections_keep_both(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world, batch_id = _batch(monkeypatch)
    seeded = world.seeded
    # no shared accounts: a badge is one person's, tokens are for integration and system accounts only
    with pytest.raises(Conflict, match="already assigned"):
        ops.create_user(SEED, "operator3", "Operator Three", {"operator"}, badge_id="B-operator", pin="1357")
    db.session.rollback()
    with pytest.raises(Forbidden):
        ops.issue_token(SEED, "operator1", ["batch.execute"], "a shared line account")
    db.session.rollback()
    # an administrator account cannot enter GMP data, on any way in
    admin = logged_in(app.test_client(), seeded, "admin")
    r = admin.post(f"/api/v1/batches/{batch_id}/deviations", {"severity": "minor", "category": "equipment",
                                                              "description": "entered by an administrator"})
    assert r.status_code == 403
    with pytest.raises(ValidationFailed):
        ops.grant_role(SEED, "admin1", "operator", None, "to help out on the line")
    db.session.rollback()
    # time stamps come from the server: a client's time is refused, the entry carries the server's
    op = logged_in(app.test_client(), seeded, "operator")
    r = op.post(f"/api/v1/batches/{batch_id}/deviations", {"severity": "minor", "category": "equipment",
                                                           "description": "d", "raised_at": "2001-01-01T00:00:00Z"})
    assert r.status_code == 422
    before = utcnow()
    r = op.post(f"/api/v1/batches/{batch_id}/deviations", {"severity": "minor", "category": "equipment",
                                                           "description": "scale display flickers"})
    assert r.status_code == 201, r.get_json()
    entry = _entries("deviation.raised", r.get_json()["id"])[-1]
    assert before - timedelta(seconds=1) <= canonical.parse_at(entry["at"]) <= utcnow() + timedelta(seconds=1)
    # an out-of-spec value corrected later keeps both values and the reason
    run_until(world, batch_id, stop_before="done", overrides={"mass": {"value": "25.00"}})
    oos = _record(batch_id, "mass")
    assert "out_of_limits" in oos.flags
    assert any(d.category == "limits_missed" for d in ex.deviations_of(batch_id))
    new = ex.correct_value(world.actor("operator"), batch_id, oos.id, "12.34", "read the wrong scale")
    db.session.expire_all()
    kept = db.session.get(ex.StepRecord, oos.id)
    assert (str(kept.value), kept.superseded_by) == ("25.00", new.id)
    assert (str(new.value), new.corrects, new.reason) == ("12.34", oos.id, "read the wrong scale")
    assert re.search("25.00", json.dumps(_entries("batch.value.corrected", oos.id)[-1]["before"]))
