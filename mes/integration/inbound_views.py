"""Inbound integration on the web: ``POST /integration/v1/inbound`` (public: each delivery is
authenticated by its Standard Webhooks signature, never by a cookie) and the peers that may
send, under ``/api/v1/integration/peers`` (admin or integrator; a secret appears once, in the
answer to the create and rotate calls). Routes are added to the integration blueprint.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Response, g, jsonify, request

from mes.errors import ContentTooLarge
from mes.integration import inbound as ops
from mes.integration.blueprint import API, TAGS, bp
from mes.integration.inbound_models import PeerState
from mes.users.permissions import Permission as P
from mes.validation import BODY_MAX, ID_JSON_PATTERN
from mes.web import STR, created, endpoint, obj, principal

PEER_TYPES = {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 10}
ADD_PEER = obj({"id": {"type": "string", "pattern": ID_JSON_PATTERN}, "event_types": PEER_TYPES}, ("id",))
ROTATE = obj({"overlap_hours": {"type": "number", "minimum": 0, "maximum": 720}})
REASON = obj({"reason": STR}, ("reason",))


@bp.post("/integration/v1/inbound")
@endpoint(public="each delivery is authenticated by its Standard Webhooks signature with the peer's inbound secret",
          tags=TAGS, csrf=False)
def inbound() -> Response:
    """A signed CloudEvent command from QMS or ERP, with an ``Idempotency-Key`` (events.md §4)."""
    if (request.content_length or 0) > BODY_MAX:
        answer = ops.problem_answer(ContentTooLarge(f"A command is at most {BODY_MAX} bytes."))
    else:
        body = request.get_data(cache=False)
        if len(body) > BODY_MAX:
            answer = ops.problem_answer(ContentTooLarge(f"A command is at most {BODY_MAX} bytes."))
        else:
            answer = ops.receive(request.headers, body)
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
    return jsonify({"peers": [ops.peer_json(p) for p in ops.list_peers()]})


@bp.post(f"{API}/peers")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=ADD_PEER, tags=TAGS)
def add_peer() -> Response:
    """Register a sender; the answer carries its inbound secret, this once."""
    row, secret = ops.add_peer(principal().actor(P.INTEGRATION_ENDPOINTS), g.body["id"], g.body.get("event_types"))
    return created({"peer": ops.peer_json(row), "secret": secret})


@bp.post(f"{API}/peers/<peer_id>/rotate")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=ROTATE, tags=TAGS)
def rotate_peer(peer_id: str) -> Response:
    """A new inbound secret (in this answer only); the old one verifies too for ``overlap_hours`` (24)."""
    hours = g.body.get("overlap_hours", ops.ROTATION_OVERLAP.total_seconds() / 3600)
    secret = ops.rotate_peer_secret(principal().actor(P.INTEGRATION_ENDPOINTS), peer_id, timedelta(hours=hours))
    return jsonify({"peer": ops.peer_json(ops.get_peer(peer_id)), "secret": secret})


@bp.post(f"{API}/peers/<peer_id>/disable")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=REASON, tags=TAGS)
def disable_peer(peer_id: str) -> Response:
    """Stop accepting commands from a peer (its deliveries get 401)."""
    row = ops.set_peer_state(principal().actor(P.INTEGRATION_ENDPOINTS), peer_id, PeerState.DISABLED,
                             g.body["reason"])
    return jsonify({"peer": ops.peer_json(row)})


@bp.post(f"{API}/peers/<peer_id>/enable")
@endpoint(P.INTEGRATION_ENDPOINTS, schema=REASON, tags=TAGS)
def enable_peer(peer_id: str) -> Response:
    """Accept commands from a peer again."""
    row = ops.set_peer_state(principal().actor(P.INTEGRATION_ENDPOINTS), peer_id, PeerState.ENABLED, g.body["reason"])
    return jsonify({"peer": ops.peer_json(row)})
