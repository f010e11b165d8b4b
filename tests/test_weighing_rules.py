"""Issue 14, "Record exactly what happened": weighing and refusals. One test per rule, each
on SQLite and PostgreSQL; the rules live in the engine (mes/steps/weigh.py,
mes/steps/capture.py, mes/execution/refusals.py) so the kiosk, the API and the simulated
operator get the same answers."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit.models import AuditEntry
from mes.db import db
from mes.equipment import operations as eqops
from mes.errors import ValidationFailed
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.gateway.store import CapturedReading, reading_store
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
    scale_for,
    start,
    step_scale,
    stock,
)
from tests.helpers import SEED, logged_in

RECIPE = dispensing_recipe("MR-WEIGH14", "FG-W14", "Weighing product", "RM-W14",
                           instruction="Weigh the raw material into a tared bucket.", after_weigh="""\
            tare_low: "0.100"
            tare_high: "0.400"
          - {id: verify, kind: signature, title: Verify, instruction: Verify the weighing., meaning: verified,
             roles: [operator, supervisor], second_person: true}
""")

BUCKET = {"source": "scale_tare", "value": "250", "unit": "g"}


def _ready(monkeypatch: pytest.MonkeyPatch, stop_before: str = "w_raw", recipe: str = RECIPE) -> tuple[World, str]:
    return ready_to_weigh(monkeypatch, recipe, "weigh14.yaml", stop_before=stop_before, extra_lots=1)


_device = step_scale


def _weigh(world: World, batch_id: str, reading: CapturedReading, container: int = 0, *,
           lot: str | None = None, **extra: Any) -> dict[str, Any]:
    lot = lot or world.lots["RM-W14"][0]
    payload = {"lot_id": lot, "container_id": mat.containers_of(lot)[container].id, **confirmed(reading),
               "tare": BUCKET, **extra}
    return ex.complete_step(world.actor("operator"), batch_id, "w_raw", payload, world.key(),
                            ex.get_step(batch_id, "w_raw").version, readings=world.readings)


def _refusal(batch_id: str, code: str) -> dict[str, Any]:
    """The audited refusal with ``code`` (the latest), as review by exception lists it too."""
    db.session.rollback()
    found = [r for r in ex.refusals_of(batch_id) if r["code"] == code]
    assert found, ex.refusals_of(batch_id)
    listed = [e for e in ex.exceptions(batch_id) if e["type"] == "refused_attempt" and e.get("code") == code]
    assert listed and listed[-1]["text"] == found[-1]["reason"]
    return found[-1]


def test_what_the_operator_confirmed_is_what_is_recorded(app: Flask, monkeypatch) -> None:
    """The confirmation carries the reading it showed; the engine records exactly it while it
    is still the scale's latest stable reading, and refuses with a sentence if the scale moved."""
    world, batch_id = _ready(monkeypatch)
    device = _device(world, batch_id)
    shown = put_reading(world, device, "1004", "g")  # the confirm dialog shows 1004 g
    put_reading(world, device, "1040", "g")  # ... and the scale moves on before Confirm
    with pytest.raises(ex.StepRefused, match="The scale moved after you confirmed: you confirmed 1004 g, .* now "
                                             "shows 1040 g. Nothing was recorded") as refused:
        _weigh(world, batch_id, shown, more=True)
    assert refused.value.extra["code"] == "scale_moved"
    assert [r for r in ex.records_of(batch_id) if r.kind == "container"] == []
    assert _refusal(batch_id, "scale_moved")["tried"]["value"] == "1004"
    # a value that is not the one the reading shows is refused the same way
    latest = put_reading(world, device, "1004", "g")
    with pytest.raises(ex.StepRefused, match="you confirmed 1000 g"):
        _weigh(world, batch_id, latest, **{"value": "1000", "more": True})
    # back at the confirmed figure, the scale streams on (newer sequence, same stable value):
    # the confirmed reading still stands and is recorded exactly
    put_reading(world, device, "1004", "g")
    done = _weigh(world, batch_id, shown, more=True)
    assert done["value"] == "1004" and done["sequence"] == shown.sequence and done["net"] == "1.004"
    rec = next(r for r in ex.records_of(batch_id) if r.kind == "container")
    assert str(rec.value) == "1.004" and rec.data["reading"]["confirmed"] == {
        "device_id": device, "sequence": shown.sequence, "value": "1004", "unit": "g"}
    assert mat.consumptions(batch_id=batch_id)[0].qty == Decimal("1004")
    # the confirmation must carry the reading: a bare device id is refused as incomplete
    with pytest.raises(ValidationFailed, match="sequence is the number of the reading"):
        ex.complete_step(world.actor("operator"), batch_id, "w_raw",
                         {"lot_id": world.lots["RM-W14"][0], "container_id": mat.containers_of(world.lots["RM-W14"][0])[1].id,
                          "device_id": device, "tare": BUCKET}, world.key(), ex.get_step(batch_id, "w_raw").version,
                         readings=world.readings)


