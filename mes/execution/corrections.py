"""Corrections of recorded values (Annex 11 §8.2: the old value stays, superseded, with
the reason) and the recomputation of everything that used the corrected value."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from mes.audit.log import Actor, record
from mes.db import db
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.execution import common
from mes.execution.batches import _refresh, control_recipe, steps_of
from mes.execution.common import _dec, _locked, _new_id, _text
from mes.execution.deviations import _new_deviation, _record_deviation
from mes.execution.models import Batch, BatchStatus, BatchStep, Severity, StepRecord, StepState
from mes.execution.records import _current_records, _values
from mes.quantities import to_text
from mes.recipes import model as rm
from mes.recipes.formula import FormulaError
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
    if old.value is not None and Decimal(old.value) == value:
        raise ValidationFailed("The corrected value is the same as the recorded one.", field="value")
    ok = spec.in_limits(value)
    now = common.clock()
    new = StepRecord(id=_new_id("R"), batch_id=batch_id, batch_step_id=step.id, attempt=old.attempt, kind=old.kind,
                     value=to_text(value), unit=old.unit, data=dict(old.data),
                     flags=["correction"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                     reason=reason, recorded_at=now, recorded_by=actor.id)
    db.session.add(new)
    old.superseded_by = new.id
    old.flags = sorted(set(old.flags or []) | {"corrected"})
    step.version += 1
    db.session.flush()
    record(actor, "batch.value.corrected", ("step_record", old.id), batch=batch_id,
           before={"value": old.value, "unit": old.unit, "record": old.id},
           after={"value": new.value, "unit": new.unit, "record": new.id, "in_limits": ok}, reason=reason)
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
        if row.kind == "produce_output" and row.state == StepState.COMPLETED.value:
            produced = _recompute_yield(actor, batch, row, control.step(row.step_id), changed, why, now)
            out.extend([produced] if produced is not None else [])
            continue
        if row.kind != "calculation" or row.state != StepState.COMPLETED.value:
            continue
        spec: rm.CalculationStep = control.step(row.step_id)  # type: ignore[assignment]
        if not changed & set(spec.references):
            continue
        old = next(iter(_current_records(row, "value")), None)
        if old is None:
            continue
        values = _values(batch.id)
        try:
            result = spec.compute(values)
        except FormulaError as exc:
            raise Conflict(f"The correction makes calculation {spec.id} impossible ({exc}); nothing was changed.") \
                from None
        changed.add(row.step_id)
        if old.value is not None and Decimal(old.value) == result:
            continue
        ok = spec.in_limits(result)
        inputs = {ref: to_text(values[ref]) for ref in spec.references if ref in values}
        new = StepRecord(id=_new_id("R"), batch_id=batch.id, batch_step_id=row.id, attempt=old.attempt, kind="value",
                         value=to_text(result), unit=old.unit,
                         data={**old.data, "inputs": inputs, "recomputed_because": changed_step},
                         flags=["recomputed"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                         reason=f"recomputed after the correction of {changed_step}: {why}", recorded_at=now,
                         recorded_by=actor.id)
        db.session.add(new)
        old.superseded_by = new.id
        old.flags = sorted(set(old.flags or []) | {"corrected"})
        row.result = {**(row.result or {}), "value": new.value, "inputs": inputs, "in_limits": ok,
                      "recomputed": True}
        row.version += 1
        db.session.flush()
        record(actor, "batch.value.recomputed", ("step_record", old.id), batch=batch.id,
               before={"value": old.value, "unit": old.unit, "record": old.id},
               after={"value": new.value, "unit": new.unit, "record": new.id, "inputs": inputs, "in_limits": ok,
                      "formula": spec.formula}, reason=new.reason)
        if not ok:
            dev = _new_deviation(actor, batch, row, Severity.MAJOR.value, "limits_missed",
                                 f"{spec.title}: recomputed {to_text(result)} {spec.unit} is outside "
                                 f"{_limits_text(spec.low, spec.high, spec.unit)}",
                                 {"record": new.id, "corrects": old.id, "formula": spec.formula, "inputs": inputs},
                                 automatic=True, commit_record=False)
            _record_deviation(actor, dev)
        out.append(new)
    return out


def _recompute_yield(actor: Actor, batch: Batch, row: BatchStep, spec: rm.ProduceOutputStep, changed: set[str],
                     why: str, now: datetime) -> StepRecord | None:
    """A completed produce-output step whose theoretical quantity comes from a changed step:
    the quantity produced stays what was weighed, the theoretical and the yield are computed
    again (a new record superseding the old, audited, with a deviation when the yield now
    misses its limits)."""
    if not spec.theoretical_from or spec.theoretical_from not in changed:
        return None
    old = next(iter(_current_records(row, "value")), None)
    if old is None or old.value is None:
        return None
    theoretical = _values(batch.id).get(spec.theoretical_from)
    if theoretical is None:
        return None
    actual = Decimal(old.value)
    try:
        percent = spec.yield_percent(actual, theoretical)
    except (ArithmeticError, ValueError) as exc:
        raise Conflict(f"The correction makes the yield of step {spec.id} impossible to compute ({exc}); "
                       "nothing was changed.") from None
    if old.data.get("theoretical") == to_text(theoretical) and old.data.get("yield") == to_text(percent):
        return None
    ok = spec.yield_in_limits(percent)
    data = {**old.data, "theoretical": to_text(theoretical), "yield": to_text(percent),
            "recomputed_because": spec.theoretical_from}
    new = StepRecord(id=_new_id("R"), batch_id=batch.id, batch_step_id=row.id, attempt=old.attempt, kind="value",
                     value=old.value, unit=old.unit, data=data,
                     flags=["recomputed"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                     reason=f"yield recomputed after the correction of {spec.theoretical_from}: {why}",
                     recorded_at=now, recorded_by=actor.id)
    db.session.add(new)
    old.superseded_by = new.id
    old.flags = sorted(set(old.flags or []) | {"corrected"})
    row.result = {**(row.result or {}), "theoretical": data["theoretical"], "yield": data["yield"], "in_limits": ok,
                  "recomputed": True}
    row.version += 1
    db.session.flush()
    record(actor, "batch.value.recomputed", ("step_record", old.id), batch=batch.id,
           before={"value": old.value, "unit": old.unit, "record": old.id, "theoretical": old.data.get("theoretical"),
                   "yield": old.data.get("yield")},
           after={"value": new.value, "unit": new.unit, "record": new.id, "theoretical": data["theoretical"],
                  "yield": data["yield"], "in_limits": ok}, reason=new.reason)
    if not ok:
        dev = _new_deviation(actor, batch, row, Severity.MAJOR.value, "yield_out_of_limits",
                             f"{spec.title}: recomputed yield {data['yield']} % is outside "
                             f"{to_text(spec.yield_low)} to {to_text(spec.yield_high)} %",
                             {"record": new.id, "corrects": old.id, "step": spec.id,
                              "theoretical": data["theoretical"], "yield": data["yield"]},
                             automatic=True, commit_record=False)
        _record_deviation(actor, dev)
    return new
