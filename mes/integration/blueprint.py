"""Integration on the API: endpoints, replay, dead letters, the pull feed, event schemas, status,
reconciliation and inbound commands; and the integration owner's pages under ``/qa/integration``.

``/api/v1/integration/endpoints`` (admin or integrator) manages webhook endpoints; the
secret is in the answer to the create and rotate calls only. ``GET /integration/v1/events``
lets a receiver catch up by pulling (``shared/specs/events.md`` §3), as a CloudEvents
JSON batch in commit order.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for

from mes.errors import ContentTooLarge, MESError, NotFound, ValidationFailed
from mes.integration import endpoints as ops
from mes.integration import inbound as inbound_ops
from mes.integration import monitor
from mes.integration.inbound_models import PeerState
from mes.integration.models import EndpointState
from mes.users.permissions import Permission as P
from mes.validation import BODY_MAX, ID_JSON_PATTERN
from mes.web import STR, created, csrf_token, endpoint, obj, parse_utc, principal

bp = Blueprint("integration", __name__)
API = "/api/v1/integration"
TAGS = ("integration",)
TYPE = {"type": "string", "minLength": 1, "maxLength": ops.EVENT_TYPE_MAX, "pattern": r"^[a-z0-9_.]+$"}
ADD_SCHEMA = obj({"id": {"type": "string", "pattern": ID_JSON_PATTERN}, "url": {"type": "string", "maxLength": 2000},
                  "event_types": {"type": "array", "items": TYPE, "maxItems": 50}}, ("id", "url"))
ROTATE_SCHEMA = obj({"overlap_hours": {"type": "number", "minimum": 0, "maximum": 720}})
REASON_SCHEMA = obj({"reason": STR}, ("reason",))
DATETIME = {"type": "string", "minLength": 10, "maxLength": 40}
REPLAY_SCHEMA = obj({"event_id": {"type": "string", "maxLength": 36}, "subject": {"type": "string", "maxLength": 200},
                     "type": TYPE, "since": DATETIME, "until": DATETIME,
                     "endpoint": {"type": "string", "pattern": ID_JSON_PATTERN}, "reason": STR}, ("reason",))


@bp.get(f"{API}/endpoints")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS)
def list_endpoints() -> Response:
    """The webhook endpoints (never their secrets)."""
    return jsonify({"endpoints": [ops.endpoint_json(e) for e in ops.list_endpoints()]})


@bp.post(f"{API}/endpoints")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=ADD_SCHEMA, tags=TAGS)
def add_endpoint() -> Response:
    """Register an endpoint; the answer carries its signing secret, this once."""
    row, secret = ops.add_endpoint(principal().actor(P.INTEGRATION_ENDPOINTS), g.body["id"], g.body["url"],
                                   g.body.get("event_types"))
    return created({"endpoint": ops.endpoint_json(row), "secret": secret})


@bp.post(f"{API}/endpoints/<endpoint_id>/rotate")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=ROTATE_SCHEMA, tags=TAGS)
def rotate(endpoint_id: str) -> Response:
    """A new signing secret (in this answer only); the old one signs too for ``overlap_hours`` (24)."""
    hours = g.body.get("overlap_hours", ops.ROTATION_OVERLAP.total_seconds() / 3600)
    secret = ops.rotate_secret(principal().actor(P.INTEGRATION_ENDPOINTS), endpoint_id, timedelta(hours=hours))
    return jsonify({"endpoint": ops.endpoint_json(ops.get_endpoint(endpoint_id)), "secret": secret})


@bp.post(f"{API}/endpoints/<endpoint_id>/disable")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=REASON_SCHEMA, tags=TAGS)
def disable(endpoint_id: str) -> Response:
    """Stop sending to an endpoint (its events wait, none is lost)."""
    row = ops.set_state(principal().actor(P.INTEGRATION_ENDPOINTS), endpoint_id, EndpointState.DISABLED,
                        g.body["reason"])
    return jsonify({"endpoint": ops.endpoint_json(row)})


@bp.post(f"{API}/endpoints/<endpoint_id>/enable")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=REASON_SCHEMA, tags=TAGS)
def enable(endpoint_id: str) -> Response:
    """Send to an endpoint again, starting with the events that waited."""
    row = ops.set_state(principal().actor(P.INTEGRATION_ENDPOINTS), endpoint_id, EndpointState.ENABLED,
                        g.body["reason"])
    return jsonify({"endpoint": ops.endpoint_json(row)})


@bp.post(f"{API}/replay")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=REPLAY_SCHEMA, tags=TAGS)
def replay() -> Response:
    """Send events again by id, subject, type or time range (same webhook-id, signed afresh)."""
    b = g.body
    selection = ops.Selection(b.get("event_id"), b.get("subject"), b.get("type"),
                              parse_utc(b.get("since"), "since"), parse_utc(b.get("until"), "until"))
    n = ops.replay(principal().actor(P.INTEGRATION_ENDPOINTS), selection, b.get("endpoint"), b["reason"])
    return jsonify({"queued": n})


@bp.get(f"{API}/dead-letters")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS)
def dead_letters() -> Response:
    """Deliveries the relay gave up on (``?endpoint=``)."""
    return jsonify({"dead_letters": ops.dead_letters(request.args.get("endpoint"))})


@bp.get("/integration/v1/events")
@endpoint(P.INTEGRATION_EVENTS, tags=TAGS, media_type="application/cloudevents-batch+json")
def pull_events() -> Response:
    """Events after ``?after=<event id>`` in commit order, filtered by ``type`` and ``subject`` (``limit`` ≤ 1000)."""
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise ValidationFailed("limit must be a whole number.", field="limit") from None
    bodies = ops.pull(request.args.get("after") or None, request.args.get("type") or None,
                      request.args.get("subject") or None, limit)
    return Response(b"[" + b",".join(bodies) + b"]", mimetype="application/cloudevents-batch+json")


# ------------------------------------------------------------- inbound (issue 20)
# POST /integration/v1/inbound is public: each delivery is authenticated by its Standard
# Webhooks signature, never by a cookie. Peers (who may send) under /api/v1/integration/peers;
# a peer's secret appears once, in the answer to the create and rotate calls.

PEER_TYPES = {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 10}
ADD_PEER_SCHEMA = obj({"id": {"type": "string", "pattern": ID_JSON_PATTERN}, "event_types": PEER_TYPES}, ("id",))
ROTATE_PEER_SCHEMA = obj({"overlap_hours": {"type": "number", "minimum": 0, "maximum": 720}})


@bp.post("/integration/v1/inbound")
@endpoint(public="each delivery is authenticated by its Standard Webhooks signature with the peer's inbound secret",
          tags=TAGS, csrf=False)
def inbound() -> Response:
    """A signed CloudEvent command from QMS or ERP, with an ``Idempotency-Key`` (events.md §4)."""
    if (request.content_length or 0) > BODY_MAX:
        answer = inbound_ops.problem_answer(ContentTooLarge(f"A command is at most {BODY_MAX} bytes."))
    else:
        body = request.get_data(cache=False)
        if len(body) > BODY_MAX:
            answer = inbound_ops.problem_answer(ContentTooLarge(f"A command is at most {BODY_MAX} bytes."))
        else:
            answer = inbound_ops.receive(request.headers, body)
    response = Response(answer.body, status=answer.status, content_type=answer.content_type)
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if answer.status == 409:
        response.headers["Retry-After"] = "1"
    return response


@bp.get(f"{API}/peers")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS)
def list_peers() -> Response:
    """The systems that may send commands (never their secrets)."""
    return jsonify({"peers": [inbound_ops.peer_json(p) for p in inbound_ops.list_peers()]})


@bp.post(f"{API}/peers")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=ADD_PEER_SCHEMA, tags=TAGS)
def add_peer() -> Response:
    """Register a sender; the answer carries its inbound secret, this once."""
    row, secret = inbound_ops.add_peer(principal().actor(P.INTEGRATION_ENDPOINTS), g.body["id"],
                                       g.body.get("event_types"))
    return created({"peer": inbound_ops.peer_json(row), "secret": secret})


@bp.post(f"{API}/peers/<peer_id>/rotate")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=ROTATE_PEER_SCHEMA, tags=TAGS)
def rotate_peer(peer_id: str) -> Response:
    """A new inbound secret (in this answer only); the old one verifies too for ``overlap_hours`` (24)."""
    hours = g.body.get("overlap_hours", inbound_ops.ROTATION_OVERLAP.total_seconds() / 3600)
    secret = inbound_ops.rotate_peer_secret(principal().actor(P.INTEGRATION_ENDPOINTS), peer_id,
                                            timedelta(hours=hours))
    return jsonify({"peer": inbound_ops.peer_json(inbound_ops.get_peer(peer_id)), "secret": secret})


@bp.post(f"{API}/peers/<peer_id>/disable")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=REASON_SCHEMA, tags=TAGS)
def disable_peer(peer_id: str) -> Response:
    """Stop accepting commands from a peer (its deliveries get 401)."""
    row = inbound_ops.set_peer_state(principal().actor(P.INTEGRATION_ENDPOINTS), peer_id, PeerState.DISABLED,
                                     g.body["reason"])
    return jsonify({"peer": inbound_ops.peer_json(row)})


@bp.post(f"{API}/peers/<peer_id>/enable")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=REASON_SCHEMA, tags=TAGS)
def enable_peer(peer_id: str) -> Response:
    """Accept commands from a peer again."""
    row = inbound_ops.set_peer_state(principal().actor(P.INTEGRATION_ENDPOINTS), peer_id, PeerState.ENABLED,
                                     g.body["reason"])
    return jsonify({"peer": inbound_ops.peer_json(row)})
@bp.get("/integration/v1/schemas/<event_type>.json")
@endpoint(public="event schemas describe the public contract; they hold no plant data", tags=TAGS,
          media_type="application/schema+json")
def event_schema(event_type: str) -> Response:
    """The JSON Schema (Draft 2020-12) of an event type's ``data``; 404 for a type the MES does not send."""
    from mes.integration.event_schemas import schema_text

    text = schema_text(event_type)
    if text is None:
        raise NotFound(f"There is no event type {event_type}.")
    response = Response(text, mimetype="application/schema+json")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get(f"{API}/status")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS)
