"""Corrections of recorded values (Annex 11 §8.2: the old value stays, superseded, with
the reason) and the recomputation of everything that used the corrected value."""

from __future__ import annotations

from datetime import datetime

from mes.audit.log import Actor, record
from mes.db import db
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.execution import common
from mes.execution.batches import _refresh, control_recipe, steps_of
from mes.execution.common import _dec, _locked, _new_id, _text
from mes.execution.deviations import _new_deviation, _record_deviation
from mes.execution.models import Batch, BatchStatus, BatchStep, Severity, StepRecord, StepState
from mes.quantities import to_text, to_text_or_none
from mes.recipes import model as rm
from mes.steps import registry as step_kinds
from mes.steps.context import limits_text as _limits_text
from mes.steps.context import places_ok as _places_ok

CORRECTABLE = ("value",)
CORRECTABLE_STEPS = ("numeric",)


def correct_value(actor: Actor, batch_id: str, record_id: str, new_value: str, reason: str) -> StepRecord:
    """Correct a recorded numeric entry: a new record with the new value and the reason; the
    old one stays, marked superseded (Annex 11 §8.2). Limits are checked again, and every
    completed calculation that used the value (directly or through another calculation) is
    recomputed the same way: a new record flagged ``recomputed``, the old one kept."""
    reason = _text(reason, "A reason for the correction", "reason")
    batch = _locked(Batch, batch_id)
    if batch.status in (BatchStatus.RELEASED.value, BatchStatus.REJECTED.value):
        raise Conflict(f"Batch {batch_id} is {batch.status}; its record is closed.")
    old = _locked(StepRecord, record_id)
    if old.batch_id != batch_id:
        raise NotFound(f"Record {record_id} is not part of batch {batch_id}.")
    if old.superseded_by is not None:
        raise Conflict(f"Record {record_id} was already corrected by {old.superseded_by}; correct that one.")
    step = _locked(BatchStep, old.batch_step_id)
    if old.kind not in CORRECTABLE or step.kind not in CORRECTABLE_STEPS:
        raise Conflict("Only manually entered values can be corrected; weighings are reversed and repeated, "
                       "calculations and signatures are never edited.")
    spec: rm.NumericStep = control_recipe(batch).step(step.step_id)  # type: ignore[assignment]
    value = _places_ok(_dec(new_value, "value", signed=True), spec.precision, "value")
    if old.value is not None and old.value == value:
        raise ValidationFailed("The corrected value is the same as the recorded one.", field="value")
    ok = spec.in_limits(value)
    now = common.clock()
    new = StepRecord(id=_new_id("R"), batch_id=batch_id, batch_step_id=step.id, attempt=old.attempt, kind=old.kind,
                     value=value, unit=old.unit, data=dict(old.data),
                     flags=["correction"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                     reason=reason, recorded_at=now, recorded_by=actor.id)
    db.session.add(new)
    old.superseded_by = new.id
    old.flags = sorted(set(old.flags or []) | {"corrected"})
    step.result = {**(step.result or {}), "value": to_text(value), "in_limits": ok}  # the step shows the current value
    step.version += 1
    db.session.flush()
    record(actor, "batch.value.corrected", ("step_record", old.id), batch=batch_id,
           before={"value": to_text_or_none(old.value), "unit": old.unit, "record": old.id},
           after={"value": to_text(value), "unit": new.unit, "record": new.id, "in_limits": ok}, reason=reason)
    if not ok:
        dev = _new_deviation(actor, batch, step, Severity.MAJOR.value, "limits_missed",
                             f"{spec.title}: corrected value {to_text(value)} {spec.unit} is outside "
                             f"{_limits_text(spec.low, spec.high, spec.unit)}",
                             {"record": new.id, "corrects": old.id}, automatic=True, commit_record=False)
        _record_deviation(actor, dev)
    if _recompute_after(actor, batch, step.step_id, reason, now) or not ok:
        _refresh(batch, steps_of(batch_id))
    db.session.commit()
    return new


def _recompute_after(actor: Actor, batch: Batch, changed_step: str, why: str, now: datetime) -> list[StepRecord]:
    """Recompute the completed calculations that depend on ``changed_step`` (transitively),
    in document order; each changed result is a new record superseding the old one, audited
    as ``batch.value.recomputed``, with a deviation when it now misses its limits."""
    control = control_recipe(batch)
    changed = {changed_step}
    out: list[StepRecord] = []
    for row in steps_of(batch.id):
        if row.state != StepState.COMPLETED.value:
            continue
        new = step_kinds.get(row.kind).recompute(actor, batch, row, control.step(row.step_id), changed, changed_step,
                                                 why, now)
        if new is not None:
            out.append(new)
    return out

