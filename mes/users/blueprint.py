"""HTTP API for log-in, users, terminals, API tokens and alarms (thin shell over operations)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, render_template_string, request, session

from mes.users import operations as ops
from mes.users.models import Alarm, ApiToken, Terminal, User
from mes.users.permissions import Permission as P
from mes.web import (
    STR,
    created,
    csrf_token,
    current_terminal,
    endpoint,
    establish_session,
    limit_login,
    obj,
    parse_utc,
    principal,
)

bp = Blueprint("users", __name__)
API = "/api/v1"


def _user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id, "full_name": user.full_name, "language": user.language, "active": user.active,
        "locked": user.locked, "badge_id": user.badge_id,
        "roles": [{"role": r.role, "qualified_until": r.qualified_until.isoformat() if r.qualified_until else None}
                  for r in user.roles if r.revoked_at is None],
        "password_changed_at": user.password_changed_at.isoformat() if user.password_changed_at else None,
        "esig_acknowledged": user.esig_acknowledged_at is not None,
        "created_at": user.created_at.isoformat(),
        "deactivated_at": user.deactivated_at.isoformat() if user.deactivated_at else None,
    }


# ------------------------------------------------------------------------ auth


@bp.get(f"{API}/auth/csrf")
@endpoint(public="issues the CSRF token needed to log in", tags=("auth",))
def auth_csrf() -> Response:
    """Get the CSRF token for this browser session."""
    return jsonify({"csrf_token": csrf_token()})


PIN = {"type": "string", "minLength": 1, "maxLength": 16}
LOGIN_SCHEMA = {
    "oneOf": [
        obj({"user_id": STR, "password": {"type": "string", "maxLength": 500}}, ("user_id", "password")),
        obj({"badge": STR, "pin": {"type": "string", "maxLength": 16}}, ("badge", "pin")),
    ]
}


@bp.post(f"{API}/auth/login")
@endpoint(public="this is the log-in", schema=LOGIN_SCHEMA, tags=("auth",))
def auth_login() -> Response:
    """Log in with user id + password (workstation) or badge + PIN (kiosk)."""
    limit_login()
    body = g.body
    terminal = current_terminal()
    if "badge" in body:
        row, secret = ops.login_with_badge(body["badge"], body["pin"], terminal)
    else:
        row, secret = ops.login_with_password(body["user_id"], body["password"], terminal)
    token = establish_session(secret)
    policy = ops.Policy.current()
    idle = policy.kiosk_idle if terminal is not None and terminal.kind == "kiosk" else policy.workstation_idle
    return jsonify({"user": _user_json(row.user), "terminal": terminal.id if terminal else None,
                    "idle_seconds": int(idle.total_seconds()), "csrf_token": token})


@bp.post(f"{API}/auth/logout")
@endpoint(P.SELF, tags=("auth",))
def auth_logout() -> Response:
    """End this session."""
    who = principal()
    if who.session is not None:
        ops.end_session(who.session, "logout")
    terminal = session.get("terminal")
    session.clear()
    if terminal:
        session["terminal"] = terminal
    return jsonify({"logged_out": True})


@bp.get(f"{API}/auth/me")
@endpoint(P.SELF, tags=("auth",))
def auth_me() -> Response:
    """Who am I, on which terminal."""
    who = principal()
    return jsonify({"user": _user_json(who.user), "terminal": who.terminal.id if who.terminal else None,
                    "via": "token" if who.token else "session"})


@bp.post(f"{API}/auth/password")
@endpoint(public="an expired password must be changeable without a session",
          schema=obj({"user_id": STR, "old_password": STR, "new_password": STR},
                     ("user_id", "old_password", "new_password")), tags=("auth",))
def auth_change_password() -> Response:
    """Change your own password (also the way out of an expired one)."""
    limit_login()
    terminal = current_terminal()
    ops.change_password(g.body["user_id"], g.body["old_password"], g.body["new_password"],
                        terminal.id if terminal else None)
    return jsonify({"changed": True})


@bp.post(f"{API}/auth/pin")
@endpoint(public="a reset PIN must be changeable without a session", terminal=True,
          schema=obj({"badge": STR, "old_pin": PIN, "new_pin": PIN}, ("badge", "old_pin", "new_pin")), tags=("auth",))
def auth_change_pin() -> Response:
    """Change your own kiosk PIN (also the way out of a PIN reset by an administrator)."""
    limit_login()
    ops.change_pin(g.body["badge"], g.body["old_pin"], g.body["new_pin"], current_terminal())
    return jsonify({"changed": True})


@bp.post(f"{API}/auth/esig-acknowledgement")
@endpoint(P.SELF, tags=("auth",))
def auth_esig_ack() -> Response:
    """Acknowledge that your electronic signature binds like a handwritten one (Part 11 §11.100(c))."""
    who = principal()
    ops.acknowledge_esig_accountability(who.user_id, who.terminal.id if who.terminal else None)
    return jsonify({"acknowledged": True})


# ----------------------------------------------------------------------- users

ROLE = {"type": "string", "enum": ["operator", "supervisor", "qa", "admin", "integrator"]}
USER_SCHEMA = obj(
    {"id": STR, "full_name": STR, "roles": {"type": "array", "items": ROLE, "minItems": 1, "uniqueItems": True},
     "password": STR, "badge_id": STR, "pin": {"type": "string", "maxLength": 16}, "language": {"enum": ["en", "zh_Hans"]},
     "qualified_until": {"type": "string"}, "email": STR},
    ("id", "full_name", "roles"),
)


@bp.get(f"{API}/users")
@endpoint(P.USERS_ADMIN, tags=("users",))
def users_list() -> Response:
    """List users (deactivated ones included: ids are never reused)."""
    from sqlalchemy import select

    from mes.db import db

    rows = db.session.execute(select(User).order_by(User.id)).scalars()
    return jsonify({"users": [_user_json(u) for u in rows]})


@bp.post(f"{API}/users")
@endpoint(P.USERS_ADMIN, schema=USER_SCHEMA, tags=("users",))
def users_create() -> Response:
    """Create a user."""
    b = g.body
    user = ops.create_user(
        principal().actor(P.USERS_ADMIN), b["id"], b["full_name"], set(b["roles"]), password=b.get("password"),
        badge_id=b.get("badge_id"), pin=b.get("pin"), language=b.get("language", "en"),
        qualified_until=parse_utc(b.get("qualified_until"), "qualified_until"), email=b.get("email"),
    )
    return created({"user": _user_json(user)})


@bp.get(f"{API}/users/<user_id>")
@endpoint(P.USERS_ADMIN, tags=("users",))
def users_get(user_id: str) -> Response:
    """One user."""
    return jsonify({"user": _user_json(ops.get_user(user_id))})


REASON = obj({"reason": STR}, ("reason",))


@bp.post(f"{API}/users/<user_id>/deactivate")
@endpoint(P.USERS_ADMIN, schema=REASON, tags=("users",))
def users_deactivate(user_id: str) -> Response:
    """Deactivate a user (never deleted)."""
    ops.deactivate_user(principal().actor(P.USERS_ADMIN), user_id, g.body["reason"])
    return jsonify({"user": _user_json(ops.get_user(user_id))})


@bp.post(f"{API}/users/<user_id>/reset")
@endpoint(P.USERS_ADMIN, schema=obj({"reason": STR, "password": STR, "pin": {"type": "string", "maxLength": 16}},
                                    ("reason",)), tags=("users",))
def users_reset(user_id: str) -> Response:
    """Unlock a user and set a temporary password or a new PIN."""
    b = g.body
    ops.reset_credentials(principal().actor(P.USERS_ADMIN), user_id, b["reason"], password=b.get("password"), pin=b.get("pin"))
    return jsonify({"user": _user_json(ops.get_user(user_id))})


@bp.post(f"{API}/users/<user_id>/roles")
@endpoint(P.USERS_ADMIN, schema=obj({"role": ROLE, "qualified_until": {"type": ["string", "null"]}, "reason": STR},
                                    ("role", "reason")), tags=("users",))
def users_grant_role(user_id: str) -> Response:
    """Grant a role or renew a qualification."""
    b = g.body
    ops.grant_role(principal().actor(P.USERS_ADMIN), user_id, b["role"], parse_utc(b.get("qualified_until"), "qualified_until"),
                   b["reason"])
    return jsonify({"user": _user_json(ops.get_user(user_id))})


@bp.post(f"{API}/users/<user_id>/roles/<role>/revoke")
@endpoint(P.USERS_ADMIN, schema=obj({"reason": STR}, ("reason",)), tags=("users",))
def users_revoke_role(user_id: str, role: str) -> Response:
    """Remove a role from a user (audited; the grant is kept, marked revoked)."""
    ops.revoke_role(principal().actor(P.USERS_ADMIN), user_id, role, g.body["reason"])
    return jsonify({"user": _user_json(ops.get_user(user_id))})


# ------------------------------------------------------------------- terminals


def _terminal_json(t: Terminal) -> dict[str, Any]:
    return {"id": t.id, "kind": t.kind, "description": t.description, "line": t.line, "active": t.active}


@bp.get(f"{API}/terminals")
@endpoint(P.TERMINALS_ADMIN, tags=("terminals",))
def terminals_list() -> Response:
    """List registered terminals."""
    from sqlalchemy import select

    from mes.db import db

    return jsonify({"terminals": [_terminal_json(t) for t in db.session.execute(select(Terminal).order_by(Terminal.id)).scalars()]})


@bp.post(f"{API}/terminals")
@endpoint(P.TERMINALS_ADMIN, schema=obj({"id": STR, "kind": {"enum": ["kiosk", "workstation"]}, "description": {"type": "string"},
                                         "line": STR}, ("id", "kind")), tags=("terminals",))
def terminals_register() -> Response:
    """Register a terminal; the enrolment key is returned once."""
    b = g.body
    terminal, key = ops.register_terminal(principal().actor(P.TERMINALS_ADMIN), b["id"], b["kind"], b.get("description", ""), b.get("line"))
    return created({"terminal": _terminal_json(terminal), "enrolment_key": key})


@bp.post(f"{API}/terminals/<terminal_id>/deactivate")
@endpoint(P.TERMINALS_ADMIN, schema=REASON, tags=("terminals",))
def terminals_deactivate(terminal_id: str) -> Response:
    """Deactivate a terminal."""
    ops.deactivate_terminal(principal().actor(P.TERMINALS_ADMIN), terminal_id, g.body["reason"])
    return jsonify({"deactivated": terminal_id})


ENROL_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Enrol terminal</title>
<link rel="stylesheet" href="/static/mes.css"></head><body><main>
<h1>Enrol this terminal</h1>{% if message %}<p role="status">{{ message }}</p>{% endif %}
<form method="post"><input type="hidden" name="csrf_token" value="{{ csrf }}">
<label>Terminal id <input name="terminal" value="{{ terminal }}" autocomplete="off"></label>
<label>Enrolment key <input name="key" type="password" value="{{ key }}" autocomplete="off"></label>
<button type="submit">Enrol</button></form></main></body></html>"""


