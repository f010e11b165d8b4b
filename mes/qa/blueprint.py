"""QA workstation pages: log-in and the audit-trail viewer (readable, printable, CSV and
JSON download). Server-rendered, no inline script (the CSP forbids it)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, session, url_for

from mes.audit import blueprint as audit_api
from mes.errors import MESError
from mes.users import operations as ops
from mes.users.permissions import Permission as P
from mes.web import csrf_token, current_terminal, endpoint, establish_session, limit_login, local_time, principal

bp = Blueprint("qa", __name__, url_prefix="/qa", template_folder="templates")
PAGE = 200


@bp.app_template_filter("local_time")
def _local_time(value: Any) -> str:
    return local_time(value)


@bp.route("/login", methods=["GET", "POST"])
@endpoint(public="the QA log-in page", tags=("qa",))
def login() -> Any:
    """Log in on a QA workstation with user id and password."""
    error = None
    if request.method == "POST":
        try:
            limit_login()
            row, secret = ops.login_with_password(request.form.get("user_id", ""), request.form.get("password", ""),
                                                  current_terminal())
            establish_session(secret)
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/qa/") else url_for("qa.audit_trail"))
        except MESError as exc:
            error = exc.detail
    return render_template("qa/login.html", error=error, csrf=csrf_token(),
                           terminal=current_terminal()), 200 if error is None else 401


@bp.post("/logout")
@endpoint(P.SELF, tags=("qa",))
def logout() -> Any:
    """Log out."""
    who = principal()
    if who.session is not None:
        ops.end_session(who.session, "logout")
    session.pop("sid", None)
    return redirect(url_for("qa.login"))


def _rows() -> tuple[list[dict[str, Any]], dict[str, Any], int | None]:
    filters = audit_api.request_filters()
    entries = audit_api.filtered_entries(filters, PAGE)
    rows = [json.loads(e.entry_bytes) for e in entries]
    return rows, filters, entries[-1].seq if len(entries) == PAGE else None


@bp.get("/audit")
@endpoint(P.AUDIT_VIEW, tags=("qa",))
def audit_trail() -> Any:
    """The audit trail, filtered by batch, user, action and time."""
    rows, filters, next_after = _rows()
    query = {k: v for k, v in request.args.items() if k != "after" and v}
    return render_template("qa/audit.html", rows=rows, filters=filters, next_after=next_after, query=query,
                           user=principal().user, csrf=csrf_token())


@bp.get("/audit.json")
@endpoint(P.AUDIT_VIEW, tags=("qa",))
def audit_json() -> Response:
    """The filtered audit trail as JSON (the entries exactly as stored)."""
    filters = audit_api.request_filters()
    body = b"[" + b",\n".join(bytes(e.entry_bytes) for e in audit_api.filtered_entries(filters, None)) + b"]\n"
    return Response(body, mimetype="application/json",
                    headers={"Content-Disposition": "attachment; filename=audit-trail.json"})


CSV_COLUMNS = ("seq", "at", "actor_id", "actor_name", "actor_role", "terminal", "action", "entity_type", "entity_id",
               "batch", "before", "after", "reason", "signature_meaning", "signature_name", "signature_at")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula (= + - @ tab CR)
    gets a leading apostrophe, so ``=HYPERLINK(…)`` in a login id or ``=cmd|…`` in a hold
    reason is never evaluated when QA opens the export (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


@bp.get("/audit.csv")
@endpoint(P.AUDIT_VIEW, tags=("qa",))
def audit_csv() -> Response:
    """The filtered audit trail as CSV (one row per entry)."""
    out = io.StringIO()
    out.write("\ufeff")  # UTF-8 BOM: spreadsheets then read names in any script (e.g. Chinese) right
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for e in audit_api.filtered_entries(audit_api.request_filters(), None):
        d = json.loads(e.entry_bytes)
        sig = d.get("signature") or {}
        row = (d["seq"], d["at"], d["actor"]["id"], d["actor"]["name"], d["actor"]["role"], d["terminal"] or "",
               d["action"], d["entity"]["type"], d["entity"]["id"], d["batch"] or "",
               json.dumps(d["before"], sort_keys=True) if d["before"] is not None else "",
               json.dumps(d["after"], sort_keys=True) if d["after"] is not None else "",
               d["reason"] or "", sig.get("meaning", ""), sig.get("name", ""), sig.get("at", ""))
        writer.writerow([spreadsheet_safe(v) for v in row])
    return Response(out.getvalue().encode("utf-8"), content_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": "attachment; filename=audit-trail.csv"})


# ------------------------------------------------------------------- signature gates


def _gates_page(batch_id: str, error: str | None = None, status: int = 200) -> Any:
    from mes.execution import operations as ex

    who = principal()
    batch = ex.get_batch(batch_id)
    gates = ex.gates_awaiting(batch.id, set(who.roles))
    return render_template("qa/gates.html", batch=batch, gates=gates, error=error, key=uuid.uuid4().hex,
                           user=who.user, csrf=csrf_token()), status


@bp.get("/batches/<batch_id>/gates")
@endpoint(P.ESIG_SIGN, tags=("qa",))
def gates(batch_id: str) -> Any:
    """The batch's signature gates the signed-in person may sign (a QA gate for QA)."""
    return _gates_page(batch_id)


