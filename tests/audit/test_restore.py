"""Issue 17: restore is safe. A backup is proven in a staging database (verified, records
reconciled, its manifest's checkpoint signed by the log and cosigned by a configured
witness, consistent with what the witnesses hold) before it replaces the running database;
a refused restore leaves the running database untouched and raises an alarm. The witness
runs as a separate process. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mes.audit import log
from mes.audit.backup import RestoreError, backup_database, manifest_path, restore_database
from mes.audit.database_check import verify_database
from mes.db import db
from mes.materials import operations as mat
from mes.users.models import Alarm
from mes.witness import client
from tests.audit.test_witness import WitnessProcess, _use, start_witness
from tests.test_audit_log import _append

QA = log.Actor("qa1", "Q. A.", "qa")


@pytest.fixture
def witnessed(app: Flask, tmp_path: Path, backend: str) -> Iterator[WitnessProcess]:
    """A witness process configured for the MES; PostgreSQL databases a restore keeps are
    dropped afterwards."""
    w = start_witness(tmp_path / "witness", log.audit_log().vkey())
    _use(app, w)
    name = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database
    yield w
    client.stop_background(app)
    w.proc.terminate()
    w.proc.wait(timeout=30)
    if backend == "postgresql":
        db.session.remove()
        db.engine.dispose()
        admin = create_engine(make_url(app.config["SQLALCHEMY_DATABASE_URI"]).set(database="postgres"),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for (kept,) in conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                                        {"p": f"{name[:40]}_pre%"}).all():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{kept}"')
        admin.dispose()


def _lot() -> str:
    mat.create_item(QA, "RM-RESTORE", "Restore test powder", "g", "raw_material")
    lot = mat.receive_lot(QA, "RM-RESTORE", [mat.ContainerIn("500", "g")], supplier="ACME")
    db.session.commit()
    return lot.id


def _checkpoint_witnessed() -> None:
    log.publish_checkpoint()
    db.session.commit()
    client.sync_witnesses()


def _fingerprint() -> tuple:
    """What a restore must not change when it refuses."""
    db.session.rollback()
    with db.engine.connect() as conn:
        return (conn.execute(text("SELECT seq, entry_bytes FROM audit_entries ORDER BY seq")).all(),
                conn.execute(text("SELECT id, status, supplier FROM material_lots ORDER BY id")).all(),
                conn.execute(text("SELECT count(*) FROM audit_checkpoints")).scalar())


def _dba(sql: str, params: dict | None = None, backend: str = "sqlite") -> None:
    db.session.rollback()
    with db.engine.begin() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("ALTER TABLE material_lots DISABLE TRIGGER USER")
        conn.execute(text(sql), params or {})
        if backend == "postgresql":
            conn.exec_driver_sql("ALTER TABLE material_lots ENABLE TRIGGER USER")


def _alarms() -> list[str]:
    db.session.rollback()
    return [a.message for a in db.session.query(Alarm).filter(Alarm.kind == "audit")]


def test_an_honest_witnessed_backup_is_restored_through_staging(app: Flask, witnessed: WitnessProcess,
                                                                tmp_path: Path) -> None:
    lot = _lot()
    _append(5)
    _checkpoint_witnessed()
    out = tmp_path / "honest.bak"
    manifest = backup_database(out)
    assert f"— {witnessed.vkey.split('+')[0]} " in manifest["checkpoint"]  # cosigned
    summary = restore_database(out, force=True)
    assert "reproduced" in summary and "reconciled" in summary
    assert mat.get_lot(lot).status == "quarantine"
    assert verify_database().ok


def test_a_tampered_backup_is_refused_and_the_running_database_is_unchanged(
        app: Flask, witnessed: WitnessProcess, tmp_path: Path, backend: str) -> None:
    lot = _lot()
    _checkpoint_witnessed()
    # the DBA sets the quarantined lot to released, takes a backup, then puts the row back
    _dba("UPDATE material_lots SET status = 'released' WHERE id = :id", {"id": lot}, backend)
    out = tmp_path / "tampered.bak"
    backup_database(out)
    _dba("UPDATE material_lots SET status = 'quarantine' WHERE id = :id", {"id": lot}, backend)
    before = _fingerprint()
    with pytest.raises(RestoreError) as caught:
        restore_database(out, force=True)
    assert lot in str(caught.value) and "not changed" in str(caught.value)
    assert _fingerprint() == before
    assert any("Restore of tampered.bak refused" in m and lot in m for m in _alarms())
    assert verify_database().ok


def test_a_forged_manifest_is_refused(app: Flask, witnessed: WitnessProcess, tmp_path: Path) -> None:
    _append(4)
    _checkpoint_witnessed()
    out = tmp_path / "forged.bak"
    backup_database(out)
    manifest = json.loads(manifest_path(out).read_text())
    before = _fingerprint()
    # the log's own (genuine) note without the witness's cosignature: not accepted
    manifest["checkpoint"] = log.latest_checkpoint().note
    manifest_path(out).write_text(json.dumps(manifest))
    with pytest.raises(RestoreError, match="not cosigned by any configured witness"):
        restore_database(out, force=True)
    # a checkpoint of its own, with a root the log never signed
    manifest["checkpoint"] = manifest["checkpoint"].replace(manifest["checkpoint"].split("\n")[2], "A" * 43 + "=")
    manifest_path(out).write_text(json.dumps(manifest))
    with pytest.raises(RestoreError, match="does not verify"):
        restore_database(out, force=True)
    assert _fingerprint() == before
    assert len([m for m in _alarms() if "forged.bak refused" in m]) == 2


def test_an_older_honest_backup_is_refused_unless_restored_on_record(
        app: Flask, witnessed: WitnessProcess, tmp_path: Path) -> None:
    _append(4)
    _checkpoint_witnessed()
    out = tmp_path / "older.bak"
    backup_database(out)
    _append(3, start=4)
    _checkpoint_witnessed()  # the witness now holds a newer checkpoint
    before = _fingerprint()
    with pytest.raises(RestoreError, match="older than signed history"):
        restore_database(out, force=True)
    assert _fingerprint() == before
    summary = restore_database(out, force=True, accept_older="server lost; CAPA-77 approves the rollback")
    assert "reproduced" in summary
    db.session.rollback()
    entry = json.loads(db.session.execute(text("SELECT entry_bytes FROM audit_entries ORDER BY seq DESC LIMIT 1"))
                       .scalar_one())
    assert entry["action"] == "system.restored" and entry["reason"].startswith("server lost")
    assert entry["after"]["older_than"]
    assert any("older backup older.bak was restored on purpose" in m for m in _alarms())