@bp.route("/terminal/enroll", methods=["GET", "POST"])
@endpoint(public="a new kiosk or workstation identifies itself with its enrolment key", tags=("terminals",))
def terminal_enroll() -> Any:
    """Enrol this browser as a registered terminal (sets a signed cookie)."""
    message = ""
    terminal_id = request.values.get("terminal", "")
    key = request.values.get("key", "")
    if request.method == "POST":
        terminal = ops.authenticate_terminal(terminal_id, key)
        if terminal is None:
            message = "That terminal id and key do not match an active terminal."
        else:
            session["terminal"] = [terminal.id, key]
            session.permanent = True
            message = f"This browser is now terminal {terminal.id}."
    return render_template_string(ENROL_PAGE, message=message, csrf=csrf_token(), terminal=terminal_id, key=key)


# ---------------------------------------------------------------------- tokens

SCOPES = {"type": "array", "items": {"type": "string"}, "minItems": 1}


def _token_json(t: ApiToken) -> dict[str, Any]:
    return {"id": t.id, "user": t.user_id, "scopes": t.scopes, "description": t.description,
            "created_at": t.created_at.isoformat(), "expires_at": t.expires_at.isoformat() if t.expires_at else None,
            "revoked": t.revoked_at is not None}


@bp.get(f"{API}/tokens")
@endpoint(P.TOKENS_ADMIN, tags=("tokens",))
def tokens_list() -> Response:
    """List API tokens (never their secrets)."""
    from sqlalchemy import select

    from mes.db import db

    return jsonify({"tokens": [_token_json(t) for t in db.session.execute(select(ApiToken).order_by(ApiToken.created_at)).scalars()]})


