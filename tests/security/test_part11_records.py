"""Rows of shared/specs/part11.md about records, signatures and their audit trail, one test
per row (marked with its ref), on a small batch run the way a line runs it."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, text, update

from mes.audit import log
from mes.audit.backup import RestoreError, backup_database, manifest_path, restore_database
from mes.audit.database_check import export, verify_database
from mes.audit.models import AuditEntry
from mes.audit.review import review_trail
from mes.audit.verify import verify_export
from mes.db import db
from mes.errors import Conflict
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.jobs import verify_now
from mes.quantities import to_text
from mes.signatures import operations as esig
from mes.users import operations as users
from mes.users.models import Alarm, Terminal
from tests.execution_helpers import (
    World,
    do_step,
    effective_recipe,
    make_world,
    review_exceptions,
    run_until,
    start,
    stock,
)
from tests.helpers import SEED, logged_in
from tests.security.part11 import row

RECIPE = """\
format: mes.master-recipe/v1
id: MR-P11
version: 1
product: {code: FG-P11, name: Part 11 product}
batch_size: {quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}
bill_of_materials:
  - {item: RM-P11, name: Raw, role: ingredient, quantity: "10.000", unit: kg, tolerance: {percent: "1.0"}}
procedure:
  - id: up1
    title: Make
    operations:
      - id: op1
        title: Measure
        steps:
          - {id: x1, kind: identify, title: Identify, instruction: Scan., item: RM-P11}
          - {id: w1, kind: weigh, title: Weigh, instruction: Weigh the raw material., item: RM-P11,
             scale: {readability: "0.01", unit: kg}}
          - {id: mass, kind: numeric, title: Mass, instruction: Enter., unit: kg, precision: 2, low: "5", high: "20"}
          - {id: done, kind: signature, title: Measured, instruction: Sign the measurement., meaning: performed,
             roles: [operator]}
          - {id: out, kind: produce_output, title: Out, instruction: Weigh., item: FG-P11, quantity: "10.000",
             unit: kg, yield_low: "90.0", yield_high: "101.0"}
"""
VALUES = {"mass": {"value": "12.34"}, "out": {"quantity": "10.000", "unit": "kg", "lot_id": "LOT-FG-P11-1"}}
QA_WS = "QA-WS-01"


def _batch(monkeypatch: pytest.MonkeyPatch) -> tuple[World, str]:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "p11.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    return world, start(world, rv, "10.000", "kg")


def _record(batch_id: str, step_id: str) -> ex.StepRecord:
    """The step's current value record."""
    return next(r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:{step_id}"
                and r.kind == "value" and r.superseded_by is None)


def _step_signatures(batch_id: str, step_id: str) -> list[esig.SignatureCheck]:
    return esig.signatures_for("batch_step", f"{batch_id}:{step_id}")


def _drop_audit_triggers(backend: str) -> None:
    """What a DBA with owner rights does before tampering."""
    db.session.rollback()
    with db.engine.begin() as conn:
        if backend == "postgresql":
            for table in ("audit_entries", "audit_tree_nodes", "audit_checkpoints"):
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            for name in conn.execute(text("SELECT name FROM sqlite_master WHERE type='trigger' "
                                          "AND tbl_name LIKE 'audit_%'")).scalars().all():
                conn.execute(text(f"DROP TRIGGER {name}"))


def _entry_bytes(seq: int) -> bytes:
    db.session.rollback()
    with db.engine.connect() as conn:
        return bytes(conn.execute(text("SELECT entry_bytes FROM audit_entries WHERE seq = :s"), {"s": seq}).scalar_one())


def _set_entry_bytes(seq: int, data: bytes) -> None:
    db.session.rollback()
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET entry_bytes = :b WHERE seq = :s"), {"b": data, "s": seq})


def _entries(n: int, start_at: int = 0) -> None:
    actor = log.Actor("operator1", "Operator One", "operator", "KIOSK-01")
    for i in range(start_at, start_at + n):
        log.record(actor, "batch.step.completed", ("batch_step", f"B-P11/{i}"), batch="B-P11",
                   after={"value": f"{i}.50", "unit": "kg"})
        db.session.commit()


def _entries_of(action: str, entity_id: str | None = None) -> list[dict[str, Any]]:
    query = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
    if entity_id is not None:
        query = query.where(AuditEntry.entity_id == entity_id)
    return [json.loads(e.entry_bytes) for e in db.session.execute(query).scalars()]


