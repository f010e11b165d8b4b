"""Execution records: master recipe versions, work orders, batches, batch steps, step
records (the values of the eBR), deviations and idempotent step requests.

Nothing here is ever deleted (database triggers refuse it); step records and requests are
never changed either, except that a corrected record is marked superseded by its
correction (both stay).
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db
from mes.quantities import PLACES_DEFAULT, Quantity, written


class RecipeStatus(str, enum.Enum):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    EFFECTIVE = "effective"
    SUPERSEDED = "superseded"
    RETIRED = "retired"


class WorkOrderStatus(str, enum.Enum):
    CREATED = "created"
    RELEASED = "released"
    DISPATCHED = "dispatched"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class BatchStatus(str, enum.Enum):
    CREATED = "created"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    REVIEWED = "reviewed"
    RELEASED = "released"
    REJECTED = "rejected"


class StepState(str, enum.Enum):
    PENDING = "pending"
    READY = "ready"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    BLOCKED = "blocked"


class Severity(str, enum.Enum):
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


class DeviationStatus(str, enum.Enum):
    """A deviation is open until QA closes it with a disposition."""

    OPEN = "open"
    CLOSED = "closed"


class Disposition(str, enum.Enum):
    USE_AS_IS = "use_as_is"
    REPEAT_STEP = "repeat_step"
    REWORK = "rework"
    SCRAP = "scrap"
    REJECT_BATCH = "reject_batch"


class RecipeVersion(db.Model):
    __tablename__ = "recipe_versions"
    __table_args__ = (UniqueConstraint("recipe_id", "version", name="uq_recipe_versions_recipe_id_version"),)

    id: Mapped[str] = mapped_column(String(140), primary_key=True)  # "<recipe id>@<version>"
    recipe_id: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[str] = mapped_column(String(32))
    product_code: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    source_name: Mapped[str] = mapped_column(String(300))
    source_text: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    approved_at: Mapped[datetime | None]
    approved_by: Mapped[str | None] = mapped_column(String(100))
    effective_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class WorkOrder(db.Model):
    __tablename__ = "work_orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item: Mapped[str] = mapped_column(String(64))
    quantity_stored: Mapped[Decimal] = mapped_column("quantity", Quantity())
    quantity_places: Mapped[int] = mapped_column(SmallInteger, server_default=PLACES_DEFAULT)
    quantity = written("quantity_stored", "quantity_places")  # Decimal, places as written
    unit: Mapped[str] = mapped_column(String(16))
    recipe_version_id: Mapped[str] = mapped_column(ForeignKey("recipe_versions.id"))
    line: Mapped[str | None] = mapped_column(String(64))
    due_date: Mapped[date | None] = mapped_column(Date)
    erp_ref: Mapped[str | None] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))


class Batch(db.Model):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    work_order_id: Mapped[str] = mapped_column(ForeignKey("work_orders.id"), index=True)
    recipe_version_id: Mapped[str] = mapped_column(ForeignKey("recipe_versions.id"))
    control_recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    recipe_hash: Mapped[str] = mapped_column(String(64))
    batch_size_stored: Mapped[Decimal] = mapped_column("batch_size", Quantity())
    batch_size_places: Mapped[int] = mapped_column(SmallInteger, server_default=PLACES_DEFAULT)
    batch_size = written("batch_size_stored", "batch_size_places")  # Decimal, places as written
    unit: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    line: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    completed_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(100))


class BatchStep(db.Model):
    __tablename__ = "batch_steps"
    __table_args__ = (UniqueConstraint("batch_id", "step_id", name="uq_batch_steps_batch_id_step_id"),)

    id: Mapped[str] = mapped_column(String(140), primary_key=True)  # "<batch>:<step>"
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    step_id: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(Integer)  # document order
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(300))
    up_index: Mapped[int] = mapped_column(Integer)
    stage_index: Mapped[int] = mapped_column(Integer)
    op_index: Mapped[int] = mapped_column(Integer)
    step_index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    completed_by: Mapped[str | None] = mapped_column(String(100))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class StepRecord(db.Model):
    """One recorded fact of a step (a value, a container weighed, a scan, a signature…)."""

    __tablename__ = "step_records"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    batch_step_id: Mapped[str] = mapped_column(ForeignKey("batch_steps.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    value_stored: Mapped[Decimal | None] = mapped_column("value", Quantity())
    value_places: Mapped[int | None] = mapped_column(SmallInteger)
    value = written("value_stored", "value_places")  # Decimal with its places as written, or None
    unit: Mapped[str | None] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    flags: Mapped[list[str]] = mapped_column(JSON)  # out_of_limits, late, corrected, correction
    comment: Mapped[str | None] = mapped_column(Text)
    corrects: Mapped[str | None] = mapped_column(String(40))
    superseded_by: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(100))


class Deviation(db.Model):
    __tablename__ = "deviations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    batch_step_id: Mapped[str | None] = mapped_column(ForeignKey("batch_steps.id"))
    step_seq: Mapped[int | None] = mapped_column(Integer)
    severity: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    automatic: Mapped[bool]
    status: Mapped[str] = mapped_column(String(16))  # DeviationStatus
    raised_at: Mapped[datetime]
    raised_by: Mapped[str] = mapped_column(String(100))
    disposition: Mapped[str | None] = mapped_column(String(16))
    disposition_reason: Mapped[str | None] = mapped_column(Text)
    qms_ref: Mapped[str | None] = mapped_column(String(100))
    closed_at: Mapped[datetime | None]
    closed_by: Mapped[str | None] = mapped_column(String(100))


class StepRequest(db.Model):
    """An idempotent step request: the same key returns the same outcome, recorded once."""

    __tablename__ = "step_requests"
    __table_args__ = (Index("ix_step_requests_batch_step", "batch_step_id"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"))
    batch_step_id: Mapped[str] = mapped_column(ForeignKey("batch_steps.id"))
    action: Mapped[str] = mapped_column(String(16))  # start | complete
    actor_id: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    #: SHA-256 of the canonical request (step, action, expected version, payload): only the
    #: same request replays under its key (None on requests recorded before it was kept)
    request_sha256: Mapped[str | None] = mapped_column(String(64))


class ExceptionReview(db.Model):
    """QA marked one exception of a batch reviewed (review by exception): which one, by whom,
    when and with what note. Never changed or removed; a batch is released only when every
    current exception has one."""

    __tablename__ = "exception_reviews"
    __table_args__ = (UniqueConstraint("batch_id", "exception_key", name="uq_exception_reviews_batch_id_exception_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    exception_key: Mapped[str] = mapped_column(String(200))
    exception_type: Mapped[str] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[datetime]
    reviewed_by: Mapped[str] = mapped_column(String(100))
