"""Liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import inspect
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from sqlalchemy import func, select

from mes.db import db
from mes.system import readiness
from mes.users.models import Alarm
from mes.users.permissions import Permission as P
from mes.users.permissions import roles_for
from mes.validation import BODY_MAX, BODY_STRING_MAX, FORM_MAX, ID_JSON_PATTERN, ID_MAX, ID_PATTERN, JSON_DEPTH_MAX
from mes.web import access_of, caller_may, endpoint

bp = Blueprint("system", __name__)


@bp.get("/healthz")
@endpoint(public="liveness probe for the process supervisor; reveals nothing", tags=("system",))
def healthz() -> Response:
    """The process is alive."""
    return jsonify({"status": "alive"})


@bp.get("/readyz")
@endpoint(public="readiness probe for the load balancer; anonymous callers learn only ready or not ready",
          tags=("system",))
def readyz() -> Response:
    """Database reachable, migrations at head, audit chain verified; the checks' details only
    with a token or session holding system.monitor."""
    checks = readiness.run_checks()
    ok = all(c["ok"] for c in checks.values())
    body: dict[str, Any] = {"status": "ready" if ok else "not ready"}
    if caller_may(P.SYSTEM_MONITOR):
        body["checks"] = checks
    response = jsonify(body)
    response.status_code = 200 if ok else 503
    return response


@bp.get("/metrics")
@endpoint(P.SYSTEM_MONITOR, tags=("system",))
def metrics() -> Response:
    """Prometheus metrics (scrape with an integrator token)."""
    m = current_app.extensions["mes_metrics"]
    from mes.audit.models import AuditEntry

    m.audit_size.set(db.session.execute(select(func.count()).select_from(AuditEntry)).scalar() or 0)
    m.open_alarms.set(db.session.execute(select(func.count()).select_from(Alarm).where(Alarm.acknowledged_at.is_(None))).scalar() or 0)
    db.session.rollback()
    return m.exposition()


@bp.get("/api/v1/openapi.json")
@endpoint(public="the API description is not confidential", tags=("system",))
def openapi() -> Response:
    """This document."""
    return jsonify(build_openapi(current_app))


_CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")
#: path parameters that are plain ids (ID_PATTERN); recipe versions are <recipe id>@<version>
PLAIN_IDS = frozenset({"batch_id", "step_id", "device_id", "equipment_id", "lot_id", "terminal_id", "user_id", "wo_id",
                       "line", "token_id", "hold_id", "deviation_id"})


def _path_schema(name: str) -> dict[str, Any]:
    if name in PLAIN_IDS:
        return {"type": "string", "pattern": ID_JSON_PATTERN, "maxLength": ID_MAX}
    if name in ("version_id", "other_id"):
        return {"type": "string", "pattern": f"^{ID_PATTERN}@[0-9]{{1,9}}$", "maxLength": 80}
    return {"type": "string", "minLength": 1, "maxLength": 200}


INT_ID = {"type": "integer", "format": "int64", "minimum": 1, "maximum": 2**63 - 1}
TERMINAL_HEADER = {
    "name": "X-MES-Terminal", "in": "header", "required": False,
    "description": "The registered terminal the request comes from, as <terminal id>:<enrolment key>. Needed for "
                   "this action unless the browser was enrolled (/terminal/enroll); never used with an API token.",
    "schema": {"type": "string", "pattern": f"^{ID_PATTERN}:.{{1,200}}$"}, "example": "KIOSK-01:<enrolment key>"}
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": True,
    "description": "Chosen by the client, 1 to 200 characters; the same key records once and returns the first "
                   "answer (a reused key with another payload is refused). Send the step's version as expected_version.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200}, "example": "kiosk-01-7f3a2c"}
API_DESCRIPTION = f"""Every rule below is enforced by the server.

