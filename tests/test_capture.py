"""Capture rules on the server (issue #5) and the equipment check against the registry:
the weight comes from the gateway's latest reading of a registered, calibrated, suitable
scale, never from the client; every refusal names what is wrong and records nothing; one
step completion is one transaction. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.equipment import operations as eqops
from mes.errors import Conflict, ValidationFailed
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.execution.models import StepRecord
from mes.gateway.store import CapturedReading, reading_store
from mes.integration.models import OutboxEvent
from mes.materials import operations as mat
from tests.execution_helpers import (
    World,
    confirmed,
    dispensing_recipe,
    do_step,
    effective_recipe,
    make_world,
    put_reading,
    ready_to_weigh,
    run_until,
    scale_for,
    start,
    step_scale,
    stock,
    weigh,
    weigh_payload,
)
from tests.helpers import SEED, logged_in

RECIPE = dispensing_recipe("MR-CAPTURE", "FG-CAP", "Capture product", "RM-CAP")


def _ready_to_weigh(monkeypatch: pytest.MonkeyPatch) -> tuple[World, str]:
    return ready_to_weigh(monkeypatch, RECIPE, "capture.yaml")


_scale = step_scale


def _snapshot(batch_id: str) -> tuple[int, int, int, int, int]:
    """What a refused or failed completion must leave unchanged."""
    db.session.rollback()
    return (db.session.execute(select(func.count()).select_from(StepRecord).where(StepRecord.batch_id == batch_id)).scalar(),
            len(mat.consumptions(batch_id=batch_id)),
            db.session.execute(select(func.count()).select_from(AuditEntry)).scalar(),
            db.session.execute(select(func.count()).select_from(OutboxEvent)).scalar(),
            ex.get_step(batch_id, "w_raw").version)


def _complete(world: World, batch_id: str, payload: dict[str, Any], **kw: Any) -> dict[str, Any]:
    kw.setdefault("readings", world.readings)
    return ex.complete_step(world.actor("operator"), batch_id, "w_raw", payload, world.key(),
                            ex.get_step(batch_id, "w_raw").version, **kw)


def _payload(world: World, batch_id: str, device_id: str, reading: CapturedReading | None = None,
             **extra: Any) -> dict[str, Any]:
    """The weighing of the first container of the identified lot, confirming ``reading`` (or,
    none stored yet, reading 0 showing 2000 g), the scale tared with the container on it."""
    lot = world.lots["RM-CAP"][0]
    shown = confirmed(reading) if reading is not None else {"device_id": device_id, "sequence": 0, "value": "2000",
                                                            "unit": "g"}
    return {"lot_id": lot, "container_id": mat.containers_of(lot)[0].id, **shown,
            "tare": {"source": "scale_tare", "value": "250", "unit": "g"}, **extra}


def _refused(world: World, batch_id: str, payload: dict[str, Any], code: str, match: str, **kw: Any) -> Any:
    before = _snapshot(batch_id)
    with pytest.raises(ex.StepRefused, match=match) as refused:
        _complete(world, batch_id, payload, **kw)
    assert refused.value.extra.get("code") == code, refused.value.extra
    records, consumed, audited, *rest = _snapshot(batch_id)
    # nothing recorded, nothing taken; the refusal itself is one audit entry (issue 14)
    assert (records, consumed, audited - 1, *rest) == before
    assert ex.refusals_of(batch_id)[-1]["code"] == code
    return refused.value


def _add_scale(world: World, device_id: str, *, readability: str = "1", accuracy: str | None = "II",
               calibrated: bool = True) -> str:
    eq = eqops.register_equipment(SEED, f"SC-{device_id}", "scale", "Bench balance", "Bench balance",
                                  device_id=device_id, capacity=("3000", "g"), min_weight=("20", "g"),
                                  readability=(readability, "g"), accuracy_class=accuracy)
    if calibrated:
        eqops.record_calibration(SEED, eq.id, "pass", f"CAL-{device_id}", due=date.today() + timedelta(days=300))
    return eq.id


def test_weight_comes_from_the_gateway_reading_with_its_original(app: Flask, monkeypatch) -> None:
    world, batch_id = _ready_to_weigh(monkeypatch)
    device = _scale(world, batch_id)
    lot = world.lots["RM-CAP"][0]
    c1, c2 = (c.id for c in mat.containers_of(lot))
    reading = put_reading(world, device, "1200", "g")
    first = _complete(world, batch_id, {"lot_id": lot, "container_id": c1, **confirmed(reading), "more": True,
                                        "tare": {"source": "scale_tare", "value": "250", "unit": "g"}})
    assert first["state"] == "in_progress" and Decimal(first["net"]) == Decimal("1.2") and first["sequence"] == reading.sequence
    second = weigh(world, batch_id, "w_raw", lot, c2, "800", "g")
    assert second["state"] == "completed" and Decimal(second["total"]) == 2
    recs = sorted((r for r in ex.records_of(batch_id) if r.kind == "container"),
                  key=lambda r: r.data["reading"]["sequence"])
    got = recs[0].data["reading"]
    assert got["raw"] == reading.raw.decode() and got["raw_hex"] == reading.raw.hex()
    assert got["identity"] == {"make": "Mettler-Toledo", "model": "ICS685", "serial": "B812345678", "firmware": "4.20"}
    assert got["device_id"] == device and got["equipment_id"] == recs[0].data["equipment_id"]
    assert got["sequence"] == reading.sequence and got["seen_sequence"] == reading.sequence
    assert got["calibration"]["due"] and got["accuracy_class"] == "II"
    assert [c.qty for c in mat.consumptions(batch_id=batch_id)] == [Decimal("1200"), Decimal("800")]
    assert {c.id for c in mat.consumptions(batch_id=batch_id)} == {r.data["consumption"] for r in recs}
    # the audit entry of the step carries the same original
    entry = db.session.execute(select(AuditEntry).where(AuditEntry.action == "batch.step.recorded",
                                                         AuditEntry.batch_id == batch_id)).scalar_one()
    assert reading.raw.hex() in entry.entry_bytes.decode()


def test_every_capture_refusal_names_what_is_wrong(app: Flask, monkeypatch) -> None:
    world, batch_id = _ready_to_weigh(monkeypatch)
    device = _scale(world, batch_id)
    ok = _payload(world, batch_id, device)
    # the client cannot send the weight
    with pytest.raises(ValidationFailed, match="takes the weight from the scale"):
        _complete(world, batch_id, {**ok, "reading": {"value": "2000", "unit": "g", "stable": True}})
    db.session.rollback()
    _refused(world, batch_id, _payload(world, batch_id, "NO-SUCH-SCALE"), "unknown_device", "not registered")
    _refused(world, batch_id, ok, "no_gateway", "No device gateway", readings=None)
    _refused(world, batch_id, ok, "no_reading", "has sent no reading")
    shown = put_reading(world, device, "2000", "g", stable=False)
    _refused(world, batch_id, _payload(world, batch_id, device, shown), "unstable", "not stable")
    put_reading(world, device, None, "g", status="overload", stable=False)
    _refused(world, batch_id, ok, "scale_moved", "now shows overload")
    shown = put_reading(world, device, "2000", "g", at=utcnow() - timedelta(seconds=5))
    _refused(world, batch_id, _payload(world, batch_id, device, shown), "stale", "5 s old; readings older than 3 s")
    assert _complete(world, batch_id, _payload(world, batch_id, device, shown, more=True),
                     max_reading_age_ms=10_000)["net"] == "2.000"  # setting honoured
    db.session.rollback()
    latest = put_reading(world, device, "10", "g")
    _refused(world, batch_id, {**_payload(world, batch_id, device, latest), "sequence": latest.sequence + 3},
             "reading_behind", "not received the reading")
    _refused(world, batch_id, _payload(world, batch_id, device, latest), "below_minimum", "below the minimum weight")
    shown = put_reading(world, device, "3500", "g")
    _refused(world, batch_id, _payload(world, batch_id, device, shown), "above_capacity", "above the capacity")
    # a scale too coarse, of a lower class, under maintenance
    _add_scale(world, "COARSE", readability="10")
    shown = put_reading(world, "COARSE", "1990", "g")
    _refused(world, batch_id, _payload(world, batch_id, "COARSE", shown), "readability", "needs 1 g or finer")
    _add_scale(world, "CLASS-III", accuracy="III")
    shown = put_reading(world, "CLASS-III", "1990", "g")
    _refused(world, batch_id, _payload(world, batch_id, "CLASS-III", shown), "accuracy_class", "needs class II or better")
    eq_id = _add_scale(world, "IN-REPAIR")
    eqops.set_status(SEED, eq_id, "maintenance", "load cell replaced")
    shown = put_reading(world, "IN-REPAIR", "1990", "g")
    _refused(world, batch_id, _payload(world, batch_id, "IN-REPAIR", shown), "maintenance", "load cell replaced")
    assert ex.deviations_of(batch_id) == []  # none of these raises a deviation


def test_a_moving_reading_only_where_the_recipe_allows_it(app: Flask, monkeypatch) -> None:
    """``stable_reading: false`` (e.g. a viscous liquid still settling) takes a moving reading
    and records that it was moving; faults and overloads are still refused."""
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE.replace("MR-CAPTURE", "MR-CAPTURE-DYN").replace(
        "            multiple_containers: true\n", "            multiple_containers: true\n            stable_reading: false\n"),
        "capture-dyn.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before="w_raw")
    assert ex.control_recipe(ex.get_batch(batch_id)).step("w_raw").stable_reading is False
    device = _scale(world, batch_id)
    shown = put_reading(world, device, None, "g", status="overload", stable=False)
    _refused(world, batch_id, {**_payload(world, batch_id, device), "sequence": shown.sequence}, "scale_moved",
             "now shows overload")
    shown = put_reading(world, device, "2000", "g", stable=False)
    done = _complete(world, batch_id, _payload(world, batch_id, device, shown))
    assert done["state"] == "completed"
    rec = next(r for r in ex.records_of(batch_id) if r.kind == "container")
    assert rec.data["reading"]["stable"] is False  # the record says it was moving


@pytest.mark.parametrize("case", ["missing", "expired", "failed"])
def test_a_scale_out_of_calibration_is_refused_with_a_deviation(app: Flask, monkeypatch, case: str) -> None:
    world, batch_id = _ready_to_weigh(monkeypatch)
    eq_id = _add_scale(world, "UNCAL", calibrated=False)
    if case == "expired":
        eqops.record_calibration(SEED, eq_id, "pass", "CAL-OLD", calibrated_at=utcnow() - timedelta(days=400),
                                 due=date.today() - timedelta(days=35))
    elif case == "failed":
        eqops.record_calibration(SEED, eq_id, "fail", "CAL-FAIL")
    shown = put_reading(world, "UNCAL", "2000", "g")
    before = _snapshot(batch_id)
    with pytest.raises(ex.StepRefused, match={"missing": "no calibration", "expired": "expired",
                                              "failed": "failed its last calibration"}[case]) as refused:
        _complete(world, batch_id, _payload(world, batch_id, "UNCAL", shown))
    dev = ex.get_deviation(refused.value.extra["deviation_id"])
    assert dev.category == "equipment_out_of_calibration" and dev.severity == "minor" and dev.automatic
    assert dev.evidence["equipment_id"] == eq_id and dev.evidence["reading"]["raw_hex"]
    records, consumed, *_ = _snapshot(batch_id)
    assert (records, consumed) == before[:2]
    assert any(e["type"] == "refused_attempt" for e in ex.exceptions(batch_id))
    # a minor deviation does not block: the right scale is used next
    assert weigh(world, batch_id, "w_raw", world.lots["RM-CAP"][0], mat.containers_of(world.lots["RM-CAP"][0])[0].id,
                 "2000", "g")["state"] == "completed"


def test_equipment_check_uses_the_registry_and_claims_for_the_batch(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "capture.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    booth = world.equipment["Dispensing booth"]
    scale_eq = world.equipment[scale_for(world, ex.control_recipe(ex.get_batch(batch_id)).step("w_raw")).equipment_class]

    def check(equipment_id: str) -> dict[str, Any]:
        return do_step(world, batch_id, "booth", payload={"equipment_id": equipment_id,
                                                          "label_states": ["clean", "not_in_use"]})

    with pytest.raises(ex.StepRefused, match="not registered") as refused:
        check("EQ-NOWHERE")
    assert refused.value.extra["code"] == "unknown_equipment"
    with pytest.raises(ex.StepRefused, match="needs a Dispensing booth") as refused:
        check(scale_eq)
    assert refused.value.extra["code"] == "wrong_class"
    eqops.set_status(SEED, booth, "in_use", "used by another batch")
    with pytest.raises(ex.StepRefused, match="is in use"):
        check(booth)
    eqops.set_status(SEED, booth, "dirty")
    with pytest.raises(ex.StepRefused, match="dirty") as refused:
        check(booth)
    dev = ex.get_deviation(refused.value.extra["deviation_id"])
    assert dev.category == "equipment_not_clean" and dev.severity == "minor"
    assert ex.records_of(batch_id) == []
    eqops.record_cleaning(SEED, booth, "full clean", valid_for=timedelta(days=2))
    done = check(booth)
    assert done["claimed"] is True and done["status"] == "clean"
    rec = ex.records_of(batch_id)[0]
    assert rec.data["registry_checked"] is True and rec.data["registry"]["cleaning"]["id"]
    assert eqops.get_equipment(booth).status == "in_use"
    assert eqops.get_equipment(booth).status_reason == f"in use by batch {batch_id}"
    run_until(world, batch_id)
    assert ex.get_batch(batch_id).status == "completed"
    assert eqops.get_equipment(booth).status == "dirty"  # released at the batch's end
    assert ex.claimed_equipment(batch_id) == [booth]


def test_a_failure_midway_leaves_nothing_behind(app: Flask, monkeypatch) -> None:
    """One completion is one transaction: a consumption that cannot be taken, or an output
    lot that cannot be created, rolls back the step record, audit entries and events too."""
    world, batch_id = _ready_to_weigh(monkeypatch)
    lot = world.lots["RM-CAP"][0]
    small, full = mat.containers_of(lot)
    left = mat.container_remaining(small) - 1  # the first container of the identified lot holds 1 kg
    mat.consume(SEED, lot, small.id, left, "kg", "B-ELSEWHERE")
    device = _scale(world, batch_id)
    shown = put_reading(world, device, "2000", "g")
    before = _snapshot(batch_id)
    with pytest.raises(Conflict, match="holds only 1"):
        _complete(world, batch_id, _payload(world, batch_id, device, shown))
    assert _snapshot(batch_id) == before
    assert mat.container_remaining(mat.containers_of(lot)[0]) == Decimal("1")
    spec = ex.control_recipe(ex.get_batch(batch_id)).step("w_raw")
    run_until(world, batch_id, stop_before="out",
              overrides={"w_raw": lambda w: weigh_payload(w, spec, lot, full.id, "2000", "g")})
    mat.receive_lot(SEED, "FG-CAP", [mat.ContainerIn("1.000", "kg")], lot_id="LOT-TAKEN",
                    manufactured_date=date.today())
    audit_before = db.session.execute(select(func.count()).select_from(AuditEntry)).scalar()
    with pytest.raises(Conflict, match="exists already"):
        do_step(world, batch_id, "out", payload={"quantity": "1.990", "unit": "kg", "lot_id": "LOT-TAKEN"})
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(AuditEntry)).scalar() == audit_before
    assert ex.get_step(batch_id, "out").state == "ready"
    assert not [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:out"]
    done = do_step(world, batch_id, "out", payload={"quantity": "1.990", "unit": "kg", "lot_id": "LOT-CAP-1"})
    assert done["batch_state"] == "completed"
    assert mat.trace_backward("LOT-CAP-1").lots[world.lots["RM-CAP"][0]].depth == 1


def test_capture_through_the_api_reads_the_apps_store(app: Flask, client, monkeypatch) -> None:
    world, batch_id = _ready_to_weigh(monkeypatch)
    device = _scale(world, batch_id)
    world.readings = reading_store(app)  # type: ignore[assignment]  # the store the gateway fills
    op = logged_in(client, world.seeded, "operator")
    url = f"/api/v1/batches/{batch_id}/steps/w_raw/complete"
    body = {"expected_version": ex.get_step(batch_id, "w_raw").version, "payload": _payload(world, batch_id, device)}
    r = op.post(url, body, headers={"Idempotency-Key": "cap-1"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert "has sent no reading" in r.get_json()["detail"] and r.get_json()["code"] == "no_reading"
    shown = put_reading(world, device, "2001", "g")
    body["payload"] = _payload(world, batch_id, device, shown)
    r = op.post(url, body, headers={"Idempotency-Key": "cap-2"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["state"] == "completed" and r.get_json()["value"] == "2001"


def test_capture_refused_from_a_disconnected_device(app: Flask, monkeypatch) -> None:
    """Issue 16: the scale falls silent (cable pulled) and the gateway marks its link lost;
    the last reading, still recent enough for the age rule, is refused because the device is
    not connected. So is a reading from before a gateway restart or from before the link came
    back. Nothing is recorded (SQLite and PostgreSQL)."""
    import time

    from devices.sim import BalanceModel, MtSicsSimulator, SimulatorThread
    from mes.gateway.config import DeviceSpec
    from mes.gateway.health import MemoryHealthBoard
    from mes.gateway.runner import Gateway, GatewayThread
    from mes.gateway.store import LinkState, new_epoch

    world, batch_id = _ready_to_weigh(monkeypatch)
    device = _scale(world, batch_id)
    ok = _payload(world, batch_id, device)
    sim = MtSicsSimulator(BalanceModel(load="1200", unit="g", decimals=1, capacity="3000"), baud=9600)
    sim_thread = SimulatorThread(sim, link="tcp")
    url = sim_thread.start()
    spec = DeviceSpec(device_id=device, driver="mtsics", config={"port": url, "timeout_s": 1.0}, mode="stream",
                      reconnect_initial_s=0.05, reconnect_max_s=0.3)
    gateway = GatewayThread(Gateway([spec], store=world.readings, board=MemoryHealthBoard())).start()
    try:
        deadline = time.monotonic() + 15
        while not ((r := world.readings.latest(device)) and r.value == Decimal("1200.0")):
            assert time.monotonic() < deadline, "no reading from the simulated scale"
            time.sleep(0.02)
        sim.silent = True
        while (link := world.readings.link(device)) is None or link.connected:
            assert time.monotonic() < deadline, "the silent scale was never reported"
            time.sleep(0.01)
        last = world.readings.latest(device)
        assert (utcnow() - last.at).total_seconds() < 3  # the age rule alone would take it
        refused = _refused(world, batch_id, ok, "device_not_connected", "is not connected")
        assert "no reply" in str(refused)
    finally:
        gateway.stop()
        sim_thread.stop()
    # a reading of a previous gateway run, and one from before the link came back
    _add_scale(world, "LINKED")
    world.readings.set_link(LinkState("LINKED", True, utcnow(), new_epoch()))
    linked = _payload(world, batch_id, "LINKED", put_reading(world, "LINKED", "1200", "g"))  # epoch "": not this run's
    _refused(world, batch_id, linked, "device_not_connected", "before the device gateway restarted")
    world.readings.set_link(LinkState("LINKED", True, utcnow() + timedelta(milliseconds=50), ""))
    _refused(world, batch_id, linked, "device_not_connected", "before its link came back")
    world.readings.set_link(LinkState("LINKED", True, utcnow() - timedelta(seconds=1), ""))
    assert _complete(world, batch_id, {**linked, "more": True})["net"] == "1.200"  # the link is up: taken
