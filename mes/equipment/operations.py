"""Service layer for equipment: registration, status, deactivation, cleaning and
calibration records, and the checks the batch execution engine calls.

Every change is one transaction with its audit entry (``equipment.*`` actions). Functions
take the acting :class:`~mes.audit.log.Actor` explicitly and never look at a request, so the
API, the CLI and the engine are thin shells over them.

Status life cycle (``set_status``; a reason is required wherever the move is not the
ordinary start or end of use)::

    available ──> in_use ──> dirty ──(record_cleaning)──> clean ──> in_use
        any state except in_use <──> maintenance (reason), in_use ──> available (reason)

``clean`` is reached only by recording a cleaning: nobody can declare equipment clean
without a cleaning record.

The checks (:func:`check_equipment`, :func:`check_scale_for_weighing`,
:func:`check_reading`) never raise for a refusal: they return a :class:`Check` whose
``reason`` is the sentence the kiosk shows as it is, and whose ``code`` says why for
machines. Calibration due dates are calendar dates at the plant (``MES_TIMEZONE``, see
:mod:`mes.plant_time`): a scale may be used through its due date and not from the day after.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.audit.log import ADVISORY_LOCK_KEY, Actor, record
from mes.db import db, utcnow
from mes.equipment.models import (
    AccuracyClass,
    CalibrationRecord,
    CalibrationResult,
    CleaningRecord,
    Equipment,
    EquipmentKind,
    EquipmentStatus,
)
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.plant_time import plant_date
from mes.validation import NAME_MAX, SHORT_MAX, TEXT_MAX, get_or_404, identifier, optional_text, required_text
from mes.verdict import Verdict

S = EquipmentStatus

#: States a check may require. ``not_in_use``: not in use by anyone; ``available``: free
#: to be used (status available or clean); ``qualified``: registered, active and not under
#: maintenance (which every check requires anyway).
CHECK_STATES = ("clean", "calibrated", "not_in_use", "available", "qualified")

#: Allowed status moves: target -> whether a reason is required. ``clean`` is reached only
#: through :func:`record_cleaning`.
TRANSITIONS: dict[str, dict[str, bool]] = {
    S.AVAILABLE.value: {S.IN_USE.value: False, S.DIRTY.value: True, S.MAINTENANCE.value: True},
    S.CLEAN.value: {S.IN_USE.value: False, S.DIRTY.value: True, S.MAINTENANCE.value: True},
    S.IN_USE.value: {S.DIRTY.value: False, S.AVAILABLE.value: True, S.MAINTENANCE.value: True},
    S.DIRTY.value: {S.MAINTENANCE.value: True},
    S.MAINTENANCE.value: {S.AVAILABLE.value: True, S.DIRTY.value: True},
}
ACCURACY_RANK = {c.value: i for i, c in enumerate(AccuracyClass)}  # I finest
MAX_CLOCK_SKEW = timedelta(seconds=2)


# ------------------------------------------------------------------------ helpers


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_at(value)
    return value.isoformat()


def _aware(value: datetime, field_name: str) -> datetime:
    if value.tzinfo is None:
        raise ValidationFailed(f"{field_name} needs a time zone.", field=field_name)
    return value


def _mass(value: Any, field_name: str) -> tuple[Decimal, str]:
    """A positive mass ``(value, unit)`` from a ``(value, uom)`` pair or ``{"value", "uom"}``."""
    if isinstance(value, Mapping):
        value = (value.get("value"), value.get("uom"))
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValidationFailed(f"{field_name} is a value with its unit.", field=field_name)
    raw, unit = value
    try:
        amount = q.parse_quantity(raw)
        if q.material_dimension(unit) != "mass":
            raise q.QuantityError(f"{unit} is not a unit of mass")
        q.storable(amount, unit)
    except q.QuantityError as exc:
        raise ValidationFailed(f"{field_name}: {exc}.", field=field_name) from None
    if amount <= 0:
        raise ValidationFailed(f"{field_name} must be more than zero.", field=field_name)
    return amount, unit


def _grams(value: Decimal, unit: str) -> Decimal:
    return q.convert(value, unit, "g")


def _commit(conflict_message: str) -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(conflict_message) from None


def _locked_equipment(equipment_id: str) -> Equipment:
    """The equipment row, locked for update on PostgreSQL after the audit append lock (the
    order every audited writer takes); SQLite holds its write lock for the transaction."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    eq = db.session.execute(
        select(Equipment).where(Equipment.id == equipment_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar()
    if eq is None:
        raise NotFound(f"Equipment {equipment_id} is not registered.")
    return eq


def _human_age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return "just now" if seconds < 60 else "1 min ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _human_span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# ------------------------------------------------------------------------ reading


def get_equipment(equipment_id: str) -> Equipment:
    return get_or_404(Equipment, equipment_id, detail=f"Equipment {equipment_id} is not registered.")


def equipment_for_device(device_id: str) -> Equipment | None:
    return db.session.execute(select(Equipment).where(Equipment.device_id == device_id)).scalar()


def list_equipment(
    *,
    kind: str | None = None,
    status: str | None = None,
    line: str | None = None,
    equipment_class: str | None = None,
    include_inactive: bool = False,
) -> list[Equipment]:
    stmt = select(Equipment).order_by(Equipment.id)
    if kind:
        stmt = stmt.where(Equipment.kind == kind)
    if status:
        stmt = stmt.where(Equipment.status == status)
    if line:
        stmt = stmt.where(Equipment.line == line)
    if equipment_class:
        stmt = stmt.where(Equipment.equipment_class == equipment_class)
    if not include_inactive:
        stmt = stmt.where(Equipment.active.is_(True))
    return list(db.session.execute(stmt).scalars())


def cleanings(equipment_id: str) -> list[CleaningRecord]:
    """Cleaning records, newest first."""
    return list(db.session.execute(
        select(CleaningRecord).where(CleaningRecord.equipment_id == equipment_id)
        .order_by(CleaningRecord.cleaned_at.desc(), CleaningRecord.recorded_at.desc())
    ).scalars())


def calibrations(equipment_id: str) -> list[CalibrationRecord]:
    """Calibration records, newest first."""
    return list(db.session.execute(
        select(CalibrationRecord).where(CalibrationRecord.equipment_id == equipment_id)
        .order_by(CalibrationRecord.calibrated_at.desc(), CalibrationRecord.recorded_at.desc())
    ).scalars())


def last_cleaning(equipment_id: str) -> CleaningRecord | None:
    rows = cleanings(equipment_id)
    return rows[0] if rows else None


def last_calibration(equipment_id: str) -> CalibrationRecord | None:
    rows = calibrations(equipment_id)
    return rows[0] if rows else None


def current_calibration(equipment_id: str) -> CalibrationRecord | None:
    """The latest passing calibration (None if there is none)."""
    return next((c for c in calibrations(equipment_id) if c.result == CalibrationResult.PASS.value), None)


# ------------------------------------------------------------------- registration


def register_equipment(
    actor: Actor,
    equipment_id: str,
    kind: str,
    equipment_class: str,
    description: str,
    *,
    location: str | None = None,
    line: str | None = None,
    status: str = S.AVAILABLE.value,
    clean_hold: timedelta | None = None,
    device_id: str | None = None,
    driver: str | None = None,
    capacity: Any = None,
    min_weight: Any = None,
    readability: Any = None,
    accuracy_class: str | None = None,
) -> Equipment:
    """Register equipment. A scale needs ``capacity``, ``min_weight`` and ``readability``
    (each ``(Decimal|str, unit)`` or ``{"value": "6.1", "uom": "kg"}``); ``device_id`` ties it
    to the ``devices/`` driver instance that reads it."""
    equipment_id = identifier(equipment_id, "equipment id", "id")
    if kind not in {k.value for k in EquipmentKind}:
        raise ValidationFailed(f"The kind must be one of {', '.join(k.value for k in EquipmentKind)}.", field="kind")
    equipment_class = required_text(equipment_class, "The equipment class", "class", NAME_MAX)
    description = required_text(description, "The description", "description", NAME_MAX)
    if status not in (S.AVAILABLE.value, S.DIRTY.value, S.MAINTENANCE.value):
        raise ValidationFailed("New equipment starts available, dirty or in maintenance; "
                               "record a cleaning to make it clean.", field="status")
    hold_s = None
    if clean_hold is not None:
        hold_s = int(clean_hold.total_seconds())
        if hold_s <= 0:
            raise ValidationFailed("The clean hold time must be more than zero.", field="clean_hold_hours")
    scale: dict[str, Any] = {}
    if kind == EquipmentKind.SCALE.value:
        cap = _mass(capacity, "capacity")
        minimum = _mass(min_weight, "min_weight")
        read = _mass(readability, "readability")
        if _grams(*minimum) >= _grams(*cap):
            raise ValidationFailed("The minimum weight must be below the capacity.", field="min_weight")
        if _grams(*read) > _grams(*minimum):
            raise ValidationFailed("The readability must not be coarser than the minimum weight.", field="readability")
        if accuracy_class is not None and accuracy_class not in ACCURACY_RANK:
            raise ValidationFailed("The accuracy class is one of I, II, III, IIII.", field="accuracy_class")
        scale = {"device_id": identifier(device_id, "device id", "device_id") if device_id else None,
                 "driver": optional_text(driver, "The driver", "driver", 32),
                 "capacity": cap[0], "capacity_uom": cap[1], "min_weight": minimum[0], "min_weight_uom": minimum[1],
                 "readability": read[0], "readability_uom": read[1], "accuracy_class": accuracy_class}
        if scale["device_id"] and equipment_for_device(scale["device_id"]) is not None:
            raise Conflict(f"Device {scale['device_id']} is already registered to other equipment.")
    elif any(v is not None for v in (device_id, driver, capacity, min_weight, readability, accuracy_class)):
        raise ValidationFailed("Device, capacity, minimum weight, readability and accuracy class are for scales only.",
                               field="kind")
    if db.session.get(Equipment, equipment_id) is not None:
        raise Conflict(f"Equipment {equipment_id} is registered already; equipment ids are never reused.")
    now = utcnow()
    eq = Equipment(id=equipment_id, kind=kind, equipment_class=equipment_class, description=description,
                   location=optional_text(location, "The location", "location", SHORT_MAX),
                   line=optional_text(line, "The line", "line", SHORT_MAX), status=status,
                   clean_hold_s=hold_s, active=True, created_at=now, created_by=actor.id, **scale)
    db.session.add(eq)
    record(actor, "equipment.registered", ("equipment", equipment_id), after=_audit_view(eq))
    _commit(f"Equipment {equipment_id} or its device is registered already.")
    return eq


def _audit_view(eq: Equipment) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": eq.kind, "class": eq.equipment_class, "description": eq.description,
                           "location": eq.location, "line": eq.line, "status": eq.status,
                           "clean_hold_s": eq.clean_hold_s}
    if eq.kind == EquipmentKind.SCALE.value:
        out.update(_scale_json(eq))
    return out


