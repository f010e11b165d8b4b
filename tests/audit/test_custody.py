"""Issue 17, key custody: ``mes check`` reports key and database file permissions, pinned
verifier keys and missing refusal triggers; the SQLite database file is created 0600."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import make_url

from mes.audit import log
from mes.db import db
from mes.system.custody import custody_report, missing_triggers
from tests.audit.factory import signing_key, vkey
from tests.test_audit_log import _append

MES = [sys.executable, "-c", "from mes.cli import main; main()"]


def _levels(app: Flask) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for level, line in custody_report(app):
        out.setdefault(level, []).append(line)
    return out


def test_a_new_sqlite_database_file_is_private(tmp_path: Path) -> None:
    from mes.app import create_app
    from tests.conftest import base_config

    path = tmp_path / "fresh.sqlite3"
    app = create_app(base_config(tmp_path, f"sqlite:///{path}"))
    with app.app_context():
        with db.engine.connect() as conn:
            conn.execute(text("CREATE TABLE t (x)"))
        db.engine.dispose()
    assert path.stat().st_mode & 0o777 == 0o600


def test_check_reports_key_modes_pins_and_triggers(app: Flask, backend: str) -> None:
    _append(2)
    al = log.audit_log()
    al.signing_key()  # `mes init` makes it; the suite's log signs on first use
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if backend == "sqlite":  # the suite copies its database from a template: as `mes` makes it, 0600
        for suffix in ("", "-wal", "-shm"):
            if Path(url.database + suffix).exists():
                os.chmod(url.database + suffix, 0o600)
    levels = _levels(app)
    assert "FAIL" not in levels, levels.get("FAIL")
    assert any("every refusal trigger" in line for line in levels["ok"])
    assert any("MES_AUDIT_VERIFIER_KEYS is not set" in line for line in levels["warn"])
    os.chmod(al.key_path, 0o644)
    os.chmod(al.tag_key_path, 0o640)
    fails = _levels(app)["FAIL"]
    assert any("audit signing key" in f and "0644" in f for f in fails)
    assert any("audit tag key" in f and "0640" in f for f in fails)
    os.chmod(al.key_path, 0o600)
    os.chmod(al.tag_key_path, 0o600)
    app.config["MES_AUDIT_VERIFIER_KEYS"] = "other.example/mes/audit+01020304+AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
    assert any("not one of MES_AUDIT_VERIFIER_KEYS" in f for f in _levels(app)["FAIL"])
    app.config["MES_AUDIT_VERIFIER_KEYS"] = al.vkey()
    assert "FAIL" not in _levels(app)
    db.session.rollback()
    with db.engine.begin() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("ALTER TABLE step_records DISABLE TRIGGER step_records_no_delete")
        else:
            conn.exec_driver_sql("DROP TRIGGER step_records_no_delete")
    assert missing_triggers() == ["step_records: step_records_no_delete"]
    assert any("step_records_no_delete" in f for f in _levels(app)["FAIL"])
    if backend == "sqlite":
        os.chmod(url.database, 0o644)
        assert any("database file" in f and "0644" in f for f in _levels(app)["FAIL"])


def test_pinned_verifier_keys_replace_the_keys_beside_the_database(app: Flask) -> None:
    from mes.audit.database_check import verifier_keys, verify_database

    _append(3)
    log.publish_checkpoint()
    db.session.commit()
    app.config["MES_AUDIT_VERIFIER_KEYS"] = log.audit_log().vkey()
    assert [k.text for k in verifier_keys()] == [log.audit_log().vkey()]
    assert verify_database().ok
    app.config["MES_AUDIT_VERIFIER_KEYS"] = vkey(signing_key(9), log.audit_log().key_name)  # not the key beside the db
    assert not verify_database().ok


def test_mes_check_cli_fails_on_a_readable_key(app: Flask, backend: str) -> None:
    _append(1)
    log.audit_log().signing_key()
    db.session.rollback()
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    for suffix in ("", "-wal", "-shm"):
        if backend == "sqlite" and Path(url.database + suffix).exists():
            os.chmod(url.database + suffix, 0o600)
    env = {**os.environ, "MES_HOME": str(app.config["MES_HOME"]), "MES_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "MES_AUDIT_KEY_PATH": str(app.config["MES_AUDIT_KEY_PATH"]),
           "MES_AUDIT_TAG_KEY_PATH": str(log.audit_log().tag_key_path), "MES_SECRET_KEY": "x"}
    r = subprocess.run([*MES, "check"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "ok   every refusal trigger" in r.stdout, r.stdout + r.stderr
    os.chmod(app.config["MES_AUDIT_KEY_PATH"], 0o644)
    r = subprocess.run([*MES, "check"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "FAIL audit signing key" in r.stdout and "chmod 600" in r.stdout, r.stdout + r.stderr
