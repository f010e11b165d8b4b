"""Issue 14, "record exactly what happened": gates signed by whoever the recipe names,
gates bound to the values they verify, the batch's disposition carried to its lot, expired
lots refused, idempotency keys that mean the same request, and traces that see work in
progress. One test per rule, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from flask import Flask

from mes.errors import Forbidden
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.signatures import operations as esig
from tests.execution_helpers import (
    PACK_RECIPE,
    PCM,
    effective_recipe,
    make_world,
    run_until,
    start,
    stock,
)
from tests.helpers import PASSWORD, logged_in


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
    pack = effective_recipe(world, GATE_RECIPE, "gate.yaml")
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
