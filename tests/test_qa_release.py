"""QA's release rules (issue 19), each in the service layer (``release_blockers``) with a test
named after it: release is refused while a step is open, a deviation unresolved, a consumed
lot not released, an exception unreviewed or the audit-trail review missing; the releasing
QA person performed and verified no step of the batch; review by exception is recorded and
audited; a conditional release propagates through the genealogy."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit.models import AuditEntry
from mes.audit.review import review_trail
from mes.db import db
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.materials import operations as mat
from tests.execution_helpers import (
    effective_recipe,
    independent_qa,
    independent_signer,
    make_world,
    review_exceptions,
    run_until,
    second_qa,
    start,
    stock,
)
from tests.helpers import PASSWORD
from tests.test_issue14_records import GATE_RECIPE


def _pack(world) -> str:
    known = store.list_versions("MR-PCM500-PACK")
    return known[0].id if known else effective_recipe(world, GATE_RECIPE, "gate.yaml")


def _batch(world, *, hardness: str = "100", until: str | None = None) -> str:
    """A packing batch (fresh bulk lot) run to completion with its QA gate signed by qa1,
    or up to step ``until``."""
    pack = _pack(world)
    world.lots.pop("BLK-PCM500-TAB", None)
    stock(world, store.master_of(store.get_version(pack)))
    batch_id = start(world, pack, "10.000", "kg")
    run_until(world, batch_id, stop_before="qa_gate", overrides={"hardness": {"value": hardness}})
    for d in ex.deviations_of(batch_id):  # an out-of-limit value raised one: QA assesses it
        ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), d.id, "use_as_is", "assessed",
                                 terminal="QA-WS-01")
    if until == "qa_gate":
        return batch_id
    ex.sign_gate(world.sessions["qa"], batch_id, "qa_gate", {"password": PASSWORD, "user_id": "qa1"}, world.key(),
                 ex.get_step(batch_id, "qa_gate").version, terminal="QA-WS-01")
    run_until(world, batch_id, overrides={"packed_out": {"quantity": "9.900", "unit": "kg",
                                                         "lot_id": f"LOT-PACK-{world.key()}"}})
    return batch_id


def _trail(world, batch_id: str) -> None:
    review_trail(*independent_signer(world, batch_id), batch_id, "trail reviewed", "QA-WS-01")


def _release(world, batch_id: str, decision: str = "released", **kw):
    row, creds = second_qa(world)
    return ex.release_batch(row, creds, batch_id, decision, terminal="QA-WS-01", **kw)


def _ready(world, batch_id: str) -> None:
    review_exceptions(world, batch_id)
    _trail(world, batch_id)
    ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")


def test_release_refused_while_a_step_is_open(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world, until="qa_gate")
    problems = ex.release_blockers(batch_id)
    assert any("not completed" in p and "qa_gate" in p for p in problems)
    with pytest.raises(Conflict, match="qa_gate"):
        _release(world, batch_id)
    assert ex.get_batch(batch_id).status == "in_progress"


def test_a_refused_release_is_audited_with_its_reason_and_blockers(app: Flask, monkeypatch) -> None:
    """Nothing QA tries vanishes: a refused release leaves an entry of the batch naming the
    decision tried, the sentence shown and every blocker; the batch is unchanged."""
    world = make_world(monkeypatch)
    batch_id = _batch(world, until="qa_gate")
    row, _ = second_qa(world)
    with pytest.raises(Conflict) as refused:
        _release(world, batch_id, "conditionally_released", conditions="retest hardness")
    entries = db.session.execute(select(AuditEntry).where(AuditEntry.batch_id == batch_id,
                                                          AuditEntry.action == ex.RELEASE_REFUSED)).scalars().all()
    assert len(entries) == 1 and entries[0].actor_id == row.user_id and entries[0].entity_id == batch_id
    after = json.loads(entries[0].entry_bytes)["after"]
    assert after["decision"] == "conditionally_released" and after["reason"] == refused.value.detail
    assert after["code"] == "conflict" and any("qa_gate" in p for p in after["problems"])
    assert ex.get_batch(batch_id).status == "in_progress"
    with pytest.raises(ValidationFailed):
        _release(world, batch_id, "approved")
    assert db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.batch_id == batch_id, AuditEntry.action == ex.RELEASE_REFUSED).order_by(
        AuditEntry.seq.desc())).scalars().first() is not None
    assert len(db.session.execute(select(AuditEntry).where(
        AuditEntry.batch_id == batch_id, AuditEntry.action == ex.RELEASE_REFUSED)).scalars().all()) == 2


def test_release_refused_while_a_deviation_is_unresolved(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world)
    dev = ex.raise_deviation(world.actor("operator"), batch_id, "minor", "other", "label smudged", step_id="w_bulk")
    review_exceptions(world, batch_id)
    _trail(world, batch_id)
    assert any(dev.id in p and "not resolved" in p for p in ex.release_blockers(batch_id))
    with pytest.raises(Conflict, match=dev.id):
        ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")
    ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev.id, "use_as_is", "legible enough",
                             terminal="QA-WS-01")
    assert not any(dev.id in p for p in ex.release_blockers(batch_id))


def test_release_refused_while_a_consumed_lot_is_not_released(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world)
    [bulk] = {c.lot_id for c in mat.consumptions(batch_id=batch_id)}
    assert ex.unreleased_consumed_lots(batch_id) == []
    # the bulk lot is put on hold after it was used: the batch cannot be released on it
    mat.place_hold(world.actor("qa"), bulk, "all", "supplier recall under investigation")
    problems = ex.release_blockers(batch_id)
    assert any(bulk in p and "not released" in p for p in problems)
    review_exceptions(world, batch_id)
    _trail(world, batch_id)
    with pytest.raises(Conflict, match=f"consumed lot\\(s\\) {bulk} are not released"):
        ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")


def test_release_refused_while_an_exception_is_unreviewed(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world, hardness="130")  # out of limits (80-120 N)
    listed = ex.exceptions(batch_id)
    ool = [e for e in listed if e["type"] == "out_of_limits"]
    assert ool and ool[0]["value"] == "130" and ool[0]["step"] == "hardness" and ool[0]["reviewed"] is None
    _trail(world, batch_id)
    problems = ex.release_blockers(batch_id)
    assert any("not reviewed" in p and ool[0]["key"] in p for p in problems)
    with pytest.raises(Conflict, match="exception\\(s\\) are not reviewed"):
        ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")
    review_exceptions(world, batch_id)
    assert ex.unreviewed_exceptions(batch_id) == []
    assert not any("not reviewed" in p for p in ex.release_blockers(batch_id))


def test_release_refused_without_an_audit_trail_review(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world)
    review_exceptions(world, batch_id)
    assert ex.release_blockers(batch_id) == ["no signed audit-trail review covers the batch's current record"]
    with pytest.raises(Conflict, match="audit-trail review"):
        ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")
    _trail(world, batch_id)
    assert ex.release_blockers(batch_id) == []


def test_a_qa_person_who_took_part_in_a_batch_may_not_review_release_or_reject_it(app: Flask, monkeypatch) -> None:
    """Segregation of duties for every QA act on a batch, on the server: qa1 signed its QA gate,
    so qa1 may not review its exceptions or its audit trail, review it, release it or reject it;
    each refusal is audited with its reason, and qa2, who took no part, does all of it."""
    world = make_world(monkeypatch)
    batch_id = _batch(world, hardness="130")  # qa1 signed (verified) the QA gate; one value out of limits
    assert ex.performed_or_verified(batch_id, "qa1") == ["qa_gate"]
    qa1, creds1 = world.sessions["qa"], world.creds("qa")
    [ool] = [e for e in ex.exceptions(batch_id) if e["type"] == "out_of_limits"]
    with pytest.raises(Conflict, match="segregation of duties: qa1 .*qa_gate.* may not review its exceptions"):
        ex.mark_exception_reviewed(world.actor("qa"), batch_id, ool["key"], "fine")
    with pytest.raises(Conflict, match="may not review its audit trail"):
        review_trail(qa1, creds1, batch_id, "trail reviewed", "QA-WS-01")
    review_exceptions(world, batch_id)  # by qa2
    _trail(world, batch_id)
    with pytest.raises(Conflict, match="may not review it"):
        ex.review_batch(qa1, creds1, batch_id, terminal="QA-WS-01")
    ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")
    assert any(p.startswith("segregation of duties: qa1") for p in ex.release_blockers(batch_id, "qa1"))
    with pytest.raises(Conflict, match="may not release it"):
        ex.release_batch(qa1, creds1, batch_id, "released", terminal="QA-WS-01")
    with pytest.raises(Conflict, match="may not reject it"):
        ex.release_batch(qa1, creds1, batch_id, "rejected", terminal="QA-WS-01")
    assert ex.get_batch(batch_id).status == "reviewed"
    refused = [json.loads(e.entry_bytes) for e in db.session.execute(select(AuditEntry).where(
        AuditEntry.batch_id == batch_id, AuditEntry.action.in_((ex.QA_REFUSED, ex.RELEASE_REFUSED)))
        .order_by(AuditEntry.seq)).scalars()]
    assert [r["after"].get("tried") or r["after"]["decision"] for r in refused] == [
        "exception_review", "audit_review", "review", "released", "rejected"]
    assert all(r["actor"]["id"] == "qa1" and "segregation of duties: qa1" in r["after"]["reason"] for r in refused)
    # a QA person who took no part releases it
    assert ex.performed_or_verified(batch_id, "qa2") == [] and ex.release_blockers(batch_id, "qa2") == []
    assert _release(world, batch_id).status == "released"
    assert ex.get_batch(batch_id).decided_by == "qa2"


def test_marking_an_exception_reviewed_is_recorded_once_and_audited(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world, hardness="130")
    [ool] = [e for e in ex.exceptions(batch_id) if e["type"] == "out_of_limits"]
    qa = world.actor(independent_qa(world, batch_id))  # qa2: qa1 signed the QA gate
    row = ex.mark_exception_reviewed(qa, batch_id, ool["key"], "  within process capability  ")
    assert (row.reviewed_by, row.note, row.exception_type) == ("qa2", "within process capability", "out_of_limits")
    [again] = [e for e in ex.exceptions(batch_id) if e["key"] == ool["key"]]
    assert again["reviewed"]["by"] == "qa2" and again["reviewed"]["note"] == "within process capability"
    entry = db.session.execute(select(AuditEntry).where(AuditEntry.action == "batch.exception.reviewed")).scalar_one()
    body = json.loads(entry.entry_bytes)
    assert entry.batch_id == batch_id and body["after"]["exception"] == ool["key"] and body["actor"]["id"] == "qa2"
    with pytest.raises(Conflict, match="already reviewed"):
        ex.mark_exception_reviewed(qa, batch_id, ool["key"])
    with pytest.raises(NotFound):
        ex.mark_exception_reviewed(qa, batch_id, "out_of_limits:nothing")


def test_conditional_release_propagates_through_genealogy(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    pack = _pack(world)
    world.lots.pop("BLK-PCM500-TAB", None)
    stock(world, store.master_of(store.get_version(pack)))
    bulk = world.lots["BLK-PCM500-TAB"][0]
    hold = mat.place_hold(world.actor("qa"), bulk, "all", "dissolution result pending")
    mat.release_hold(world.actor("qa"), hold.id, "conditional_release", "usable pending the result",
                     conditions="Ship nothing made from it before dissolution passes")
    batch_id = start(world, pack, "10.000", "kg")
    run_until(world, batch_id, stop_before="qa_gate", overrides={"hardness": {"value": "100"}})
    ex.sign_gate(world.sessions["qa"], batch_id, "qa_gate", {"password": PASSWORD, "user_id": "qa1"}, world.key(),
                 ex.get_step(batch_id, "qa_gate").version, terminal="QA-WS-01")
    out_lot = f"LOT-PACK-{world.key()}"
    run_until(world, batch_id, overrides={"packed_out": {"quantity": "9.900", "unit": "kg", "lot_id": out_lot}})
    # the batch that used the conditional lot is flagged, and the genealogy leads from the lot to it
    assert mat.batches_consuming_conditionally(bulk) == [batch_id]
    assert {e["lot"] for e in ex.exceptions(batch_id) if e["type"] == "conditional_lot"} == {bulk}
    forward = mat.trace_forward(bulk)
    assert out_lot in forward.lots
    review_exceptions(world, batch_id)
    _trail(world, batch_id)
    assert any(bulk in p and "open conditions" in p for p in ex.release_blockers(batch_id))
    with pytest.raises(Conflict, match="open conditions"):
        ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")
    # conditions met: the batch is released conditionally and its own lot carries the condition on
    mat.meet_conditions(world.actor("qa"), hold.id, "dissolution passed")
    _trail(world, batch_id)
    ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")
    _release(world, batch_id, "conditionally_released", conditions="Ship only after the 3-month stability pull")
    usable = mat.check_usable(out_lot)
    assert usable.ok and usable.conditional and "stability pull" in usable.reason


def test_device_faults_during_capture_are_exceptions_linked_to_their_step(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world)
    fault = ex.StepRefused("The scale has sent no reading. Check that the scale is on.", code="no_reading",
                           device_id="SCALE-9")
    ex.record_refusal(world.actor("operator"), batch_id, "w_bulk", {"device_id": "SCALE-9"}, fault)
    wrong = ex.StepRefused("Lot L-X is not the item this step weighs.", code="wrong_lot")
    ex.record_refusal(world.actor("operator"), batch_id, "w_bulk", {"lot_id": "L-X"}, wrong)
    refused = [e for e in ex.exceptions(batch_id) if e["type"] == "refused_attempt"]
    assert [(e["code"], e["device_fault"], e["step"]) for e in refused] == [
        ("no_reading", True, "w_bulk"), ("wrong_lot", False, "w_bulk")]
    assert all(e["audit_entity"] == f"{batch_id}:w_bulk" and e["key"].startswith("refused:") for e in refused)
    assert {e["key"] for e in refused} <= {e["key"] for e in ex.unreviewed_exceptions(batch_id)}


def test_a_gate_lifted_while_the_batch_ran_is_an_override_to_review(app: Flask, client, monkeypatch) -> None:
    """A lot's hold released and its retest date moved after the batch started and before the
    batch consumed it are overrides: listed with what was lifted, by whom and why, beside the
    step that used the lot, and reviewed like any exception. The same after the last use is not."""
    from datetime import date, timedelta

    world = make_world(monkeypatch)
    pack = _pack(world)
    world.lots.pop("BLK-PCM500-TAB", None)
    stock(world, store.master_of(store.get_version(pack)))
    bulk = world.lots["BLK-PCM500-TAB"][0]
    batch_id = start(world, pack, "10.000", "kg")
    qa = world.actor("qa")
    hold = mat.place_hold(qa, bulk, "consumption", "drums arrived dented")
    mat.release_hold(qa, hold.id, "release", "drums inspected: no damage to the liners")
    mat.set_retest_date(qa, bulk, date.today() + timedelta(days=90), "retest passed, report QC-77")
    from mes.equipment import operations as equipment

    scales = [e.id for e in equipment.list_equipment(kind="scale") if e.status in ("available", "clean")]
    for sc in scales:  # taken out of service and put back by hand
        equipment.set_status(qa, sc, "maintenance", "zero drift seen")
        equipment.set_status(qa, sc, "available", "zero drift within limits after warm-up")
    run_until(world, batch_id, stop_before="qa_gate", overrides={"hardness": {"value": "100"}})
    used_in = {c.step_id for c in mat.consumptions(batch_id=batch_id) if c.lot_id == bulk}
    later = mat.place_hold(qa, bulk, "consumption", "after the batch used it")  # not an override of this batch
    mat.release_hold(qa, later.id, "release", "no longer needed")

    found = [e for e in ex.exceptions(batch_id) if e["type"] == "override"]
    used_scales = sorted({e["entity"]["id"] for e in found if e["entity"]["type"] == "equipment"})
    assert used_scales and set(used_scales) <= set(scales)
    assert [e["after"] for e in found if e["entity"]["type"] == "equipment"] == [{"status": "available"}] * len(
        used_scales)  # the return to service; going out of service lifted nothing
    overrides = [e for e in found if e["entity"]["type"] == "lot"]
    assert [(e["action"], e["by"], e["entity"]) for e in overrides] == [
        ("material.hold.released", qa.id, {"type": "lot", "id": bulk}),
        ("material.lot.retest_date_set", qa.id, {"type": "lot", "id": bulk})]
    assert {e["step"] for e in overrides} == used_in and len(used_in) == 1
    assert "drums inspected" in overrides[0]["text"] and "QC-77" in overrides[1]["text"]
    for e in overrides:  # each points at the audit entry that lifted the gate
        entry = db.session.get(AuditEntry, e["audit_seq"])
        assert entry is not None and entry.action == e["action"] and entry.entity_id == bulk
    assert {e["key"] for e in overrides} <= {e["key"] for e in ex.unreviewed_exceptions(batch_id)}
    # the QA batch page shows each with what was lifted, who lifted it and why
    from html import unescape

    from tests.helpers import logged_in

    html = unescape(logged_in(client, world.seeded, "qa").get(f"/qa/batches/{batch_id}").get_data(as_text=True))
    assert f"Hold on lot {bulk} released while the batch ran, before it used it; reason: drums inspected" in html
    assert f"Retest date of lot {bulk} moved while the batch ran" in html and f"by {qa.id}" in html
    reviewer = world.actor(independent_qa(world, batch_id))
    ex.mark_exception_reviewed(reviewer, batch_id, overrides[0]["key"], "hold was for the outer drums only")
    reviewed = {e["key"]: e["reviewed"] for e in ex.exceptions(batch_id)}
    assert reviewed[overrides[0]["key"]]["by"] == reviewer.id and reviewed[overrides[1]["key"]] is None
