"""The audit log in the database: append, guard, checkpoints, export, and tampering done as a
DBA would do it (drop the trigger first), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select, text

from mes.audit import canonical, log, merkle
from mes.audit.database_check import export, verify_database
from mes.audit.models import AuditCheckpoint, AuditEntry
from mes.audit.verify import verify_export
from mes.db import db
from mes.integration.models import OutboxEvent
from mes.users import operations as ops
from mes.users.models import Terminal
from tests.helpers import example_data

ACTOR = log.Actor("u-0007", "Jane Doe", "operator", "KIOSK-03")


def _append(n: int, batch: str | None = "B-1", start: int = 0) -> None:
    for i in range(start, start + n):
        log.record(ACTOR, "batch.step.completed", ("batch_step", f"{batch}/{i}"), batch=batch,
                   after={"value": f"{i}.50", "unit": "kg"})
        db.session.commit()


def _drop_triggers(backend: str) -> None:
    """What a DBA with owner rights can do before tampering."""
    db.session.rollback()  # our own session must not hold the SQLite write lock
    with db.engine.begin() as conn:
        if backend == "postgresql":
            for table in ("audit_entries", "audit_tree_nodes", "audit_checkpoints"):
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            names = conn.execute(text("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name LIKE 'audit_%'")).scalars().all()
            for name in names:
                conn.execute(text(f"DROP TRIGGER {name}"))


def _set_bytes(seq: int, data: bytes) -> None:
    db.session.rollback()
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET entry_bytes = :b WHERE seq = :s"), {"b": data, "s": seq})


def _bytes(seq: int) -> bytes:
    db.session.rollback()
    with db.engine.connect() as conn:
        return bytes(conn.execute(text("SELECT entry_bytes FROM audit_entries WHERE seq = :s"), {"s": seq}).scalar_one())


def test_entries_are_contiguous_canonical_and_chained(app: Flask) -> None:
    _append(20)
    rows = list(db.session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars())
    assert [r.seq for r in rows] == list(range(20))
    prev = canonical.ZERO_HASH
    for r in rows:
        entry = json.loads(r.entry_bytes)
        assert canonical.canonical_bytes(entry) == bytes(r.entry_bytes)
        assert entry["prev"] == prev and entry["actor"] == ACTOR.as_entry() and entry["terminal"] == "KIOSK-03"
        prev = merkle.leaf_hash(bytes(r.entry_bytes)).hex()
    leaves = [bytes(r.leaf_hash) for r in rows]
    for size in range(21):
        assert log.root(size) == merkle.mth(leaves[:size])
    for i in range(20):
        assert log.inclusion_proof(i, 20) == merkle.inclusion_proof(i, leaves)
    assert verify_database().ok


def test_floats_are_refused(app: Flask) -> None:
    with pytest.raises(canonical.AuditValueError):
        log.record(ACTOR, "batch.step.completed", ("batch_step", "x"), after={"value": 12.5})
    db.session.rollback()


def test_a_change_without_an_entry_cannot_commit(app: Flask) -> None:
    db.session.add(Terminal(id="SNEAKY", kind="kiosk", key_hash="x"))
    with pytest.raises(log.UnauditedChangeError):
        db.session.commit()
    db.session.rollback()
    assert db.session.get(Terminal, "SNEAKY") is None


def test_orm_deletes_are_refused(app: Flask) -> None:
    ops.register_terminal(log.Actor.system("test"), "K-1", "kiosk")
    db.session.delete(db.session.get(Terminal, "K-1"))
    with pytest.raises(log.UnauditedChangeError, match="never deleted"):
        db.session.flush()
    db.session.rollback()


def test_change_entry_and_event_roll_back_together(app: Flask) -> None:
    ev = log.Event("mes.deviation.raised.v1", "batch", "B-1", example_data("mes.deviation.raised.v1", deviation_id="D-1"),
                   correlation_id="WO-1")
    log.record(ACTOR, "deviation.raised", ("deviation", "D-1"), batch="B-1", event=ev)
    db.session.rollback()
    assert log.tree_size() == 0 and db.session.execute(select(OutboxEvent)).first() is None
    log.record(ACTOR, "deviation.raised", ("deviation", "D-1"), batch="B-1", event=ev)
    log.record(ACTOR, "deviation.raised", ("deviation", "D-2"), batch="B-1", event=ev)
    db.session.commit()
    events = list(db.session.execute(select(OutboxEvent).order_by(OutboxEvent.audit_seq)).scalars())
    assert [e.sequence for e in events] == [1, 2]
    body = json.loads(events[0].body)
    assert body["specversion"] == "1.0" and body["subject"] == "batch/B-1" and body["sequence"] == "1"
    assert body["source"] == "urn:mes:plant-01.example" and body["correlationid"] == "WO-1"


def test_checkpoint_schedule(app: Flask) -> None:
    _append(3)
    assert log.latest_checkpoint() is None
    log.record(ACTOR, "esig.signed", ("batch_step", "B-1/1"), batch="B-1",
               signature={"signer": "u-0007", "name": "Jane Doe", "meaning": "performed", "record_hash": "0" * 64,
                          "at": "2026-11-23T10:00:00.000000Z"})
    db.session.commit()
    cp = log.latest_checkpoint()
    assert cp is not None and cp.size == 4  # right after an e-signature
    monkey = log.CHECKPOINT_EVERY_ENTRIES
    log.CHECKPOINT_EVERY_ENTRIES = 5
    try:
        _append(5, start=10)
    finally:
        log.CHECKPOINT_EVERY_ENTRIES = monkey
    assert log.latest_checkpoint().size == 9


def test_export_verifies_with_the_independent_verifier(app: Flask, tmp_path: Path) -> None:
    _append(7)
    _append(3, batch="B-2")
    info = export(tmp_path / "all")
    assert info["entries"] == 10
    result = verify_export(tmp_path / "all")
    assert result.ok, result.errors
    info = export(tmp_path / "b2", batch="B-2")
    assert info["entries"] == 3
    assert (tmp_path / "b2" / "proofs.json").exists()
    result = verify_export(tmp_path / "b2")
    assert result.ok, result.errors
    data = (tmp_path / "all" / "entries.jsonl").read_bytes()
    (tmp_path / "all" / "entries.jsonl").write_bytes(data.replace(b'"3.50"', b'"3.60"'))
    # In an export there is no stored leaf hash: the chain breaks where entry 4 no longer
    # points at entry 3, and the signed checkpoint no longer matches.
    broken = verify_export(tmp_path / "all")
    assert broken.first_bad_seq == 4 and "seq 3" in broken.errors[0]


# ---------------------------------------------------------------- tampering as a DBA


@pytest.fixture
def tampered_log(app: Flask, backend: str) -> str:
    _append(30)
    log.publish_checkpoint()
    db.session.commit()
    _append(5, start=30)
    log.publish_checkpoint()
    db.session.commit()
    assert verify_database().ok
    _drop_triggers(backend)
    return backend


def test_tamper_edit_an_entry(tampered_log: str) -> None:
    data = _bytes(12)
    _set_bytes(12, data.replace(b'"12.50"', b'"11.50"'))
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 12


def test_tamper_edit_an_entry_and_fix_its_hash_column(tampered_log: str) -> None:
    data = _bytes(12).replace(b'"12.50"', b'"11.50"')
    _set_bytes(12, data)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET leaf_hash = :h WHERE seq = 12"), {"h": merkle.leaf_hash(data)})
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 12


def test_tamper_delete_an_entry(tampered_log: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE seq = 7"))
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 7


def test_tamper_reorder_two_entries(tampered_log: str) -> None:
    a, b = _bytes(5), _bytes(9)
    _set_bytes(5, b)
    _set_bytes(9, a)
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 5


def test_tamper_truncate_the_tail(tampered_log: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE seq >= 28"))
        conn.execute(text("DELETE FROM audit_tree_nodes WHERE idx * (1 << level) + (1 << level) > 28"))
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 28


def test_tamper_truncate_tail_and_checkpoints(tampered_log: str) -> None:
    """Even if the DBA also deletes the checkpoints, the exported/retained checkpoint history
    elsewhere would catch it; in the database, the missing checkpoint rows themselves show."""
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE seq >= 28"))
        conn.execute(text("DELETE FROM audit_checkpoints WHERE size > 28"))
    result = verify_database()
    assert not result.ok  # stored leaf nodes beyond the log remain and are counted


def test_tamper_copy_a_signature_onto_another_record(tampered_log: str) -> None:
    log.record(ACTOR, "esig.signed", ("batch_step", "B-1/3"), batch="B-1",
               signature={"signer": "u-0007", "name": "Jane Doe", "meaning": "verified", "record_hash": "ab" * 32,
                          "at": "2026-11-23T10:00:00.000000Z"})
    db.session.commit()
    sig_seq = log.tree_size() - 1
    signature = json.loads(_bytes(sig_seq))["signature"]
    victim = json.loads(_bytes(20))
    victim["action"] = "esig.signed"
    victim["signature"] = signature
    _set_bytes(20, canonical.canonical_bytes(victim))
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 20


def test_tamper_rewrite_the_chain_from_an_entry_on(tampered_log: str) -> None:
    """A DBA who recomputes every later prev and hash is still caught by the signed checkpoints."""
    rows = [(s, json.loads(_bytes(s))) for s in range(35)]
    prev = None
    for seq, entry in rows:
        if seq == 31:
            entry["after"]["value"] = "0.00"
        if prev is not None and seq >= 31:
            entry["prev"] = prev
        data = canonical.canonical_bytes(entry)
        if seq >= 31:
            _set_bytes(seq, data)
            with db.engine.begin() as conn:
                conn.execute(text("UPDATE audit_entries SET leaf_hash = :h WHERE seq = :s"),
                             {"h": merkle.leaf_hash(data), "s": seq})
        prev = merkle.leaf_hash(data).hex()
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 31  # the stored Merkle leaves still hold the original
    # ... and if the DBA rebuilds the Merkle nodes too, the signed checkpoints still catch it:
    tree = merkle.MerkleTree.from_leaf_hashes(merkle.leaf_hash(_bytes(s)) for s in range(35))
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_tree_nodes"))
        conn.execute(text("INSERT INTO audit_tree_nodes (level, idx, hash) VALUES (:l, :i, :h)"),
                     [{"l": level, "i": i, "h": h} for level, i, h in tree.node_rows()])
    result = verify_database()
    # the signed checkpoints say only "not after seq 29"; the entry tags name the rewritten entry itself
    assert not result.ok and result.first_bad_seq == 31
    assert any("seq 31: authentication tag does not match" in e for e in result.errors), result.errors


# ---------------------------------------------------------------------- concurrency


def test_concurrent_writers_give_contiguous_entries(app: Flask, backend: str) -> None:
    writers, per_writer = (8, 500) if backend == "postgresql" else (4, 50)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        with app.app_context():
            try:
                for i in range(per_writer):
                    log.record(log.Actor(f"u-{w}", f"Writer {w}", "operator", f"K-{w}"), "batch.step.completed",
                               ("batch_step", f"B-{w}/{i}"), batch=f"B-{w}", after={"value": str(i)},
                               event=log.Event("mes.material.consumed.v1", "batch", f"B-{w}",
                                               example_data("mes.material.consumed.v1", i=str(i))))
                    db.session.commit()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    total = writers * per_writer
    seqs = list(db.session.execute(select(AuditEntry.seq).order_by(AuditEntry.seq)).scalars())
    assert seqs == list(range(total))
    result = verify_database()
    assert result.ok, result.summary()
    # per-aggregate event sequences have no gaps either
    for w in range(writers):
        seqs = list(db.session.execute(select(OutboxEvent.sequence).where(OutboxEvent.subject == f"batch/B-{w}")
                                       .order_by(OutboxEvent.sequence)).scalars())
        assert seqs == list(range(1, per_writer + 1))
    sizes = list(db.session.execute(select(AuditCheckpoint.size).order_by(AuditCheckpoint.id)).scalars())
    assert sizes == [n * log.CHECKPOINT_EVERY_ENTRIES for n in range(1, total // log.CHECKPOINT_EVERY_ENTRIES + 1)]