def _scale_json(eq: Equipment) -> dict[str, Any]:
    def qty(value: Decimal | None, uom: str | None) -> dict[str, str] | None:
        return None if value is None or uom is None else q.as_json(value, uom)

    return {"device_id": eq.device_id, "driver": eq.driver, "capacity": qty(eq.capacity, eq.capacity_uom),
            "min_weight": qty(eq.min_weight, eq.min_weight_uom),
            "readability": qty(eq.readability, eq.readability_uom), "accuracy_class": eq.accuracy_class}


def deactivate_equipment(actor: Actor, equipment_id: str, reason: str) -> Equipment:
    """Take equipment out of service for good (never deleted); a reason is required."""
    reason = required_text(reason, "A reason", "reason", TEXT_MAX)
    eq = _locked_equipment(equipment_id)
    if not eq.active:
        raise Conflict(f"{eq.label} is already deactivated.")
    if eq.status == S.IN_USE.value:
        raise Conflict(f"{eq.label} is in use; finish the use before deactivating it.")
    eq.active = False
    eq.deactivated_at = utcnow()
    eq.deactivated_by = actor.id
    eq.deactivation_reason = reason
    record(actor, "equipment.deactivated", ("equipment", eq.id), before={"active": True}, after={"active": False},
           reason=reason)
    _commit(f"{eq.label} changed at the same moment; reload and try again.")
    return eq


