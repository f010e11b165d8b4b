"""Webhook endpoints, replay and the pull feed: the service layer of ``shared/specs/events.md`` §2–3.

Every change to an endpoint is one transaction with its audit entry. The secret
(``whsec_`` + base64 of 32 random bytes) is returned once, by :func:`add_endpoint` and
:func:`rotate_secret`, and never shown again (lists carry only its fingerprint).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, insert, select, update

from mes.audit.log import Actor, record
from mes.db import db, utcnow
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.integration.models import (
    Delivery,
    DeliveryCursor,
    DeliveryStatus,
    EndpointState,
    OutboxEvent,
    WebhookEndpoint,
)
from mes.validation import identifier

ROTATION_OVERLAP = timedelta(hours=24)
EVENT_TYPE_MAX = 100
PULL_LIMIT_MAX = 1000


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def fingerprint(secret: str) -> str:
    """A short, non-reversible name of a secret for lists and audit entries."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def _url(value: Any) -> str:
    """The endpoint URL: absolute http(s) with a host, at most 2000 characters."""
    text = value.strip() if isinstance(value, str) else ""
    parts = urlsplit(text)
    if len(text) > 2000 or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("The endpoint URL must be an absolute http:// or https:// URL with a host.", field="url")
    return text


def _types(values: Any) -> str:
    """The event-type filter as stored (space-separated; empty means every type)."""
    if values is None:
        return ""
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    out = []
    for v in values:
        if not isinstance(v, str) or not v.strip() or len(v.strip()) > EVENT_TYPE_MAX or " " in v.strip():
            raise ValidationFailed("Each event type is one word such as mes.material.consumed.v1.", field="event_types")
        out.append(v.strip())
    return " ".join(sorted(set(out)))