def status() -> Response:
    """Per endpoint: pending, in flight, failed, dead-lettered, oldest undelivered age, latency, last
    error; and the open integration alarms (dead letters, backlog older than the configured limit)."""
    from mes.integration import monitor

    return jsonify({"endpoints": monitor.endpoint_status(), "alarms": monitor.integration_alarms()})


@bp.get(f"{API}/work-orders/<work_order_id>/reconciliation")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=TAGS)
def reconciliation(work_order_id: str) -> Response:
    """What the MES consumed and produced for a work order against what each endpoint acknowledged."""
    from mes.integration import monitor

    return jsonify(monitor.reconcile(work_order_id))


# ------------------------------------------------------------------ the owner's pages
# Under the QA workstation UI (same CSP, no script): each endpoint's pending, in-flight, failed
# and dead-lettered deliveries, the age of its oldest undelivered event, its latency and last
# error, the open integration alarms, replay buttons (POST forms with the CSRF token), and the
# reconciliation of a work order.

pages_bp = Blueprint("integration_pages", __name__, url_prefix="/qa/integration", template_folder="templates")
PAGE_TAGS = ("qa",)


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


@pages_bp.get("")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=PAGE_TAGS,
          query={"message": {"required": False, "schema": {"type": "string", "maxLength": 200}}})
def integration_page() -> Any:
    """Each endpoint's delivery state, the open integration alarms and the dead letters, with replay."""
    return _page(request.args.get("message", "")[:200] or None)


@pages_bp.post("/replay")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=PAGE_TAGS)
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


@pages_bp.get("/reconcile")
@endpoint(P.INTEGRATION_ENDPOINTS, tags=PAGE_TAGS, query={"work_order": {"required": False, "schema": {"type": "string"}}})
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