def set_status(actor: Actor, equipment_id: str, status: str, reason: str | None = None, *,
               batch: str | None = None, commit: bool = True) -> Equipment:
    """Move equipment to ``status`` along :data:`TRANSITIONS` (audited; a reason where the
    table requires one). ``clean`` is refused: record a cleaning instead. ``batch`` ties the
    audit entry to a batch (the engine marks equipment in use for a batch and releases it);
    ``commit=False`` leaves the change in the caller's transaction."""
    if status not in {s.value for s in S}:
        raise ValidationFailed(f"The status must be one of {', '.join(s.value for s in S)}.", field="status")
    reason = optional_text(reason, "The reason", "reason", TEXT_MAX)
    eq = _locked_equipment(equipment_id)
    if not eq.active:
        raise Conflict(f"{eq.label} is deactivated; its status cannot change.")
    if status == S.CLEAN.value:
        raise Conflict(f"{eq.label} becomes clean only by recording a cleaning.")
    if status == eq.status:
        raise Conflict(f"{eq.label} is already {status.replace('_', ' ')}.")
    allowed = TRANSITIONS[eq.status]
    if status not in allowed:
        raise Conflict(f"{eq.label} is {eq.status.replace('_', ' ')} and cannot go to {status.replace('_', ' ')}"
                       + (" (record a cleaning first)." if eq.status == S.DIRTY.value else "."))
    if allowed[status] and not reason:
        raise ValidationFailed(f"A reason is required to set {eq.label} from {eq.status.replace('_', ' ')} "
                               f"to {status.replace('_', ' ')}.", field="reason")
    before = eq.status
    eq.status = status
    eq.status_reason = reason
    eq.status_changed_at = utcnow()
    eq.status_changed_by = actor.id
    record(actor, "equipment.status_changed", ("equipment", eq.id), batch=batch, before={"status": before},
           after={"status": status}, reason=reason)
    if commit:
        _commit(f"{eq.label} changed at the same moment; reload and try again.")
    else:
        db.session.flush()
    return eq


# ---------------------------------------------------------------------- records


