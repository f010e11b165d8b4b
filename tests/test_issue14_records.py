"""Issue 14, "record exactly what happened": gates signed by whoever the recipe names,
gates bound to the values they verify, the batch's disposition carried to its lot, expired
lots refused, idempotency keys that mean the same request, and traces that see work in
progress. One test per rule, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import select

from mes.db import db, utcnow
from mes.errors import Conflict, Forbidden, ValidationFailed
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.integration.models import OutboxEvent
from mes.materials import operations as mat
from mes.plant_time import plant_date
from mes.signatures import operations as esig
from tests.execution_helpers import (
    PACK_RECIPE,
    PCM,
    do_step,
    effective_recipe,
    independent_signer,
    make_world,
    review_exceptions,
    run_until,
    second_qa,
    start,
    stock,
)
from tests.helpers import PASSWORD, SEED, logged_in, release_lot_as_qa


def test_reused_idempotency_key_with_another_payload_is_refused(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "200000", "pcs")
    op = logged_in(client, world.seeded, "operator")
    url = f"/api/v1/batches/{batch_id}/steps/disp_line_clearance/complete"
    first = {"expected_version": 1, "payload": {"confirm": True, "comment": "line is clear"}}
    r1 = op.post(url, first, headers={"Idempotency-Key": "k-same"})
    assert r1.status_code == 200, r1.get_json()
    # the same key with another value: refused, nothing replayed, nothing recorded
    other = {"expected_version": 1, "payload": {"confirm": True, "comment": "another comment"}}
    r2 = op.post(url, other, headers={"Idempotency-Key": "k-same"})
    assert r2.status_code == 422 and r2.mimetype == "application/problem+json", r2.get_json()
    assert r2.get_json()["type"].endswith("idempotency-key-reused")
    assert "different request" in r2.get_json()["detail"]
    # only the same request replays the first answer
    r3 = op.post(url, first, headers={"Idempotency-Key": "k-same"})
    assert r3.status_code == 200 and r3.get_json()["replayed"] is True
    assert r3.get_json()["version"] == r1.get_json()["version"]
    assert len(ex.records_of(batch_id)) == 1
    from mes.db import db

    stored = db.session.get(ex.StepRequest, f"{world.seeded.users['operator']}:k-same")
    assert stored is not None and len(stored.request_sha256) == 64


GATE_RECIPE = PACK_RECIPE.replace("""          - id: packed_out""", """          - id: hardness
            kind: numeric
            title: Tablet hardness
            instruction: Record the mean hardness.
            unit: N
            precision: 0
            low: "80"
            high: "120"
          - id: qa_gate
            kind: signature
            title: Bulk approved by QA
            instruction: QA approves the packing on the hardness result.
            meaning: approved
            roles: [qa]
          - id: packed_out""")


def _gate_batch(world) -> str:
    """A packing batch run up to its QA gate (hardness recorded as 100 N)."""
    known = store.list_versions("MR-PCM500-PACK")
    pack = known[0].id if known else effective_recipe(world, GATE_RECIPE, "gate.yaml")
    world.lots.pop("BLK-PCM500-TAB", None)  # a fresh lot of bulk for each batch
    stock(world, store.master_of(store.get_version(pack)))
    batch_id = start(world, pack, "10.000", "kg")
    run_until(world, batch_id, stop_before="qa_gate", overrides={"hardness": {"value": "100"}})
    return batch_id


def test_a_qa_gate_is_signed_by_qa_without_batch_execute(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _gate_batch(world)
    step = ex.get_step(batch_id, "qa_gate")
    assert step.state == "ready"
    qa = logged_in(client, world.seeded, "qa")  # QA holds esig.sign, not batch.execute
    url = f"/api/v1/batches/{batch_id}/steps/qa_gate"
    body = {"expected_version": step.version, "password": PASSWORD, "user_id": world.seeded.users["qa"]}
    # the execution endpoint stays closed to QA ...
    r = qa.post(url + "/complete", {"expected_version": step.version, "payload": body},
                headers={"Idempotency-Key": "qa-1"})
    assert r.status_code == 403
    # ... but QA signs the gate the recipe gives them
    r = qa.post(url + "/sign", body, headers={"Idempotency-Key": "qa-2"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["state"] == "completed" and r.get_json()["meaning"] == "approved"
    [rec] = [x for x in ex.records_of(batch_id) if x.kind == "signature"]
    assert rec.recorded_by == world.seeded.users["qa"] and rec.data["role"] == "qa"
    # an operator cannot sign a QA gate, by the same service
    batch2 = start(world, store.list_versions("MR-PCM500-PACK")[0].id, "10.000", "kg")
    run_until(world, batch2, stop_before="qa_gate", overrides={"hardness": {"value": "100"}})
    with pytest.raises(Forbidden, match="needs the role qa"):
        ex.sign_gate(world.sessions["operator"], batch2, "qa_gate", {"password": PASSWORD}, "op-1",
                     ex.get_step(batch2, "qa_gate").version, terminal="KIOSK-01")
    # the QA workstation lists the gate and signs it
    page = qa.get(f"/qa/batches/{batch2}/gates")
    assert page.status_code == 200 and "qa_gate" in page.get_data(as_text=True)
    form = {"csrf_token": qa.csrf, "expected_version": str(ex.get_step(batch2, "qa_gate").version),
            "idempotency_key": "qa-page-1", "password": PASSWORD}
    r = qa.client.post(f"/qa/batches/{batch2}/steps/qa_gate/sign", data=form, headers=qa.headers)
    assert r.status_code == 302, r.get_data(as_text=True)
    assert ex.get_step(batch2, "qa_gate").state == "completed"
    assert ex.get_step(batch2, "qa_gate").completed_by == world.seeded.users["qa"]


def test_a_gate_binds_the_earlier_steps_of_its_operation(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _gate_batch(world)
    ex.sign_gate(world.sessions["qa"], batch_id, "qa_gate", {"password": PASSWORD, "user_id": "qa1"}, "qa-3",
                 ex.get_step(batch_id, "qa_gate").version, terminal="QA-WS-01")
    gate = ex.get_step(batch_id, "qa_gate")
    bound = esig.current_record("batch_step", gate.id)["covers"]
    assert set(bound) == {"id_bulk", "w_bulk", "hardness"}  # the steps before it in its operation
    assert [c.valid for c in esig.signatures_for("batch_step", gate.id)] == [True]
    assert ex.broken_gates(batch_id) == []
    # the verified value is corrected: the verification no longer holds, and release says so
    [hardness] = [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:hardness"]
    ex.correct_value(world.actor("operator"), batch_id, hardness.id, "110", "transcription error")
    assert [c.valid for c in esig.signatures_for("batch_step", gate.id)] == [False]
    assert ex.broken_gates(batch_id) == ["qa_gate"]
    assert any("qa_gate" in p for p in ex.release_blockers(batch_id))


def test_recipe_checker_flags_gate_roles_that_can_never_sign() -> None:
    from mes.recipes.errors import RecipeError
    from mes.recipes.loader import load_recipe

    ok = load_recipe(GATE_RECIPE, name="gate.yaml")  # a QA gate meaning 'approved': QA can sign it
    assert ok.step("qa_gate").roles == ("qa",)
    stuck = GATE_RECIPE.replace("meaning: approved\n            roles: [qa]", "meaning: performed\n            roles: [qa]")
    with pytest.raises(RecipeError) as refused:
        load_recipe(stuck, name="stuck.yaml")
    assert any("role 'qa' can never sign this gate" in m and "roles" in m for m in refused.value.messages())


def _completed_gate_batch(world) -> tuple[str, str]:
    """A packing batch completed (QA gate signed), with the lot it made."""
    batch_id = _gate_batch(world)
    ex.sign_gate(world.sessions["qa"], batch_id, "qa_gate", {"password": PASSWORD, "user_id": "qa1"}, world.key(),
                 ex.get_step(batch_id, "qa_gate").version, terminal="QA-WS-01")
    lot_id = f"LOT-PACK-{world.key()}"
    run_until(world, batch_id, overrides={"packed_out": {"quantity": "9.900", "unit": "kg", "lot_id": lot_id}})
    assert ex.get_batch(batch_id).status == "completed"
    return batch_id, lot_id


def _review(world, batch_id: str) -> None:
    from mes.audit.review import review_trail

    review_exceptions(world, batch_id)
    review_trail(*independent_signer(world, batch_id), batch_id, "trail reviewed", "QA-WS-01")
    ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")


def test_batch_disposition_controls_its_output_lot(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    # qa1 signed the QA gate: a QA person who took no part in the batch decides it (segregation of duties)
    qa, creds = second_qa(world)
    # released: the lot it made is released with it, never by hand before
    batch_id, lot_id = _completed_gate_batch(world)
    assert mat.get_lot(lot_id).status == "quarantine"
    with pytest.raises(Conflict, match="released with the batch's disposition"):
        mat.release_lot(qa, creds, lot_id, "looks fine", terminal="QA-WS-01")
    _review(world, batch_id)
    ex.release_batch(qa, creds, batch_id, "released", terminal="QA-WS-01")
    assert mat.get_lot(lot_id).status == "released" and mat.check_usable(lot_id).ok
    # conditionally released: the lot is usable under the conditions, and consumers are flagged
    batch_id, lot_id = _completed_gate_batch(world)
    _review(world, batch_id)
    with pytest.raises(ValidationFailed, match="conditions"):
        ex.release_batch(qa, creds, batch_id, "conditionally_released", terminal="QA-WS-01")
    ex.release_batch(qa, creds, batch_id, "conditionally_released", terminal="QA-WS-01",
                     conditions="Ship only after the stability pull at 3 months passes")
    usable = mat.check_usable(lot_id)
    assert mat.get_lot(lot_id).status == "released" and usable.ok and usable.conditional
    assert "stability pull" in usable.reason
    event = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == ex.BATCH_RELEASED)
                               .order_by(OutboxEvent.id.desc())).scalars().first()
    assert event is not None
    # rejected: the lot is rejected, the work order closed, and the lot is never released by hand
    batch_id, lot_id = _completed_gate_batch(world)
    ex.release_batch(qa, creds, batch_id, "rejected", terminal="QA-WS-01", comment="hardness trend out of control")
    assert mat.get_lot(lot_id).status == "rejected"
    assert ex.get_work_order(ex.get_batch(batch_id).work_order_id).status == "completed"
    with pytest.raises(Conflict, match="rejected"):
        mat.release_lot(qa, creds, lot_id, "changed my mind", terminal="QA-WS-01")


def test_an_expired_lot_is_neither_received_nor_released(app: Flask, monkeypatch) -> None:
    make_world(monkeypatch)
    mat.create_item(SEED, "RM-EXP", "Expiring material", "kg", "raw_material")
    today = plant_date(utcnow())
    with pytest.raises(Conflict, match="expired .* not received"):
        mat.receive_lot(SEED, "RM-EXP", [mat.ContainerIn("5", "kg")], lot_id="L-OLD",
                        expiry_date=today - timedelta(days=1))
    assert db.session.get(mat.Lot, "L-OLD") is None
    # received while good, it expires in quarantine: QA cannot release it any more
    with monkeypatch.context() as earlier:
        earlier.setattr("mes.materials.lots.utcnow", lambda: utcnow() - timedelta(days=10))
        mat.receive_lot(SEED, "RM-EXP", [mat.ContainerIn("5", "kg")], lot_id="L-LATE",
                        expiry_date=today - timedelta(days=2))
    with pytest.raises(Conflict, match="expired .* not released"):
        release_lot_as_qa("L-LATE", "CoA reviewed")
    assert mat.get_lot("L-LATE").status == "quarantine"


def test_qa_lot_release_is_an_e_signature(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    mat.create_item(SEED, "RM-SIG", "Signed material", "kg", "raw_material", shelf_life_days=365)
    mat.receive_lot(SEED, "RM-SIG", [mat.ContainerIn("5", "kg")], lot_id="L-SIG", manufactured_date=date.today())
    qa = logged_in(client, world.seeded, "qa")
    r = qa.post("/api/v1/lots/L-SIG/release", {"reason": "CoA reviewed"})  # a plain reason is not enough
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = qa.post("/api/v1/lots/L-SIG/release", {"reason": "CoA reviewed", "password": PASSWORD,
                                               "user_id": world.seeded.users["qa"]})
    assert r.status_code == 200, r.get_json()
    lot = r.get_json()["lot"]
    assert lot["status"] == "released"
    # the signature shows the printed name, date and time with zone, and meaning (Part 11 §11.50)
    [sig] = lot["signatures"]
    assert sig["meaning"] == "released" and sig["name"] == "Qa One" and sig["valid"] is True
    assert sig["at"].endswith("Z") and sig["comment"] == "CoA reviewed"
    # the QA workstation shows it the same way
    page = qa.get("/qa/lots/L-SIG").get_data(as_text=True)
    assert "released" in page and "Qa One" in page and "CoA reviewed" in page


def test_forward_trace_includes_work_in_progress(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    mat.create_item(SEED, "RM-WIP", "Traced material", "kg", "raw_material", shelf_life_days=365)
    mat.create_item(SEED, "INT-WIP", "Intermediate", "kg", "intermediate", shelf_life_days=365)
    mat.receive_lot(SEED, "RM-WIP", [mat.ContainerIn("50", "kg", "L-WIP-C1")], lot_id="L-WIP",
                    manufactured_date=date.today())
    release_lot_as_qa("L-WIP")
    op = world.actor("operator")
    # batch B-DONE made a lot from it; batch B-RUN is still running: it has made nothing yet
    mat.consume(op, "L-WIP", "L-WIP-C1", "10", "kg", "B-DONE", "S-1", "WO-DONE")
    mat.produce(op, "INT-WIP", "L-INT-DONE", "9.8", "kg", "B-DONE", work_order_id="WO-DONE")
    mat.consume(op, "L-WIP", "L-WIP-C1", "4", "kg", "B-RUN", "S-1", "WO-RUN")
    mat.consume(op, "L-WIP", "L-WIP-C1", "1500", "g", "B-RUN", "S-2", "WO-RUN")
    wrong = mat.consume(op, "L-WIP", "L-WIP-C1", "2", "kg", "B-UNDONE", "S-1", "WO-X")
    mat.reverse_consumption(op, wrong.id, "weighed into the wrong vessel")
    trace = mat.trace_forward("L-WIP")
    assert [(link.child_lot_id, link.batch_id) for link in trace.links] == [("L-INT-DONE", "B-DONE")]
    assert [(w.lot_id, w.batch_id, w.work_order_id, w.qty, w.uom) for w in trace.work_in_progress] == [
        ("L-WIP", "B-RUN", "WO-RUN", Decimal("5.5"), "kg")]  # a reversed consumption is no use
    # the API and the CLI's tree show it too (a recall must see the running batch)
    sup = logged_in(client, world.seeded, "supervisor")
    body = sup.get("/api/v1/lots/L-WIP/trace?direction=forward").get_json()["trace"]
    assert body["work_in_progress"] == [{"lot_id": "L-WIP", "batch_id": "B-RUN", "work_order_id": "WO-RUN",
                                         "qty": {"value": "5.500", "uom": "kg"}}]  # 4 kg + 1500 g, places as written
    from mes.materials.cli import render_tree

    assert "in progress: batch B-RUN took 5.5 kg of lot L-WIP" in render_tree(trace)


def test_a_qa_gate_is_signed_at_the_kiosk_by_qa_with_their_own_badge(app: Flask, monkeypatch) -> None:
    from mes.users import operations as users
    from tests.test_kiosk import Kiosk, message

    world = make_world(monkeypatch)
    users.create_user(SEED, "qa2", "Quinn Kiosk", {"qa"}, password=PASSWORD, badge_id="B-qa2", pin="1357")
    users.acknowledge_esig_accountability("qa2", None)
    batch_id = _gate_batch(world)
    k = Kiosk(app.test_client(), world.seeded.kiosk)
    k.login("B-operator", "2468")
    url = f"/kiosk/batches/{batch_id}/steps/qa_gate"
    k.get(url)
    assert f'action="{url}/verify"' in k.page  # the operator cannot sign it: the QA signer badges in here
    r = k.post(url + "/verify", {**k.form(), "confirmed": "1", "badge": "B-operator", "pin": "2468"})
    assert r.status_code == 403 and "needs the role qa" in message(k.page)
    r = k.post(url + "/verify", {**k.form(), "confirmed": "1", "badge": "B-qa2", "pin": "1357"})
    assert r.status_code == 200, message(k.page)
    gate = ex.get_step(batch_id, "qa_gate")
    assert gate.state == "completed" and gate.completed_by == "qa2"


WATER_RECIPE = PACK_RECIPE.replace("""     tolerance: {percent: "1.0"}}
""", """     tolerance: {percent: "1.0"}}
  - {item: PA-WATER, name: Purified water, role: processing_aid, quantity: "2.0", unit: L}
