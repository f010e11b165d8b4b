"""The step-kind handlers: what each kind of step validates and records when it is
completed (:data:`HANDLERS`, looked up by ``step.kind``), and the context they get.

Moved here verbatim from the engine; the per-kind modules of ``mes/steps`` replace it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from mes.audit.log import Actor
from mes.db import db, utcnow
from mes.equipment import operations as equipment
from mes.errors import Conflict, Forbidden, NotFound, ValidationFailed
from mes.execution.batches import LockedBatch, OpenStep, control_recipe, get_batch, get_step
from mes.execution.claims import _claim_reason
from mes.execution.common import (
    DEFAULT_MAX_READING_AGE_MS,
    NOT_CLEAN,
    OUT_OF_CALIBRATION,
    SessionSource,
    StepNotReady,
    StepRefused,
    _at,
    _dec,
    _new_id,
    _RefuseWithDeviation,
    _text,
)
from mes.execution.models import BatchStep, Severity, StepRecord, StepState
from mes.execution.records import _current_records, _record_json, _values
from mes.gateway.store import CapturedReading, ReadingStore
from mes.materials import operations as materials
from mes.recipes import model as rm
from mes.recipes.formula import FormulaError
from mes.recipes.scaling import ControlRecipe
from mes.recipes.units import Duration, UnitError, convert, decimal_places, to_text
from mes.signatures import operations as esig
from mes.signatures.credentials import credentials_from
from mes.users.permissions import Permission


@dataclass
class _Ctx:
    actor: Actor
    batch: LockedBatch
    step: OpenStep
    rows: list[OpenStep]  # the steps not completed yet
    control: ControlRecipe
    spec: rm.Step
    payload: dict[str, Any]
    now: datetime
    session_row: SessionSource = None
    readings: ReadingStore | None = None
    max_reading_age_ms: int = DEFAULT_MAX_READING_AGE_MS
    records: list[StepRecord] = field(default_factory=list)
    deviations: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    # writes of other features (consumption, produced lot, equipment status) in this
    # step's transaction, run after every check passed
    effects: list[Callable[[], None]] = field(default_factory=list)


def _rec(ctx: _Ctx, kind: str, data: dict[str, Any], value: Decimal | None = None, unit: str | None = None,
         flags: list[str] | None = None) -> StepRecord:
    rec = StepRecord(id=_new_id("R"), batch_id=ctx.batch.id, batch_step_id=ctx.step.id, attempt=ctx.step.attempt,
                     kind=kind, value=to_text(value) if value is not None else None, unit=unit, data=data,
                     flags=flags or [], recorded_at=ctx.now, recorded_by=ctx.actor.id)
    ctx.records.append(rec)
    return rec


def _deviate(ctx: _Ctx, category: str, description: str, evidence: dict[str, Any],
             severity: str = Severity.MAJOR.value) -> None:
    ctx.deviations.append({"severity": severity, "category": category, "description": description,
                           "evidence": evidence})


def _places_ok(value: Decimal, precision: int, field_name: str) -> Decimal:
    if decimal_places(value) > precision:
        raise ValidationFailed(f"{field_name} has more than {precision} decimal place(s).", field=field_name)
    return value.quantize(Decimal(1).scaleb(-precision)) if precision >= 0 else value


def _limits_text(low: Decimal | None, high: Decimal | None, unit: str) -> str:
    lo = to_text(low) if low is not None else "-"
    hi = to_text(high) if high is not None else "-"
    return f"{lo} to {hi} {unit}"


def _instruction(ctx: _Ctx) -> None:
    if ctx.payload.get("confirm") is not True:
        raise ValidationFailed("Confirm the instruction (confirm: true).", field="confirm")
    _rec(ctx, "confirmation", {"confirmed": True})
    ctx.result = {"confirmed": True}


def _numeric(ctx: _Ctx) -> None:
    spec: rm.NumericStep = ctx.spec  # type: ignore[assignment]
    value = _places_ok(_dec(ctx.payload.get("value"), "value", signed=True), spec.precision, "value")
    ok = spec.in_limits(value)
    _rec(ctx, "value", {"low": _opt(spec.low), "high": _opt(spec.high), "target": _opt(spec.target)}, value, spec.unit,
         [] if ok else ["out_of_limits"])
    ctx.result = {"value": to_text(value), "unit": spec.unit, "in_limits": ok}
    if not ok:
        _deviate(ctx, "limits_missed", f"{spec.title}: {to_text(value)} {spec.unit} is outside "
                 f"{_limits_text(spec.low, spec.high, spec.unit)}",
                 {"step": spec.id, "value": to_text(value), "unit": spec.unit, "low": _opt(spec.low),
                  "high": _opt(spec.high)})


def _opt(value: Decimal | None) -> str | None:
    return to_text(value) if value is not None else None


def _capture(ctx: _Ctx, spec: rm.WeighStep) -> tuple[Decimal, dict[str, Any], CapturedReading]:
    """The weight of a weigh step, taken on the server (capture rules, issue #5).

    The client names the scale (``device_id``, optionally the ``sequence`` of the reading it
    showed); the value is the latest reading the gateway stored for that device. Refused,
    with the reason: an unregistered or unusable scale, no reading, an unstable, faulty or
    stale reading (older than ``max_reading_age_ms``), a reading older than the one the
    kiosk showed, a scale out of calibration (raises a deviation), or one whose capacity,
    minimum weight, readability or accuracy class does not suit the weighing. Returns the
    net weight in the step's unit, the record of the reading (raw device reply, identity,
    equipment) and the reading itself.
    """
    assert spec.unit is not None and spec.target is not None
    if "reading" in ctx.payload:
        raise ValidationFailed("The server takes the weight from the scale; send the scale's device_id, "
                               "not a reading.", field="reading")
    device_id = _text(ctx.payload.get("device_id"), "The scale (device_id)", "device_id")
    seen = ctx.payload.get("sequence")
    if seen is not None and (not isinstance(seen, int) or isinstance(seen, bool) or seen < 0):
        raise ValidationFailed("sequence is the number of the reading the kiosk showed (a whole number).",
                               field="sequence")
    evidence: dict[str, Any] = {"step": spec.id, "device_id": device_id}
    eq = equipment.equipment_for_device(device_id)
    if eq is None:
        raise StepRefused(f"Scale {device_id} is not registered in the MES and must not be used. "
                          "Use a registered scale or tell the supervisor.", code="unknown_device", device_id=device_id)
    evidence["equipment_id"] = eq.id
    if ctx.readings is None:
        raise StepRefused("No device gateway feeds this server, so no weight can be taken from a scale. "
                          "Tell the supervisor.", code="no_gateway", device_id=device_id)
    captured = ctx.readings.latest(device_id)
    if captured is None:
        raise StepRefused(f"{eq.label} has sent no reading. Check that the scale is on and connected, then weigh "
                          "again.", code="no_reading", device_id=device_id, equipment_id=eq.id)
    if seen is not None and captured.sequence < seen:
        raise StepRefused(f"The server has not received the reading the kiosk showed from {eq.label} yet "
                          f"(it has reading {captured.sequence}, the kiosk showed {seen}). Weigh again.",
                          code="reading_behind", device_id=device_id, equipment_id=eq.id)
    # the age is measured on the real clock: the gateway stamps readings with it
    seen_as = {**captured.to_json(), "timestamp": captured.at.isoformat()}
    checked = equipment.check_reading(seen_as, Decimal(ctx.max_reading_age_ms) / 1000, utcnow(),
                                      require_stable=spec.stable_reading)
    if not checked.ok:
        raise StepRefused(checked.reason, code=checked.code, device_id=device_id, equipment_id=eq.id)
    value = Decimal(checked.details["value"])
    try:
        net = convert(value, captured.unit, spec.unit)
    except UnitError as exc:
        raise StepRefused(f"{eq.label} weighs in {captured.unit}; this step cannot use it ({exc}).",
                          code="wrong_unit", device_id=device_id) from None
    if net <= 0:
        raise StepRefused(f"{eq.label} shows no load ({to_text(value)} {captured.unit}). Put the container on the "
                          "scale and weigh again.", code="no_load", device_id=device_id)
    # capacity and minimum weight against the target (one container) or this container's net
    # (in the unit the recipe states the scale requirement in, so the reason reads as the recipe)
    weighed = convert(net if spec.multiple_containers else spec.target, spec.unit, spec.scale.unit)
    suits = equipment.check_scale_for_weighing(
        device_id, weighed, spec.scale.unit, readability_required=spec.scale.readability,
        accuracy_class_required=spec.scale.accuracy_class, at=ctx.now)
    reading = {**checked.details["reading"], "raw_hex": captured.raw.hex(), "seen_sequence": seen}
    if not suits.ok:
        if suits.code in OUT_OF_CALIBRATION:
            raise _RefuseWithDeviation(suits.reason, Severity.MINOR.value, "equipment_out_of_calibration",
                                       {**evidence, "check": suits.as_json(), "reading": reading})
        raise StepRefused(suits.reason, code=suits.code, device_id=device_id, equipment_id=eq.id)
    reading["calibration"] = suits.details.get("calibration")
    reading["accuracy_class"] = suits.details.get("accuracy_class")
    reading["readability"] = suits.details.get("readability")
    return net, reading, captured


def _weigh(ctx: _Ctx) -> None:
    spec: rm.WeighStep = ctx.spec  # type: ignore[assignment]
    low, high = spec.window()
    unit = spec.unit
    assert unit is not None
    lot_id = _text(ctx.payload.get("lot_id"), "The lot", "lot_id")
    container_id = _text(ctx.payload.get("container_id"), "The container", "container_id")
    more = ctx.payload.get("more") is True
    earlier = _current_records(ctx.step, "container")
    if more and not spec.multiple_containers:
        raise ValidationFailed(f"Step {spec.id} takes one container only.", field="more")
    if spec.max_containers and len(earlier) + 1 > spec.max_containers:
        raise ValidationFailed(f"Step {spec.id} takes at most {spec.max_containers} containers.", field="lot_id")
    net, reading, captured = _capture(ctx, spec)
    total = sum((Decimal(r.value) for r in earlier), Decimal(0)) + net
    evidence = {"step": spec.id, "lot": lot_id, "container": container_id, "reading": reading,
                "net": to_text(net), "total": to_text(total), "unit": unit, "low": to_text(low), "high": to_text(high)}
    usable = materials.check_usable(lot_id, spec.item)
    if not usable.ok:
        raise _RefuseWithDeviation(f"{usable.reason}", Severity.MINOR.value, "unusable_lot",
                                   {**evidence, "usability": usable.as_json()})
    if total > high or (not more and total < low):
        raise _RefuseWithDeviation(
            f"{spec.title}: net weight {to_text(total)} {unit} is outside the tolerance window "
            f"{to_text(low)} to {to_text(high)} {unit} (target {to_text(spec.target)} {unit}); nothing was recorded. "
            "Correct the weighing.", Severity.MAJOR.value, "out_of_tolerance", evidence)
    rec = _rec(ctx, "container", {"lot": lot_id, "container": container_id, "reading": reading, "item": spec.item,
                                  "equipment_id": reading["equipment_id"]}, net, unit)
    ctx.complete = not more
    ctx.result = {"net": to_text(net), "total": to_text(total), "unit": unit, "low": to_text(low), "high": to_text(high),
                  "containers": len(earlier) + 1, "complete": not more, "device_id": captured.device_id,
                  "sequence": captured.sequence, "value": reading["value"], "reading_unit": captured.unit}
    if not more:
        _rec(ctx, "value", {"containers": len(earlier) + 1, "target": _opt(spec.target)}, total, unit)
    actor, batch, wo, line = ctx.actor, ctx.batch.id, ctx.batch.work_order_id, ctx.batch.line

    def take() -> None:
        used = materials.consume(actor, lot_id, container_id, reading["value"], captured.unit, batch, spec.id, wo,
                                 line, item_code=spec.item, commit=False)
        rec.data = {**rec.data, "consumption": used.id}

    ctx.effects.append(take)


def _identify(ctx: _Ctx) -> None:
    spec: rm.IdentifyStep = ctx.spec  # type: ignore[assignment]
    lot_id = _text(ctx.payload.get("lot_id"), "The scanned lot", "lot_id")
    data: dict[str, Any] = {"lot": lot_id, "item": spec.item, "scan": spec.scan}
    if spec.scan == "dispensed":
        dispensed = [c for c in materials.consumptions(lot_id=lot_id, batch_id=ctx.batch.id)
                     if c.item_code == spec.item and materials.reversal_of(c.id) is None
                     and (spec.dispensed_by is None or c.step_id == spec.dispensed_by)]
        if not dispensed:
            where = f" by step {spec.dispensed_by}" if spec.dispensed_by else ""
            raise StepRefused(f"Lot {lot_id} was not dispensed{where} for {spec.item} in batch {ctx.batch.id}. "
                              "Scan the container dispensed for this batch.", lot_id=lot_id)
        data["dispensed_by"] = sorted({c.step_id or "" for c in dispensed})
    else:
        usable = materials.check_usable(lot_id, spec.item)
        if not usable.ok:
            raise StepRefused(usable.reason, code=usable.code, lot_id=lot_id, hold_id=usable.hold_id)
        data["conditional"] = usable.conditional
    _rec(ctx, "identification", data)
    ctx.result = {"lot": lot_id, "item": spec.item}


def _equipment(ctx: _Ctx) -> None:
    """Equipment check against the registry: class, required states (clean within
    ``max_since_cleaning``, calibrated, qualified, not in use). Not clean or out of
    calibration refuses and raises a deviation; any other failure refuses with the reason.
    With ``claim`` the equipment becomes in use by the batch until the batch ends."""
    spec: rm.EquipmentCheckStep = ctx.spec  # type: ignore[assignment]
    equipment_id = _text(ctx.payload.get("equipment_id"), "The equipment id", "equipment_id")
    max_since = timedelta(seconds=spec.max_since_cleaning.seconds) if spec.max_since_cleaning else None
    check = equipment.check_equipment(equipment_id, spec.required_states, ctx.now,
                                      equipment_class=spec.equipment_class, max_since_cleaning=max_since)
    evidence = {"step": spec.id, "equipment_id": equipment_id, "equipment_class": spec.equipment_class,
                "required": list(spec.required_states), "check": check.as_json()}
    if not check.ok:
        if check.code in NOT_CLEAN:
            raise _RefuseWithDeviation(check.reason, Severity.MINOR.value, "equipment_not_clean", evidence)
        if check.code in OUT_OF_CALIBRATION:
            raise _RefuseWithDeviation(check.reason, Severity.MINOR.value, "equipment_out_of_calibration", evidence)
        raise StepRefused(check.reason, code=check.code, equipment_id=equipment_id)
    _rec(ctx, "equipment", {"equipment_id": equipment_id, "equipment_class": spec.equipment_class,
                            "required": list(spec.required_states),
                            "max_since_cleaning": spec.max_since_cleaning.iso if spec.max_since_cleaning else None,
                            "registry_checked": True, "registry": check.details, "claimed": spec.claim})
    ctx.result = {"equipment_id": equipment_id, "status": check.details.get("status"), "claimed": spec.claim}
    if spec.claim:
        actor, batch_id = ctx.actor, ctx.batch.id
        ctx.effects.append(lambda: equipment.set_status(actor, equipment_id, equipment.S.IN_USE.value,
                                                        _claim_reason(batch_id), batch=batch_id, commit=False))


def _timer(ctx: _Ctx) -> None:
    spec: rm.TimerStep = ctx.spec  # type: ignore[assignment]
    if spec.from_step:
        origin = get_step(ctx.batch.id, spec.from_step)
        if origin.completed_at is None:
            raise StepNotReady(f"The hold time counts from step {spec.from_step}, which is not completed.")
        start = origin.completed_at
    else:
        if ctx.step.state != StepState.IN_PROGRESS.value or ctx.step.started_at is None:
            raise StepNotReady(f"Start the timer of step {spec.id} first.")
        start = ctx.step.started_at
    seconds = int((ctx.now - start).total_seconds())
    elapsed = Duration(max(0, seconds))
    ok = spec.in_limits(elapsed)
    data = {"started_at": _at(start), "stopped_at": _at(ctx.now), "elapsed": elapsed.iso,
            "minimum": spec.minimum.iso if spec.minimum else None, "maximum": spec.maximum.iso if spec.maximum else None,
            "from_step": spec.from_step}
    _rec(ctx, "timer", data, Decimal(elapsed.seconds), "s", [] if ok else ["out_of_limits"])
    ctx.result = {**data, "in_limits": ok}
    if not ok:
        what = "hold time exceeded" if spec.maximum and elapsed > spec.maximum else "time outside window"
        _deviate(ctx, "hold_time_exceeded" if spec.from_step else "time_out_of_window",
                 f"{spec.title}: {what} ({elapsed.human}; allowed "
                 f"{spec.minimum.human if spec.minimum else '0 s'} to {spec.maximum.human if spec.maximum else 'no limit'})",
                 {"step": spec.id, **data})


def _calculation(ctx: _Ctx) -> None:
    spec: rm.CalculationStep = ctx.spec  # type: ignore[assignment]
    values = _values(ctx.batch.id)
    inputs = {ref: values.get(ref) for ref in spec.references}
    missing = [k for k, v in inputs.items() if v is None]
    if missing:
        raise StepNotReady(f"The formula needs values not recorded yet: {', '.join(missing)}.")
    try:
        result = spec.compute(values)
    except FormulaError as exc:
        raise StepRefused(f"The calculation cannot be done: {exc}") from None
    ok = spec.in_limits(result)
    shown = {k: to_text(v) for k, v in inputs.items() if v is not None}
    _rec(ctx, "value", {"formula": spec.formula, "inputs": shown, "low": _opt(spec.low), "high": _opt(spec.high)},
         result, spec.unit, [] if ok else ["out_of_limits"])
    ctx.result = {"formula": spec.formula, "inputs": shown, "value": to_text(result), "unit": spec.unit,
                  "in_limits": ok}
    if not ok:
        _deviate(ctx, "limits_missed", f"{spec.title}: {to_text(result)} {spec.unit} is outside "
                 f"{_limits_text(spec.low, spec.high, spec.unit)}",
                 {"step": spec.id, "formula": spec.formula, "inputs": shown, "value": to_text(result)})


def _sample(ctx: _Ctx) -> None:
    spec: rm.SampleCheckStep = ctx.spec  # type: ignore[assignment]
    raw = ctx.payload.get("results")
    if not isinstance(raw, list) or len(raw) != spec.samples:
        raise ValidationFailed(f"Enter exactly {spec.samples} results.", field="results")
    results = [_places_ok(_dec(v, f"results/{i}"), spec.precision, f"results/{i}") for i, v in enumerate(raw)]
    verdict = spec.evaluate(results)
    data = {"results": [to_text(r) for r in results], "mean": to_text(verdict.mean),
            "out_of_limits": list(verdict.out_of_limits), "mean_ok": verdict.mean_ok,
            "low": _opt(spec.low), "high": _opt(spec.high), "mean_low": _opt(spec.mean_low), "mean_high": _opt(spec.mean_high)}
    _rec(ctx, "value", data, verdict.mean, spec.unit, [] if verdict.ok else ["out_of_limits"])
    ctx.result = {**data, "unit": spec.unit, "in_limits": verdict.ok}
    if not verdict.ok:
        _deviate(ctx, "limits_missed", f"{spec.title}: results outside the limits "
                 f"(individual {_limits_text(spec.low, spec.high, spec.unit)}, mean {to_text(verdict.mean)})",
                 {"step": spec.id, **data})


def _performers(batch_id: str, step_ids: list[str]) -> set[str]:
    if not step_ids:
        return set()
    return set(db.session.execute(select(StepRecord.recorded_by).join(BatchStep, BatchStep.id == StepRecord.batch_step_id)
                                  .where(BatchStep.batch_id == batch_id, BatchStep.step_id.in_(step_ids))).scalars())


@esig.record_provider("batch_step")
def batch_step_record(batch_step_id: str) -> dict[str, Any]:
    """What a signature gate signs: the step, its attempt and the current values of the steps it covers."""
    step = db.session.get(BatchStep, batch_step_id)
    if step is None:
        raise NotFound(f"No batch step {batch_step_id}.")
    batch = get_batch(step.batch_id)
    spec = control_recipe(batch).step(step.step_id)
    covers = list(getattr(spec, "covers", ()) or ())
    covered = {}
    for sid in covers:
        recs = _current_records(get_step(batch.id, sid))
        covered[sid] = [_record_json(r) for r in recs]
    return {"batch": batch.id, "recipe_hash": batch.recipe_hash, "step": step.step_id, "attempt": step.attempt,
            "covers": covered}


def _signature(ctx: _Ctx) -> None:
    spec: rm.SignatureStep = ctx.spec  # type: ignore[assignment]
    session_row = ctx.session_row() if callable(ctx.session_row) else ctx.session_row
    if session_row is None:
        raise Forbidden("A signature step is signed by a person in an interactive session.")
    creds = credentials_from(ctx.payload)
    user = session_row.user
    role = next((r for r in spec.roles if r in user.role_names()), None)
    if role is None:
        raise Forbidden(f"This signature needs the role {' or '.join(spec.roles)}.")
    performed_by = None
    if spec.second_person:
        earlier = list(spec.covers) or list(db.session.execute(
            select(BatchStep.step_id).where(BatchStep.batch_id == ctx.batch.id, BatchStep.seq < ctx.step.seq)
            .order_by(BatchStep.seq.desc()).limit(1)).scalars())
        people = _performers(ctx.batch.id, earlier)
        if user.id in people:
            raise Conflict("Second-person verification must be done by a different person than the one who "
                           f"performed {', '.join(earlier)}.")
        performed_by = sorted(people)[0] if people else None
    entry = esig.sign(session_row, creds, "batch_step", ctx.step.id, spec.meaning, role=role,
                      terminal=ctx.actor.terminal, batch=ctx.batch.id, performed_by=performed_by,
                      permission=Permission.BATCH_VERIFY if spec.second_person else Permission.ESIG_SIGN,
                      comment=ctx.payload.get("comment"), commit=False)
    sig = json.loads(entry.entry_bytes)["signature"]
    _rec(ctx, "signature", {"signer": sig["signer"], "name": sig["name"], "meaning": sig["meaning"], "role": role,
                            "record_hash": sig["record_hash"], "audit_seq": entry.seq,
                            "second_person": spec.second_person, "performed_by": performed_by})
    ctx.result = {"signer": sig["signer"], "meaning": sig["meaning"], "audit_seq": entry.seq}


def _produce(ctx: _Ctx) -> None:
    spec: rm.ProduceOutputStep = ctx.spec  # type: ignore[assignment]
    qty = _dec(ctx.payload.get("quantity"), "quantity")
    if qty <= 0:
        raise ValidationFailed("The quantity produced must be above zero.", field="quantity")
    unit = ctx.payload.get("unit") or spec.unit
    try:
        actual = convert(qty, unit, spec.unit)
    except UnitError as exc:
        raise ValidationFailed(f"The unit cannot be used: {exc}", field="unit") from None
    theoretical = spec.quantity
    if spec.theoretical_from:
        value = _values(ctx.batch.id).get(spec.theoretical_from)
        if value is None:
            raise StepNotReady(f"The theoretical quantity comes from step {spec.theoretical_from}, not recorded yet.")
        theoretical = value
    percent = spec.yield_percent(actual, theoretical)
    ok = spec.yield_in_limits(percent)
    lot_id = ctx.payload.get("lot_id") or f"{ctx.batch.id}-{spec.item}"[:64]
    data = {"item": spec.item, "lot": lot_id, "theoretical": to_text(theoretical), "yield": to_text(percent),
            "yield_low": to_text(spec.yield_low), "yield_high": to_text(spec.yield_high)}
    _rec(ctx, "value", data, actual, spec.unit, [] if ok else ["out_of_limits"])
    ctx.result = {**data, "quantity": to_text(actual), "unit": spec.unit, "in_limits": ok}
    if not ok:
        _deviate(ctx, "yield_out_of_limits", f"{spec.title}: yield {to_text(percent)} % is outside "
                 f"{to_text(spec.yield_low)} to {to_text(spec.yield_high)} %", {"step": spec.id, **data})
    actor, batch, wo = ctx.actor, ctx.batch.id, ctx.batch.work_order_id
    ctx.effects.append(lambda: materials.produce(actor, spec.item, lot_id, to_text(qty), unit, batch,
                                                 work_order_id=wo, commit=False) and None)


HANDLERS: dict[str, Callable[[_Ctx], None]] = {
    "instruction": _instruction, "numeric": _numeric, "weigh": _weigh, "identify": _identify,
    "equipment_check": _equipment, "timer": _timer, "calculation": _calculation, "sample_check": _sample,
    "signature": _signature, "produce_output": _produce,
}
