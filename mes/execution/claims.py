"""Equipment a batch claims (an equipment check with ``claim``): in use by the batch until
it ends, then dirty."""

from __future__ import annotations

from sqlalchemy import select

from mes.audit.log import Actor
from mes.db import db
from mes.equipment import operations as equipment
from mes.execution.models import BatchStep, StepRecord


def claimed_equipment(batch_id: str) -> list[str]:
    """Equipment a passing ``claim`` check marked in use by the batch (current records)."""
    rows = db.session.execute(select(StepRecord.data).join(BatchStep, BatchStep.id == StepRecord.batch_step_id).where(
        StepRecord.batch_id == batch_id, StepRecord.kind == "equipment", StepRecord.superseded_by.is_(None),
        StepRecord.attempt == BatchStep.attempt)).scalars()
    return sorted({d["equipment_id"] for d in rows if d.get("claimed")})


def _release_claims(actor: Actor, batch_id: str) -> None:
    """At the batch's end the equipment it held in use becomes dirty (the ordinary end of use)."""
    for equipment_id in claimed_equipment(batch_id):
        eq = equipment.get_equipment(equipment_id)
        if eq.status == equipment.S.IN_USE.value and eq.status_reason == _claim_reason(batch_id):
            equipment.set_status(actor, equipment_id, equipment.S.DIRTY.value, f"batch {batch_id} ended",
                                 batch=batch_id, commit=False)


def _claim_reason(batch_id: str) -> str:
    """The equipment status reason that marks it in use by ``batch_id``."""
    return f"in use by batch {batch_id}"