* Authentication: a session cookie (log in with user_id + password on a workstation, or badge + PIN on a
  registered kiosk) or an API token (`Authorization: Bearer mes_<id>.<secret>`, integration and system
  accounts only, scopes within the account's role). Cookie-authenticated writes need `X-CSRF-Token`.
* Terminals: actions marked `x-terminal-required` come only from a registered terminal (`X-MES-Terminal`).
* Ids (path and body) are 1 to {ID_MAX} ASCII letters, digits, dots, dashes or underscores, starting with a
  letter or digit. Integer ids are 1 to 2^63-1.
* Bodies: JSON objects of at most {BODY_MAX} bytes (413 above), nesting at most {JSON_DEPTH_MAX} levels, strings
  at most {BODY_STRING_MAX} characters unless a field says more, no member given twice, no NaN, no integer
  beyond 64 bits, no control or direction-override characters. Dates and times carry a zone and lie between
  the years 1970 and 2199.
* Form bodies (`application/x-www-form-urlencoded`, `multipart/form-data`: the kiosk's and QA pages'
  posts): at most {FORM_MAX} bytes (413 above: a plain sentence on a page, problem+json elsewhere).
* Steps: start and complete take `expected_version` (the step's version; a stale one is 409) and the
  `Idempotency-Key` header. The completion `payload` depends on the step kind (see each kind's documentation:
  e.g. a weigh step names its scale with `device_id`, a signature carries `password` or `pin`, and `user_id`
  or `badge` for the first signature of a session, and `esig_acknowledged: true` once).
* Errors are `application/problem+json` (RFC 9457).
"""
API_PREFIXES = ("/api/", "/integration/")


COMPLETE_EXAMPLES = {
    "instruction": {"value": {"expected_version": 2, "payload": {"confirm": True}}},
    "numeric": {"value": {"expected_version": 2, "payload": {"value": "7.25"}}},
    "weigh": {"value": {"expected_version": 2, "payload": {"lot_id": "L-0001", "container_id": "L-0001-C1",
                                                           "device_id": "SCALE-01"}}},
    "signature (first of a kiosk session)": {"value": {"expected_version": 2, "payload": {
        "badge": "B-1001", "pin": "<PIN>", "esig_acknowledged": True}}},
}


def step_kind_payloads() -> dict[str, str]:
    """Each registered step kind's completion payload, from its ``complete`` documentation."""
    from mes.steps import registry

    return {kind.name: " ".join((type(kind).complete.__doc__ or "").strip().split("\n\n")[0].split())
            for kind in registry.kinds()}


def build_openapi(app: Flask) -> dict[str, Any]:
    """OpenAPI 3.1 for every API rule, from each view's declared access and schema."""
    paths: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(API_PREFIXES):
            continue
        view = app.view_functions[rule.endpoint]
        access = access_of(view)
        path = _CONVERTER.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": INT_ID if conv == "int" else _path_schema(name)}
            for conv, name in _CONVERTER.findall(rule.rule)
        ]
        params += [{"name": name, "in": "query", "required": bool(q.get("required")), "schema": q["schema"],
                    **({"description": q["description"]} if q.get("description") else {})}
                   for name, q in ((access.query or {}) if access else {}).items()]
        if access and access.terminal_required:
            params = [*params, TERMINAL_HEADER]
        if access and access.request_schema and "expected_version" in (access.request_schema.get("properties") or {}):
            params = [*params, IDEMPOTENCY_HEADER]
        codes = inspect.unwrap(view).__code__.co_names
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": rule.endpoint.replace(".", "_") + ("" if method == "GET" else f"_{method.lower()}"),
                "summary": access.summary if access else "",
                "tags": list(access.tags) if access and access.tags else [],
                "parameters": params,
                "responses": {
                    "201" if "created" in codes and "jsonify" not in codes else "200":
                        {"description": "Created" if "created" in codes and "jsonify" not in codes else "OK",
                         "content": {access.media_type if access else "application/json": {
                             "schema": {"type": "array" if access and access.media_type.endswith("-batch+json")
                                        else "object"}}}},
                    "default": {"description": "Problem", "content": {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
                },
            }
            if "created" in codes and "jsonify" in codes:
                op["responses"]["201"] = {"description": "Created",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}
            if access and access.permission is not None:
                op["security"] = [{"session": []}, {"bearer": []}]
                op["x-permission"] = access.permission.value
                op["x-roles"] = sorted(r.value for r in roles_for(access.permission))
            else:
                op["security"] = []
                op["x-public"] = access.public_reason if access else None
            if access and access.terminal_required:
                op["x-terminal-required"] = True
            if access and access.request_schema is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": access.request_schema}}}
                if path.endswith("/complete") and "expected_version" in (access.request_schema.get("properties") or {}):
                    op["description"] = "The completion payload depends on the step kind:\n\n" + "\n".join(
                        f"* `{name}`: {text}" for name, text in step_kind_payloads().items())
                    op["requestBody"]["content"]["application/json"]["examples"] = COMPLETE_EXAMPLES
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "open-mes API", "version": "1", "description": API_DESCRIPTION},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API token mes_<id>.<secret>"},
                "session": {"type": "apiKey", "in": "cookie", "name": "mes_session"},
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details; 'field' names the input a 422 is about.",
                    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                                   "detail": {"type": "string"}, "instance": {"type": ["string", "null"]},
                                   "request_id": {"type": "string"}, "field": {"type": "string"},
                                   "retry_after": {"type": "integer"}},
                    "required": ["type", "title", "status"],
                    "examples": [{"type": "https://open-mes.dev/problems/validation-failed",
                                  "title": "The input is not valid", "status": 422,
                                  "detail": "reason: 'reason' is a required property", "field": "reason"}],
                }
            },
        },
    }

