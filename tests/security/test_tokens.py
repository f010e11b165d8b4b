"""API tokens cannot be used to act as a person (issue 18; Part 11 §11.10(d), (g); MHRA/FDA DI:
an administrator account cannot enter or sign GMP data, directly or through a token)."""

from __future__ import annotations

import json
from datetime import timedelta

from flask import Flask
from sqlalchemy import select

from mes.audit.log import record
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.users import operations as ops
from mes.users import secrets as hashing
from mes.users.models import ApiToken
from tests.helpers import SEED, logged_in, seed, terminal_header


def test_tokens_are_for_integration_and_system_accounts_only(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    for role in ("operator", "supervisor", "qa"):
        r = admin.post("/api/v1/tokens", {"user": seeded.users[role], "scopes": ["batch.view"]})
        assert r.status_code == 403 and r.mimetype == "application/problem+json", (role, r.get_json())
        assert "integration and system accounts only" in r.get_json()["detail"]
    assert db.session.execute(select(ApiToken)).first() is None


def test_a_token_scope_must_be_held_by_its_accounts_role(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    for user, scope in (("integrator1", "batch.execute"), ("integrator1", "users.admin"),
                        ("admin1", "batch.execute"), ("admin1", "deviation.raise"), ("admin1", "esig.sign")):
        r = admin.post("/api/v1/tokens", {"user": user, "scopes": [scope]})
        assert r.status_code == 403, (user, scope, r.get_json())
    assert admin.post("/api/v1/tokens", {"user": "integrator1", "scopes": ["integration.events"]}).status_code == 201


def test_a_token_cannot_expire_in_the_past(app: Flask) -> None:
    seeded = seed()
    admin = logged_in(app.test_client(), seeded, "admin")
    for when in ("2001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"):
        r = admin.post("/api/v1/tokens", {"user": "integrator1", "scopes": ["system.monitor"], "expires_at": when})
        assert r.status_code == 422 and r.get_json()["field"] == "expires_at", when


def test_a_token_of_a_production_account_is_refused_even_if_stored(app: Flask) -> None:
    """A token row for an operator (written before this rule, or by a DBA) authenticates nobody."""
    seeded = seed()
    secret = "s3cret-value-for-the-test"
    db.session.add(ApiToken(id="legacy01", user_id=seeded.users["operator"], description="old",
                            secret_sha256=hashing.digest(secret), scopes=["batch.view", "batch.execute"]))
    record(SEED, "api_token.issued", ("api_token", "legacy01"), after={"user": seeded.users["operator"]})
    db.session.commit()
    r = app.test_client().get("/api/v1/recipes", headers={"Authorization": f"Bearer mes_legacy01.{secret}",
                                                          **terminal_header(seeded.kiosk)})
    assert r.status_code == 401


def test_a_terminal_header_never_overrides_a_tokens_identity(app: Flask) -> None:
    seeded = seed()
    token, secret = ops.issue_token(SEED, "integrator1", ["work_order.manage", "integration.endpoints"], "erp")
    headers = {"Authorization": f"Bearer {secret}", **terminal_header(seeded.kiosk)}
    r = app.test_client().post("/api/v1/work-orders", json={"item": "FG-1", "quantity": "1", "unit": "kg",
                                                             "recipe_version_id": "none@1"}, headers=headers)
    assert r.status_code != 500
    # an action that succeeds, so the token's entry exists to be checked
    r = app.test_client().post("/api/v1/integration/endpoints", json={"id": "erp", "url": "http://127.0.0.1:9/hook"},
                               headers=headers)
    assert r.status_code == 201, r.get_json()
    # every entry the token caused names the token, never the kiosk
    rows = [json.loads(e.entry_bytes) for e in db.session.execute(select(AuditEntry)).scalars()]
    by_token = [e for e in rows if e["actor"]["id"] == "integrator1"]
    assert by_token and all(e["terminal"] == f"api:{token.id}" for e in by_token)
    assert not any(e["terminal"] == "KIOSK-01" and e["actor"]["id"] == "integrator1" for e in rows)


def test_a_token_request_has_no_terminal_even_with_a_terminal_header(app: Flask) -> None:
    seeded = seed()
    _, secret = ops.issue_token(SEED, "integrator1", ["self"], "erp", utcnow() + timedelta(days=1))
    headers = {"Authorization": f"Bearer {secret}", **terminal_header(seeded.kiosk)}
    me = app.test_client().get("/api/v1/auth/me", headers=headers).get_json()
    assert me["user"]["id"] == "integrator1" and me["via"] == "token" and me["terminal"] is None
