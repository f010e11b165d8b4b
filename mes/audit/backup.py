"""Backup and restore that end on a signed checkpoint and prove it after restoring.

A backup first publishes a checkpoint, then copies the database (SQLite's online backup
API, or ``pg_dump`` in custom format) and writes a manifest beside it with that
checkpoint. A restore refuses to overwrite a database that holds data (unless forced),
restores, re-verifies the whole log and checks that the restored log reproduces the
manifest's checkpoint root (Part 11 §11.10(c), Annex 11 §7).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from mes.audit import log
from mes.db import db, utcnow


class RestoreError(RuntimeError):
    """The backup cannot be restored here, or the restored log does not verify."""


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + ".manifest.json")


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database:
        raise RestoreError("in-memory SQLite databases cannot be backed up")
    return Path(database)


def backup_database(out: Path) -> dict[str, Any]:
    """Checkpoint, copy the database to ``out``, and write the manifest; return it."""
    log.publish_checkpoint()
    db.session.commit()
    cp = log.latest_checkpoint()
    url = db.engine.url.render_as_string(hide_password=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    if db.engine.dialect.name == "sqlite":
        source = sqlite3.connect(_sqlite_path(url))
        target = sqlite3.connect(out)
        with target:
            source.backup(target)
        target.close()
        source.close()
    else:
        subprocess.run(["pg_dump", "--format=custom", "--no-owner", f"--file={out}", f"--dbname={_libpq_url(url)}"],
                       check=True, capture_output=True, text=True)
    manifest = {
        "format": "open-mes backup v1",
        "backend": db.engine.dialect.name,
        "created_at": utcnow().isoformat(),
        "entries": log.tree_size(),
        "checkpoint": cp.note if cp else None,
        "checkpoint_size": cp.size if cp else 0,
        "root": cp.root.hex() if cp else None,
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _has_data() -> bool:
    names = inspect(db.engine).get_table_names()
    if "audit_entries" not in names:
        return False
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM audit_entries")).scalar() > 0


def restore_database(backup: Path, *, force: bool = False) -> str:
    """Restore ``backup`` into the configured database and prove the log; return a summary."""
    from mes.audit.database_check import verify_database
    from mes.jobs import report_verification

    mpath = manifest_path(backup)
    if not mpath.exists():
        raise RestoreError(f"{mpath.name} is missing: a backup without its manifest cannot be proven")
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    backend = db.engine.dialect.name
    if manifest.get("backend") != backend:
        raise RestoreError(f"the backup is of {manifest.get('backend')}, the configured database is {backend}")
    if _has_data() and not force:
        raise RestoreError("the configured database already holds records; restore into an empty one or pass --force")
    url = db.engine.url.render_as_string(hide_password=False)
    db.session.remove()
    db.engine.dispose()
    if backend == "sqlite":
        target = _sqlite_path(url)
        for suffix in ("-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        shutil.copyfile(backup, target)
    else:
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        db.engine.dispose()
        done = subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={_libpq_url(url)}", str(backup)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RestoreError(f"pg_restore failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
    result = verify_database()
    report_verification(result, source="mes restore")
    if not result.ok:
        raise RestoreError(f"the restored audit log does not verify: {result.summary()}")
    cp = log.latest_checkpoint()
    if manifest["checkpoint"] is not None and (cp is None or cp.note != manifest["checkpoint"]
                                               or log.root(cp.size).hex() != manifest["root"]):
        raise RestoreError("the restored log does not reproduce the checkpoint recorded in the manifest")
    log.record(log.Actor.system("restore"), "system.restored", ("database", backend),
               after={"backup": backup.name, "checkpoint_size": manifest["checkpoint_size"], "root": manifest["root"]})
    db.session.commit()
    return (f"restored {backup.name}: {result.entries} entries verified; checkpoint size "
            f"{manifest['checkpoint_size']} root {manifest['root']} reproduced")
