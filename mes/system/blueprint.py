"""Liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from sqlalchemy import func, select

from mes.db import db
from mes.system import readiness
from mes.users.models import Alarm
from mes.users.permissions import Permission as P
from mes.users.permissions import roles_for
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
API_PREFIXES = ("/api/", "/integration/")


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
             "schema": {"type": "integer"} if conv == "int" else {"type": "string"}}
            for conv, name in _CONVERTER.findall(rule.rule)
        ]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": rule.endpoint.replace(".", "_") + ("" if method == "GET" else f"_{method.lower()}"),
                "summary": access.summary if access else "",
                "tags": list(access.tags) if access and access.tags else [],
                "parameters": params,
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "default": {"description": "Problem", "content": {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
                },
            }
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
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "open-mes API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API token mes_<id>.<secret>"},
                "session": {"type": "apiKey", "in": "cookie", "name": "mes_session"},
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                                   "detail": {"type": "string"}, "instance": {"type": "string"}},
                    "required": ["type", "title", "status"],
                }
            },
        },
    }

