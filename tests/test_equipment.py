"""Equipment: registry, audited status transitions, cleaning and calibration records, the
checks the batch engine calls (equipment states, scale fitness, readings) and the HTTP API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from mes.audit.log import Actor, UnauditedChangeError
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.equipment import operations as ops
from mes.equipment.models import Equipment
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.plant_time import plant_date
from tests.helpers import logged_in, seed

QA = Actor("qa1", "QA One", "qa", "QA-WS-01")
SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")


def _entries(entity_id: str, action: str | None = None) -> list[dict[str, Any]]:
    stmt = select(AuditEntry).where(AuditEntry.entity_id == entity_id).order_by(AuditEntry.seq)
    if action:
        stmt = stmt.where(AuditEntry.action == action)

    def refuse(value: str) -> Any:
        raise AssertionError(f"float {value} in an audit entry")

    return [json.loads(r.entry_bytes, parse_float=refuse) for r in db.session.execute(stmt).scalars()]


def _blender(eq_id: str = "BL-02", hold_h: int = 48) -> Equipment:
    return ops.register_equipment(SUP, eq_id, "vessel", "blender", "Blender", location="Room 2.14", line="LINE-1",
                                  status="dirty", clean_hold=timedelta(hours=hold_h))


def _balance(eq_id: str = "BAL-01", device_id: str = "DEV-BAL-01", *, cls: str | None = "II",
             calibrated: bool = True) -> Equipment:
    eq = ops.register_equipment(SUP, eq_id, "scale", "Bench balance 6 kg, class II", "Bench balance",
                                device_id=device_id, driver="mtsics", capacity=("6.1", "kg"),
                                min_weight={"value": "0.5", "uom": "g"}, readability=("0.01", "g"),
                                accuracy_class=cls)
    if calibrated:
        ops.record_calibration(QA, eq_id, "pass", "CAL-2026-001", due=plant_date(utcnow()) + timedelta(days=30),
                               calibrated_by="Acme Metrology")
    return eq


def _reading(device_id: str = "DEV-BAL-01", *, value: Any = "250.03", unit: str = "g", status: str = "ok",
             age_s: float = 1, at: datetime | None = None) -> dict[str, Any]:
    at = at or utcnow()
    return {"device_id": device_id, "sequence": 7, "status": status, "value": value, "unit": unit,
            "stable": status == "ok", "raw": f"S S     {value} {unit}\r\n",
            "timestamp": (at - timedelta(seconds=age_s)).isoformat(), "monotonic": 1234.5,
            "identity": {"make": "Mettler-Toledo", "model": "XPR6002S", "serial_number": "B123456789",
                         "firmware": "2.1.0", "details": {"capacity": "6100 g"}}}


# ------------------------------------------------------------------ registry, status


def test_registration_and_status_transitions_are_audited_with_reasons(app: Flask) -> None:
    eq = _blender()
    assert (eq.status, eq.active, eq.label) == ("dirty", True, "Blender BL-02")
    with pytest.raises(Conflict, match="registered already; equipment ids are never reused"):
        _blender()
    registered, = _entries("BL-02")
    assert registered["action"] == "equipment.registered"
    assert registered["after"]["class"] == "blender" and registered["after"]["clean_hold_s"] == 48 * 3600
    # clean only through a cleaning record; dirty equipment cannot be used or declared available
    with pytest.raises(Conflict, match="only by recording a cleaning"):
        ops.set_status(SUP, "BL-02", "clean", "trust me")
    with pytest.raises(Conflict, match="record a cleaning first"):
        ops.set_status(SUP, "BL-02", "in_use")
    ops.record_cleaning(SUP, "BL-02", "full", cleaned_by="operator1")
    assert ops.get_equipment("BL-02").status == "clean"
    ops.set_status(SUP, "BL-02", "in_use")  # the ordinary start of use needs no reason
    with pytest.raises(Conflict, match="in use; end the use"):
        ops.record_cleaning(SUP, "BL-02", "full")
    with pytest.raises(ValidationFailed, match="reason is required"):
        ops.set_status(SUP, "BL-02", "maintenance")
    ops.set_status(SUP, "BL-02", "maintenance", "Seal leaking, WO-4711")
    with pytest.raises(ValidationFailed, match="reason is required"):
        ops.set_status(SUP, "BL-02", "available", "  ")
    ops.set_status(SUP, "BL-02", "dirty", "Seal replaced; needs cleaning before use")
    with pytest.raises(ValidationFailed, match="status must be one of"):
        ops.set_status(SUP, "BL-02", "broken", "x")
    with pytest.raises(NotFound):
        ops.set_status(SUP, "NOPE", "dirty", "x")
    entries = _entries("BL-02")
    moves = [(e["action"], e["before"], e["after"].get("status"), e["reason"]) for e in entries[1:]]
    assert moves == [
        ("equipment.cleaning_recorded", {"status": "dirty"}, "clean", None),
        ("equipment.status_changed", {"status": "clean"}, "in_use", None),
        ("equipment.status_changed", {"status": "in_use"}, "maintenance", "Seal leaking, WO-4711"),
        ("equipment.status_changed", {"status": "maintenance"}, "dirty", "Seal replaced; needs cleaning before use"),
    ]
    assert entries[1]["after"]["cleaning"]["cleaned_by"] == "operator1"
    assert entries[3]["actor"] == {"id": "supervisor1", "name": "Supervisor One", "role": "supervisor"}
    assert [e.id for e in ops.list_equipment(status="dirty", line="LINE-1")] == ["BL-02"]
    assert ops.list_equipment(kind="scale") == []


def test_registration_is_validated(app: Flask) -> None:
    with pytest.raises(ValidationFailed, match="kind must be one of"):
        ops.register_equipment(SUP, "X-1", "spaceship", "c", "d")
    with pytest.raises(ValidationFailed, match="capacity"):
        ops.register_equipment(SUP, "X-1", "scale", "balance", "Balance", min_weight=("1", "g"),
                               readability=("0.1", "g"))
    with pytest.raises(ValidationFailed, match="never floats"):
        ops.register_equipment(SUP, "X-1", "scale", "balance", "Balance", capacity=(6.1, "kg"),
                               min_weight=("1", "g"), readability=("0.1", "g"))
    with pytest.raises(ValidationFailed, match="not a unit of mass"):
        ops.register_equipment(SUP, "X-1", "scale", "balance", "Balance", capacity=("6", "L"),
                               min_weight=("1", "g"), readability=("0.1", "g"))
    with pytest.raises(ValidationFailed, match="below the capacity"):
        ops.register_equipment(SUP, "X-1", "scale", "balance", "Balance", capacity=("1", "g"),
                               min_weight=("1", "g"), readability=("0.1", "g"))
    with pytest.raises(ValidationFailed, match="for scales only"):
        ops.register_equipment(SUP, "X-1", "room", "booth", "Booth", device_id="DEV-1")
    with pytest.raises(ValidationFailed, match="starts available, dirty or in maintenance"):
        ops.register_equipment(SUP, "X-1", "room", "booth", "Booth", status="clean")
    _balance()
    with pytest.raises(Conflict, match="already registered to other equipment"):
        _balance("BAL-02", "DEV-BAL-01")
    assert db.session.get(Equipment, "X-1") is None
    scale = ops.get_equipment("BAL-01")
    assert (scale.capacity, scale.capacity_uom, scale.min_weight, scale.readability) == (
        Decimal("6.1"), "kg", Decimal("0.5"), Decimal("0.01"))


def test_records_are_immutable_and_equipment_is_never_deleted(app: Flask) -> None:
    _balance()
    _blender()
    ops.record_cleaning(SUP, "BL-02", "full")
    for statement in ("UPDATE equipment_calibrations SET result = 'pass'", "DELETE FROM equipment_calibrations",
                      "UPDATE equipment_cleanings SET cleaning_type = 'x'", "DELETE FROM equipment_cleanings",
                      "DELETE FROM equipment"):
        with pytest.raises(DatabaseError, match="refused"):
            with db.engine.begin() as conn:
                conn.execute(text(statement))
    db.session.delete(ops.get_equipment("BL-02"))
    with pytest.raises(UnauditedChangeError):
        db.session.flush()
    db.session.rollback()


def test_deactivated_equipment_is_refused(app: Flask) -> None:
    _balance()
    _blender()
    with pytest.raises(ValidationFailed):
        ops.deactivate_equipment(SUP, "BAL-01", " ")
    ops.deactivate_equipment(SUP, "BAL-01", "Replaced by BAL-07")
    ops.deactivate_equipment(SUP, "BL-02", "Scrapped")
    assert ops.list_equipment() == []
    assert [e.id for e in ops.list_equipment(include_inactive=True)] == ["BAL-01", "BL-02"]
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g")
    assert check.code == "inactive" and check.reason == "Bench balance BAL-01 is deactivated and must not be used. " \
                                                       "Use other equipment."
    assert ops.check_equipment("BL-02", ["clean"]).code == "inactive"
    assert ops.check_reading(_reading(), 5).code == "inactive"
    with pytest.raises(Conflict, match="deactivated"):
        ops.set_status(SUP, "BL-02", "maintenance", "x")
    with pytest.raises(Conflict, match="deactivated"):
        ops.record_calibration(QA, "BAL-01", "pass", "C-2", due=plant_date(utcnow()))
    with pytest.raises(Conflict, match="already deactivated"):
        ops.deactivate_equipment(SUP, "BAL-01", "again")
    entry, = _entries("BAL-01", "equipment.deactivated")
    assert (entry["before"], entry["after"], entry["reason"]) == ({"active": True}, {"active": False},
                                                                  "Replaced by BAL-07")


# ---------------------------------------------------------------- cleaning validity


def test_cleaning_validity(app: Flask) -> None:
    _blender()
    now = utcnow()
    check = ops.check_equipment("BL-02", ["clean"], now)
    assert not check and check.code == "dirty"
    assert check.reason == "Blender BL-02 is dirty: no cleaning is recorded. Clean it and record the cleaning."
    ops.record_cleaning(SUP, "BL-02", "full", cleaned_at=now - timedelta(days=3))
    check = ops.check_equipment("BL-02", ["clean", "not_in_use"], now)
    assert check.code == "clean_expired"
    assert check.reason == ("Blender BL-02 is dirty: last cleaned 3 days ago, cleaning valid 48 h. "
                            "Clean it and record the cleaning.")
    rec = ops.record_cleaning(SUP, "BL-02", "minor", cleaned_at=now - timedelta(hours=5), valid_for=timedelta(hours=8))
    assert rec.clean_until == rec.cleaned_at + timedelta(hours=8)
    check = ops.check_equipment("BL-02", ["clean", "available"], now)
    assert check.ok and check.as_json()["ok"] is True
    assert check.details["cleaning"]["id"] == rec.id
    # a recipe limit on the time since cleaning is tighter than the cleaning's own validity
    check = ops.check_equipment("BL-02", ["clean"], now, max_since_cleaning=timedelta(hours=4))
    assert check.code == "clean_expired" and "at most 4 h since cleaning" in check.reason
    assert ops.check_equipment("BL-02", ["clean"], now + timedelta(hours=4)).code == "clean_expired"
    # in use: not available for another step
    ops.set_status(SUP, "BL-02", "in_use")
    check = ops.check_equipment("BL-02", ["not_in_use"], now)
    assert check.code == "in_use" and check.reason == ("Blender BL-02 is in use. Wait until it is free or use "
                                                       "other equipment.")
    check = ops.check_equipment("BL-02", [], now, equipment_class="granulator")
    assert check.code == "wrong_class" and "is a blender, but this step needs a granulator" in check.reason
    ops.set_status(SUP, "BL-02", "dirty")
    assert "last cleaned 5 h ago" in ops.check_equipment("BL-02", ["clean"], now).reason
    ops.set_status(SUP, "BL-02", "maintenance", "Motor noise")
    check = ops.check_equipment("BL-02", [], now)
    assert check.code == "maintenance" and "(Motor noise)" in check.reason
    assert ops.check_equipment("NOPE", ["clean"]).code == "unknown_equipment"
    with pytest.raises(ValidationFailed, match="Unknown equipment state"):
        ops.check_equipment("BL-02", ["shiny"])
    with pytest.raises(ValidationFailed, match="future"):
        ops.record_cleaning(SUP, "BL-02", "full", cleaned_at=now + timedelta(hours=1))
    ops.register_equipment(SUP, "ROOM-1", "room", "booth", "Booth")
    with pytest.raises(ValidationFailed, match="no clean hold time"):
        ops.record_cleaning(SUP, "ROOM-1", "full")


# ------------------------------------------------------------------- calibration


def test_calibration_expiry_and_failure_refuse_a_scale(app: Flask) -> None:
    _balance(calibrated=False)
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g")
    assert check.code == "not_calibrated" and "no calibration recorded" in check.reason
    today = plant_date(utcnow())
    due = today + timedelta(days=30)
    ops.record_calibration(QA, "BAL-01", "pass", "CAL-1", due=due, calibrated_by="Acme Metrology")
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g").ok
    assert ops.check_equipment("BAL-01", ["calibrated"]).ok
    # usable through the due date, refused from the day after, with the due date in the sentence
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g", at=utcnow() + timedelta(days=29)).ok
    later = utcnow() + timedelta(days=32)
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g", at=later)
    assert check.code == "calibration_expired"
    assert check.reason == (f"The calibration of Bench balance BAL-01 expired: it was due on {due.isoformat()}. "
                            "Use another one or have it calibrated.")
    assert ops.check_equipment("BAL-01", ["calibrated"], later).code == "calibration_expired"
    # a failed calibration refuses even though an earlier pass is not yet due
    ops.record_calibration(QA, "BAL-01", "fail", "CAL-2", comment="Linearity out of tolerance")
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g")
    assert check.code == "calibration_failed"
    assert check.reason == (f"Bench balance BAL-01 failed its last calibration on {today.isoformat()} "
                            "(certificate CAL-2) and must not be used. Use another one or have it repaired and "
                            "calibrated.")
    assert ops.current_calibration("BAL-01").certificate == "CAL-1"  # type: ignore[union-attr]
    ops.record_calibration(QA, "BAL-01", "pass", "CAL-3", due=today + timedelta(days=90))
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g")
    assert check.ok and check.details["calibration"]["certificate"] == "CAL-3"
    with pytest.raises(ValidationFailed, match="needs the date the next one is due"):
        ops.record_calibration(QA, "BAL-01", "pass", "CAL-4")
    with pytest.raises(ValidationFailed, match="before the calibration"):
        ops.record_calibration(QA, "BAL-01", "pass", "CAL-4", due=today - timedelta(days=1))
    with pytest.raises(ValidationFailed, match="pass or fail"):
        ops.record_calibration(QA, "BAL-01", "ok", "CAL-4", due=today)
    recorded = _entries("BAL-01", "equipment.calibration_recorded")
    assert [(e["after"]["calibration"]["certificate"], e["after"]["calibration"]["result"],
             e["after"]["calibration"]["due"]) for e in recorded] == [
        ("CAL-1", "pass", due.isoformat()), ("CAL-2", "fail", None),
        ("CAL-3", "pass", (today + timedelta(days=90)).isoformat())]


# ----------------------------------------------------------------- scale fitness


def test_capacity_and_minimum_weight_with_unit_conversion(app: Flask) -> None:
    _balance()
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g")
    assert check.ok and check.equipment_id == "BAL-01"
    assert check.details["capacity"] == {"value": "6.1", "uom": "kg"}
    assert check.details["target"] == {"value": "250", "uom": "g"}
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("6.1"), "kg").ok
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("500"), "mg").ok  # exactly the minimum weight
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("20"), "mg")
    assert check.code == "below_minimum"
    assert check.reason == ("20 mg is below the minimum weight of Bench balance BAL-01 (0.5 g). "
                            "Use a finer balance.")
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("499.999"), "mg").code == "below_minimum"
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("6100.001"), "g")
    assert check.code == "above_capacity"
    assert check.reason == ("6100.001 g is above the capacity of Bench balance BAL-01 (6.1 kg). "
                            "Use a larger scale.")
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("2"), "L").code == "wrong_unit"
    check = ops.check_scale_for_weighing("DEV-NOPE", Decimal("250"), "g")
    assert check.code == "unknown_device"
    assert check.reason == ("Scale DEV-NOPE is not registered in the MES and must not be used. "
                            "Use a registered scale or tell the supervisor.")


def test_readability_and_accuracy_class(app: Flask) -> None:
    _balance()
    _balance("BAL-02", "DEV-BAL-02", cls=None)
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g", Decimal("0.01")).ok
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g", Decimal("10"), None).ok
    assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("0.25"), "kg", Decimal("0.00001")).ok  # 0.01 g in kg
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("750"), "mg", Decimal("1"))
    assert check.code == "readability"
    assert check.reason == ("Bench balance BAL-01 reads to 0.01 g; this weighing needs 1 mg or finer. "
                            "Use a finer balance.")
    for needed, ok in (("III", True), ("IIII", True), ("II", True), ("I", False)):
        assert ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g", None, needed).ok is ok, needed
    check = ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g", None, "I")
    assert check.code == "accuracy_class"
    assert check.reason == ("Bench balance BAL-01 is class II; this weighing needs class I or better. "
                            "Use another scale.")
    assert ops.check_scale_for_weighing("DEV-BAL-02", Decimal("250"), "g", None, "IIII").code == "accuracy_class"
    with pytest.raises(ValidationFailed, match="accuracy class"):
        ops.check_scale_for_weighing("DEV-BAL-01", Decimal("250"), "g", None, "V")


# ---------------------------------------------------------------------- readings


def test_reading_checks(app: Flask) -> None:
    _balance()
    now = utcnow()
    check = ops.check_reading(_reading(at=now, age_s=1.5), 5, now, unit="g")
    assert check.ok, check.reason
    reading = check.details["reading"]
    assert reading["value"] == "250.03" and reading["unit"] == "g" and reading["raw"] == "S S     250.03 g\r\n"
    assert (reading["device_id"], reading["equipment_id"], reading["driver"], reading["sequence"]) == (
        "DEV-BAL-01", "BAL-01", "mtsics", 7)
    assert reading["identity"]["serial_number"] == "B123456789" and reading["identity"]["details"] == {
        "capacity": "6100 g"}
    assert reading["age_ms"] == 1500 and reading["monotonic"] == "1234.5"

    def no_floats(value: Any) -> None:
        assert not isinstance(value, float), value
        if isinstance(value, dict):
            for v in value.values():
                no_floats(v)

    no_floats(check.as_json())
    # stale: older than max_age_s by server time
    check = ops.check_reading(_reading(at=now, age_s=12), 5, now)
    assert check.code == "stale"
    assert check.reason == ("The reading from Bench balance BAL-01 is 12 s old; readings older than 5 s are not "
                            "accepted. Weigh again.")
    # unstable
    check = ops.check_reading({**_reading(at=now), "status": "dynamic", "stable": False}, 5, now)
    assert check.code == "unstable" and "not stable" in check.reason
    assert ops.check_reading({**_reading(at=now), "stable": False}, 5, now).code == "unstable"
    assert ops.check_reading(_reading(at=now, status="overload", value=None), 5, now).code == "no_value"
    # unknown device
    check = ops.check_reading(_reading("DEV-X", at=now), 5, now)
    assert check.code == "unknown_device" and "Scale DEV-X is not registered" in check.reason
    # value a decimal string; unit as the step wants it; timestamp with a zone, not in the future
    assert ops.check_reading(_reading(at=now, value=250.03), 5, now).code == "bad_reading"
    assert ops.check_reading(_reading(at=now, value="abc"), 5, now).code == "bad_reading"
    check = ops.check_reading(_reading(at=now, unit="kg", value="0.25003"), 5, now, unit="g")
    assert check.code == "wrong_unit" and "shows kg, but this step weighs in g" in check.reason
    assert ops.check_reading(_reading(at=now, unit="lb"), 5, now).code == "wrong_unit"
    assert ops.check_reading({**_reading(at=now), "timestamp": "2026-11-23T10:00:00"}, 5, now).code == "bad_reading"
    assert ops.check_reading(_reading(at=now, age_s=-60), 5, now).code == "bad_reading"
    assert ops.check_reading({**_reading(at=now), "raw": ""}, 5, now).code == "bad_reading"


# --------------------------------------------------------------------------- API


def test_api_registry_records_check_and_permissions(app: Flask) -> None:
    seeded = seed()
    sup = logged_in(app.test_client(), seeded, "supervisor")
    qa = logged_in(app.test_client(), seeded, "qa")
    op = logged_in(app.test_client(), seeded, "operator")
    scale = {"id": "BAL-01", "kind": "scale", "class": "Bench balance 6 kg, class II", "description": "Bench balance",
             "device_id": "DEV-BAL-01", "driver": "mtsics", "capacity": {"value": "6.1", "uom": "kg"},
             "min_weight": {"value": "0.5", "uom": "g"}, "readability": {"value": "0.01", "uom": "g"},
             "accuracy_class": "II", "location": "Dispensary"}
    r = sup.post("/api/v1/equipment", scale)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["equipment"]["scale"]["capacity"] == {"value": "6.1", "uom": "kg"}
    assert op.post("/api/v1/equipment", {**scale, "id": "BAL-09"}).status_code == 403
    r = sup.post("/api/v1/equipment", {**scale, "id": "BAL-03", "capacity": {"value": 6.1, "uom": "kg"}})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = sup.post("/api/v1/equipment", {"id": "BL-02", "kind": "vessel", "class": "blender", "description": "Blender",
                                       "line": "LINE-1", "status": "dirty", "clean_hold_hours": 48})
    assert r.status_code == 201, r.get_json()
    # an operator sees the registry but cannot record a calibration; QA can
    assert [e["id"] for e in op.get("/api/v1/equipment").get_json()["equipment"]] == ["BAL-01", "BL-02"]
    assert [e["id"] for e in op.get("/api/v1/equipment?kind=scale").get_json()["equipment"]] == ["BAL-01"]
    assert op.get("/api/v1/equipment?status=bogus").status_code == 422
    due = (plant_date(utcnow()) + timedelta(days=30)).isoformat()
    calibration = {"result": "pass", "certificate": "CAL-2026-001", "due": due, "calibrated_by": "Acme Metrology"}
    r = op.post("/api/v1/equipment/BAL-01/calibrations", calibration)
    assert r.status_code == 403 and r.get_json()["type"].endswith("/forbidden")
    r = qa.post("/api/v1/equipment/BAL-01/calibrations", calibration)
    assert r.status_code == 201 and r.get_json()["calibration"]["recorded_by"] == "qa1"
    r = op.get("/api/v1/equipment/BAL-01/check?states=calibrated,not_in_use")
    assert r.status_code == 200 and r.get_json()["check"]["ok"] is True
    # cleaning and status
    r = op.get("/api/v1/equipment/BL-02/check?states=clean,calibrated")
    check = r.get_json()["check"]
    assert (check["ok"], check["code"]) == (False, "dirty") and "Clean it and record the cleaning." in check["reason"]
    assert op.post("/api/v1/equipment/BL-02/cleanings", {"type": "full"}).status_code == 403
    r = sup.post("/api/v1/equipment/BL-02/cleanings", {"type": "full", "cleaned_by": "operator1"})
    assert r.status_code == 201 and r.get_json()["cleaning"]["cleaned_by"] == "operator1"
    assert op.get("/api/v1/equipment/BL-02/check?states=clean").get_json()["check"]["ok"] is True
    assert op.get("/api/v1/equipment/BL-02/check?states=shiny").status_code == 422
    assert op.get("/api/v1/equipment/NOPE/check?states=clean").status_code == 404
    r = sup.post("/api/v1/equipment/BL-02/status", {"status": "maintenance"})
    assert r.status_code == 422 and "reason is required" in r.get_json()["detail"]
    r = sup.post("/api/v1/equipment/BL-02/status", {"status": "maintenance", "reason": "Seal leaking"})
    assert r.status_code == 200 and r.get_json()["equipment"]["status"] == "maintenance"
    r = sup.post("/api/v1/equipment/BL-02/status", {"status": "clean", "reason": "x"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    got = op.get("/api/v1/equipment/BL-02").get_json()["equipment"]
    assert got["status_reason"] == "Seal leaking" and [c["type"] for c in got["cleanings"]] == ["full"]
    assert op.get("/api/v1/equipment/BL-02/cleanings").get_json()["cleanings"][0]["type"] == "full"
    got = op.get("/api/v1/equipment/BAL-01").get_json()["equipment"]
    assert got["current_calibration"]["certificate"] == "CAL-2026-001"
    assert [c["certificate"] for c in op.get("/api/v1/equipment/BAL-01/calibrations").get_json()["calibrations"]] == [
        "CAL-2026-001"]
    # deactivation
    assert op.post("/api/v1/equipment/BAL-01/deactivate", {"reason": "old"}).status_code == 403
    r = qa.post("/api/v1/equipment/BAL-01/deactivate", {"reason": "Replaced by BAL-07"})
    assert r.status_code == 200 and r.get_json()["equipment"]["active"] is False
    check = op.get("/api/v1/equipment/BAL-01/check?states=calibrated").get_json()["check"]
    assert check["code"] == "inactive"
    assert [e["id"] for e in op.get("/api/v1/equipment").get_json()["equipment"]] == ["BL-02"]
    assert op.get("/api/v1/equipment/NOPE").status_code == 404
