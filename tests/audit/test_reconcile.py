"""Issue 17: records reconcile with the log. A DBA who edits GMP records directly in SQL
(a recorded weight, a held lot set to released, a batch status, a deleted or inserted
record) is named by ``mes audit reconcile`` and ``mes audit verify`` with the record and
the seq of the entry that says otherwise, and the running server's /readyz turns red at
its next poll (well within one checkpoint interval). On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from flask import Flask
from sqlalchemy import select, text

from mes.audit import checkpoint_guard, log
from mes.audit.database_check import verify_database
from mes.audit.models import AuditEntry
from mes.audit.reconcile import reconcile
from mes.db import db
from mes.execution import recipes_store as store
from mes.execution.models import StepRecord
from mes.materials import operations as mat
from mes.system.readiness import audit_status
from mes.users.models import Alarm
from tests.execution_helpers import CREAM, effective_recipe, make_world, review_and_release, run_until, start, stock

MES = [sys.executable, "-c", "from mes.cli import main; main()"]
CREAM_VALUES = {
    "bulk_weight": {"value": "198.0"},
    "jars_out": {"quantity": "3850", "unit": "pcs", "lot_id": "LOT-FG-MC-001"},
}
REFUSAL_TABLES = ("material_lots", "material_holds", "material_containers", "material_consumptions", "batches",
                  "batch_steps", "step_records", "deviations", "work_orders", "equipment")


def _exec(sql: str, params: dict | None = None) -> None:
    """What a DBA with owner rights does: refusal triggers off, then plain SQL."""
    db.session.rollback()
    with db.engine.begin() as conn:
        conn.execute(text(sql), params or {})


def _drop_refusals(backend: str, tables: tuple[str, ...] = REFUSAL_TABLES) -> None:
    db.session.rollback()
    with db.engine.begin() as conn:
        for table in tables:
            if backend == "postgresql":
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            else:
                for name in conn.execute(text("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name = :t"),
                                         {"t": table}).scalars().all():
                    conn.execute(text(f"DROP TRIGGER {name}"))


def _seq_of(action: str, entity_id: str) -> int:
    db.session.rollback()
    return db.session.execute(select(AuditEntry.seq).where(AuditEntry.action == action, AuditEntry.entity_id == entity_id)
                              .order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()


@pytest.fixture
def plant(app: Flask, backend: str, monkeypatch) -> dict:
    """A released cream batch (lots received and released, consumptions, records, work
    order, equipment), a lot on hold, everything checkpointed; refusal triggers dropped."""
    world = make_world(monkeypatch)
    rv = effective_recipe(world, CREAM)
    master = store.master_of(store.get_version(rv))
    stock(world, master, extra_lots=1)
    batch_id = start(world, rv, "200.000", "kg")
    run_until(world, batch_id, overrides=CREAM_VALUES)
    review_and_release(world, batch_id)
    held_lot = next(lot for lots in world.lots.values() for lot in lots if mat.get_lot(lot).status == "released")
    hold = mat.place_hold(world.actor("qa"), held_lot, "all", "NCR-17 contamination suspected")
    log.publish_checkpoint()
    db.session.commit()
    assert reconcile().ok, reconcile().summary()
    _drop_refusals(backend)
    return {"batch": batch_id, "held_lot": held_lot, "hold": hold.id, "world": world}


def _weigh_record() -> StepRecord:
    """A recorded value (detached: reading it never opens a transaction that would hold
    SQLite's write lock while the CLI runs)."""
    db.session.rollback()
    rec = db.session.execute(select(StepRecord).where(StepRecord.value.is_not(None), StepRecord.superseded_by.is_(None))
                             .order_by(StepRecord.recorded_at).limit(1)).scalar_one()
    db.session.expunge(rec)
    db.session.rollback()
    return rec


def test_reconcile_an_honest_plant_is_clean(plant: dict) -> None:
    result = reconcile()
    assert result.ok and result.records > 20, result.summary()
    assert verify_database().ok


def test_reconcile_names_a_recorded_weight_edited_in_sql(plant: dict) -> None:
    rec = _weigh_record()
    _exec("UPDATE step_records SET value = value + 1 WHERE id = :id", {"id": rec.id})
    result = reconcile()
    assert not result.ok and result.first.table == "step_records" and result.first.key == rec.id
    step_seq = db.session.execute(select(AuditEntry.seq).where(AuditEntry.entity_id == rec.batch_step_id,
                                                               AuditEntry.action.in_(("batch.step.completed",
                                                                                      "batch.step.recorded")))
                                  .order_by(AuditEntry.seq).limit(1)).scalar_one()
    assert result.first_bad_seq == step_seq and "value" in result.summary()
    check = verify_database()
    assert not check.ok and check.first_bad_seq == step_seq and rec.id in check.summary()


def test_reconcile_names_a_held_lot_set_to_released(plant: dict) -> None:
    _exec("UPDATE material_holds SET released_at = CURRENT_TIMESTAMP, disposition = 'release' WHERE id = :id",
          {"id": plant["hold"]})
    result = reconcile()
    assert not result.ok and result.first.table == "material_holds" and result.first.key == plant["hold"]
    assert result.first_bad_seq == _seq_of("material.hold.placed", plant["held_lot"])


def test_reconcile_names_a_quarantined_lot_set_to_released(plant: dict) -> None:
    world = plant["world"]
    lot = mat.receive_lot(world.actor("qa"),
                          next(iter(world.lots)), [mat.ContainerIn("10.0", "kg")], supplier="ACME").id
    db.session.commit()
    _exec("UPDATE material_lots SET status = 'released' WHERE id = :id", {"id": lot})
    result = reconcile()
    assert not result.ok and result.first.key == lot and "status" in result.summary()
    assert result.first_bad_seq == _seq_of("material.lot.received", lot)


def test_reconcile_names_batch_status_deleted_and_inserted_records(plant: dict) -> None:
    batch = plant["batch"]
    _exec("UPDATE batches SET status = 'in_progress' WHERE id = :id", {"id": batch})
    assert reconcile().first_bad_seq == _seq_of("batch.released", batch)
    _exec("UPDATE batches SET status = 'released' WHERE id = :id", {"id": batch})
    assert reconcile().ok
    dev_row = db.session.execute(text("SELECT id FROM deviations LIMIT 1")).first()
    consumption = db.session.execute(text("SELECT id FROM material_consumptions LIMIT 1")).scalar_one()
    _exec("DELETE FROM material_consumption_reversals")
    _exec("DELETE FROM material_consumptions WHERE id = :id", {"id": consumption})
    result = reconcile()
    assert not result.ok and result.first.key == consumption and "missing" in result.summary()
    assert result.first_bad_seq == _seq_of("material.consumed", consumption)
    if dev_row is None:
        _exec("INSERT INTO work_orders (id, item, quantity, quantity_places, unit, recipe_version_id, status, "
              "created_at, created_by) SELECT 'WO-FORGED', item, quantity, quantity_places, unit, recipe_version_id, "
              "status, created_at, created_by FROM work_orders LIMIT 1")
    lines = [d.line() for d in reconcile().differences]
    assert any("no audit entry" in line for line in lines) or dev_row is not None


def test_reconcile_cli_names_the_record_and_raises_one_alarm(plant: dict, app: Flask) -> None:
    rec = _weigh_record()
    _exec("UPDATE step_records SET value = value * 2 WHERE id = :id", {"id": rec.id})
    env = {**os.environ, "MES_HOME": str(app.config["MES_HOME"]), "MES_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "MES_AUDIT_TAG_KEY_PATH": str(app.config["MES_AUDIT_TAG_KEY_PATH"])}
    r = subprocess.run([*MES, "audit", "reconcile"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert r.stdout.startswith("FAILED") and rec.id in r.stdout and len(r.stdout.strip().splitlines()) == 1
    r = subprocess.run([*MES, "audit", "verify"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and rec.id in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    db.session.rollback()
    assert db.session.query(Alarm).filter(Alarm.kind == "audit").count() == 2  # reconcile's and verify's


def test_running_server_readyz_red_at_the_next_poll(plant: dict, client) -> None:
    assert checkpoint_guard.watch_log() is None
    _exec("UPDATE material_holds SET released_at = CURRENT_TIMESTAMP WHERE id = :id", {"id": plant["hold"]})
    line = checkpoint_guard.watch_log()
    assert line is not None and plant["hold"] in line
    assert audit_status().state == "failed"
    assert client.get("/readyz").status_code == 503
    db.session.rollback()
    assert db.session.query(Alarm).filter(Alarm.kind == "audit").count() == 1


def test_the_tables_are_compared_at_the_comparisons_between_them_only_new_entries(plant: dict, client) -> None:
    """The background thread verifies the new entries at every poll and compares the tables
    every ``TABLES_COMPARE_SECONDS`` (within one checkpoint interval): a poll in between leaves
    an edited record to the next comparison, which finds it."""
    from mes.audit.log import CHECKPOINT_EVERY
    from mes.jobs import CHECKPOINT_POLL_SECONDS, TABLES_COMPARE_SECONDS

    assert CHECKPOINT_POLL_SECONDS <= TABLES_COMPARE_SECONDS < CHECKPOINT_EVERY.total_seconds()
    assert checkpoint_guard.watch_log() is None
    _exec("UPDATE material_holds SET released_at = CURRENT_TIMESTAMP WHERE id = :id", {"id": plant["hold"]})
    assert checkpoint_guard.watch_log(compare_tables=False) is None
    assert audit_status().state != "failed"
    line = checkpoint_guard.watch_log(compare_tables=True)
    assert line is not None and plant["hold"] in line
    assert audit_status().state == "failed" and client.get("/readyz").status_code == 503


def test_no_checkpoint_is_signed_over_an_edited_record_the_new_entries_touch(plant: dict) -> None:
    world = plant["world"]
    lot = plant["held_lot"]
    _exec("UPDATE material_lots SET supplier = 'FORGED' WHERE id = :id", {"id": lot})
    mat.set_retest_date(world.actor("qa"), lot, datetime.now(UTC).date(), "retested")
    before = log.latest_checkpoint().size
    with pytest.raises(checkpoint_guard.LogTampered) as caught:
        log.publish_checkpoint()
    db.session.rollback()
    assert lot in str(caught.value) and log.latest_checkpoint().size == before


def test_with_the_watch_state_read_the_checkpoint_still_refuses_an_edited_record(plant: dict) -> None:
    """After the watch's first poll the check before a checkpoint uses the records it keeps
    (no history replayed): an edit of a record the new entries touch is still refused, and
    an edit of any column of that record, not only the one the new entry set."""
    from mes.audit.reconcile import watch_state

    assert checkpoint_guard.watch_log() is None
    assert watch_state().expected.size > 0
    world = plant["world"]
    lot = plant["held_lot"]
    _exec("UPDATE material_lots SET supplier = 'FORGED' WHERE id = :id", {"id": lot})
    mat.set_retest_date(world.actor("qa"), lot, datetime.now(UTC).date(), "retested")
    before = log.latest_checkpoint().size
    with pytest.raises(checkpoint_guard.LogTampered) as caught:
        log.publish_checkpoint()
    db.session.rollback()
    assert lot in str(caught.value) and "supplier" in str(caught.value) and log.latest_checkpoint().size == before


def test_an_entry_verified_at_one_poll_and_edited_after_is_found_at_the_next(plant: dict, backend: str) -> None:
    """The watch does not check an unchanged entry twice (VerifiedRows), but any change to
    a row it verified, here the entry bytes with their leaf hash, is checked again in full."""
    import hashlib

    world = plant["world"]
    mat.set_retest_date(world.actor("qa"), plant["held_lot"], datetime.now(UTC).date(), "retested")
    db.session.commit()
    assert checkpoint_guard.watch_log() is None
    seq = log.tree_size() - 1
    data = db.session.execute(text("SELECT entry_bytes FROM audit_entries WHERE seq = :s"), {"s": seq}).scalar_one()
    forged = bytes(data).replace(b'"retested"', b'"retestes"')
    assert forged != bytes(data)
    db.session.rollback()
    _drop_refusals(backend, ("audit_entries",))
    _exec("UPDATE audit_entries SET entry_bytes = :b, leaf_hash = :h WHERE seq = :s",
          {"b": forged, "h": hashlib.sha256(b"\x00" + forged).digest(), "s": seq})
    line = checkpoint_guard.watch_log()
    assert line is not None and f"first bad seq {seq}" in line and "authentication tag" in line
