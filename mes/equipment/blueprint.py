"""HTTP API for equipment: the registry, status changes, deactivation, cleaning and
calibration records, and the usability check (a thin shell over
:mod:`mes.equipment.operations`).

Scale capacities, minimum weights and readabilities travel as ``{"value": "6.1", "uom": "kg"}``
with the value a decimal string.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, g, jsonify, request

from mes.equipment import operations as ops
from mes.equipment.models import AccuracyClass, CalibrationResult, EquipmentKind, EquipmentStatus
from mes.errors import ValidationFailed
from mes.quantities import DECIMAL_PATTERN
from mes.users.permissions import Permission as P
from mes.validation import ID_JSON_PATTERN
from mes.web import STR, created, endpoint, obj, parse_date, parse_utc, principal

bp = Blueprint("equipment", __name__)
API = "/api/v1/equipment"
TAGS = ("equipment",)

ID = {"type": "string", "pattern": ID_JSON_PATTERN}
DECIMAL = {"type": "string", "pattern": DECIMAL_PATTERN}
MASS = obj({"value": DECIMAL, "uom": {"enum": ["mg", "g", "kg"]}}, ("value", "uom"))
DATE = {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
DATETIME = {"type": "string", "minLength": 10, "maxLength": 40}
HOURS = {"type": "integer", "minimum": 1, "maximum": 24 * 3650}
REASON = obj({"reason": STR}, ("reason",))

REGISTER_SCHEMA = obj(
    {"id": ID, "kind": {"enum": [k.value for k in EquipmentKind]}, "class": STR, "description": STR,
     "location": STR, "line": STR,
     "status": {"enum": [EquipmentStatus.AVAILABLE.value, EquipmentStatus.DIRTY.value,
                         EquipmentStatus.MAINTENANCE.value]},
     "clean_hold_hours": HOURS, "device_id": ID, "driver": STR, "capacity": MASS, "min_weight": MASS,
     "readability": MASS, "accuracy_class": {"enum": [c.value for c in AccuracyClass]}},
    ("id", "kind", "class", "description"),
)
STATUS_SCHEMA = obj({"status": {"enum": [s.value for s in EquipmentStatus]}, "reason": STR}, ("status",))
CLEANING_SCHEMA = obj({"type": STR, "cleaned_at": DATETIME, "cleaned_by": STR, "valid_for_hours": HOURS,
                       "clean_until": DATETIME, "comment": STR}, ("type",))
CALIBRATION_SCHEMA = obj({"result": {"enum": [r.value for r in CalibrationResult]}, "certificate": STR, "due": DATE,
                          "calibrated_at": DATETIME, "calibrated_by": STR, "comment": STR, "min_weight": MASS},
                         ("result", "certificate"))



def _enum_arg(name: str, values: list[str]) -> str | None:
    value = request.args.get(name) or None
    if value is not None and value not in values:
        raise ValidationFailed(f"{name} must be one of {', '.join(values)}.", field=name)
    return value


@bp.get(API)
@endpoint(P.EQUIPMENT_VIEW, tags=TAGS, query={
    "kind": {"schema": {"type": "string", "enum": [k.value for k in EquipmentKind]}},
    "status": {"schema": {"type": "string", "enum": [s.value for s in EquipmentStatus]}},
    "line": {"schema": {"type": "string"}}, "class": {"schema": {"type": "string"}},
    "include_inactive": {"schema": {"type": "string"}, "description": "1 or true adds deactivated equipment."}})
def equipment_list() -> Response:
    """List equipment, filtered by kind, status, line or class; ``include_inactive=1`` adds deactivated."""
    rows = ops.list_equipment(
        kind=_enum_arg("kind", [k.value for k in EquipmentKind]),
        status=_enum_arg("status", [s.value for s in EquipmentStatus]),
        line=request.args.get("line") or None, equipment_class=request.args.get("class") or None,
        include_inactive=request.args.get("include_inactive") in ("1", "true"),
    )
    return jsonify({"equipment": [ops.equipment_json(e) for e in rows]})


@bp.post(API)
@endpoint(P.EQUIPMENT_MANAGE, schema=REGISTER_SCHEMA, tags=TAGS)
def equipment_register() -> Response:
    """Register equipment (a scale with its device, capacity, minimum weight, readability and class)."""
    b = g.body
    hold = timedelta(hours=b["clean_hold_hours"]) if "clean_hold_hours" in b else None
    eq = ops.register_equipment(
        principal().actor(P.EQUIPMENT_MANAGE), b["id"], b["kind"], b["class"], b["description"],
        location=b.get("location"), line=b.get("line"), status=b.get("status", EquipmentStatus.AVAILABLE.value),
        clean_hold=hold, device_id=b.get("device_id"), driver=b.get("driver"), capacity=b.get("capacity"),
        min_weight=b.get("min_weight"), readability=b.get("readability"), accuracy_class=b.get("accuracy_class"),
    )
    return created({"equipment": ops.equipment_json(eq, detail=True)})


@bp.get(f"{API}/<equipment_id>")
@endpoint(P.EQUIPMENT_VIEW, tags=TAGS)
def equipment_get(equipment_id: str) -> Response:
    """One piece of equipment with its cleaning and calibration records."""
    return jsonify({"equipment": ops.equipment_json(ops.get_equipment(equipment_id), detail=True)})


@bp.post(f"{API}/<equipment_id>/status")
@endpoint(P.EQUIPMENT_MANAGE, schema=STATUS_SCHEMA, tags=TAGS)
def equipment_status(equipment_id: str) -> Response:
    """Change the status (a reason where the move needs one; clean only by a cleaning record)."""
    eq = ops.set_status(principal().actor(P.EQUIPMENT_MANAGE), equipment_id, g.body["status"], g.body.get("reason"))
    return jsonify({"equipment": ops.equipment_json(eq, detail=True)})


@bp.post(f"{API}/<equipment_id>/deactivate")
@endpoint(P.EQUIPMENT_MANAGE, schema=REASON, tags=TAGS)
def equipment_deactivate(equipment_id: str) -> Response:
    """Deactivate equipment for good (never deleted), with a reason."""
    eq = ops.deactivate_equipment(principal().actor(P.EQUIPMENT_MANAGE), equipment_id, g.body["reason"])
    return jsonify({"equipment": ops.equipment_json(eq, detail=True)})


@bp.get(f"{API}/<equipment_id>/cleanings")
@endpoint(P.EQUIPMENT_VIEW, tags=TAGS)
def cleanings_list(equipment_id: str) -> Response:
    """Cleaning records of the equipment, newest first."""
    ops.get_equipment(equipment_id)
    return jsonify({"cleanings": [ops.cleaning_json(c) for c in ops.cleanings(equipment_id)]})


@bp.post(f"{API}/<equipment_id>/cleanings")
@endpoint(P.EQUIPMENT_MANAGE, schema=CLEANING_SCHEMA, tags=TAGS)
def cleanings_record(equipment_id: str) -> Response:
    """Record a cleaning; the equipment becomes clean until the cleaning expires."""
    b = g.body
    rec = ops.record_cleaning(
        principal().actor(P.EQUIPMENT_MANAGE), equipment_id, b["type"],
        cleaned_at=parse_utc(b.get("cleaned_at"), "cleaned_at"), cleaned_by=b.get("cleaned_by"),
        valid_for=timedelta(hours=b["valid_for_hours"]) if "valid_for_hours" in b else None,
        clean_until=parse_utc(b.get("clean_until"), "clean_until"), comment=b.get("comment"),
    )
    return created({"cleaning": ops.cleaning_json(rec)})


@bp.get(f"{API}/<equipment_id>/calibrations")
@endpoint(P.EQUIPMENT_VIEW, tags=TAGS)
def calibrations_list(equipment_id: str) -> Response:
    """Calibration records of the equipment, newest first."""
    ops.get_equipment(equipment_id)
    return jsonify({"calibrations": [ops.calibration_json(c) for c in ops.calibrations(equipment_id)]})


@bp.post(f"{API}/<equipment_id>/calibrations")
@endpoint(P.EQUIPMENT_MANAGE, schema=CALIBRATION_SCHEMA, tags=TAGS)
def calibrations_record(equipment_id: str) -> Response:
    """Record a calibration with its certificate, result and next due date; for a scale QA may
    register the minimum weight the calibration established (``min_weight``, USP <41>)."""
    b = g.body
    rec = ops.record_calibration(
        principal().actor(P.EQUIPMENT_MANAGE), equipment_id, b["result"], b["certificate"],
        due=parse_date(b.get("due"), "due"), calibrated_at=parse_utc(b.get("calibrated_at"), "calibrated_at"),
        calibrated_by=b.get("calibrated_by"), comment=b.get("comment"), min_weight=b.get("min_weight"),
    )
    return created({"calibration": ops.calibration_json(rec)})


@bp.get(f"{API}/<equipment_id>/check")
@endpoint(P.EQUIPMENT_VIEW, tags=TAGS, query={
    "states": {"schema": {"type": "string"}, "description": "Comma-separated states required, e.g. clean,calibrated."},
    "class": {"schema": {"type": "string"}}})
def equipment_check(equipment_id: str) -> Response:
    """Whether the equipment may be used now: ``?states=clean,calibrated`` (and optionally ``class``)."""
    ops.get_equipment(equipment_id)
    check = ops.check_equipment(equipment_id, ops.parse_states(request.args.get("states")),
                                equipment_class=request.args.get("class") or None)
    return jsonify({"check": check.as_json()})