@row("11.10(a)")
def test_11_10_a_a_changed_deleted_or_reordered_entry_or_one_byte_of_a_signed_ebr_is_detected(
        app: Flask, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    world, batch_id = _batch(monkeypatch)
    run_until(world, batch_id, overrides=VALUES)
    review_trail(world.sessions["qa"], world.creds("qa"), batch_id, "trail reviewed", QA_WS)
    ex.review_batch(world.sessions["qa"], world.creds("qa"), batch_id, terminal=QA_WS)
    assert [c.valid for c in esig.signatures_for("batch", batch_id)] == [True]
    # one byte of the signed eBR: 12.34 kg becomes 12.35 kg behind the application's back
    mass = _record(batch_id, "mass")
    mass_id, mass_value = mass.id, mass.value_stored
    tamper = update(ex.StepRecord.__table__).where(ex.StepRecord.__table__.c.id == mass.id).values(
        value=mass.value_stored + Decimal("0.01"))
    db.session.rollback()
    with db.engine.begin() as conn:
        conn.execute(tamper)
    db.session.expire_all()
    assert to_text(_record(batch_id, "mass").value) == "12.35"
    assert [c.valid for c in esig.signatures_for("batch", batch_id)] == [False]
    assert ex.broken_gates(batch_id) == ["done"]
    # and the record no longer matches the audit entry that recorded it (issue 17's reconcile)
    edited = verify_database()
    assert not edited.ok and "record differs from the audit log" in edited.errors[-1], edited.errors
    db.session.close()
    db.engine.dispose()
    with db.engine.begin() as conn:
        conn.execute(update(ex.StepRecord.__table__).where(ex.StepRecord.__table__.c.id == mass_id).values(
            value=mass_value))
    db.session.expire_all()

    log.publish_checkpoint()
    db.session.commit()
    assert verify_database().ok
    _drop_audit_triggers(backend)
    size = log.tree_size()
    target = size // 2
    original = _entry_bytes(target)
    at = original.index(b'"at":"') + len(b'"at":"')  # one byte: the first digit of the entry's year
    _set_entry_bytes(target, original[:at] + bytes([original[at] ^ 1]) + original[at + 1:])
    changed = verify_database()
    assert not changed.ok and changed.first_bad_seq == target, changed.errors
    _set_entry_bytes(target, original)
    assert verify_database().ok
    a, b = _entry_bytes(3), _entry_bytes(7)
    _set_entry_bytes(3, b)
    _set_entry_bytes(7, a)
    reordered = verify_database()
    assert not reordered.ok and reordered.first_bad_seq == 3
    _set_entry_bytes(3, a)
    _set_entry_bytes(7, b)
    assert verify_database().ok
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE seq = :s"), {"s": target})
    deleted = verify_database()
    assert not deleted.ok and deleted.first_bad_seq == target


@row("11.10(b)")
def test_11_10_b_a_batch_exports_as_json_with_its_audit_trail_signatures_and_proofs(
        app: Flask, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The JSON half of the row (the eBR's PDF is issue 19's ``GET /api/v1/batches/<id>/ebr.pdf``)."""
    world, batch_id = _batch(monkeypatch)
    run_until(world, batch_id, overrides=VALUES)
    qa = logged_in(app.test_client(), world.seeded, "qa")
    r = qa.get(f"/api/v1/batches/{batch_id}")
    assert r.status_code == 200 and r.mimetype == "application/json"
    record = r.get_json()
    mass = next(s for s in record["steps"] if s["id"] == "mass")
    assert mass["records"][0]["value"] == "12.34" and mass["records"][0]["recorded_by"] == "operator1"
    info = export(tmp_path / "ebr", batch=batch_id)
    entries = [json.loads(line) for line in (tmp_path / "ebr" / "entries.jsonl").read_text().splitlines()]
    assert info["entries"] == len(entries) and {e["batch"] for e in entries} == {batch_id}
    signed = [e for e in entries if e["action"] == "esig.signed"]
    assert [(e["entity"]["id"], e["signature"]["signer"], e["signature"]["meaning"]) for e in signed] == [
        (f"{batch_id}:done", "operator1", "performed")]
    proofs = json.loads((tmp_path / "ebr" / "proofs.json").read_text())
    assert proofs, "each entry of the batch comes with its inclusion proof"
    result = verify_export(tmp_path / "ebr")
    assert result.ok, result.errors
    (tmp_path / "ebr" / "entries.jsonl").write_bytes(
        (tmp_path / "ebr" / "entries.jsonl").read_bytes().replace(b'"12.34"', b'"12.43"', 1))
    assert not verify_export(tmp_path / "ebr").ok


@row("11.10(c), A11 §7")
def test_11_10_c_a_scheduled_job_re_verifies_the_log_and_a_restore_reproduces_the_last_checkpoint(
        app: Flask, client: Any, backend: str, tmp_path: Path) -> None:
    _entries(6)
    size = log.tree_size()
    manifest = backup_database(tmp_path / "backup.bin")
    assert manifest["checkpoint_size"] == size and manifest["root"] == log.root(size).hex()
    _entries(3, start_at=6)  # written after the backup: lost by the restore, which proves what it restored
    summary = restore_database(tmp_path / "backup.bin", force=True)
    assert "reproduced" in summary
    cp = log.latest_checkpoint()
    assert cp is not None and cp.size == size and cp.root.hex() == manifest["root"]
    assert _entries_of("system.restored")[-1]["after"]["root"] == manifest["root"]
    # a backup that does not reproduce the checkpoint its manifest names is refused
    forged = {**json.loads(manifest_path(tmp_path / "backup.bin").read_text()), "root": "00" * 32}
    manifest_path(tmp_path / "backup.bin").write_text(json.dumps(forged))
    db.session.rollback()
    with pytest.raises(RestoreError, match="does not reproduce the checkpoint|differs from its signed checkpoint"):
        restore_database(tmp_path / "backup.bin", force=True)
    db.session.rollback()

    verify_now(app, "schedule")
    assert client.get("/readyz").status_code == 200
    _drop_audit_triggers(backend)
    bad = size - 4  # the third of the entries written above
    _set_entry_bytes(bad, _entry_bytes(bad).replace(b'"2.50"', b'"2.05"'))
    verify_now(app, "schedule")
    assert client.get("/readyz").status_code == 503
    alarms = db.session.execute(select(Alarm).where(Alarm.kind == "audit")).scalars().all()
    # one alarm for the refused restore, one for the failed verification
    assert [a.message.split(":")[0] for a in alarms] == ["Restore of backup.bin refused",
                                                       "Audit log verification failed"], alarms
    assert f"first bad seq {bad}" in alarms[1].message


@row("11.10(e), A11 §9")
def test_11_10_e_each_change_records_who_what_when_old_new_and_reason_and_no_one_can_change_the_trail(
        app: Flask, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    world, batch_id = _batch(monkeypatch)
    run_until(world, batch_id, stop_before="done", overrides=VALUES)
    old = _record(batch_id, "mass")
    ex.correct_value(world.actor("operator"), batch_id, old.id, "12.43", "transposed digits")
    entry = _entries_of("batch.value.corrected")[-1]
    assert entry["actor"] == {"id": "operator1", "name": "Operator One", "role": "operator"}
    assert entry["terminal"] == "KIOSK-01" and entry["batch"] == batch_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["at"])  # UTC, from the server
    assert json.dumps(entry["before"]).count("12.34") and json.dumps(entry["after"]).count("12.43")
    assert entry["reason"] == "transposed digits"
    # no role can update or delete an entry: the database refuses it (the test's role owns the tables)
    db.session.rollback()
    for statement in ("UPDATE audit_entries SET entry_bytes = entry_bytes WHERE seq = 1",
                      "DELETE FROM audit_entries WHERE seq = 1", "DELETE FROM audit_checkpoints"):
        with pytest.raises(Exception, match="(?i)audit|append-only|not allowed|refuse"):
            with db.engine.begin() as conn:
                conn.execute(text(statement))
    assert verify_database().ok
    # auditing cannot be switched off: whatever the settings, a change without an entry never commits
    for key in [k for k in app.config if "AUDIT" in k and isinstance(app.config[k], bool)]:
        app.config[key] = not app.config[key]
    db.session.add(Terminal(id="UNAUDITED", kind="kiosk", key_hash="x"))
    with pytest.raises(log.UnauditedChangeError):
        db.session.commit()
    db.session.rollback()
    assert db.session.get(Terminal, "UNAUDITED") is None


@row("11.10(f)")
def test_11_10_f_steps_run_in_order_and_release_waits_for_open_steps_and_deviations(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world, batch_id = _batch(monkeypatch)
    for early in ("mass", "done"):  # neither done nor signed before its predecessors
        with pytest.raises(ex.StepNotReady, match="cannot be done before"):
            do_step(world, batch_id, early, VALUES)
        db.session.rollback()
    assert {s.step_id: s.state for s in ex.steps_of(batch_id)}["x1"] == "ready"
    run_until(world, batch_id, stop_before="out", overrides=VALUES)
    deviation = ex.raise_deviation(world.actor("operator"), batch_id, "minor", "equipment", "balance wobbles")
    with pytest.raises(Conflict, match="not completed"):
        ex.release_batch(world.sessions["qa"], world.creds("qa"), batch_id, "released", terminal=QA_WS)
    db.session.rollback()
    run_until(world, batch_id, overrides=VALUES)
    review_trail(world.sessions["qa"], world.creds("qa"), batch_id, "trail reviewed", QA_WS)
    blockers = ex.release_blockers(batch_id)
    assert any(deviation.id in b and "not resolved" in b for b in blockers), blockers
    with pytest.raises(Conflict):
        ex.release_batch(world.sessions["qa"], world.creds("qa"), batch_id, "released", terminal=QA_WS)
    db.session.rollback()
    assert ex.get_batch(batch_id).status == "completed"


@row("11.10(k)")
def test_11_10_k_recipes_and_configuration_are_versioned_change_controlled_and_audited(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch)
    author = world.actor("supervisor")
    v1 = store.import_recipe(author, RECIPE, "p11.yaml")
    with pytest.raises(Conflict, match="cannot become approved"):  # no approval without review
        store.approve(world.sessions["qa"], world.creds("qa"), v1.id, terminal=QA_WS)
    db.session.rollback()
    store.submit_for_review(author, v1.id)
    store.approve(world.sessions["qa"], world.creds("qa"), v1.id, terminal=QA_WS)
    store.make_effective(author, v1.id)
    with pytest.raises(Conflict, match="exists already"):  # a version is never replaced in place
        store.import_recipe(author, RECIPE, "p11-again.yaml")
    db.session.rollback()
    v2 = store.import_recipe(author, RECIPE.replace("version: 1", "version: 2").replace('high: "20"', 'high: "19"'))
    assert any("mass" in change for change in store.diff_versions(v1.id, v2.id))
    store.submit_for_review(author, v2.id)
    store.approve(world.sessions["qa"], world.creds("qa"), v2.id, terminal=QA_WS)
    store.make_effective(author, v2.id)
    assert (store.get_version(v1.id).status, store.get_version(v2.id).status) == ("superseded", "effective")
    actions = db.session.execute(select(AuditEntry.action).where(AuditEntry.entity_id.in_([v1.id, v2.id]))
                                 .order_by(AuditEntry.seq)).scalars().all()
    assert len(actions) >= 8 and sum(a == "esig.signed" for a in actions) == 2, actions
    assert [(s.signer, s.meaning, s.valid) for s in esig.signatures_for("recipe_version", v2.id)] == [
        ("qa1", "approved", True)]
    # configuration: a terminal's registration and deactivation are audited like any change
    users.register_terminal(SEED, "KIOSK-P11", "kiosk", "test kiosk", line="LINE-1")
    users.deactivate_terminal(SEED, "KIOSK-P11", "replaced")
    assert [e["action"] for e in _entries_of("terminal.deactivated", "KIOSK-P11")] == ["terminal.deactivated"]
    assert db.session.execute(select(func.count()).select_from(AuditEntry)
                              .where(AuditEntry.entity_id == "KIOSK-P11")).scalar() == 2


@row("11.50")
def test_11_50_every_signature_shows_printed_name_time_with_zone_and_meaning(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """On screen (the API and QA's audit trail; the printed eBR is issue 19's PDF)."""
    world, batch_id = _batch(monkeypatch)
    run_until(world, batch_id, stop_before="out", overrides=VALUES)
    qa = logged_in(app.test_client(), world.seeded, "qa")
    shown = qa.get(f"/api/v1/signatures/batch_step/{batch_id}:done").get_json()["signatures"]
    assert len(shown) == 1
    sig = shown[0]
    assert (sig["name"], sig["meaning"]) == ("Operator One", "performed") and sig["valid"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", sig["at"]), sig["at"]
    page = qa.get(f"/qa/audit?batch={batch_id}").get_data(as_text=True)
    assert "Operator One" in page and "performed" in page
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(UTC[+-]\d\d:\d\d\)", page), "the time names its zone"


@row("11.70")
def test_11_70_a_signature_binds_to_the_hash_of_the_record_version_it_signs(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world, batch_id = _batch(monkeypatch)
    run_until(world, batch_id, stop_before="out", overrides=VALUES)
    [check] = _step_signatures(batch_id, "done")
    assert check.valid
    entry = _entries_of("esig.signed", f"{batch_id}:done")[-1]
    assert entry["signature"]["record_hash"] == esig.record_hash(esig.current_record("batch_step", f"{batch_id}:done"))
    # copied onto another record, it does not verify
    other = esig.record_hash(esig.current_record("batch_step", f"{batch_id}:mass"))
    assert not esig.check_entry(entry, other).valid
    # the record it bound changed afterwards: it fails verification and blocks release
    ex.correct_value(world.actor("operator"), batch_id, _record(batch_id, "mass").id, "12.43", "misread")
    assert [c.valid for c in _step_signatures(batch_id, "done")] == [False]
    assert ex.broken_gates(batch_id) == ["done"]
    assert any("changed after signing" in b for b in ex.release_blockers(batch_id))


@row("A11 §8.2")
def test_a11_8_2_the_ebr_marks_a_changed_value_with_both_values_and_the_reason(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world, batch_id = _batch(monkeypatch)
    run_until(world, batch_id, stop_before="done", overrides=VALUES)
    new = ex.correct_value(world.actor("operator"), batch_id, _record(batch_id, "mass").id, "12.43",
                           "transposed digits")
    step = next(s for s in ex.batch_json(ex.get_batch(batch_id))["steps"] if s["id"] == "mass")
    assert len(step["records"]) == 2
    first = next(r for r in step["records"] if r["superseded_by"])
    second = next(r for r in step["records"] if r["corrects"])
    assert (first["value"], first["superseded_by"]) == ("12.34", new.id)
    assert (second["value"], second["corrects"], second["reason"]) == ("12.43", first["id"], "transposed digits")
    assert [(e["type"], e["step"], e["value"], e["reason"]) for e in ex.exceptions(batch_id)
            if e["type"] == "correction"] == [("correction", "mass", "12.43", "transposed digits")]
    assert ex.get_step(batch_id, "mass").result["value"] == "12.43"


@row("A11 §9")
def test_a11_9_a_signed_audit_trail_review_is_required_for_release(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world, batch_id = _batch(monkeypatch)
    run_until(world, batch_id, overrides=VALUES)
    qa, creds = world.sessions["qa"], world.creds("qa")
    assert any("audit-trail review" in b for b in ex.release_blockers(batch_id))
    with pytest.raises(Conflict, match="audit-trail review"):
        ex.release_batch(qa, creds, batch_id, "released", terminal=QA_WS)
    db.session.rollback()
    review = review_trail(qa, creds, batch_id, "trail reviewed", QA_WS)
    assert [(c.signer, c.meaning, c.valid) for c in esig.signatures_for("audit_review", review.id)] == [
        ("qa1", "reviewed", True)]
    assert not any("audit-trail review" in b for b in ex.release_blockers(batch_id))
    # what happened to the batch after that review is not covered by it
    late = ex.raise_deviation(world.actor("operator"), batch_id, "minor", "equipment", "label smudged")
    ex.disposition_deviation(qa, creds, late.id, "use_as_is", "label reprinted", terminal=QA_WS)
    assert any("audit-trail review" in b for b in ex.release_blockers(batch_id))
    review_exceptions(world, batch_id)  # the late deviation is an exception QA reviews too
    review_trail(qa, creds, batch_id, "trail reviewed again", QA_WS)
    ex.review_batch(qa, creds, batch_id, terminal=QA_WS)
    ex.release_batch(qa, creds, batch_id, "released", terminal=QA_WS)
    assert ex.get_batch(batch_id).status == "released"
