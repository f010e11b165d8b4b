"""The integration owner's pages (under the QA workstation UI, same CSP, no script): each
endpoint's pending, in-flight, failed and dead-lettered deliveries, the age of its oldest
undelivered event, its latency and last error, the open integration alarms, replay
buttons (POST forms with the CSRF token), and the reconciliation of a work order."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from mes.errors import MESError, ValidationFailed
from mes.integration import endpoints as ops
from mes.integration import monitor
from mes.users.permissions import Permission as P
from mes.web import csrf_token, endpoint, parse_utc, principal

bp = Blueprint("integration_pages", __name__, url_prefix="/qa/integration", template_folder="templates")
TAGS = ("qa",)


def _age(seconds: int | None) -> str:
    """``3 h 05 min``, ``4 min 10 s``, ``12 s``; a dash when nothing waits."""
    if seconds is None:
        return "—"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _page(message: str | None = None, error: str | None = None, status: int = 200) -> Any:
    from flask import current_app

    from mes.db import utcnow

    now = utcnow()
    return render_template(
        "integration/integration.html", endpoints=monitor.endpoint_status(now), as_of=now,
        alarms=monitor.integration_alarms(),
        dead=ops.dead_letters(), age=_age, message=message, error=error, user=principal().user, csrf=csrf_token(),
        backlog_limit=_age(int(current_app.config.get("MES_INTEGRATION_BACKLOG_ALARM_SECONDS")
                               or monitor.DEFAULT_BACKLOG_ALARM_S))), status


@bp.get("")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS,
          query={"message": {"required": False, "schema": {"type": "string", "maxLength": 200}}})
def integration_page() -> Any:
    """Each endpoint's delivery state, the open integration alarms and the dead letters, with replay."""
    return _page(request.args.get("message", "")[:200] or None)


@bp.post("/replay")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS)
def replay_form() -> Any:
    """Replay from the page: one dead letter, every dead letter of an endpoint, or a selection
    (event id, subject, type, time range); the same webhook-id, signed afresh."""
    form = request.form
    who = principal().actor(P.INTEGRATION_ENDPOINTS)
    endpoint_id = form.get("endpoint", "").strip() or None
    reason = form.get("reason", "").strip()
    try:
        if form.get("scope") == "dead":
            if not endpoint_id:
                raise ValidationFailed("Choose the endpoint whose dead letters to replay.")
            letters = ops.dead_letters(endpoint_id)
            if not letters:
                raise ValidationFailed(f"Endpoint {endpoint_id} has no dead letters.")
            if not reason:
                raise ValidationFailed("A replay needs a reason.", field="reason")
            queued = sum(ops.replay(who, ops.Selection(event_id=d["event_id"]), endpoint_id, reason) for d in letters)
        else:
            selection = ops.Selection(form.get("event_id", "").strip() or None, form.get("subject", "").strip() or None,
                                      form.get("type", "").strip() or None,
                                      parse_utc(form.get("since", "").strip() or None, "since"),
                                      parse_utc(form.get("until", "").strip() or None, "until"))
            queued = ops.replay(who, selection, endpoint_id, reason)
    except MESError as exc:
        return _page(error=exc.detail, status=exc.status)
    return redirect(url_for("integration_pages.integration_page",
                            message=f"{queued} deliver{'y' if queued == 1 else 'ies'} queued again."))


@bp.get("/reconcile")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS, query={"work_order": {"required": False, "schema": {"type": "string"}}})
def reconcile_page() -> Any:
    """A work order's consumption and production in the MES against what each endpoint acknowledged."""
    work_order = request.args.get("work_order", "").strip()
    report, error, status = None, None, 200
    if work_order:
        try:
            report = monitor.reconcile(work_order)
        except MESError as exc:
            error, status = exc.detail, exc.status
    return render_template("integration/reconcile.html", work_order=work_order, report=report, error=error,
                           user=principal().user, csrf=csrf_token()), status
