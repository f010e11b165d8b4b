"""Alarms about the audit log itself, stored where raising them cannot fail.

An ordinary alarm is an audited record: raising it appends an entry to the log. When the
log is what is broken (its tail deleted, its nodes rewritten), that append is exactly what
fails (a UNIQUE collision on the re-used seq), and the alarm was lost in a traceback. So an
audit alarm is written twice, without touching the log:

* one JSON line in ``audit-alarms.log`` beside the signing key (outside the database: a
  DBA cannot remove it), and
* one ``alarms`` row inserted on its own connection, with no audit entry (it reports that
  the log cannot be trusted; QA acknowledges it like any other alarm).

The same open alarm (same message) is not raised twice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from mes.db import db, utcnow

logger = logging.getLogger("mes.audit")

ALARM_FILE = "audit-alarms.log"


def alarm_file() -> Path:
    from mes.audit.log import audit_log

    key_path = audit_log().key_path
    assert key_path is not None
    return key_path.parent / ALARM_FILE


def raise_audit_alarm(message: str, details: dict[str, Any] | None = None) -> bool:
    """Raise one audit alarm (file line and ``alarms`` row); never raises itself. Returns
    whether a new alarm was raised (False when the same one is already open)."""
    from mes.users.models import Alarm

    now = utcnow()
    try:
        db.session.rollback()  # our session must not hold the SQLite write lock
        with db.engine.begin() as conn:
            table = Alarm.__table__
            open_same = conn.execute(select(table.c.id).where(
                table.c.kind == "audit", table.c.message == message, table.c.acknowledged_at.is_(None))).first()
            if open_same is not None:
                return False
            conn.execute(insert(table).values(kind="audit", severity="high", message=message, details=details,
                                              raised_at=now))
    except Exception:  # noqa: BLE001 - the file line below still records it
        logger.exception("the audit alarm could not be stored in the database")
    try:
        path = alarm_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"at": now.isoformat(), "message": message, "details": details}) + "\n")
    except Exception:  # noqa: BLE001
        logger.exception("the audit alarm could not be written to its file")
    logger.error("audit alarm: %s", message)
    return True
