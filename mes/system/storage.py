"""The database disk: a full disk refused with a clear problem, a write probe for ``/readyz``,
and an alarm when free space falls below ``MES_DISK_FREE_MARGIN_MB``.

A full disk used to surface as a generic 500 while ``/readyz`` (``SELECT 1``) stayed green:
SQLite's WAL reuses space it already holds, so reads and even some writes go on after the
file system shows 100 %. Here:

* :func:`disk_full_error` recognises the database's disk-full error (SQLite ``SQLITE_FULL``,
  PostgreSQL SQLSTATE 53100) wherever it is raised, and the app answers it with
  :class:`DiskFull` (507, "the database disk is full; nothing was recorded"); the transaction
  was rolled back whole (SQLite rolls it back itself; the session is rolled back too);
* :func:`write_probe` commits a one-page change (SQLite: the header's ``user_version``,
  which nothing else uses; PostgreSQL: a transaction id), so a database that cannot write is
  not ready, and :func:`free_bytes` below :data:`FULL_BELOW_BYTES` is not ready either;
* :func:`watch_free_space` (background job and ``/readyz``) raises one ``storage`` alarm
  while free space is below the configured margin, before the disk is full.

Nothing here needs a restart: when space returns the next write and the next probe succeed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.engine import make_url

from mes.db import connection_lost, wrapped_errors
from mes.errors import MESError

logger = logging.getLogger("mes.storage")

DISK_FULL_DETAIL = "The database disk is full; nothing was recorded. Tell the system administrator."
#: SQLite's primary result code for "database or disk is full"
SQLITE_FULL = 13
#: PostgreSQL's SQLSTATE disk_full (class 53, insufficient resources)
PG_DISK_FULL = "53100"
#: Free space under which the database disk counts as full (not ready), whatever the margin.
FULL_BELOW_BYTES = 256 * 1024
#: The write probe runs at most this often per process (a load balancer polls every few seconds).
PROBE_EVERY_S = 2.0
#: How long the SQLite probe waits for the write lock before it says "busy" (not a failure).
PROBE_LOCK_TIMEOUT_MS = 2000

STORAGE_ALARM_KIND = "storage"


class DiskFull(MESError):
    """The database refused a write because its disk is full."""

    status, slug, title = 507, "disk-full", "The database disk is full"


class DatabaseUnavailable(MESError):
    """The database connection was lost during the request (a restart, a network cut)."""

    status, slug, title = 503, "database-unavailable", "The database is not reachable"


DATABASE_LOST_DETAIL = ("The connection to the database was lost; send the request again (with the same "
                        "Idempotency-Key it is recorded once).")


def database_problem(exc: BaseException) -> MESError | None:
    """The problem an unexpected database error means to the caller: a full disk (507), a
    lost connection (503, retry), or None (a genuine internal error)."""
    full = disk_full_error(exc)
    if full is not None:
        return full
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated or connection_lost(exc):
        return DatabaseUnavailable(DATABASE_LOST_DETAIL, retry_after=1)
    return None


def disk_full_error(exc: BaseException) -> DiskFull | None:
    """A :class:`DiskFull` when ``exc`` (or an exception it wraps) is the database's
    disk-full error, else None."""
    if any(_is_disk_full(current) for current in wrapped_errors(exc)):
        return DiskFull(DISK_FULL_DETAIL)
    return None


def _is_disk_full(exc: BaseException) -> bool:
    if getattr(exc, "sqlite_errorcode", None) is not None:
        return (exc.sqlite_errorcode & 0xFF) == SQLITE_FULL  # type: ignore[attr-defined]
    if getattr(exc, "sqlstate", None) == PG_DISK_FULL or getattr(exc, "pgcode", None) == PG_DISK_FULL:
        return True
    return isinstance(exc, OSError) and exc.errno == 28  # ENOSPC from a file the request writes


def database_directory(url: str | None = None) -> Path | None:
    """The directory of the SQLite database file (None for a server database or in-memory)."""
    url = url or current_app.config["SQLALCHEMY_DATABASE_URI"]
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve().parent


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class _ProbeCache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = -1e9
        self.result: dict[str, Any] = {}


def _probe_cache() -> _ProbeCache:
    return current_app.extensions.setdefault("mes_write_probe", _ProbeCache())


def write_probe() -> dict[str, Any]:
    """Commit a one-page change to the database: ``{"ok": bool, "detail": ...}``. Cached
    for :data:`PROBE_EVERY_S`; on SQLite a busy write lock is reported as ok (someone is
    writing, so the database can write) rather than waited for."""
    from mes.db import db

    cache = _probe_cache()
    with cache.lock:
        if time.monotonic() - cache.at < PROBE_EVERY_S:
            return cache.result
        try:
            with db.engine.connect() as conn:
                driver = conn.connection.driver_connection
                if conn.dialect.name == "sqlite":
                    result = _sqlite_probe(driver)
                else:
                    conn.exec_driver_sql("SELECT txid_current()")
                    conn.commit()
                    result = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - any failure means the database cannot write
            full = disk_full_error(exc)
            result = {"ok": False, "detail": "disk full" if full else type(exc).__name__}
        cache.at, cache.result = time.monotonic(), result
        return result


def _sqlite_probe(driver: Any) -> dict[str, Any]:
    import sqlite3

    driver.execute(f"PRAGMA busy_timeout = {PROBE_LOCK_TIMEOUT_MS}")
    try:
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == 5:  # SQLITE_BUSY: a writer holds the lock, writing
                return {"ok": True, "detail": "busy"}
            raise
        try:
            version = driver.execute("PRAGMA user_version").fetchone()[0]
            driver.execute(f"PRAGMA user_version = {1 - (version & 1)}")
            driver.execute("COMMIT")
        except BaseException:
            if driver.in_transaction:
                driver.execute("ROLLBACK")
            raise
        return {"ok": True}
    finally:
        from mes.db import SQLITE_BUSY_TIMEOUT_MS

        driver.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


def margin_bytes() -> int:
    return int(current_app.config.get("MES_DISK_FREE_MARGIN_MB", 1024)) * 1024 * 1024


def disk_check() -> dict[str, Any]:
    """The ``disk`` readiness check: write probe, free space against the floor and the margin
    (below the margin: still ready, with the alarm raised)."""
    check: dict[str, Any] = {"write_probe": write_probe()}
    ok = bool(check["write_probe"]["ok"])
    directory = database_directory()
    if directory is not None:
        free = free_bytes(directory)
        margin = margin_bytes()
        check.update(free_bytes=free, margin_bytes=margin, below_margin=free < margin)
        if free < FULL_BELOW_BYTES:
            ok = False
        if free < margin:
            watch_free_space(free)
    check["ok"] = ok
    return check


def watch_free_space(free: int | None = None) -> bool:
    """Raise the ``storage`` alarm when the database disk's free space is below the margin
    and no such alarm is open; returns whether one was raised. Never raises."""
    from mes.audit.log import Actor
    from mes.db import db
    from mes.users.models import Alarm
    from mes.users.operations import raise_alarm

    directory = database_directory()
    if directory is None:
        return False
    try:
        free = free_bytes(directory) if free is None else free
        margin = margin_bytes()
        if free >= margin:
            return False
        if db.session.execute(select(Alarm.id).where(Alarm.kind == STORAGE_ALARM_KIND,
                                                     Alarm.acknowledged_at.is_(None))).first() is not None:
            db.session.rollback()
            return False
        message = (f"The database disk ({directory}) has {free // (1024 * 1024)} MB free, below the margin of "
                   f"{margin // (1024 * 1024)} MB (MES_DISK_FREE_MARGIN_MB): free space before it is full")
        raise_alarm(Actor.system("storage-watch"), STORAGE_ALARM_KIND, message,
                    {"directory": str(directory), "free_bytes": free, "margin_bytes": margin})
        logger.warning("database disk below its free-space margin", extra={"free_bytes": free, "margin": margin})
        return True
    except Exception:  # noqa: BLE001 - the disk may be too full to record even the alarm
        db.session.rollback()
        logger.exception("the free-space alarm could not be raised")
        return False