def record_cleaning(
    actor: Actor,
    equipment_id: str,
    cleaning_type: str,
    *,
    cleaned_at: datetime | None = None,
    cleaned_by: str | None = None,
    valid_for: timedelta | None = None,
    clean_until: datetime | None = None,
    comment: str | None = None,
) -> CleaningRecord:
    """Record a cleaning; the equipment becomes ``clean`` until ``clean_until`` (given, or
    ``cleaned_at`` + ``valid_for``, or + the equipment's clean hold time)."""
    cleaning_type = required_text(cleaning_type, "The cleaning type", "type", SHORT_MAX)
    now = utcnow()
    cleaned_at = _aware(cleaned_at, "cleaned_at") if cleaned_at is not None else now
    if cleaned_at > now + MAX_CLOCK_SKEW:
        raise ValidationFailed("The cleaning time is in the future.", field="cleaned_at")
    eq = _locked_equipment(equipment_id)
    if not eq.active:
        raise Conflict(f"{eq.label} is deactivated; no cleaning can be recorded for it.")
    if eq.status == S.IN_USE.value:
        raise Conflict(f"{eq.label} is in use; end the use before recording a cleaning.")
    if clean_until is None:
        hold = valid_for or (timedelta(seconds=eq.clean_hold_s) if eq.clean_hold_s else None)
        if hold is None:
            raise ValidationFailed(f"{eq.label} has no clean hold time; give how long the cleaning is valid.",
                                   field="valid_for_hours")
        clean_until = cleaned_at + hold
    clean_until = _aware(clean_until, "clean_until")
    if clean_until <= cleaned_at:
        raise ValidationFailed("The cleaning must be valid until after it was done.", field="clean_until")
    rec = CleaningRecord(id=str(uuid.uuid4()), equipment_id=eq.id, cleaning_type=cleaning_type, cleaned_at=cleaned_at,
                         cleaned_by=optional_text(cleaned_by, "Cleaned by", "cleaned_by", 100) or actor.id, clean_until=clean_until,
                         comment=optional_text(comment, "The comment", "comment", TEXT_MAX), recorded_at=now, recorded_by=actor.id)
    db.session.add(rec)
    before = eq.status
    eq.status = S.CLEAN.value
    eq.status_reason = f"cleaning {rec.id}"
    eq.status_changed_at = now
    eq.status_changed_by = actor.id
    record(actor, "equipment.cleaning_recorded", ("equipment", eq.id), before={"status": before},
           after={"status": eq.status, "cleaning": cleaning_json(rec)})
    _commit(f"{eq.label} changed at the same moment; reload and try again.")
    return rec


#: the longest a calibration may stay valid: a due date beyond it (9999-12-31) is a typing error
CALIBRATION_INTERVAL_MAX = timedelta(days=3653)


def record_calibration(
    actor: Actor,
    equipment_id: str,
    result: str,
    certificate: str,
    *,
    due: date | None = None,
    calibrated_at: datetime | None = None,
    calibrated_by: str | None = None,
    comment: str | None = None,
    min_weight: Any = None,
) -> CalibrationRecord:
    """Record a calibration with its certificate (or reference), result and, when it
    passed, the next due date. A failed calibration makes the equipment unusable until a
    passing one is recorded. For a scale, QA may register the minimum weight the
    calibration established (USP <41> / Ph. Eur. 2.1.7: the smallest net weight weighed
    within 0.10 %); weighings below it are refused while the calibration is current."""
    if result not in {r.value for r in CalibrationResult}:
        raise ValidationFailed("The result is pass or fail.", field="result")
    certificate = required_text(certificate, "The certificate or reference", "certificate", NAME_MAX)
    now = utcnow()
    calibrated_at = _aware(calibrated_at, "calibrated_at") if calibrated_at is not None else now
    if calibrated_at > now + MAX_CLOCK_SKEW:
        raise ValidationFailed("The calibration time is in the future.", field="calibrated_at")
    if result == CalibrationResult.PASS.value:
        if due is None:
            raise ValidationFailed("A passed calibration needs the date the next one is due.", field="due")
        if due < plant_date(calibrated_at):
            raise ValidationFailed("The due date is before the calibration.", field="due")
        if due > plant_date(calibrated_at) + CALIBRATION_INTERVAL_MAX:
            raise ValidationFailed("A calibration is due at most ten years after it was made.", field="due")
    eq = _locked_equipment(equipment_id)
    if not eq.active:
        raise Conflict(f"{eq.label} is deactivated; no calibration can be recorded for it.")
    minimum = _mass(min_weight, "min_weight") if min_weight is not None else (None, None)
    if minimum[0] is not None:
        if eq.kind != EquipmentKind.SCALE.value or result != CalibrationResult.PASS.value:
            raise ValidationFailed("A minimum weight goes with a passed calibration of a scale.", field="min_weight")
        assert eq.capacity is not None and eq.capacity_uom and eq.readability is not None and eq.readability_uom
        if not _grams(eq.readability, eq.readability_uom) <= _grams(*minimum) < _grams(eq.capacity, eq.capacity_uom):
            raise ValidationFailed("The minimum weight lies between the scale's readability and its capacity.",
                                   field="min_weight")
    rec = CalibrationRecord(id=str(uuid.uuid4()), equipment_id=eq.id, calibrated_at=calibrated_at,
                            min_weight=minimum[0], min_weight_uom=minimum[1],
                            calibrated_by=optional_text(calibrated_by, "Calibrated by", "calibrated_by", NAME_MAX) or actor.id,
                            certificate=certificate, result=result, due=due,
                            comment=optional_text(comment, "The comment", "comment", TEXT_MAX), recorded_at=now, recorded_by=actor.id)
    db.session.add(rec)
    record(actor, "equipment.calibration_recorded", ("equipment", eq.id), after={"calibration": calibration_json(rec)})
    _commit(f"{eq.label} changed at the same moment; reload and try again.")
    return rec


