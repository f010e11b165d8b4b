"""The transactional outbox: one row per CloudEvent, written with the change it reports.

The body is serialised once, when the event is written, and sent byte for byte on every
attempt and replay (``shared/specs/events.md`` §1–3).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db, utcnow


class OutboxEvent(db.Model):
    __tablename__ = "outbox_events"
    __table_args__ = (UniqueConstraint("subject", "sequence", name="uq_outbox_events_subject_sequence"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime]
    audit_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
