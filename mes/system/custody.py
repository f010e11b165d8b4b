"""Key custody and refusal triggers, as ``mes check`` reports them (issue 17).

What is checked, each line ``ok``, ``warn`` or ``FAIL``:

* with a PKCS#11 token (``MES_PKCS11_MODULE``): the PIN file's mode and each MES key in the
  token, present, SENSITIVE and not EXTRACTABLE (FAIL otherwise), and key files left on disk
  (warn); without one:
* the checkpoint signing key and the entry tag key: present, a regular file owned by the
  service user, no group or other permission bits (FAIL otherwise); kept outside
  ``MES_HOME`` (warn when inside: in production they live in a path only the service user
  can read, configured by ``MES_AUDIT_KEY_PATH`` / ``MES_AUDIT_TAG_KEY_PATH``);
* the folder holding the keys is not writable by group or others (FAIL);
* the log's verifier key is pinned in ``MES_AUDIT_VERIFIER_KEYS`` (warn when not) and the
  signing key's public key is one of the pinned ones (FAIL: a swapped key);
* witnesses are configured (warn when not: the log is then anchored only beside the key);
* the SQLite database file and its WAL/SHM files have no group or other bits (FAIL);
* every refusal trigger the migrations install is present and enabled (FAIL, named).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import make_url

from mes.db import db
from mes.system import token as hsm

#: tables whose rows are never updated nor deleted / never deleted (the migrations' lists)
IMMUTABLE = ("audit_entries", "audit_tree_nodes", "audit_checkpoints", "audit_reviews", "audit_cosignatures",
             "step_requests", "material_consumptions", "material_consumption_reversals", "material_genealogy",
             "equipment_cleanings", "equipment_calibrations", "oee_state_intervals", "oee_counter_samples",
             "oee_downtime_reasons", "oee_ideal_rates", "oee_reasons", "oee_line_calendars", "oee_shift_closures")
UNDELETABLE = ("users", "user_roles", "password_history", "terminals", "user_sessions", "api_tokens", "alarms",
               "outbox_events", "material_items", "material_lots", "material_containers", "material_holds",
               "recipe_versions", "work_orders", "batches", "batch_steps", "step_records", "deviations", "equipment",
               "integration_endpoints", "integration_cursors", "integration_deliveries")

Line = tuple[str, str]  # ("ok" | "warn" | "FAIL", sentence)


def _private_file(what: str, path: Path) -> list[Line]:
    if not path.exists():
        return [("FAIL", f"{what} {path} is missing: run `mes init` or restore it")]
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        return [("FAIL", f"{what} {path} is not a regular file")]
    out: list[Line] = []
    if st.st_mode & 0o077:
        out.append(("FAIL", f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: chmod 600 it"))
    if st.st_uid != os.geteuid():
        out.append(("FAIL", f"{what} {path} is owned by uid {st.st_uid}, not the service user ({os.geteuid()})"))
    return out or [("ok", f"{what} {path} (mode {stat.S_IMODE(st.st_mode):04o})")]


def _inside(path: Path, home: Path) -> bool:
    try:
        path.resolve().relative_to(home.resolve())
        return True
    except ValueError:
        return False


def _key_paths(app: Flask) -> tuple[Path, Path]:
    """The signing and tag key files the app's audit log uses (``AuditLog.init_app`` derived them)."""
    al = app.extensions["mes_audit"]
    return al.key_path, al.tag_key_path


def key_lines(app: Flask) -> list[Line]:
    sign, tag = _key_paths(app)
    token = app.extensions["mes_audit"].token
    if token is not None:  # key files left on disk are copies waiting to be stolen
        return hsm.custody_lines(token) + [
            ("warn", f"{path} is not used (the keys are in the token): remove it once nothing signed with it needs it")
            for path in (sign, tag) if path.exists()]
    home = Path(app.config["MES_HOME"])
    out = _private_file("audit signing key", sign) + (_private_file("audit tag key", tag) if tag.exists() else [])
    for folder in sorted({sign.parent, tag.parent}):
        if folder.exists() and folder.stat().st_mode & 0o022:
            out.append(("FAIL", f"key folder {folder} is writable by group or others: chmod go-w it"))
    for what, path in (("signing key", sign), ("tag key", tag)):
        if _inside(path, home):
            out.append(("warn", f"audit {what} is inside MES_HOME ({path}); in production keep it in a path only "
                                "the service user reads (see deploy/OPERATIONS.md, key custody)"))
    return out


def pinned_lines(app: Flask) -> list[Line]:
    from mes.audit.log import audit_log
    from mes.witness.client import configured_witnesses

    out: list[Line] = []
    pinned = (app.config.get("MES_AUDIT_VERIFIER_KEYS") or "").split()
    if not pinned:
        out.append(("warn", "MES_AUDIT_VERIFIER_KEYS is not set: verifier keys are read beside the signing key; "
                            "pin the log's verifier key in the configuration"))
    elif audit_log().has_signing_key:
        current = audit_log().vkey()
        if current not in pinned:
            out.append(("FAIL", f"the signing key's verifier key {current} is not one of MES_AUDIT_VERIFIER_KEYS: "
                                "the key file was replaced"))
        else:
            out.append(("ok", "the log's verifier key is pinned in MES_AUDIT_VERIFIER_KEYS"))
    try:
        witnesses = configured_witnesses(app.config)
    except ValueError as exc:
        return [*out, ("FAIL", str(exc))]
    if witnesses:
        out.append(("ok", f"{len(witnesses)} witness(es) pinned: {', '.join(w.key.name for w in witnesses)}"))
    else:
        out.append(("warn", "no witnesses configured (MES_AUDIT_WITNESSES): the log is anchored only beside the key"))
    return out


def database_file_lines(app: Flask) -> list[Line]:
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "sqlite" or not url.database:
        return []
    out: list[Line] = []
    for suffix in ("", "-wal", "-shm"):
        path = Path(url.database + suffix)
        if path.exists() and path.stat().st_mode & 0o077:
            out.append(("FAIL", f"database file {path} has mode {stat.S_IMODE(path.stat().st_mode):04o}: chmod 600 it"))
    return out or [("ok", f"database file {url.database} is readable by the service user only")]


def missing_triggers() -> list[str]:
    """``table: trigger`` for every refusal trigger that is missing or disabled."""
    with db.engine.connect() as conn:
        tables = set(conn.dialect.get_table_names(conn))
        if conn.dialect.name == "postgresql":
            rows = conn.execute(text("SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                     "WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'")).all()
        else:
            rows = conn.execute(text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")).all()
    present = {(t, n) for t, n in rows}
    pg = db.engine.dialect.name == "postgresql"
    out = []
    for table in IMMUTABLE + UNDELETABLE:
        if table not in tables:
            continue
        if pg:
            wanted = [f"{table}_{'immutable' if table in IMMUTABLE else 'no_delete'}", f"{table}_no_truncate"]
        else:
            wanted = [f"{table}_no_update", f"{table}_no_delete"] if table in IMMUTABLE else [f"{table}_no_delete"]
        out.extend(f"{table}: {name}" for name in wanted if (table, name) not in present)
    return out


def custody_report(app: Flask) -> list[Line]:
    """Every line ``mes check`` prints about keys, the database file and the triggers."""
    out = key_lines(app) + pinned_lines(app) + database_file_lines(app)
    missing = missing_triggers()
    if missing:
        out.append(("FAIL", f"{len(missing)} refusal trigger(s) missing or disabled: {', '.join(missing[:10])}"
                            + (" …" if len(missing) > 10 else "")))
    else:
        out.append(("ok", "every refusal trigger is installed and enabled"))
    return out