def test_tare_gross_and_net_are_recorded_for_every_container(app: Flask, client, monkeypatch) -> None:
    """Tare (how obtained), gross and net for every container; the container's tare checked
    against the recipe's tare limits; shown in the batch's JSON views and summary page."""
    world, batch_id = _ready(monkeypatch)
    device = _device(world, batch_id)
    lot = world.lots["RM-W14"][0]
    # a tare outside the recipe's limits (100 g to 400 g) is refused
    heavy = put_reading(world, device, "1200", "g")
    with pytest.raises(ex.StepRefused, match="tare of container .* is 0.500 kg; the recipe allows 0.100 to 0.400 kg"):
        _weigh(world, batch_id, heavy, tare={"source": "scale_tare", "value": "500", "unit": "g"}, more=True)
    _refusal(batch_id, "tare_out_of_limits")
    with pytest.raises(ValidationFailed, match="needs the container's tare"):
        _weigh(world, batch_id, heavy, tare=None, more=True)
    # container 1: the scale tared with the bucket on it (the reading is net)
    first = _weigh(world, batch_id, heavy, more=True)
    assert (first["tare"], first["tare_source"], first["gross"], first["net"]) == ("0.250", "scale_tare", "1.450", "1.200")
    # container 2: the empty bucket weighed first, then bucket and material (the reading is gross)
    empty = put_reading(world, device, "300", "g")
    c2 = mat.containers_of(lot)[1].id
    tared = ex.complete_step(world.actor("operator"), batch_id, "w_raw",
                             {"lot_id": lot, "container_id": c2, "capture": "tare", **confirmed(empty)}, world.key(),
                             ex.get_step(batch_id, "w_raw").version, readings=world.readings)
    assert tared["tare"] == "0.300" and tared["state"] == "in_progress"
    gross = put_reading(world, device, "1100", "g")
    done = _weigh(world, batch_id, gross, container=1, tare={"source": "weighed_container"})
    assert (done["tare"], done["gross"], done["net"], done["total"]) == ("0.300", "1.100", "0.800", "2.000")
    assert done["state"] == "completed"
    recs = sorted((r for r in ex.records_of(batch_id) if r.kind == "container"),
                  key=lambda r: r.data["reading"]["sequence"])
    assert [(r.data["tare"]["source"], r.data["tare"]["value"], r.data["gross"], r.data["net"]) for r in recs] == [
        ("scale_tare", "0.250", "1.450", "1.200"), ("weighed_container", "0.300", "1.100", "0.800")]
    assert recs[1].data["tare"]["reading"]["confirmed"]["value"] == "300"
    # the consumption is the net, not the gross
    assert sorted(c.qty for c in mat.consumptions(batch_id=batch_id)) == [Decimal("800"), Decimal("1200")]
    # JSON views and the batch summary page show tare, gross and net
    qa = logged_in(client, world.seeded, "qa")
    whole = qa.get(f"/api/v1/batches/{batch_id}").get_json()
    w_raw = next(s for s in whole["steps"] if s["id"] == "w_raw")
    shown = sorted((r["data"] for r in w_raw["records"] if r["kind"] == "container"),
                   key=lambda d: d["reading"]["sequence"])
    assert [(d["tare"]["source"], d["tare"]["value"], d["gross"], d["net"]) for d in shown] == [
        ("scale_tare", "0.250", "1.450", "1.200"), ("weighed_container", "0.300", "1.100", "0.800")]
    assert (w_raw["result"]["gross"], w_raw["result"]["tare"]) == ("1.100", "0.300")  # the last container
    op = logged_in(client, world.seeded, "operator")
    page = op.get(f"/kiosk/batches/{batch_id}/summary", headers={"Accept": "text/html"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "1.200 kg net (gross 1.450 kg, tare 0.250 kg scale tare)" in text
    assert "0.800 kg net (gross 1.100 kg, tare 0.300 kg weighed container)" in text


def test_weighing_is_bound_to_the_identified_lot(app: Flask, monkeypatch) -> None:
    """The container weighed is of the lot identified for the step; a mismatch is refused,
    audited and listed for review."""
    world, batch_id = _ready(monkeypatch)
    device = _device(world, batch_id)
    identified, other = world.lots["RM-W14"][:2]
    reading = put_reading(world, device, "2000", "g")
    with pytest.raises(ex.StepRefused, match=f"Lot {other} is not the lot identified for RM-W14 in this batch "
                                             f"\\({identified}\\)"):
        _weigh(world, batch_id, reading, lot=other)
    assert _refusal(batch_id, "wrong_lot")["tried"]["lot_id"] == other
    # a container of another lot under the identified lot's number
    payload = {"lot_id": identified, "container_id": mat.containers_of(other)[0].id, **confirmed(reading),
               "tare": BUCKET}
    with pytest.raises(ex.StepRefused, match=f"belongs to lot {other}, not to lot {identified}"):
        ex.complete_step(world.actor("operator"), batch_id, "w_raw", payload, world.key(),
                         ex.get_step(batch_id, "w_raw").version, readings=world.readings)
    assert len([r for r in ex.refusals_of(batch_id) if r["code"] == "wrong_lot"]) == 2
    assert mat.consumptions(batch_id=batch_id) == []
    assert _weigh(world, batch_id, reading)["state"] == "completed"  # the identified lot is weighed


def test_scale_suitability_checks_minimum_weight_capacity_and_class(app: Flask, client, monkeypatch) -> None:
    """USP <41> / Ph. Eur. 2.1.7: the net at least the scale's minimum weight (QA registers it
    with the calibration), the gross within capacity, readability and class fit; refused with
    the reason. A 10 g floor scale no longer weighs 500 g ± 10 g."""
    floor_recipe = RECIPE.replace("MR-WEIGH14", "MR-WEIGH14-FLOOR").replace(
        'quantity: "2.000", unit: kg, tolerance: {percent: "1.0"}', 'quantity: "0.500", unit: kg, tolerance: {percent: "2.0"}').replace(
        'scale: {readability: "1", unit: g, accuracy_class: II}', 'scale: {readability: "10", unit: g}').replace(
        'quantity: "2.000", unit: kg, yield_low', 'quantity: "0.500", unit: kg, yield_low')
    world, batch_id = _ready(monkeypatch, recipe=floor_recipe)
    floor = eqops.register_equipment(SEED, "SC-FLOOR", "scale", "Floor scale", "Floor scale", device_id="FLOOR",
                                     capacity=("150", "kg"), min_weight=("200", "g"), readability=("10", "g"),
                                     accuracy_class="III")
    # QA registers the minimum weight the calibration established (820 d for d = 10 g)
    qa = logged_in(client, world.seeded, "qa")
    r = qa.post("/api/v1/equipment/SC-FLOOR/calibrations",
                {"result": "pass", "certificate": "CAL-FLOOR-1", "due": (date.today() + timedelta(days=200)).isoformat(),
                 "min_weight": {"value": "8.2", "uom": "kg"}})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["calibration"]["min_weight"] == {"value": "8.2", "uom": "kg"}
    with pytest.raises(ValidationFailed, match="between the scale's readability and its capacity"):
        eqops.record_calibration(SEED, floor.id, "pass", "CAL-X", due=date.today() + timedelta(days=9),
                                 min_weight=("200", "kg"))
    reading = put_reading(world, "FLOOR", "500", "g")
    with pytest.raises(ex.StepRefused, match="500 g is below the minimum weight per calibration CAL-FLOOR-1 of "
                                             "Floor scale SC-FLOOR \\(8.2 kg\\)"):
        _weigh(world, batch_id, reading)
    assert _refusal(batch_id, "below_minimum")["details"]["equipment_id"] == "SC-FLOOR"
    # the recipe's own scale passes, and the record names the minimum weight applied
    device = _device(world, batch_id)
    reading = put_reading(world, device, "500", "g")
    done = _weigh(world, batch_id, reading, tare={"source": "scale_tare", "value": "200", "unit": "g"})
    assert done["state"] == "completed"
    rec = next(r for r in ex.records_of(batch_id) if r.kind == "container")
    assert rec.data["reading"]["min_weight"]["uom"] and rec.data["reading"]["calibration"]["certificate"]


def test_capacity_is_checked_against_the_gross_weight(app: Flask, monkeypatch) -> None:
    world, batch_id = _ready(monkeypatch)
    device = _device(world, batch_id)
    assert eqops.equipment_for_device(device).capacity == Decimal("3000")
    reading = put_reading(world, device, "2700", "g")  # the net fits, net and tare (3050 g) do not
    with pytest.raises(ex.StepRefused, match="3050 g is above the capacity"):
        _weigh(world, batch_id, reading, tare={"source": "scale_tare", "value": "350", "unit": "g"}, more=True)
    assert _refusal(batch_id, "above_capacity")


def test_a_refused_weighing_is_an_attempt_not_a_deviation(app: Flask, client, monkeypatch) -> None:
    """Out of tolerance: each attempt refused and audited (value, reason, who, when) and listed
    for review; the operator adjusts and captures again; a deviation is raised when the operator
    reports it or after MES_WEIGH_MAX_FAILED_ATTEMPTS refused attempts."""
    world, batch_id = _ready(monkeypatch)
    device = _device(world, batch_id)
    heavy = put_reading(world, device, "2100", "g")
    for attempt in (1, 2):
        with pytest.raises(ex.StepRefused, match=f"outside the tolerance window .* Adjust the amount and capture "
                                                 f"again \\(attempt {attempt}; a deviation is raised after 3\\)") as refused:
            _weigh(world, batch_id, heavy)
        assert "deviation_id" not in refused.value.extra
    assert ex.deviations_of(batch_id) == []
    refusals = [r for r in ex.refusals_of(batch_id) if r["code"] == "out_of_tolerance"]
    assert len(refusals) == 2 and refusals[0]["tried"]["value"] == "2100" and refusals[0]["by"] == "operator1"
    assert refusals[0]["at"] and Decimal(refusals[0]["details"]["total"]) == Decimal("2.1")
    # the third refused attempt raises a major deviation
    with pytest.raises(ex.StepRefused, match="A deviation was raised \\(3 refused attempts\\)") as refused:
        _weigh(world, batch_id, heavy)
    dev = ex.get_deviation(refused.value.extra["deviation_id"])
    assert dev.severity == "major" and dev.evidence["failed_attempts"] == 3
    ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev.id, "use_as_is", "re-weighed",
                             terminal="QA-WS-01")
    # counting starts again; the operator may report at once; the setting is read by the API
    with pytest.raises(ex.StepRefused, match="A deviation was raised \\(reported by the operator\\)"):
        _weigh(world, batch_id, heavy, report=True)
    db.session.rollback()
    dev2 = next(d for d in ex.deviations_of(batch_id) if d.status == "open")
    ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev2.id, "use_as_is", "re-weighed",
                             terminal="QA-WS-01")
    app.config["MES_WEIGH_MAX_FAILED_ATTEMPTS"] = 1
    world.readings = reading_store(app)  # type: ignore[assignment]
    heavy = put_reading(world, device, "2100", "g")
    op = logged_in(client, world.seeded, "operator")
    lot = world.lots["RM-W14"][0]
    body = {"expected_version": ex.get_step(batch_id, "w_raw").version,
            "payload": {"lot_id": lot, "container_id": mat.containers_of(lot)[0].id, **confirmed(heavy), "tare": BUCKET}}
    r = op.post(f"/api/v1/batches/{batch_id}/steps/w_raw/complete", body, headers={"Idempotency-Key": "oot-1"})
    assert r.status_code == 409 and "1 refused attempts" in r.get_json()["detail"] and r.get_json()["deviation_id"]
    # adjusted, the weighing is recorded
    db.session.rollback()
    for d in ex.deviations_of(batch_id):
        if d.status == "open":
            ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), d.id, "use_as_is", "re-weighed",
                                     terminal="QA-WS-01")
    ok = put_reading(world, device, "2000", "g")
    assert _weigh(world, batch_id, ok)["state"] == "completed"


