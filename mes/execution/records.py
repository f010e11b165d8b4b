"""The recorded values of a batch (step records): reading them, their JSON, the current
values the calculations use."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select

from mes.db import db
from mes.execution.common import _at
from mes.execution.models import BatchStep, StepRecord
from mes.quantities import to_text_or_none, with_places


def _current_records(step: BatchStep, kind: str | None = None) -> list[StepRecord]:
    """The step's records of its current attempt not superseded (of ``kind`` if given), in order."""
    stmt = select(StepRecord).where(StepRecord.batch_step_id == step.id, StepRecord.attempt == step.attempt,
                                    StepRecord.superseded_by.is_(None)).order_by(StepRecord.recorded_at, StepRecord.id)
    if kind:
        stmt = stmt.where(StepRecord.kind == kind)
    return list(db.session.execute(stmt).scalars())


def _record_json(r: StepRecord) -> dict[str, Any]:
    """A step record as the API, the audit entries and the eBR show it."""
    return {"id": r.id, "kind": r.kind, "attempt": r.attempt, "value": to_text_or_none(r.value), "unit": r.unit,
            "data": r.data, "flags": list(r.flags or []), "comment": r.comment, "corrects": r.corrects, "superseded_by": r.superseded_by,
            "reason": r.reason, "recorded_at": _at(r.recorded_at), "recorded_by": r.recorded_by}


def records_of(batch_id: str) -> list[StepRecord]:
    """Every record of the batch (superseded ones too), in the order recorded."""
    return list(db.session.execute(select(StepRecord).where(StepRecord.batch_id == batch_id)
                                   .order_by(StepRecord.recorded_at, StepRecord.id)).scalars())


def _values(batch_id: str) -> dict[str, Decimal]:
    """Current (not superseded) values of completed value steps: step id -> Decimal."""
    rows = db.session.execute(
        select(BatchStep.step_id, StepRecord.value_stored, StepRecord.value_places)
        .join(StepRecord, StepRecord.batch_step_id == BatchStep.id).where(
            BatchStep.batch_id == batch_id, StepRecord.kind == "value", StepRecord.superseded_by.is_(None),
            StepRecord.attempt == BatchStep.attempt)).all()
    return {sid: with_places(v, places or 0) for sid, v, places in rows if v is not None}


values_of = _values  # public: what the kiosk shows is what the calculations compute with


def _record_row(r: StepRecord) -> dict[str, Any]:
    """The column values of a new step record (written with one Core insert per completion)."""
    return {"id": r.id, "batch_id": r.batch_id, "batch_step_id": r.batch_step_id, "attempt": r.attempt,
            "kind": r.kind, "value": r.value_stored, "value_places": r.value_places, "unit": r.unit, "data": r.data,
            "flags": list(r.flags or []),
            "comment": r.comment, "corrects": r.corrects, "superseded_by": r.superseded_by, "reason": r.reason,
            "recorded_at": r.recorded_at, "recorded_by": r.recorded_by}