# ------------------------------------------------------------------------ checks


@dataclass(frozen=True)
class Check(Verdict):
    """The answer of a check: ``ok``, or ``reason``, a sentence for the operator.

    ``code`` is ``ok`` or why not (``unknown_equipment``, ``unknown_device``, ``inactive``,
    ``maintenance``, ``wrong_class``, ``dirty``, ``clean_expired``, ``in_use``,
    ``not_available``, ``not_calibrated``, ``calibration_failed``, ``calibration_expired``,
    ``not_a_scale``, ``wrong_unit``, ``above_capacity``, ``below_minimum``, ``readability``,
    ``accuracy_class``, ``bad_reading``, ``no_value``, ``unstable``, ``stale``). ``details``
    holds JSON-safe facts (strings, ints, bools, None; never floats); for
    :func:`check_reading` ``details["reading"]`` is the normalised reading for the step record.
    """

    json_fields: ClassVar[tuple[str, ...]] = ("code", "reason", "equipment_id", "details")

    code: str
    reason: str = ""
    equipment_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _usable(eq: Equipment) -> Check | None:
    """Refusals common to every check: deactivated, under maintenance."""
    if not eq.active:
        return Check("inactive", f"{eq.label} is deactivated and must not be used. Use other equipment.", eq.id)
    if eq.status == S.MAINTENANCE.value:
        why = f" ({eq.status_reason.rstrip('.')})" if eq.status_reason else ""
        return Check("maintenance", f"{eq.label} is under maintenance{why} and must not be used. "
                                    "Use other equipment or tell the supervisor.", eq.id)
    return None


def _calibration_check(eq: Equipment, at: datetime) -> Check | None:
    last = last_calibration(eq.id)
    if last is None:
        return Check("not_calibrated", f"{eq.label} has no calibration recorded and must not be used. "
                                       "Use another one or have it calibrated.", eq.id)
    if last.result == CalibrationResult.FAIL.value:
        return Check("calibration_failed",
                     f"{eq.label} failed its last calibration on {plant_date(last.calibrated_at).isoformat()} "
                     f"(certificate {last.certificate}) and must not be used. Use another one or have it "
                     "repaired and calibrated.", eq.id, {"certificate": last.certificate})
    assert last.due is not None  # a pass always has a due date (CHECK constraint)
    if plant_date(at) > last.due:
        return Check("calibration_expired",
                     f"The calibration of {eq.label} expired: it was due on {last.due.isoformat()}. "
                     "Use another one or have it calibrated.", eq.id, {"due": last.due.isoformat()})
    return None


def check_equipment(
    equipment_id: str,
    required_states: Sequence[str],
    at: datetime | None = None,
    *,
    equipment_class: str | None = None,
    max_since_cleaning: timedelta | None = None,
) -> Check:
    """Whether equipment may be used now in the ``required_states`` (:data:`CHECK_STATES`),
    optionally only if it is of ``equipment_class`` and was cleaned within
    ``max_since_cleaning``. Unknown state names are a ValidationFailed (a recipe error)."""
    unknown = sorted(set(required_states) - set(CHECK_STATES))
    if unknown:
        raise ValidationFailed(f"Unknown equipment state(s): {', '.join(unknown)} "
                               f"(use {', '.join(CHECK_STATES)}).", field="states")
    at = at or utcnow()
    eq = db.session.get(Equipment, equipment_id)
    if eq is None:
        return Check("unknown_equipment", f"Equipment {equipment_id} is not registered in the MES. "
                                          "Check the label and scan again.", equipment_id)
    refused = _usable(eq)
    if refused is not None:
        return refused
    if equipment_class is not None and eq.equipment_class != equipment_class:
        return Check("wrong_class", f"{eq.label} is a {eq.equipment_class}, but this step needs a {equipment_class}. "
                                    "Use the right equipment.", eq.id)
    states = set(required_states)
    if states & {"not_in_use", "available"} and eq.status == S.IN_USE.value:
        return Check("in_use", f"{eq.label} is in use. Wait until it is free or use other equipment.", eq.id)
    if "clean" in states:
        refused = _clean_check(eq, at, max_since_cleaning)
        if refused is not None:
            return refused
    if "available" in states and eq.status not in (S.AVAILABLE.value, S.CLEAN.value):
        return Check("not_available", f"{eq.label} is {eq.status.replace('_', ' ')}, not available. "
                                      "Use other equipment or tell the supervisor.", eq.id)
    if "calibrated" in states:
        refused = _calibration_check(eq, at)
        if refused is not None:
            return refused
    details: dict[str, Any] = {"status": eq.status, "states": sorted(states)}
    cal = current_calibration(eq.id) if "calibrated" in states else None
    if cal is not None:
        details["calibration"] = {"id": cal.id, "certificate": cal.certificate, "due": _iso(cal.due)}
    cleaning = last_cleaning(eq.id) if "clean" in states else None
    if cleaning is not None:
        details["cleaning"] = {"id": cleaning.id, "cleaned_at": _iso(cleaning.cleaned_at),
                               "clean_until": _iso(cleaning.clean_until)}
    return Check("ok", "", eq.id, details)


