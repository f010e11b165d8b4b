"""Health, readiness, metrics, OpenAPI, problem+json, security headers, request ids."""

from __future__ import annotations

import json
import logging

import pytest
from flask import Flask

from mes.system.blueprint import API_PREFIXES, build_openapi
from mes.users import operations as ops
from tests.helpers import SEED, seed


def test_healthz(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "alive"}


def test_readyz_reports_each_check(client, app: Flask) -> None:
    from mes.system.readiness import record_audit_result

    seed()
    _, secret = ops.issue_token(SEED, "integrator1", ["system.monitor"], "monitoring")
    monitor = {"Authorization": f"Bearer {secret}"}
    r = client.get("/readyz", headers=monitor)
    body = r.get_json()
    assert body["checks"]["database"]["ok"] and body["checks"]["migrations"]["ok"]
    record_audit_result(True, "verified 0 entries")
    assert client.get("/readyz").status_code == 200
    record_audit_result(False, "entry 3: prev does not match")
    r = client.get("/readyz", headers=monitor)
    assert r.status_code == 503 and r.get_json()["checks"]["audit"]["state"] == "failed"


def test_readyz_tells_anonymous_callers_only_ready_or_not(client, app: Flask) -> None:
    from mes.system.readiness import record_audit_result

    record_audit_result(True, "verified 0 entries")
    assert client.get("/readyz").get_json() == {"status": "ready"}
    record_audit_result(False, "entry 3: prev does not match")
    r = client.get("/readyz", headers={"Authorization": "Bearer mes_forged.x"})
    assert r.status_code == 503 and r.get_json() == {"status": "not ready"}


def test_openapi_describes_every_api_endpoint(client, app: Flask) -> None:
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API_PREFIXES):
            for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                path = rule.rule
                import re

                path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)
                served.add((path, m.lower()))
    documented = {(p, m) for p, item in doc["paths"].items() for m in item}
    assert served == documented
    login = doc["paths"]["/api/v1/auth/login"]["post"]
    assert login["requestBody"]["content"]["application/json"]["schema"]
    assert doc["paths"]["/api/v1/users"]["post"]["x-permission"] == "users.admin"
    assert build_openapi(app) == doc


def test_problem_json_for_404_405_and_bad_bodies(client) -> None:
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    assert set(r.get_json()) >= {"type", "title", "status", "detail"}
    r = client.delete("/healthz")
    assert r.status_code == 405 and r.mimetype == "application/problem+json"
    csrf = client.get("/api/v1/auth/csrf").get_json()["csrf_token"]
    r = client.post("/api/v1/auth/login", data="{not json", headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = client.post("/api/v1/auth/login", json={"user_id": "a", "password": "b", "extra": 1}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 422


def test_no_stack_trace_reaches_a_client(app: Flask, client, caplog: pytest.LogCaptureFixture) -> None:
    from mes.web import endpoint

    @app.get("/api/v1/boom")
    @endpoint(public="test only")
    def boom():  # pragma: no cover - body raises
        """Explode."""
        raise RuntimeError("secret internal detail")

    with caplog.at_level(logging.ERROR):
        r = client.get("/api/v1/boom", headers={"X-Request-ID": "req-123"})
    assert r.status_code == 500 and r.mimetype == "application/problem+json"
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "secret internal detail" not in text
    assert r.get_json()["request_id"] == "req-123" and r.headers["X-Request-ID"] == "req-123"


def test_security_headers(client) -> None:
    r = client.get("/healthz")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"


def test_a_signed_in_user_sees_how_long_the_app_took(app: Flask, client) -> None:
    """W3C Server-Timing: developer tools and load tests see the app's share of a slow
    answer, and of that the wait for the audit append lock when it changed a record;
    anonymous callers (log-in included) are told nothing about the server's work."""
    import re

    from tests.helpers import logged_in, seed

    seeded = seed()
    for r in (client.get("/healthz"), client.get("/api/v1/nope"), client.get("/api/v1/auth/me")):
        assert "Server-Timing" not in r.headers
    session = logged_in(app.test_client(), seeded, "qa")
    r = session.get("/api/v1/auth/me")
    assert r.status_code == 200
    match = re.fullmatch(r"app;dur=(\d+\.\d{2})", r.headers["Server-Timing"])
    assert match and 0 <= float(match.group(1)) < 10_000
    # a change: of the app's time, the wait for the audit log's append lock
    r = session.post("/api/v1/auth/esig-acknowledgement")
    assert r.status_code == 200, r.get_json()
    match = re.fullmatch(r"app;dur=(\d+\.\d{2}), audit-lock;dur=(\d+\.\d{2})", r.headers["Server-Timing"])
    assert match and 0 <= float(match.group(2)) <= float(match.group(1)), r.headers["Server-Timing"]


def test_session_cookie_flags(app: Flask) -> None:
    app.config["SESSION_COOKIE_SECURE"] = True
    c = app.test_client()
    r = c.get("/api/v1/auth/csrf")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie


def test_metrics_needs_monitor_permission(app: Flask, client) -> None:
    seeded = seed()
    assert client.get("/metrics").status_code == 401
    _, secret = ops.issue_token(SEED, seeded.users["integrator"], ["system.monitor"])
    client.get("/healthz")
    r = client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200 and b"mes_http_requests_total" in r.data and b"mes_audit_entries" in r.data


def test_logs_are_json_with_request_id(app: Flask, client, capsys: pytest.CaptureFixture[str]) -> None:
    from mes.observability import JSONFormatter

    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "mes.test"})
    with app.test_request_context("/"):
        from flask import g

        g.request_id = "abc"
        line = JSONFormatter().format(record)
    payload = json.loads(line)
    assert payload["message"] == "hello" and payload["request_id"] == "abc"


def test_openapi_states_the_rules_the_server_enforces(client, app: Flask) -> None:
    from mes.steps import registry

    doc = client.get("/api/v1/openapi.json").get_json()
    complete = doc["paths"]["/api/v1/batches/{batch_id}/steps/{step_id}/complete"]["post"]
    headers = {p["name"]: p for p in complete["parameters"] if p["in"] == "header"}
    assert headers["Idempotency-Key"]["required"] is True and "X-MES-Terminal" in headers
    assert all(f"`{kind.name}`" in complete["description"] for kind in registry.kinds())
    assert complete["requestBody"]["content"]["application/json"]["examples"]
    batch_id = next(p for p in complete["parameters"] if p["name"] == "batch_id")
    assert batch_id["schema"]["pattern"].startswith("^[A-Za-z0-9]")
    alarm = doc["paths"]["/api/v1/alarms/{alarm_id}/acknowledge"]["post"]["parameters"][0]
    assert alarm["schema"]["maximum"] == 2**63 - 1 and alarm["schema"]["minimum"] == 1
    assert "201" in doc["paths"]["/api/v1/users"]["post"]["responses"]
    assert "201" in doc["paths"]["/api/v1/tokens"]["post"]["responses"]
    login = doc["paths"]["/api/v1/auth/login"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert len(login["oneOf"]) == 2  # user id + password, or badge + PIN
    for rule in ("integration and system accounts only", "nesting at most", "no member given twice", "X-MES-Terminal"):
        assert rule in " ".join(doc["info"]["description"].split()), rule
