"""Issue 17: a hostile DBA (full database access, no MES key files) against the audit log,
on SQLite and PostgreSQL. Each attack is detected by ``mes audit verify`` with the right
first bad seq, and the MES refuses to sign a checkpoint over it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import text

from mes.audit import canonical, checkpoint_guard, entry_tags, log, merkle
from mes.audit.database_check import verify_database, verify_database_safely
from mes.db import db
from mes.jobs import report_verification
from mes.signatures import operations as esig
from mes.system.readiness import audit_status
from mes.users.models import Alarm
from tests.test_audit_log import _append, _bytes, _drop_triggers, _set_bytes

MES = [sys.executable, "-c", "from mes.cli import main; main()"]


def _exec(sql: str, params: dict | list | None = None) -> None:
    db.session.rollback()
    with db.engine.begin() as conn:
        conn.execute(text(sql), params or {})


def _nodes() -> dict[tuple[int, int], bytes]:
    db.session.rollback()
    with db.engine.connect() as conn:
        return {(lv, i): bytes(h) for lv, i, h in conn.execute(text("SELECT level, idx, hash FROM audit_tree_nodes"))}


def _dba_append(entry: dict, tag: bytes | None = None) -> int:
    """INSERT a correctly chained entry with its leaf and Merkle nodes, as a DBA would."""
    size = log.tree_size()
    prev = merkle.leaf_hash(_bytes(size - 1)).hex()
    entry = {**entry, "seq": size, "prev": prev}
    data = canonical.canonical_bytes(entry)
    leaf = merkle.leaf_hash(data)
    rows = merkle.nodes_completed_by_batch(size, [leaf], _nodes())
    _exec("INSERT INTO audit_entries (seq, at, action, actor_id, terminal_id, entity_type, entity_id, batch_id, "
          "entry_bytes, leaf_hash, tag) VALUES (:seq, :at, :action, :actor, :term, :et, :eid, :batch, :b, :leaf, :tag)",
          {"seq": size, "at": canonical.parse_at(entry["at"]),
           "action": entry["action"], "actor": entry["actor"]["id"], "term": entry["terminal"],
           "et": entry["entity"]["type"], "eid": entry["entity"]["id"], "batch": entry["batch"], "b": data,
           "leaf": leaf, "tag": tag})
    _exec("INSERT INTO audit_tree_nodes (level, idx, hash) VALUES (:l, :i, :h)",
          [{"l": lv, "i": i, "h": h} for lv, i, h in rows])
    return size


def _rechain_from(seq: int, change, keep_checkpoints: bool = False) -> None:
    """Rewrite entry ``seq`` with ``change``, re-chain every later entry and rebuild all
    hashes and Merkle nodes, then delete every checkpoint."""
    size = log.tree_size()
    prev = None
    for s in range(size):
        entry = json.loads(_bytes(s))
        if s == seq:
            change(entry)
        if s > seq:
            entry["prev"] = prev
        data = canonical.canonical_bytes(entry)
        if s >= seq:
            _set_bytes(s, data)
            _exec("UPDATE audit_entries SET leaf_hash = :h WHERE seq = :s", {"h": merkle.leaf_hash(data), "s": s})
        prev = merkle.leaf_hash(data).hex()
    tree = merkle.MerkleTree.from_leaf_hashes(merkle.leaf_hash(_bytes(s)) for s in range(size))
    _exec("DELETE FROM audit_tree_nodes")
    _exec("INSERT INTO audit_tree_nodes (level, idx, hash) VALUES (:l, :i, :h)",
          [{"l": lv, "i": i, "h": h} for lv, i, h in tree.node_rows()])
    if not keep_checkpoints:
        _exec("DELETE FROM audit_checkpoints")


@pytest.fixture
def signed_log(app: Flask, backend: str) -> str:
    """30 entries under a checkpoint of size 30, then 5 more; triggers dropped."""
    _append(30)
    log.publish_checkpoint()
    db.session.commit()
    _append(5, start=30)
    _drop_triggers(backend)
    return backend


def test_entry_tags_every_entry_carries_a_valid_tag(app: Flask) -> None:
    _append(5)
    key = log.audit_log().tag_key()
    with db.engine.connect() as conn:
        rows = list(entry_tags.iter_rows(conn))
    assert len(rows) == 5
    assert all(entry_tags.tag_ok(key, bytes(r[1]), r[3]) for r in rows)
    assert all(entry_tags.row_problem(key, r) is None for r in rows)
    path = log.audit_log().tag_key_path
    assert path is not None and path.exists() and (path.stat().st_mode & 0o077) == 0
    assert b"tag" not in bytes(rows[0][1])  # the tag is outside the hashed bytes


def test_tamper_rewrite_rechain_and_delete_checkpoints_is_caught_by_the_tags(signed_log: str) -> None:
    _rechain_from(12, lambda e: e["after"].update(value="0.00"))
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 12, result.errors
    assert "FAILED: first bad seq 12" in result.summary()
    with pytest.raises(checkpoint_guard.LogTampered):  # and the MES signs nothing over it
        log.publish_checkpoint()
    db.session.rollback()


def test_tamper_forged_esig_entry_is_a_forgery(signed_log: str) -> None:
    entry = json.loads(_bytes(34))
    entry.update(action="esig.signed", entity={"type": "batch", "id": "B-1"}, after=None,
                 signature={"signer": "u-0007", "name": "Jane Doe", "meaning": "approved",
                            "record_hash": "0" * 64, "at": entry["at"]})
    seq = _dba_append(entry, tag=os.urandom(32))
    result = verify_database()
    assert not result.ok and result.first_bad_seq == seq, result.errors
    assert any("not written by the MES" in e for e in result.errors)
    found = esig.forged_signatures_in_batch("B-1")
    assert len(found) == 1 and f"seq {seq}" in found[0] and "forged" in found[0]
    with pytest.raises(checkpoint_guard.LogTampered) as err:
        log.publish_checkpoint()
    assert err.value.first_bad_seq == seq
    db.session.rollback()


def test_signature_lookup_names_a_forged_signature(signed_log: str) -> None:
    from mes.signatures.operations import _PROVIDERS

    _PROVIDERS.setdefault("tamper_test_record", lambda rid: {"id": rid})
    entry = json.loads(_bytes(34))
    entry.update(action="esig.signed", entity={"type": "tamper_test_record", "id": "R-1"}, after=None,
                 signature={"signer": "u-0007", "name": "Jane Doe", "meaning": "approved",
                            "record_hash": esig.record_hash({"id": "R-1"}), "at": entry["at"]})
    _dba_append(entry)  # no tag at all
    checks = esig.signatures_for("tamper_test_record", "R-1")
    assert len(checks) == 1 and not checks[0].valid and checks[0].problem.startswith(esig.FORGED)


@pytest.mark.parametrize("column,value", [("batch_id", "B-OTHER"), ("actor_id", "u-9999"),
                                          ("action", "esig.signed"), ("entity_id", "B-1/0")])
def test_tamper_index_columns_are_checked_against_the_bytes(signed_log: str, column: str, value: str) -> None:
    _exec(f"UPDATE audit_entries SET {column} = :v WHERE seq = 17", {"v": value})
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 17, result.errors
    assert any(f"index column {column}" in e for e in result.errors)


def test_tamper_index_column_after_the_checkpoint_stops_signing(signed_log: str) -> None:
    _exec("UPDATE audit_entries SET batch_id = 'B-OTHER' WHERE seq = 32")
    with pytest.raises(checkpoint_guard.LogTampered) as err:
        log.publish_checkpoint()
    assert err.value.first_bad_seq == 32
    db.session.rollback()


def test_tamper_delete_the_tail_with_its_checkpoints(signed_log: str) -> None:
    log.publish_checkpoint()
    db.session.commit()  # size 35, kept beside the key too
    _exec("DELETE FROM audit_entries WHERE seq >= 28")
    _exec("DELETE FROM audit_tree_nodes WHERE level = 0 AND idx >= 28")
    _exec("DELETE FROM audit_checkpoints")
    result = verify_database_safely()
    assert not result.ok and result.first_bad_seq == 28, result.errors
    report_verification(result, source="test")  # raising the alarm cannot fail any more
    report_verification(result, source="test")
    db.session.rollback()
    alarms = db.session.execute(text("SELECT message FROM alarms WHERE kind = 'audit'")).scalars().all()
    assert len(alarms) == 1 and "first bad seq 28" in alarms[0]
    with pytest.raises(checkpoint_guard.LogTampered):  # export would sign a smaller checkpoint: refused
        log.publish_checkpoint()
    db.session.rollback()


def test_verify_cli_after_truncation_prints_one_failed_line(signed_log: str, app: Flask,
                                                            database_url: str) -> None:
    log.publish_checkpoint()
    db.session.commit()
    _exec("DELETE FROM audit_entries WHERE seq >= 33")
    env = {**os.environ, "MES_HOME": app.config["MES_HOME"], "MES_DATABASE_URL": database_url,
           "MES_SECRET_KEY": "x", "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"]}
    r = subprocess.run([*MES, "audit", "verify"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAILED: first bad seq 33"), r.stdout
    r = subprocess.run([*MES, "audit", "export", "--out", str(Path(
        app.config["MES_HOME"]) / "x")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "deleted" in r.stderr, r.stdout + r.stderr
    alarm_file = Path(app.config["MES_AUDIT_KEY_PATH"]).parent / "audit-alarms.log"
    assert "first bad seq 33" in alarm_file.read_text()


def test_watch_turns_readyz_red_within_one_poll(signed_log: str, client) -> None:
    assert checkpoint_guard.watch_log() is None
    _exec("UPDATE audit_entries SET actor_id = 'u-9999' WHERE seq = 31")
    line = checkpoint_guard.watch_log()
    assert line is not None and "first bad seq 31" in line
    assert audit_status().state == "failed"
    assert client.get("/readyz").status_code == 503
    db.session.rollback()
    assert db.session.query(Alarm).filter(Alarm.kind == "audit").count() == 1


def test_legacy_entries_are_tagged_at_upgrade_only_when_they_check_out(signed_log: str) -> None:
    from mes.audit.database_check import verifier_keys

    key = log.audit_log().tag_key()
    _exec("UPDATE audit_entries SET tag = NULL")  # as written before tags existed
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 0 and "no authentication tag" in result.errors[-1]
    vkeys = verifier_keys()
    db.session.rollback()
    with db.engine.begin() as conn:
        assert entry_tags.tag_legacy_entries(conn, key, vkeys) == "35 audit entries tagged"
    assert verify_database().ok
    # a log that does not check out against its signed checkpoint is not vouched for
    _exec("UPDATE audit_entries SET tag = NULL WHERE seq >= 20")
    _rechain_from(25, lambda e: e["after"].update(value="0.00"), keep_checkpoints=True)
    db.session.rollback()
    with db.engine.begin() as conn:
        outcome = entry_tags.tag_legacy_entries(conn, key, vkeys)
    assert outcome == "audit entries left untagged: the log is not consistent with its latest checkpoint"
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 20, result.errors  # flagged, from the first untagged


@contextlib.contextmanager
def _tag_key_moved_away() -> Iterator[log.AuditLog]:
    """The tag key file moved out of its place (and the loaded key forgotten) for the block,
    then put back."""
    al = log.audit_log()
    moved = al.tag_key_path.with_name("moved-away.key")
    al.tag_key_path.rename(moved)
    al._tag_key = None
    try:
        yield al
    finally:
        moved.rename(al.tag_key_path)
        al._tag_key = None


def test_a_missing_tag_key_is_never_silently_replaced(app: Flask) -> None:
    from mes.audit.keys import KeyFileError

    _append(2)
    with _tag_key_moved_away() as al:
        with pytest.raises(KeyFileError, match="restore the key file"):
            al.tag_key()
        assert not al.tag_key_path.exists()
    assert al.tag_key() and verify_database().ok


def test_a_missing_tag_key_is_looked_for_on_the_migrations_own_connection(app: Flask) -> None:
    """Migration 0008 adds the tag column and loads the key in one transaction: the check for
    tagged entries must read on that connection. A fresh one waited on the migration's lock
    (30 s on SQLite at every `mes init`; on PostgreSQL until a lock timeout)."""
    from mes.audit.keys import KeyFileError

    _append(2)
    db.session.rollback()
    with _tag_key_moved_away() as al, db.engine.connect() as conn:
        migration = conn.begin()
        try:  # as migration 0008 does: the table altered, its lock held, the key loaded
            conn.exec_driver_sql("ALTER TABLE audit_entries ADD COLUMN tag_probe INTEGER")
            with pytest.raises(KeyFileError, match="restore the key file"):
                al.tag_key(conn)  # the entries are tagged: seen on this connection, at once
        finally:
            migration.rollback()
        assert not al.tag_key_path.exists()
    assert al.tag_key() and verify_database().ok


def test_checkpoint_cli_refuses_to_sign_a_truncated_log(signed_log: str, app: Flask, database_url: str) -> None:
    log.publish_checkpoint()
    db.session.commit()
    _exec("DELETE FROM audit_entries WHERE seq >= 30")
    _exec("DELETE FROM audit_checkpoints")
    env = {**os.environ, "MES_HOME": app.config["MES_HOME"], "MES_DATABASE_URL": database_url,
           "MES_SECRET_KEY": "x", "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"]}
    r = subprocess.run([*MES, "audit", "checkpoint"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert r.stdout.startswith("FAILED: first bad seq 30"), r.stdout
    db.session.rollback()
    assert db.session.execute(text("SELECT count(*) FROM audit_checkpoints")).scalar() == 0
