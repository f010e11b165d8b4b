"""Integration on the API: endpoints, replay, dead letters, and the pull feed.

``/api/v1/integration/endpoints`` (admin or integrator) manages webhook endpoints; the
secret is in the answer to the create and rotate calls only. ``GET /integration/v1/events``
lets a receiver catch up by pulling (``shared/specs/events.md`` §3), as a CloudEvents
JSON batch in commit order.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, g, jsonify, request

from mes.errors import NotFound, ValidationFailed
from mes.integration import endpoints as ops
from mes.integration.models import EndpointState
from mes.users.permissions import Permission as P
from mes.validation import ID_JSON_PATTERN
from mes.web import STR, created, endpoint, obj, parse_utc, principal

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