def _clean_check(eq: Equipment, at: datetime, max_since: timedelta | None) -> Check | None:
    last = last_cleaning(eq.id)
    how = "Clean it and record the cleaning."
    if eq.status != S.CLEAN.value or last is None:
        if last is None:
            return Check("dirty", f"{eq.label} is {eq.status.replace('_', ' ')}: no cleaning is recorded. {how}", eq.id)
        since = f"last cleaned {_human_age(at - last.cleaned_at)}"
        return Check("dirty", f"{eq.label} is {'dirty' if eq.status == S.DIRTY.value else eq.status.replace('_', ' ')}"
                              f"{'' if eq.status == S.DIRTY.value else ', not clean'}: {since}. {how}", eq.id)
    valid = last.clean_until - last.cleaned_at
    if at >= last.clean_until:
        return Check("clean_expired", f"{eq.label} is dirty: last cleaned {_human_age(at - last.cleaned_at)}, "
                                      f"cleaning valid {_human_span(valid)}. {how}", eq.id,
                     {"clean_until": _iso(last.clean_until)})
    if max_since is not None and at - last.cleaned_at > max_since:
        return Check("clean_expired", f"{eq.label} was last cleaned {_human_age(at - last.cleaned_at)}; this step "
                                      f"allows at most {_human_span(max_since)} since cleaning. {how}", eq.id)
    return None


def _scale(device_id: str) -> tuple[Equipment | None, Check | None]:
    eq = equipment_for_device(device_id) if isinstance(device_id, str) and device_id else None
    if eq is None:
        return None, Check("unknown_device", f"Scale {device_id} is not registered in the MES and must not be used. "
                                             "Use a registered scale or tell the supervisor.", None,
                           {"device_id": str(device_id)})
    if eq.kind != EquipmentKind.SCALE.value:
        return eq, Check("not_a_scale", f"{eq.label} is not a scale.", eq.id)
    return eq, _usable(eq)


