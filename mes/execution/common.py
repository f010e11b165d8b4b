"""What every part of the batch execution engine shares: the outbox event types, the
engine's errors, its clock, ids, input checks and the row lock.

The bottom of the engine's layering (common < work_orders < batches < claims, records <
deviations < step kinds (mes/steps) < step_requests < corrections < release < views); it imports no
other engine module.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from mes.audit import canonical
from mes.db import db, utcnow
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.execution.models import BatchStatus, Severity
from mes.quantities import parse_decimal
from mes.steps.context import DEFAULT_MAX_FAILED_WEIGHINGS, DEFAULT_MAX_READING_AGE_MS  # noqa: F401  (re-exported)
from mes.users.models import UserSession
from mes.validation import required_text as _text  # the one required-text rule  # noqa: F401

WORK_ORDER_STARTED = "mes.work_order.started.v1"
DEVIATION_RAISED = "mes.deviation.raised.v1"
DEVIATION_CLOSED = "mes.deviation.closed.v1"
BATCH_COMPLETED = "mes.batch.completed.v1"
BATCH_RELEASED = "mes.batch.released.v1"
INSPECTION_RECORDED = "mes.inspection.recorded.v1"
BLOCKING = (Severity.MAJOR.value, Severity.CRITICAL.value)
OPEN_BATCH = (BatchStatus.CREATED.value, BatchStatus.IN_PROGRESS.value)
#: The signer's session for a signature step: the row, or a function that loads it (only a
#: signature step calls it, so other completions never load the session row).
SessionSource = UserSession | Callable[[], UserSession | None] | None


def clock() -> datetime:
    """The server clock the engine stamps step times with (tests replace it)."""
    return utcnow()


class StepNotReady(Conflict):
    """The step's turn has not come: a step before it, or a value it needs, is not done."""

    slug, title = "step-not-ready", "The step cannot be done yet"


class StepBlocked(Conflict):
    """An open major/critical deviation blocks the step (:func:`~mes.execution.batches.blocks`)."""

    slug, title = "step-blocked", "The step is blocked by an open deviation"


class StepRefused(Conflict):
    """The entry was refused, with the reason; nothing of it was recorded."""

    slug, title = "step-refused", "The entry was refused"


class _RefuseWithDeviation(Exception):
    """Internal: refuse the request (nothing of it recorded) and raise a deviation."""

    def __init__(self, detail: str, severity: str, category: str, evidence: dict[str, Any]) -> None:
        super().__init__(detail)
        self.detail, self.severity, self.category, self.evidence = detail, severity, category, evidence


def _dec(value: Any, field_name: str, *, signed: bool = False) -> Decimal:
    """A decimal sent as a string, parsed exactly (never through a float)."""
    try:
        return parse_decimal(value, signed=signed)
    except (ValueError, TypeError):
        raise ValidationFailed(f"{field_name} must be a decimal number written as a string, e.g. \"12.5\".",
                               field=field_name) from None


def _at(value: datetime | None) -> str | None:
    """A timestamp as the audit log writes it (None stays None)."""
    return canonical.format_at(value) if value else None


def _new_id(prefix: str) -> str:
    """A new random id such as ``DEV-1A2B3C4D5E6F``."""
    return f"{prefix}-{uuid.uuid4().hex[:12].upper()}"


def _locked(model: Any, key: str) -> Any:
    """The row of ``model`` with primary key ``key``, locked for update (NotFound if none)."""
    pk = model.__mapper__.primary_key[0]
    row = db.session.execute(select(model).where(pk == key).with_for_update()
                             .execution_options(populate_existing=True)).scalar()
    if row is None:
        raise NotFound(f"{model.__name__} {key} is not known.")
    return row
