"""The execution engine end to end: both example recipes from work order to release, with
a held lot refused, an out-of-tolerance weighing that blocks until QA dispositions it, a
correction, second-person verification, two-level genealogy, idempotency and a race."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import select

from mes.db import db
from mes.errors import AuthenticationFailed, Conflict
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.execution.models import StepRequest
from mes.integration.models import OutboxEvent
from mes.materials import operations as mat
from mes.quantities import to_text
from tests.execution_helpers import (
    CREAM,
    PACK_RECIPE,
    PCM,
    do_step,
    effective_recipe,
    make_world,
    ready_steps,
    review_and_release,
    run_until,
    start,
    stock,
    weigh,
    weigh_payload,
)
from tests.helpers import logged_in

PCM_VALUES = {
    "granule_weight": {"value": "109.30"},
    "blend_weight": {"value": "113.85"},
    "tablets_out": {"quantity": "113.000", "unit": "kg", "lot_id": "LOT-BLK-001"},
}
CREAM_VALUES = {
    "bulk_weight": {"value": "198.0"},
    "jars_out": {"quantity": "3850", "unit": "pcs", "lot_id": "LOT-FG-MC-001"},
}


def test_paracetamol_from_work_order_to_release_with_exceptions_and_genealogy(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    master = store.master_of(store.get_version(rv))
    stock(world, master, extra_lots=1)
    batch_id = start(world, rv, "200000", "pcs")
    batch = ex.get_batch(batch_id)
    assert batch.status == "in_progress" and len(ex.steps_of(batch_id)) == sum(1 for _ in master.steps())
    assert ready_steps(batch_id) == ["disp_line_clearance"]

    # order: a later step cannot be completed before its predecessors
    late = ex.get_step(batch_id, "w_pcm")
    with pytest.raises(ex.StepNotReady, match="cannot be done before"):
        do_step(world, batch_id, "w_pcm")
    assert ex.get_step(batch_id, "w_pcm").version == late.version

    run_until(world, batch_id, stop_before="w_pcm", overrides=PCM_VALUES)
    # multiple containers add up: 60 + 40 kg from two containers of the lot
    lot = world.lots["RM-1001"][0]
    c1, c2 = (c.id for c in mat.containers_of(lot))
    first = weigh(world, batch_id, "w_pcm", lot, c1, "60.000", "kg", more=True, key="pcm-1")
    assert first["state"] == "in_progress" and Decimal(first["total"]) == Decimal("60")
    second = weigh(world, batch_id, "w_pcm", lot, c2, "40.000", "kg", key="pcm-2")
    assert second["state"] == "completed" and Decimal(second["total"]) == 100 and second["containers"] == 2
    assert sum(c.qty for c in mat.consumptions(batch_id=batch_id) if c.item_code == "RM-1001") == Decimal("100.000")
    # the record keeps the device's own reply, its identity and the scale used (ALCOA "original")
    containers = [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:w_pcm" and r.kind == "container"]
    assert len(containers) == 2
    for rec in containers:
        got = rec.data["reading"]
        assert got["raw"].startswith("S S") and bytes.fromhex(got["raw_hex"]).decode() == got["raw"]
        assert got["identity"]["serial"] == "B812345678" and got["equipment_id"] == rec.data["equipment_id"]
        assert got["calibration"]["certificate"] and rec.data["consumption"]

    # second-person verification: the operator who weighed cannot verify
    with pytest.raises(Conflict, match="different person"):
        do_step(world, batch_id, "verify_pcm", role="operator",
                payload={"password": "Corr3ct-Horse-Battery", "user_id": "operator1"})
    verified = do_step(world, batch_id, "verify_pcm")
    assert verified["signer"] == "supervisor1" and verified["meaning"] == "verified"

    # a held lot is refused at identification with the usability reason
    run_until(world, batch_id, stop_before="id_pvp", overrides=PCM_VALUES)
    held = world.lots["RM-2010"][1]
    mat.place_hold(world.actor("qa"), held, "consumption", "Suspected contamination", ncr_id="NCR-7")
    with pytest.raises(ex.StepRefused, match="on hold: NCR-7 Suspected contamination"):
        do_step(world, batch_id, "id_pvp", payload={"lot_id": held})
    dev_manual = ex.raise_deviation(world.actor("operator"), batch_id, "minor", "unusable_lot",
                                    f"Lot {held} found on hold at the scale", step_id="id_pvp",
                                    evidence={"lot": held})
    do_step(world, batch_id, "id_pvp")

    # an out-of-tolerance weighing is refused as an attempt; reported by the operator, it raises
    # a blocking deviation (issue 14)
    spec = ex.control_recipe(ex.get_batch(batch_id)).step("w_pvp")
    lot_pvp = world.lots["RM-2010"][0]
    cont = mat.containers_of(lot_pvp)[0].id
    heavy = to_text(spec.target * Decimal("1.05"))
    before_consumptions = len(mat.consumptions(batch_id=batch_id))
    with pytest.raises(ex.StepRefused, match="Adjust the amount and capture again") as refused:
        do_step(world, batch_id, "w_pvp", payload=weigh_payload(world, spec, lot_pvp, cont, heavy))
    assert "deviation_id" not in refused.value.extra
    with pytest.raises(ex.StepRefused, match="outside the tolerance window") as refused:
        do_step(world, batch_id, "w_pvp", payload={**weigh_payload(world, spec, lot_pvp, cont, heavy), "report": True})
    dev_id = refused.value.extra["deviation_id"]
    assert len(mat.consumptions(batch_id=batch_id)) == before_consumptions  # nothing taken
    assert ex.get_deviation(dev_id).severity == "major" and ex.get_deviation(dev_id).status == ex.DeviationStatus.OPEN.value
    do_step(world, batch_id, "w_pvp")  # the correct weighing of the same step is allowed
    with pytest.raises(ex.StepBlocked, match=dev_id):
        do_step(world, batch_id, "id_ccs")
    assert ex.get_step(batch_id, "id_ccs").state == "blocked"
    # a wrong signature password is refused as an authentication failure and changes nothing
    with pytest.raises(AuthenticationFailed, match="The signature was refused: wrong password") as wrong_secret:
        ex.disposition_deviation(world.sessions["qa"], ex.esig.Credentials("wrong", user_id="qa1"), dev_id,
                                 "use_as_is", "re-weighed within tolerance", terminal="QA-WS-01")
    assert wrong_secret.value.slug == "authentication-failed" and wrong_secret.value.status == 401
    db.session.rollback()
    assert ex.get_deviation(dev_id).status == "open"
    assert ex.get_step(batch_id, "id_ccs").state == "blocked"
    ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev_id, "use_as_is",
                             "re-weighed within tolerance", terminal="QA-WS-01")
    assert ex.get_step(batch_id, "id_ccs").state == "ready"

    # a correction keeps both values with the reason
    run_until(world, batch_id, stop_before="drying_time", overrides=PCM_VALUES)
    old = [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:inlet_temp" and r.kind == "value"][0]
    new = ex.correct_value(world.actor("operator"), batch_id, old.id, "61", "transcription error: display showed 61")
    inlet = [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:inlet_temp"]
    assert {(to_text(r.value), r.superseded_by) for r in inlet} == {("60", new.id), ("61", None)}
    assert new.reason.startswith("transcription") and new.corrects == old.id

    # idempotency: the same key twice records once and returns the same result
    run_until(world, batch_id, stop_before="mill", overrides=PCM_VALUES)
    v = ex.get_step(batch_id, "mill").version
    r1 = ex.complete_step(world.actor("operator"), batch_id, "mill", {"confirm": True}, "mill-key", v)
    r2 = ex.complete_step(world.actor("operator"), batch_id, "mill", {"confirm": True}, "mill-key", v)
    assert r2["replayed"] and {k: r2[k] for k in r1} == r1
    assert len([r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:mill"]) == 1

    # release is refused while steps are open
    with pytest.raises(Conflict, match="not completed"):
        ex.release_batch(world.sessions["qa"], world.creds("qa"), batch_id, "released", terminal="QA-WS-01")
    db.session.rollback()

    run_until(world, batch_id, overrides=PCM_VALUES)
    assert ex.get_batch(batch_id).status == "completed"
    # release refused: a minor deviation is still open, and no audit-trail review yet
    problems = ex.release_blockers(batch_id)
    assert any(dev_manual.id in p for p in problems) and any("audit-trail review" in p for p in problems)
    ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev_manual.id, "use_as_is",
                             "the held lot was put aside, not used", terminal="QA-WS-01")
    kinds = {e["type"] for e in ex.exceptions(batch_id)}
    assert {"deviation", "correction", "refused_attempt"} <= kinds
    review_and_release(world, batch_id)
    assert ex.get_batch(batch_id).status == "released"
    assert ex.get_work_order(ex.get_batch(batch_id).work_order_id).status == "completed"
    released = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == ex.BATCH_RELEASED)).scalars().all()
    assert len(released) == 1
    for kind in (ex.WORK_ORDER_STARTED, ex.DEVIATION_RAISED, ex.DEVIATION_CLOSED, ex.BATCH_COMPLETED):
        assert db.session.execute(select(OutboxEvent).where(OutboxEvent.type == kind)).first() is not None

    # second level: the bulk tablets are packed into a finished lot
    # the batch's release released the bulk lot it made (issue 14: not by hand)
    assert mat.get_lot("LOT-BLK-001").status == "released"
    pack_rv = effective_recipe(world, PACK_RECIPE, "pack.yaml")
    stock(world, store.master_of(store.get_version(pack_rv)))
    world.lots["BLK-PCM500-TAB"] = ["LOT-BLK-001"]
    pack = start(world, pack_rv, "10.000", "kg")
    run_until(world, pack, overrides={"packed_out": {"quantity": "9.900", "unit": "kg", "lot_id": "LOT-FG-PCM-001"}})
    trace = mat.trace_backward("LOT-FG-PCM-001")
    assert trace.lots["LOT-BLK-001"].depth == 1
    assert trace.lots[world.lots["RM-1001"][0]].depth == 2


def test_cream_runs_from_start_to_release(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, CREAM)
    master = store.master_of(store.get_version(rv))
    stock(world, master)
    batch_id = start(world, rv, "200.000", "kg")
    # parallel operations: phase B may start while phase A is still running
    run_until(world, batch_id, stop_before="w_water", overrides=CREAM_VALUES)
    ready = ready_steps(batch_id)
    assert "w_water" in ready and "charge_cct" in ready
    do_step(world, batch_id, "charge_cct")
    run_until(world, batch_id, overrides=CREAM_VALUES)
    assert ex.get_batch(batch_id).status == "completed"
    review_and_release(world, batch_id)
    assert ex.get_batch(batch_id).status == "released"
    trace = mat.trace_backward("LOT-FG-MC-001")
    assert trace.lots[world.lots["RM-C101"][0]].depth == 1


def test_concurrent_completion_one_wins(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "200000", "pcs")
    version = ex.get_step(batch_id, "disp_line_clearance").version
    actor = world.actor("operator")
    db.session.rollback()  # the test's own session must not hold the SQLite write lock
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def worker(n: int) -> None:
        with app.app_context():
            try:
                barrier.wait()
                ex.complete_step(actor, batch_id, "disp_line_clearance", {"confirm": True},
                                 f"race-{n}", version)
                outcomes.append("ok")
            except Conflict as exc:
                outcomes.append(f"conflict: {exc.detail}")
            except Exception as exc:  # noqa: BLE001
                outcomes.append(f"error: {exc!r}")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.split(":")[0] for o in outcomes) == ["conflict", "ok"], outcomes
    db.session.expire_all()
    assert db.session.execute(select(StepRequest).where(StepRequest.batch_id == batch_id)).scalars().all().__len__() == 1
    assert len([r for r in ex.records_of(batch_id)]) == 1


def test_api_step_completion_idempotency_and_refusal(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "200000", "pcs")
    op = logged_in(client, world.seeded, "operator")
    body = op.get(f"/api/v1/batches/{batch_id}").get_json()
    step = next(s for s in body["steps"] if s["id"] == "disp_line_clearance")
    url = f"/api/v1/batches/{batch_id}/steps/disp_line_clearance/complete"
    payload = {"expected_version": step["version"], "payload": {"confirm": True}}
    r1 = op.post(url, payload, headers={"Idempotency-Key": "api-1"})
    r2 = op.post(url, payload, headers={"Idempotency-Key": "api-1"})
    assert r1.status_code == 200 and r2.status_code == 200, (r1.get_json(), r2.get_json())
    assert r2.get_json()["replayed"] is True and r1.get_json()["version"] == r2.get_json()["version"]
    assert len(ex.records_of(batch_id)) == 1
    # out of order: problem+json with the reason
    r = op.post(f"/api/v1/batches/{batch_id}/steps/w_pcm/complete",
                {"expected_version": 1, "payload": {"confirm": True}}, headers={"Idempotency-Key": "api-2"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert "cannot be done before" in r.get_json()["detail"] and r.get_json()["open_predecessors"]
    # no key: refused
    r = op.post(url, payload)
    assert r.status_code == 422
    exc = op.get(f"/api/v1/batches/{batch_id}/exceptions")
    assert exc.status_code == 200 and exc.get_json()["exceptions"] == []
