"""The transactional outbox (one row per CloudEvent, written with the change it reports),
the webhook endpoints that receive it, and the relay's delivery bookkeeping.

The body is serialised once, when the event is written, and sent byte for byte on every
attempt and replay (``shared/specs/events.md`` §1–3).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db, utcnow


class OutboxEvent(db.Model):
    """One CloudEvent. ``position`` is its place in commit order: ``2·seq + 1`` for the event of
    audit entry ``seq`` (``audit_seq``), ``2·size`` for the event of a signed checkpoint of
    ``size`` entries (``audit_seq`` is then ``-size``): after the last entry it covers, before
    the next (see :func:`mes.audit.log.event_position`)."""

    __tablename__ = "outbox_events"
    __table_args__ = (UniqueConstraint("subject", "sequence", name="uq_outbox_events_subject_sequence"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime]
    audit_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    position: Mapped[int] = mapped_column(BigInteger, index=True, unique=True, server_default="0")
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _in(column: str, values: type[enum.Enum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class EndpointState(str, enum.Enum):
    """Whether the relay sends to an endpoint (a 410 from it disables it)."""

    ENABLED = "enabled"
    DISABLED = "disabled"


class DeliveryStatus(str, enum.Enum):
    """One event's way to one endpoint: waiting (or retrying), received, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class WebhookEndpoint(db.Model):
    """A receiver of outbound events (Standard Webhooks). Changed only with an audit entry.

    ``previous_secret`` still signs (beside ``secret``) until ``previous_secret_until``: the
    rotation window in which the receiver moves to the new secret."""

    __tablename__ = "integration_endpoints"
    __table_args__ = (CheckConstraint(_in("state", EndpointState), name="state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None]
    event_types: Mapped[str] = mapped_column(String(2000), default="")
    state: Mapped[str] = mapped_column(String(16), default=EndpointState.ENABLED.value)
    state_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))

    def types(self) -> frozenset[str]:
        """The event types it takes; empty means every type."""
        return frozenset(t for t in self.event_types.split() if t)


class DeliveryCursor(db.Model):
    """How far (by outbox ``position``, which is commit order) the outbox was fanned out to an endpoint."""

    __tablename__ = "integration_cursors"

    endpoint_id: Mapped[str] = mapped_column(ForeignKey("integration_endpoints.id"), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)


class Delivery(db.Model):
    """One outbox event owed to one endpoint: relay bookkeeping, like the outbox itself."""

    __tablename__ = "integration_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", DeliveryStatus), name="status"),
        Index("ix_integration_deliveries_line", "endpoint_id", "subject", "sequence"),
        Index("ix_integration_deliveries_due", "status", "next_attempt_at"),
    )

    endpoint_id: Mapped[str] = mapped_column(ForeignKey("integration_endpoints.id"), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("outbox_events.id"), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    sequence: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None]
    dead_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
