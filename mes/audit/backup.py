"""Backup and restore that end on a signed, witnessed checkpoint and prove it before switching.

A backup first publishes a checkpoint (cosigned by the configured witnesses when they
answer), then copies the database (SQLite's online backup API, or ``pg_dump`` in custom
format) and writes a manifest beside it with that witnessed checkpoint.

A restore never touches the running database until the backup is proven (issue 17):

1. the manifest's checkpoint must verify with the pinned log verifier key and, when
   witnesses are configured, carry a valid cosignature of at least one of them (a
   manifest written by anyone else, or with an old checkpoint of its own, is refused);
2. the backup is restored into a *staging* database (a file beside the SQLite database, or
   ``<name>_rs`` on the same PostgreSQL server) and verified there in full: chain, tags,
   index columns, checkpoints, Merkle nodes, and every GMP record reconciled with the log;
3. the staged log must reproduce the manifest's checkpoint and be consistent with every
   checkpoint held outside the database (the copy beside the signing key, each witness's
   newest cosignature, the witnesses themselves when they answer). A backup *older* than
   what a witness holds would silently drop signed history: it is refused unless the
   restore names an explicit reason (``--accept-older REASON``), which is audited in the
   restored log and raised as an alarm;
4. only then the staged database replaces the running one; the replaced one is kept
   (``<file>.pre-restore-<time>``, or the database ``<name>_pre<time>``), never deleted.

Any refusal drops the staging copy, leaves the running database exactly as it was and
raises an audit alarm (Part 11 §11.10(c), Annex 11 §7).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from mes.audit import checkpoint as notes
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
    from mes.audit.database_check import witnessed_note
    from mes.witness.client import configured_witnesses, sync_witnesses

    log.publish_checkpoint()
    db.session.commit()
    if configured_witnesses():
        sync_witnesses()  # the manifest carries the witnesses' cosignatures
    cp = log.latest_checkpoint()
    url = db.engine.url.render_as_string(hide_password=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    if db.engine.dialect.name == "sqlite":
        source = sqlite3.connect(_sqlite_path(url))
        out.unlink(missing_ok=True)
        os.close(os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # the records are private
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
        "checkpoint": witnessed_note(cp) if cp else None,
        "checkpoint_size": cp.size if cp else 0,
        "root": cp.root.hex() if cp else None,
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    db.session.rollback()  # hold no SQLite write lock after the read
    return manifest


def _has_data() -> bool:
    names = inspect(db.engine).get_table_names()
    if "audit_entries" not in names:
        return False
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM audit_entries")).scalar() > 0


def _manifest_checkpoint(manifest: dict[str, Any]) -> notes.Checkpoint | None:
    """The manifest's checkpoint, verified with the pinned verifier keys and cosigned by a
    configured witness (when witnesses are configured)."""
    from mes.audit.database_check import verifier_keys
    from mes.witness.client import configured_witnesses
    from mes.witness.cosignature import cosigned_by

    text_ = manifest.get("checkpoint")
    if text_ is None:
        return None
    if not isinstance(text_, str):
        raise RestoreError("the manifest's checkpoint is not a signed note")
    try:
        cp = notes.verify_checkpoint(text_, verifier_keys())
    except notes.CheckpointError as exc:
        raise RestoreError(f"the manifest's checkpoint does not verify with the log's verifier key: {exc}") from None
    if manifest.get("root") != cp.root.hex() or manifest.get("checkpoint_size") != cp.size:
        raise RestoreError("the manifest's size or root differs from its signed checkpoint")
    witnesses = configured_witnesses()
    if witnesses and not cosigned_by(cp.text, cp.body, [w.key for w in witnesses]):
        raise RestoreError("the manifest's checkpoint is not cosigned by any configured witness")
    return cp


def _staging_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(database=str(_sqlite_path(url)) + ".restore-staging").render_as_string(hide_password=False)
    return parsed.set(database=f"{parsed.database[:50]}_rs").render_as_string(hide_password=False)


def _admin_url(url: str) -> str:
    return make_url(url).set(database="postgres").render_as_string(hide_password=False)


def _pg_admin(url: str, *statements: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(_admin_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def _stage(backup: Path, url: str, staging: str) -> None:
    """Restore ``backup`` into the staging database (replacing an earlier staging copy)."""
    if make_url(url).get_backend_name() == "sqlite":
        target = _sqlite_path(staging)
        _drop_staging(url, staging)
        shutil.copyfile(backup, target)
        os.chmod(target, 0o600)
        return
    name = make_url(staging).database
    _pg_admin(url, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    done = subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={_libpq_url(staging)}",
                           str(backup)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RestoreError(f"pg_restore failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")


def _drop_staging(url: str, staging: str) -> None:
    if make_url(url).get_backend_name() == "sqlite":
        target = _sqlite_path(staging)
        for suffix in ("", "-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        return
    _pg_admin(url, f'DROP DATABASE IF EXISTS "{make_url(staging).database}"')


def _verify_staging(staging: str, manifest_cp: notes.Checkpoint | None) -> tuple[Any, int, list[str], list[str]]:
    """Verify and reconcile the staged database with the same keys and witnesses; returns
    (its DatabaseCheck, its size, refusals, reasons it is older than a held checkpoint)."""
    from mes.app import create_app
    from mes.audit.checkpoint_guard import LogTampered, held_checkpoints
    from mes.audit.database_check import verifier_keys, verify_database_safely

    config = {k: v for k, v in current_app.config.items() if not k.startswith("SQLALCHEMY_")}
    config["SQLALCHEMY_DATABASE_URI"] = staging
    staged = create_app(config)
    refusals: list[str] = []
    older: list[str] = []
    with staged.app_context():
        try:
            result = verify_database_safely(held=False)
            if not result.ok:
                refusals.append(f"the backup's audit log does not verify: {result.summary()}")
            size = log.tree_size()
            if manifest_cp is not None:
                if size < manifest_cp.size or log.root(manifest_cp.size) != manifest_cp.root:
                    refusals.append("the backup does not reproduce the checkpoint of its manifest")
            try:
                held = held_checkpoints(verifier_keys(), ask_witnesses=True)
            except LogTampered as exc:
                held, _ = [], refusals.append(str(exc))
            for cp, where in held:
                if cp.size > size:
                    older.append(f"{where} holds a checkpoint of size {cp.size}; the backup ends at {size}")
                elif log.root(cp.size) != cp.root:
                    refusals.append(f"the backup is not consistent with the checkpoint of size {cp.size} held by {where}")
        finally:
            db.session.remove()
            db.engine.dispose()
    return result, size, refusals, older


def _switch(url: str, staging: str) -> str:
    """Put the staged database in place of the running one; keep the replaced one."""
    stamp = utcnow().strftime("%Y%m%d%H%M%S")
    db.session.remove()
    db.engine.dispose()
    if make_url(url).get_backend_name() == "sqlite":
        live, staged = _sqlite_path(url), _sqlite_path(staging)
        kept = live.with_name(f"{live.name}.pre-restore-{stamp}")
        for suffix in ("-wal", "-shm"):
            Path(str(staged) + suffix).unlink(missing_ok=True)
        if live.exists():
            source, target = sqlite3.connect(live), sqlite3.connect(kept)
            with target:
                source.backup(target)  # a consistent copy, whatever the WAL still held
            target.close()
            source.close()
            os.chmod(kept, 0o600)
            for suffix in ("-wal", "-shm"):
                Path(str(live) + suffix).unlink(missing_ok=True)
        os.replace(staged, live)
        return str(kept)
    name, staged_name = make_url(url).database, make_url(staging).database
    kept = f"{name[:40]}_pre{stamp}"
    _pg_admin(url, f'ALTER DATABASE "{name}" RENAME TO "{kept}"', f'ALTER DATABASE "{staged_name}" RENAME TO "{name}"')
    return kept


def _refuse(message: str, backup: Path) -> RestoreError:
    from mes.audit.alarms import raise_audit_alarm

    raise_audit_alarm(f"Restore of {backup.name} refused: {message}", {"backup": backup.name, "source": "mes restore"})
    return RestoreError(f"{message}; the running database was not changed")


def restore_database(backup: Path, *, force: bool = False, accept_older: str | None = None) -> str:
    """Prove ``backup`` in a staging database, then switch to it (see the module docstring);
    return a summary. ``accept_older``: the audited reason to restore a backup older than
    a checkpoint a witness holds."""
    from mes.jobs import report_verification

    db.session.rollback()  # the caller's session must not hold SQLite's write lock meanwhile
    mpath = manifest_path(backup)
    if not mpath.exists():
        raise RestoreError(f"{mpath.name} is missing: a backup without its manifest cannot be proven")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except ValueError:
        raise _refuse("the manifest is not JSON", backup) from None
    backend = db.engine.dialect.name
    if manifest.get("backend") != backend:
        raise RestoreError(f"the backup is of {manifest.get('backend')}, the configured database is {backend}")
    if _has_data() and not force:
        raise RestoreError("the configured database already holds records; restore into an empty one or pass --force")
    try:
        manifest_cp = _manifest_checkpoint(manifest)
    except RestoreError as exc:
        raise _refuse(str(exc), backup) from None
    url = db.engine.url.render_as_string(hide_password=False)
    staging = _staging_url(url)
    try:
        _stage(backup, url, staging)
        result, size, refusals, older = _verify_staging(staging, manifest_cp)
    except RestoreError as exc:
        _drop_staging(url, staging)
        raise _refuse(str(exc), backup) from None
    except Exception as exc:  # noqa: BLE001 - an unreadable backup is a refusal, not a traceback
        _drop_staging(url, staging)
        raise _refuse(f"the backup could not be restored for checking ({type(exc).__name__}: {exc})", backup) from None
    if older and not accept_older:
        refusals.append("the backup is older than signed history: " + "; ".join(older)
                        + " (restoring it would drop those entries; give --accept-older REASON to do so on record)")
    if refusals:
        _drop_staging(url, staging)
        raise _refuse(refusals[0], backup)
    kept = _switch(url, staging)
    log.audit_log().last_checkpoint = None
    after: dict[str, Any] = {"backup": backup.name, "checkpoint_size": manifest.get("checkpoint_size"),
                             "root": manifest.get("root"), "entries": size, "replaced": kept}
    if older:
        after["older_than"] = older
    log.record(log.Actor.system("restore"), "system.restored", ("database", backend), after=after,
               reason=accept_older if older else None)
    db.session.commit()
    if older:
        from mes.audit.alarms import raise_audit_alarm

        raise_audit_alarm(f"An older backup {backup.name} was restored on purpose: {accept_older}",
                          {"older_than": older, "source": "mes restore"})
    report_verification(result, source="mes restore")
    return (f"restored {backup.name}: {result.entries} entries verified and records reconciled in staging; "
            f"checkpoint size {manifest.get('checkpoint_size')} root {manifest.get('root')} reproduced; "
            f"the replaced database is kept as {kept}")
