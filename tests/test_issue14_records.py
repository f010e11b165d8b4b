"""Issue 14, "record exactly what happened": gates signed by whoever the recipe names,
gates bound to the values they verify, the batch's disposition carried to its lot, expired
lots refused, idempotency keys that mean the same request, and traces that see work in
progress. One test per rule, on SQLite and PostgreSQL."""

from __future__ import annotations

from flask import Flask

from mes.execution import operations as ex
from mes.execution import recipes_store as store
from tests.execution_helpers import PCM, effective_recipe, make_world, start, stock
from tests.helpers import logged_in


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