def endpoint_json(row: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as lists show it: never its secret, only the secret's fingerprint."""
    return {
        "id": row.id,
        "url": row.url,
        "event_types": sorted(row.types()),
        "state": row.state,
        "state_reason": row.state_reason,
        "secret_fingerprint": fingerprint(row.secret),
        "rotating_until": row.previous_secret_until.isoformat() if row.previous_secret_until else None,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
    }


def get_endpoint(endpoint_id: str) -> WebhookEndpoint:
    row = db.session.get(WebhookEndpoint, endpoint_id)
    if row is None:
        raise NotFound(f"There is no integration endpoint {endpoint_id}.")
    return row


def list_endpoints() -> list[WebhookEndpoint]:
    return list(db.session.execute(select(WebhookEndpoint).order_by(WebhookEndpoint.id)).scalars())


def add_endpoint(actor: Actor, endpoint_id: str, url: str, event_types: Any = None) -> tuple[WebhookEndpoint, str]:
    """Register a receiver; returns it and its secret (shown this once).

    It receives the events committed after it was added; older ones by replay."""
    endpoint_id = identifier(endpoint_id, "endpoint id", "id")
    url, types = _url(url), _types(event_types)
    if db.session.get(WebhookEndpoint, endpoint_id) is not None:
        raise Conflict(f"The endpoint id {endpoint_id} is taken.")
    secret = new_secret()
    row = WebhookEndpoint(id=endpoint_id, url=url, secret=secret, event_types=types,
                          state=EndpointState.ENABLED.value, created_at=utcnow(), created_by=actor.id)
    db.session.add(row)
    db.session.flush()
    last = db.session.execute(select(func.max(OutboxEvent.position))).scalar()
    db.session.execute(insert(DeliveryCursor).values(endpoint_id=endpoint_id, position=-1 if last is None else last))
    record(actor, "integration.endpoint.added", ("integration_endpoint", endpoint_id),
           after={"url": url, "event_types": types, "state": row.state, "secret": fingerprint(secret)})
    db.session.commit()
    return row, secret


def rotate_secret(actor: Actor, endpoint_id: str, overlap: timedelta = ROTATION_OVERLAP) -> str:
    """A new secret; the old one still signs beside it for ``overlap``. Returns the new secret (once)."""
    row = get_endpoint(endpoint_id)
    old = row.secret
    secret = new_secret()
    row.previous_secret, row.previous_secret_until, row.secret = old, utcnow() + overlap, secret
    record(actor, "integration.endpoint.secret_rotated", ("integration_endpoint", row.id),
           before={"secret": fingerprint(old)},
           after={"secret": fingerprint(secret), "previous_signs_until": row.previous_secret_until.isoformat()})
    db.session.commit()
    return secret


def set_url(actor: Actor, endpoint_id: str, url: str) -> WebhookEndpoint:
    """Point an endpoint at a new URL (a receiver that moved); its cursor, backlog and secret stay."""
    row = get_endpoint(endpoint_id)
    url = _url(url)
    if row.url == url:
        return row
    before = row.url
    row.url = url
    record(actor, "integration.endpoint.url_changed", ("integration_endpoint", row.id), before={"url": before},
           after={"url": url})
    db.session.commit()
    return row


def set_state(actor: Actor, endpoint_id: str, state: EndpointState, reason: str) -> WebhookEndpoint:
    """Enable or disable an endpoint (the relay disables one that answers 410 Gone)."""
    row = get_endpoint(endpoint_id)
    if row.state == state.value:
        raise Conflict(f"The endpoint {endpoint_id} is {state.value} already.")
    before = row.state
    row.state, row.state_reason = state.value, reason
    record(actor, f"integration.endpoint.{'enabled' if state is EndpointState.ENABLED else 'disabled'}",
           ("integration_endpoint", row.id), before={"state": before}, after={"state": state.value}, reason=reason)
    db.session.commit()
    return row


# ---------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Selection:
    """Which events to replay or pull; every given criterion must match."""

    event_id: str | None = None
    subject: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def empty(self) -> bool:
        return not any((self.event_id, self.subject, self.type, self.since, self.until))

    def where(self) -> list[Any]:
        out = []
        if self.event_id:
            out.append(OutboxEvent.id == self.event_id)
        if self.subject:
            out.append(OutboxEvent.subject == self.subject)
        if self.type:
            out.append(OutboxEvent.type == self.type)
        if self.since:
            out.append(OutboxEvent.time >= self.since)
        if self.until:
            out.append(OutboxEvent.time < self.until)
        return out


def replay(actor: Actor, selection: Selection, endpoint_id: str | None = None, reason: str = "") -> int:
    """Send the selected events again (same ``webhook-id``, signed afresh) to the endpoint, or to
    every endpoint whose filter takes them. Returns how many deliveries were queued.

    A replayed event goes back into its aggregate's line: later events of that aggregate wait
    for it, so the receiver still sees ``sequence`` order."""
    if selection.empty():
        raise ValidationFailed("Say which events to replay: an event id, a subject, a type or a time range.")
    if not reason.strip():
        raise ValidationFailed("A replay needs a reason.", field="reason")
    endpoints = [get_endpoint(endpoint_id)] if endpoint_id else list_endpoints()
    events = db.session.execute(select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.subject, OutboxEvent.sequence,
                                       OutboxEvent.position).where(*selection.where())).all()
    if selection.event_id and not events:
        raise NotFound(f"There is no event {selection.event_id}.")
    now, queued = utcnow(), 0
    for ep in endpoints:
        types = ep.types()
        ids = [e for e in events if not types or e.type in types]
        if not ids:
            continue
        known = set(db.session.execute(select(Delivery.event_id).where(
            Delivery.endpoint_id == ep.id, Delivery.event_id.in_([e.id for e in ids]))).scalars())
        again = [e.id for e in ids if e.id in known]
        if again:
            db.session.execute(update(Delivery).where(Delivery.endpoint_id == ep.id, Delivery.event_id.in_(again)).values(
                status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=now, claimed_until=None,
                claimed_by=None, dead_at=None, last_error=None))
        fresh = [e for e in ids if e.id not in known]
        if fresh:
            db.session.execute(insert(Delivery), [
                {"endpoint_id": ep.id, "event_id": e.id, "subject": e.subject, "sequence": e.sequence,
                 "position": e.position, "status": DeliveryStatus.PENDING.value, "attempts": 0,
                 "next_attempt_at": now, "created_at": now} for e in fresh])
        queued += len(ids)
    record(actor, "integration.events.replayed", ("integration_endpoint", endpoint_id or "*"),
           after={"selection": {k: (v.isoformat() if isinstance(v, datetime) else v)
                                for k, v in vars(selection).items() if v}, "queued": queued}, reason=reason)
    db.session.commit()
    return queued


# ------------------------------------------------------------------------ pull


def pull(after: str | None, event_type: str | None, subject: str | None, limit: int = 100) -> list[bytes]:
    """The stored CloudEvent bodies after event ``after`` in commit order (``GET /integration/v1/events``)."""
    if not 1 <= limit <= PULL_LIMIT_MAX:
        raise ValidationFailed(f"limit is 1 to {PULL_LIMIT_MAX}.", field="limit")
    query = select(OutboxEvent.body).order_by(OutboxEvent.position).limit(limit)
    if after:
        position = db.session.execute(select(OutboxEvent.position).where(OutboxEvent.id == after)).scalar()
        if position is None:
            raise NotFound(f"There is no event {after}.")
        query = query.where(OutboxEvent.position > position)
    query = query.where(*Selection(type=event_type, subject=subject).where())
    return list(db.session.execute(query).scalars())


def dead_letters(endpoint_id: str | None = None) -> list[dict[str, Any]]:
    """The events the relay gave up on, for the integration owner."""
    query = select(Delivery).where(Delivery.status == DeliveryStatus.DEAD.value).order_by(Delivery.position)
    if endpoint_id:
        query = query.where(Delivery.endpoint_id == endpoint_id)
    return [{"endpoint": d.endpoint_id, "event_id": d.event_id, "subject": d.subject, "sequence": d.sequence,
             "attempts": d.attempts, "last_status": d.last_status, "last_error": d.last_error,
             "dead_at": d.dead_at.isoformat() if d.dead_at else None}
            for d in db.session.execute(query).scalars()]