def check_scale_for_weighing(
    device_id: str,
    target: Decimal,
    unit: str,
    readability_required: Decimal | None = None,
    accuracy_class_required: str | None = None,
    at: datetime | None = None,
    gross: Decimal | None = None,
) -> Check:
    """Whether the scale read by ``device_id`` may weigh ``target`` ``unit`` now: registered,
    active, not under maintenance, calibration valid (last result pass, not past its due
    date), ``target`` (the net) at or above the minimum weight (the registered one and the
    one QA registered with the current calibration, USP <41>), ``gross`` (default
    ``target``) within capacity, readability at
    least as fine as ``readability_required`` (in ``unit``) and accuracy class at least as
    good as ``accuracy_class_required`` (I best). Unit conversion is exact."""
    at = at or utcnow()
    eq, refused = _scale(device_id)
    if refused is not None or eq is None:
        return refused  # type: ignore[return-value]
    refused = _calibration_check(eq, at)
    if refused is not None:
        return refused
    try:
        amount = q.parse_quantity(target)
        if q.material_dimension(unit) != "mass":
            raise q.QuantityError(f"{unit} is not a unit of mass")
        grams = _grams(amount, unit)
    except q.QuantityError as exc:
        return Check("wrong_unit", f"{eq.label} weighs mass; {q.fmt(target) if isinstance(target, Decimal) else target} "
                                   f"{unit} cannot be weighed on it ({exc}).", eq.id)
    assert eq.capacity is not None and eq.capacity_uom and eq.min_weight is not None and eq.min_weight_uom
    assert eq.readability is not None and eq.readability_uom
    wanted, loaded = q.with_unit(amount, unit), q.with_unit(gross if gross is not None else amount, unit)
    if (_grams(gross, unit) if gross is not None else grams) > _grams(eq.capacity, eq.capacity_uom):
        return Check("above_capacity", f"{loaded} is above the capacity of {eq.label} "
                                       f"({q.with_unit(eq.capacity, eq.capacity_uom)}). Use a larger scale.", eq.id)
    cal = current_calibration(eq.id)
    assert cal is not None  # the calibration check passed
    low = max([(eq.min_weight, eq.min_weight_uom, "registered"), *([(cal.min_weight, cal.min_weight_uom, "calibration")]
              if cal.min_weight is not None and cal.min_weight_uom else [])], key=lambda m: _grams(m[0], m[1]))
    if grams < _grams(low[0], low[1]):
        said = "minimum weight" if low[2] == "registered" else f"minimum weight per calibration {cal.certificate}"
        return Check("below_minimum", f"{wanted} is below the {said} of {eq.label} "
                                      f"({q.with_unit(low[0], low[1])}). Use a finer balance.", eq.id)
    if readability_required is not None:
        try:
            needed = _grams(q.parse_quantity(readability_required), unit)
        except q.QuantityError as exc:
            raise ValidationFailed(f"The required readability: {exc}.", field="readability") from None
        if _grams(eq.readability, eq.readability_uom) > needed:
            return Check("readability", f"{eq.label} reads to {q.with_unit(eq.readability, eq.readability_uom)}; this "
                                        f"weighing needs {q.with_unit(q.parse_quantity(readability_required), unit)} or finer. "
                                        "Use a finer balance.", eq.id)
    if accuracy_class_required is not None:
        if accuracy_class_required not in ACCURACY_RANK:
            raise ValidationFailed("The accuracy class is one of I, II, III, IIII.", field="accuracy_class")
        have = eq.accuracy_class
        if have is None or ACCURACY_RANK[have] > ACCURACY_RANK[accuracy_class_required]:
            what = f"class {have}" if have else "of no registered accuracy class"
            return Check("accuracy_class", f"{eq.label} is {what}; this weighing needs class "
                                           f"{accuracy_class_required} or better. Use another scale.", eq.id)
    return Check("ok", "", eq.id, {
        "device_id": eq.device_id, "target": q.as_json(amount, unit), **_scale_json(eq),
        "min_weight_applied": q.as_json(low[0], low[1]),
        "calibration": {"id": cal.id, "certificate": cal.certificate, "due": _iso(cal.due)},
    })


def check_reading(
    reading: Mapping[str, Any],
    max_age_s: int | Decimal,
    at: datetime | None = None,
    *,
    unit: str | None = None,
    require_stable: bool = True,
) -> Check:
    """Whether ``reading`` (a ``devices`` :meth:`Reading.to_dict`, optionally with the
    driver's ``identity``) may go into a step record: from a registered, active scale, stable
    (status ``ok``; a moving reading only where the recipe says ``stable_reading: false``,
    ``require_stable``), a decimal-string value, in ``unit`` if given, and taken no more than
    ``max_age_s`` seconds before ``at`` (server time). On success ``details["reading"]`` is
    the normalised reading with the raw device reply and identity kept as received, and
    whether it was stable."""
    at = at or utcnow()
    if not isinstance(reading, Mapping):
        return Check("bad_reading", "The scale reading could not be understood. Weigh again.")
    device_id = reading.get("device_id")
    eq, refused = _scale(device_id)  # type: ignore[arg-type]
    if refused is not None or eq is None:
        return refused  # type: ignore[return-value]
    status, stable, value, r_unit = reading.get("status"), reading.get("stable"), reading.get("value"), reading.get("unit")
    raw = reading.get("raw")
    if not isinstance(raw, str) or not raw:
        return Check("bad_reading", f"The reading from {eq.label} carries no raw device reply. Weigh again.", eq.id)
    if status in ("overload", "underload", "busy", "fault"):
        said = {"overload": "is overloaded", "underload": "reports underload (is the pan in place?)",
                "busy": "was busy", "fault": "reports a fault"}[status]
        return Check("no_value", f"{eq.label} {said}; no weight was taken. Check the scale and weigh again.", eq.id)
    moving = status == "dynamic" and stable is not True and not require_stable
    if not moving and (status != "ok" or stable is not True):
        return Check("unstable", f"The reading from {eq.label} is not stable. Wait until the load settles and "
                                 "weigh again.", eq.id)
    if not isinstance(value, str):
        return Check("bad_reading", f"The reading from {eq.label} has no decimal value. Weigh again.", eq.id)
    try:
        amount = q.parse_quantity(value)
    except q.QuantityError:
        return Check("bad_reading", f"The reading from {eq.label} has no decimal value. Weigh again.", eq.id)
    if not isinstance(r_unit, str) or r_unit not in q.MATERIAL_UNITS or q.material_dimension(r_unit) != "mass":
        return Check("wrong_unit", f"{eq.label} shows {r_unit or 'no unit'}; set it to {unit or 'g'} and weigh again.",
                     eq.id)
    if unit is not None and r_unit != unit:
        return Check("wrong_unit", f"{eq.label} shows {r_unit}, but this step weighs in {unit}. "
                                   f"Set the scale to {unit} and weigh again.", eq.id)
    try:
        taken = datetime.fromisoformat(str(reading.get("timestamp")).replace("Z", "+00:00"))
    except ValueError:
        taken = None
    if taken is None or taken.tzinfo is None:
        return Check("bad_reading", f"The reading from {eq.label} has no time with zone. Weigh again.", eq.id)
    age = at - taken
    if age < -MAX_CLOCK_SKEW:
        return Check("bad_reading", f"The reading from {eq.label} is dated in the future; the scale gateway clock "
                                    "is wrong. Tell the supervisor.", eq.id)
    if age > timedelta(microseconds=int(Decimal(str(max_age_s)) * 1_000_000)):
        return Check("stale", f"The reading from {eq.label} is {int(age.total_seconds())} s old; readings older "
                              f"than {max_age_s} s are not accepted. Weigh again.", eq.id)
    sequence = reading.get("sequence")
    identity = reading.get("identity")
    normalised: dict[str, Any] = {
        "device_id": eq.device_id,
        "equipment_id": eq.id,
        "driver": eq.driver,
        "sequence": sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None,
        "status": "dynamic" if moving else "ok",
        "stable": not moving,
        "value": value,
        "unit": r_unit,
        "raw": raw,
        "timestamp": format_at(taken),
        "checked_at": format_at(at),
        "age_ms": max(0, int(age.total_seconds() * 1000)),
        "identity": ({str(k): str(v) for k, v in identity.items()
                      if not isinstance(v, (dict, list))} if isinstance(identity, Mapping) else None),
    }
    if isinstance(identity, Mapping) and isinstance(identity.get("details"), Mapping):
        normalised["identity"]["details"] = {str(k): str(v) for k, v in identity["details"].items()}  # type: ignore[index]
    if "monotonic" in reading and reading["monotonic"] is not None:
        normalised["monotonic"] = str(reading["monotonic"])
    return Check("ok", "", eq.id, {"reading": normalised, "value": q.fmt(amount, keep_places=True)})


