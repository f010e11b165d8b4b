"""Inbound integration: the peers (QMS, ERP) that send commands to the MES, each with the
Standard Webhooks secret the MES issued it, and the idempotency records of what they sent
(``shared/specs/events.md`` §4). No row is ever deleted (the database refuses it).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db, utcnow


def _in(column: str, values: type[enum.Enum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class PeerState(str, enum.Enum):
    """Whether the MES accepts commands from a peer."""

    ENABLED = "enabled"
    DISABLED = "disabled"


class IdempotencyState(str, enum.Enum):
    """An inbound command is being carried out, or its first answer is stored."""

    RUNNING = "running"
    DONE = "done"


class InboundPeer(db.Model):
    """A system that sends commands (QMS, ERP). Changed only with an audit entry.

    ``previous_secret`` still verifies until ``previous_secret_until`` (rotation window)."""

    __tablename__ = "integration_peers"
    __table_args__ = (CheckConstraint(_in("state", PeerState), name="state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None]
    event_types: Mapped[str] = mapped_column(String(2000), default="")
    state: Mapped[str] = mapped_column(String(16), default=PeerState.ENABLED.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))

    def types(self) -> frozenset[str]:
        """The command types the peer may send; empty means every inbound type."""
        return frozenset(t for t in self.event_types.split() if t)


class IdempotencyRecord(db.Model):
    """One ``Idempotency-Key`` of one peer: the request's fingerprint and its first answer."""

    __tablename__ = "integration_idempotency"
    __table_args__ = (CheckConstraint(_in("state", IdempotencyState), name="state"),)

    peer_id: Mapped[str] = mapped_column(ForeignKey("integration_peers.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), default=IdempotencyState.RUNNING.value)
    running_until: Mapped[datetime | None]
    status: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(100))
    response: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