def test_every_refusal_leaves_a_trace(app: Flask, client, monkeypatch) -> None:
    """Refusals that raise no deviation (wrong equipment, held lot at the scan, unsuitable
    scale, self-verification) are audit entries (what was tried, the reason) committed in their
    own transaction, and listed in the batch's exceptions; credentials are never written."""
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "weigh14.yaml")
    stock(world, store.master_of(store.get_version(rv)), extra_lots=1)
    batch_id = start(world, rv, "10.000", "kg")
    scale_eq = scale_for(world, ex.control_recipe(ex.get_batch(batch_id)).step("w_raw")).equipment_id
    # wrong equipment
    with pytest.raises(ex.StepRefused, match="needs a Dispensing booth"):
        do_step(world, batch_id, "booth", payload={"equipment_id": scale_eq, "label_states": ["clean", "not_in_use"]})
    wrong = _refusal(batch_id, "wrong_class")
    assert wrong["tried"]["equipment_id"] == scale_eq and wrong["step"] == "booth" and wrong["by"] == "operator1"
    do_step(world, batch_id, "booth")
    # a held lot at the scan
    held = world.lots["RM-W14"][1]
    mat.place_hold(world.actor("qa"), held, "consumption", "Suspected contamination", ncr_id="NCR-14")
    with pytest.raises(ex.StepRefused, match="on hold"):
        do_step(world, batch_id, "id_raw", payload={"lot_id": held})
    assert _refusal(batch_id, "on_hold")["tried"] == {"lot_id": held}
    do_step(world, batch_id, "id_raw")
    # an unsuitable scale
    eqops.register_equipment(SEED, "SC-COARSE", "scale", "Bench balance", "Coarse balance", device_id="COARSE",
                             capacity=("30", "kg"), min_weight=("1", "kg"), readability=("50", "g"))
    eqops.record_calibration(SEED, "SC-COARSE", "pass", "CAL-C", due=date.today() + timedelta(days=30))
    coarse = put_reading(world, "COARSE", "2000", "g")
    with pytest.raises(ex.StepRefused, match="reads to 50 g"):
        _weigh(world, batch_id, coarse)
    assert _refusal(batch_id, "readability")["details"]["equipment_id"] == "SC-COARSE"
    do_step(world, batch_id, "w_raw")
    # self-verification, through the API (the kiosk and the simulated operator go the same way)
    op = logged_in(client, world.seeded, "operator")
    body = {"expected_version": ex.get_step(batch_id, "verify").version,
            "payload": {"pin": "1234", "password": "secret-pass", "esig_acknowledged": True}}
    r = op.post(f"/api/v1/batches/{batch_id}/steps/verify/complete", body, headers={"Idempotency-Key": "self-1"})
    assert r.status_code == 409 and "different person" in r.get_json()["detail"]
    selfie = _refusal(batch_id, "self_verification")
    assert selfie["tried"] == {"esig_acknowledged": True} and selfie["by"] == "operator1"
    entry = db.session.execute(select(AuditEntry).where(AuditEntry.seq == selfie["audit_seq"])).scalar_one()
    assert b"1234" not in entry.entry_bytes and b"secret-pass" not in entry.entry_bytes
    assert json.loads(entry.entry_bytes)["action"] == "batch.step.refused"
    assert entry.entity_id == f"{batch_id}:verify" and entry.batch_id == batch_id
    # none raised a deviation, nothing of the refused attempts was recorded
    assert ex.deviations_of(batch_id) == []
    assert {e["code"] for e in ex.exceptions(batch_id) if e["type"] == "refused_attempt"} >= {
        "wrong_class", "on_hold", "readability", "self_verification"}