# -------------------------------------------------------------------------- JSON


def cleaning_json(c: CleaningRecord) -> dict[str, Any]:
    return {"id": c.id, "equipment_id": c.equipment_id, "type": c.cleaning_type, "cleaned_at": _iso(c.cleaned_at),
            "cleaned_by": c.cleaned_by, "clean_until": _iso(c.clean_until), "comment": c.comment,
            "recorded_at": _iso(c.recorded_at), "recorded_by": c.recorded_by}


def calibration_json(c: CalibrationRecord) -> dict[str, Any]:
    return {"id": c.id, "equipment_id": c.equipment_id, "calibrated_at": _iso(c.calibrated_at),
            "calibrated_by": c.calibrated_by, "certificate": c.certificate, "result": c.result, "due": _iso(c.due),
            "comment": c.comment, "recorded_at": _iso(c.recorded_at), "recorded_by": c.recorded_by,
            "min_weight": q.as_json(c.min_weight, c.min_weight_uom) if c.min_weight is not None and c.min_weight_uom else None}


def equipment_json(eq: Equipment, *, detail: bool = False) -> dict[str, Any]:
    """The API form; ``detail`` adds the cleaning and calibration records (newest first)."""
    out: dict[str, Any] = {
        "id": eq.id, "kind": eq.kind, "class": eq.equipment_class, "description": eq.description,
        "location": eq.location, "line": eq.line, "status": eq.status, "status_reason": eq.status_reason,
        "status_changed_at": _iso(eq.status_changed_at), "status_changed_by": eq.status_changed_by,
        "clean_hold_s": eq.clean_hold_s, "active": eq.active, "deactivated_at": _iso(eq.deactivated_at),
        "deactivated_by": eq.deactivated_by, "deactivation_reason": eq.deactivation_reason,
        "created_at": _iso(eq.created_at), "created_by": eq.created_by,
    }
    if eq.kind == EquipmentKind.SCALE.value:
        out["scale"] = _scale_json(eq)
    if detail:
        cleans, cals = cleanings(eq.id), calibrations(eq.id)
        current = next((c for c in cals if c.result == CalibrationResult.PASS.value), None)
        out["cleanings"] = [cleaning_json(c) for c in cleans]
        out["calibrations"] = [calibration_json(c) for c in cals]
        out["current_calibration"] = None if current is None else calibration_json(current)
        out["clean_until"] = _iso(cleans[0].clean_until) if cleans and eq.status == S.CLEAN.value else None
    return out


def parse_states(text_: str | None) -> list[str]:
    """``clean,calibrated`` -> ``["clean", "calibrated"]``."""
    return [s.strip() for s in (text_ or "").split(",") if s.strip()]