@bp.post(f"{API}/tokens")
@endpoint(P.TOKENS_ADMIN, schema=obj({"user": STR, "scopes": SCOPES, "description": {"type": "string"},
                                      "expires_at": {"type": "string"}}, ("user", "scopes")), tags=("tokens",))
def tokens_issue() -> Response:
    """Issue an API token; the secret is shown once."""
    b = g.body
    token, secret = ops.issue_token(principal().actor(P.TOKENS_ADMIN), b["user"], b["scopes"], b.get("description", ""),
                                    parse_utc(b.get("expires_at"), "expires_at"))
    return created({"token": _token_json(token), "secret": secret})


@bp.post(f"{API}/tokens/<token_id>/revoke")
@endpoint(P.TOKENS_ADMIN, schema=REASON, tags=("tokens",))
def tokens_revoke(token_id: str) -> Response:
    """Revoke an API token."""
    ops.revoke_token(principal().actor(P.TOKENS_ADMIN), token_id, g.body["reason"])
    return jsonify({"revoked": token_id})


# ---------------------------------------------------------------------- alarms


def _alarm_json(a: Alarm) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "severity": a.severity, "message": a.message, "details": a.details,
            "raised_at": a.raised_at.isoformat(),
            "acknowledged_at": a.acknowledged_at.isoformat() if a.acknowledged_at else None,
            "acknowledged_by": a.acknowledged_by}


@bp.get(f"{API}/alarms")
@endpoint(P.ALARMS_VIEW, tags=("alarms",))
def alarms_list() -> Response:
    """Open (unacknowledged) alarms."""
    return jsonify({"alarms": [_alarm_json(a) for a in ops.open_alarms()]})


@bp.post(f"{API}/alarms/<int:alarm_id>/acknowledge")
@endpoint(P.ALARMS_ACKNOWLEDGE, schema=obj({"comment": {"type": "string", "maxLength": 2000}}), tags=("alarms",))
def alarms_acknowledge(alarm_id: int) -> Response:
    """Acknowledge an alarm with a comment."""
    ops.acknowledge_alarm(principal().actor(P.ALARMS_ACKNOWLEDGE), alarm_id, g.body.get("comment", ""))
    return jsonify({"acknowledged": alarm_id})
