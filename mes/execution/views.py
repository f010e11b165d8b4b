"""The read views of batches and steps, as the API and the CLI show them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mes.db import db
from mes.execution.batches import steps_of
from mes.execution.common import _at
from mes.execution.deviations import deviation_json, deviations_of
from mes.execution.models import Batch, BatchStep, StepRecord
from mes.execution.records import _record_json
from mes.quantities import to_text


def step_json(step: BatchStep, *, records: bool = False) -> dict[str, Any]:
    """A step as the API shows it (with all its records, superseded ones too, if ``records``)."""
    out = {"id": step.step_id, "seq": step.seq, "kind": step.kind, "title": step.title, "state": step.state,
           "attempt": step.attempt, "version": step.version, "started_at": _at(step.started_at),
           "completed_at": _at(step.completed_at), "completed_by": step.completed_by, "result": step.result}
    if records:
        out["records"] = [_record_json(r) for r in db.session.execute(
            select(StepRecord).where(StepRecord.batch_step_id == step.id)
            .order_by(StepRecord.recorded_at, StepRecord.id)).scalars()]
    return out


def batch_json(batch: Batch, *, steps: bool = True) -> dict[str, Any]:
    """A batch as the API shows it: its deviations (and whether each blocks a step) and steps."""
    rows = steps_of(batch.id)
    out: dict[str, Any] = {
        "id": batch.id, "work_order": batch.work_order_id, "recipe_version": batch.recipe_version_id,
        "recipe_hash": batch.recipe_hash, "batch_size": {"value": to_text(batch.batch_size), "uom": batch.unit},
        "status": batch.status, "line": batch.line, "version": batch.version, "created_at": _at(batch.created_at),
        "completed_at": _at(batch.completed_at), "decided_at": _at(batch.decided_at), "decided_by": batch.decided_by,
        "deviations": [deviation_json(d, rows) for d in deviations_of(batch.id)],
    }
    if steps:
        out["steps"] = [step_json(s, records=True) for s in rows]
    return out