""", 1).replace("id: MR-PCM500-PACK", "id: MR-PCM500-PACK-W").replace("""          - id: packed_out""", """          - id: rinse_water
            kind: meter
            title: Purified water for the rinse
            instruction: Meter purified water from the point of use.
            item: PA-WATER
            unit: L
            precision: 1
            low: "1.5"
            high: "2.5"
            source: PW point of use 3
          - id: packed_out""")


def test_a_process_aid_by_volume_is_recorded_without_inventing_a_lot(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, WATER_RECIPE, "water.yaml")
    mat.create_item(SEED, "PA-WATER", "Purified water", "L", "raw_material")
    world.lots["PA-WATER"] = []  # water from the point of use: no lot
    stock(world, store.master_of(store.get_version(rv)))
    # without a lot: the volume and the point of use are recorded, no lot is made up
    first = start(world, rv, "10.000", "kg")
    run_until(world, first, stop_before="rinse_water")
    from tests.test_kiosk import Kiosk, message

    k = Kiosk(app.test_client(), world.seeded.kiosk)  # at the kiosk: the volume, no lot
    k.login("B-operator", "2468")
    url = f"/kiosk/batches/{first}/steps/rinse_water"
    k.get(url)
    assert 'name="volume"' in k.page and "PW point of use 3" in k.page
    r = k.post(url, {**k.form(), "confirmed": "1", "action": "complete", "volume": "2.0", "lot_id": ""})
    assert r.status_code == 200, message(k.page)
    assert ex.get_step(first, "rinse_water").state == "completed"
    [rec] = [r for r in ex.records_of(first) if r.batch_step_id == f"{first}:rinse_water"]
    assert (str(rec.value), rec.unit, rec.data["lot"], rec.data["source"]) == ("2.0", "L", None, "PW point of use 3")
    assert not [c for c in mat.consumptions(batch_id=first) if c.item_code == "PA-WATER"]
    # with a lot (water drawn from a tested tank): consumed, and in the genealogy of the output
    mat.receive_lot(SEED, "PA-WATER", [mat.ContainerIn("100", "L", "TANK-7")], lot_id="L-PW-7",
                    manufactured_date=date.today())
    release_lot_as_qa("L-PW-7", "conductivity and TOC tested")
    world.lots.pop("BLK-PCM500-TAB", None)
    stock(world, store.master_of(store.get_version(rv)))
    second = start(world, rv, "10.000", "kg")
    run_until(world, second, stop_before="rinse_water")
    do_step(world, second, "rinse_water", payload={"volume": "1.8", "lot_id": "L-PW-7"})
    run_until(world, second, overrides={"packed_out": {"quantity": "9.900", "unit": "kg", "lot_id": "LOT-PW-OUT"}})
    trace = mat.trace_backward("LOT-PW-OUT")
    assert "L-PW-7" in trace.lots
    assert mat.lot_remaining("L-PW-7") == (Decimal("98.2"), "L")
    # the checker keeps metering for process aids measured by volume
    from mes.recipes.errors import RecipeError
    from mes.recipes.loader import load_recipe

    with pytest.raises(RecipeError, match="not a volume unit"):
        load_recipe(WATER_RECIPE.replace("unit: L\n            precision: 1", "unit: kg\n            precision: 1"),
                    name="bad.yaml")
