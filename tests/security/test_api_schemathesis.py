"""Schemathesis against the served OpenAPI document, as an operator, a supervisor, QA and an
integrator (issue 18): no operation answers 500, off its documented status codes, content
types or schemas, and every error is problem+json. Examples per operation are bounded
(``MES_SCHEMATHESIS_EXAMPLES``, default 3) so the suite stays within its time budget."""

from __future__ import annotations

import os
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import openapi
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mes.users import operations as ops
from mes.users.permissions import Permission, allowed
from tests.helpers import SEED, logged_in, seed

EXAMPLES = int(os.environ.get("MES_SCHEMATHESIS_EXAMPLES", "3"))
#: operations that would end or replace the caller's own session mid-run (checked elsewhere)
SKIP = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/auth/login")}
#: no 500 is checked below: 502/503/504 are the documented answers of a device or gateway that is
#: not there (no gateway runs in this test), problem+json like every error
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
DEVICE_UNAVAILABLE = {502, 503, 504}


def _credentials(app: Flask, role: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and cookies of a caller in ``role`` (a session on its terminal, or a token)."""
    seeded = seed()
    if role == "integrator":
        scopes = [p.value for p in Permission if allowed({"integrator"}, p)]
        _, secret = ops.issue_token(SEED, seeded.users["integrator"], scopes, "schemathesis")
        return {"Authorization": f"Bearer {secret}"}, {}
    s = logged_in(app.test_client(), seeded, role)
    cookie = s.client.get_cookie("mes_session")
    assert cookie is not None
    return {**s.headers, "X-CSRF-Token": s.csrf}, {"mes_session": cookie.value}


@pytest.mark.parametrize("role", ["operator", "supervisor", "qa", "integrator"])
def test_schemathesis_finds_no_500_no_schema_mismatch_no_bare_error(app: Flask, role: str) -> None:
    app.config.update(MES_LOCKOUT_THRESHOLD=10**6, MES_ACCOUNT_RATE_PER_MINUTE=10**6,
                      MES_LOGIN_RATE_PER_MINUTE=10**6)
    headers, cookies = _credentials(app, role)
    schema = openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 50
    failures: list[str] = []
    tried = 0
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            # the caller's own credentials, not ones generated from the security schemes
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "cookie")}
            case.cookies = {}
            response = case.call(headers=headers, cookies=cookies)
            assert response.status_code < 500 or (response.status_code in DEVICE_UNAVAILABLE
                                                  and "/devices/" in case.formatted_path), \
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            case.validate_response(response, checks=CHECKS)
            if response.status_code >= 400:
                kind = (response.headers.get("content-type") or [""])[0]
                assert kind.startswith("application/problem+json"), \
                    f"{case.method} {case.formatted_path}: {response.status_code} is {kind}, not problem+json"
            assert response.status_code != 401, \
                f"{case.method} {case.formatted_path}: the caller was logged out: {response.text[:300]} {case.cookies}"

        try:
            check()
            tried += 1
        except Exception as exc:  # noqa: BLE001 - collected: every operation is tried
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
    assert tried >= 50