@bp.post("/batches/<batch_id>/steps/<step_id>/sign")
@endpoint(P.ESIG_SIGN, terminal=True, tags=("qa",))
def sign_gate(batch_id: str, step_id: str) -> Any:
    """Sign a gate from the QA workstation with the password (meaning as the recipe says)."""
    from mes.execution import operations as ex

    who = principal()
    form = request.form
    try:
        version = int(form.get("expected_version", ""))
    except ValueError:
        return _gates_page(batch_id, "The page is out of date; it was reloaded.", 409)
    payload = {"password": form.get("password", ""), "user_id": who.user_id,
               "esig_acknowledged": form.get("esig_ack") == "1"}
    if form.get("comment", "").strip():
        payload["comment"] = form["comment"].strip()
    key = f"{who.user_id}:qa:{form.get('idempotency_key') or uuid.uuid4().hex}"
    try:
        ex.sign_gate(who.session, batch_id, step_id, payload, key, version,
                     terminal=who.terminal.id if who.terminal else None)
    except MESError as exc:
        return _gates_page(batch_id, exc.detail, exc.status)
    return redirect(url_for("qa.gates", batch_id=batch_id))


# ------------------------------------------------------------------------------ lots


def _lot_page(lot_id: str, error: str | None = None, status: int = 200) -> Any:
    from mes.materials import operations as mat

    lot = mat.get_lot(lot_id)
    return render_template("qa/lot.html", lot=mat.lot_json(lot, detail=True), error=error, user=principal().user,
                           csrf=csrf_token()), status


@bp.get("/lots/<lot_id>")
@endpoint(P.MATERIAL_VIEW, tags=("qa",))
def lot(lot_id: str) -> Any:
    """A lot with its status, dates and QA's e-signatures (name, time with zone, meaning)."""
    return _lot_page(lot_id)


@bp.post("/lots/<lot_id>/disposition")
@endpoint(P.MATERIAL_RELEASE, terminal=True, tags=("qa",))
def lot_disposition(lot_id: str) -> Any:
    """QA releases or rejects a lot with an e-signature: the password, the meaning and a reason."""
    from mes.materials import operations as mat
    from mes.signatures.operations import Credentials

    who = principal()
    form = request.form
    action = mat.release_lot if form.get("meaning") == "released" else mat.reject_lot if form.get(
        "meaning") == "rejected" else None
    try:
        if action is None:
            raise MESError("Choose the meaning of your signature: released or rejected.")
        action(who.session, Credentials(form.get("password", ""), user_id=who.user_id), lot_id,
               form.get("reason", ""), terminal=who.terminal.id if who.terminal else None,
               acknowledged=form.get("esig_ack") == "1")
    except MESError as exc:
        return _lot_page(lot_id, exc.detail, exc.status)
    return redirect(url_for("qa.lot", lot_id=lot_id))
from mes.qa.workstation import blueprint as _workstation  # noqa: E402,F401  (its routes join this blueprint)
