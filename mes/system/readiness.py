"""Readiness checks: database reachable and writable (a committed write probe, and free space
on the SQLite database's disk, see :mod:`mes.system.storage`), schema at the migration head,
audit log verified.

The audit verification runs once at start-up in a background thread (a million entries
take seconds) and then on a schedule; until the first run finishes ``/readyz`` says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from sqlalchemy import text

from mes.db import db, utcnow

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration pointing at ``migrations/`` (the only way the schema is made)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision() -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass
class AuditStatus:
    """Result of the latest audit-log verification in this process."""

    state: str = "pending"  # pending | running | ok | failed
    detail: str = "not verified yet"
    checked_at: datetime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.state == "ok", "state": self.state, "detail": self.detail,
                "checked_at": self.checked_at.isoformat() if self.checked_at else None}


def audit_status() -> AuditStatus:
    return current_app.extensions.setdefault("mes_audit_status", AuditStatus())


def run_checks() -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        db.session.rollback()
        checks["database"] = {"ok": False, "detail": type(exc).__name__}
        return checks
    from mes.system.storage import disk_check

    checks["disk"] = disk_check()
    head, current = head_revision(), current_revision()
    checks["migrations"] = {"ok": head == current, "current": current, "head": head}
    checks["audit"] = audit_status().as_json()
    return checks


def record_audit_result(ok: bool, detail: str) -> None:
    status = audit_status()
    status.state = "ok" if ok else "failed"
    status.detail = detail
    status.checked_at = utcnow()
