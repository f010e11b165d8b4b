"""Background jobs of each server process.

The audit watch runs in a process of its own beside the worker (:mod:`mes.audit.watcher`,
:func:`audit_watch_loop`): it verifies the audit log at start-up and on a schedule, publishes
a checkpoint when the log nears one (woken after the commit that brought it 800 entries or
45 s past the last) or when entries have waited 60 s without one, and compares the tables
with the log. A thread in the worker wakes it and closes the OEE shifts that are due
(``MES_OEE_CLOSE_SECONDS``), so ``mes.oee.shift_closed.v1`` goes out without anyone calling
the endpoint, and watches the integration backlog and the free disk space."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Flask

from mes.audit.log import Actor
from mes.db import db
from mes.errors import Conflict

logger = logging.getLogger("mes.jobs")
CHECKPOINT_POLL_SECONDS = 15
#: How often each server compares every GMP table with the log (the new entries are verified
#: at every poll). A record edited in the database directly is found within this, inside one
#: checkpoint interval (60 s).
TABLES_COMPARE_SECONDS = 45


def report_verification(result, source: str) -> None:
    """Record a verification result for /readyz; on failure raise an alarm for QA and admin
    (stored where raising it cannot fail: :mod:`mes.audit.alarms`)."""
    from mes.audit.alarms import raise_audit_alarm
    from mes.system.readiness import record_audit_result

    record_audit_result(result.ok, result.summary())
    if result.ok:
        logger.info("audit log verified", extra={"source": source, "entries": result.entries})
        return
    logger.error("audit log verification failed", extra={"source": source, "detail": result.summary()})
    raise_audit_alarm(f"Audit log verification failed: {result.summary()}",
                      {"first_bad_seq": result.first_bad_seq, "source": source})


def verify_now(app: Flask, source: str) -> None:
    from mes.audit.database_check import verify_database_safely
    from mes.system.readiness import audit_status

    with app.app_context():
        status = audit_status()
        if not status.lock.acquire(blocking=False):
            return
        try:
            status.state = "running" if status.state == "pending" else status.state
            report_verification(verify_database_safely(workers=1), source)
        except Exception:  # noqa: BLE001 - a job must not die; the failure is reported
            logger.exception("audit verification could not run")
            db.session.rollback()
        finally:
            db.session.remove()
            status.lock.release()


OEE_CLOSER = Actor.system("oee-shift-closing")
"""Who closes shifts on schedule (the audit entry and the event name it)."""


def watch_integration(app: Flask) -> list[str]:
    """Alarm on each integration endpoint whose oldest undelivered event is older than
    ``MES_INTEGRATION_BACKLOG_ALARM_SECONDS`` (once while the alarm is open); the endpoints alarmed."""
    from mes.integration.monitor import DEFAULT_BACKLOG_ALARM_S, watch_backlog

    with app.app_context():
        try:
            return watch_backlog(int(app.config.get("MES_INTEGRATION_BACKLOG_ALARM_SECONDS") or DEFAULT_BACKLOG_ALARM_S))
        except Exception:  # noqa: BLE001 - a job must not die; the failure is logged and retried
            logger.exception("integration backlog watch failed")
            db.session.rollback()
            return []
        finally:
            db.session.remove()


def close_oee_shifts(app: Flask) -> int:
    """Close every OEE shift that is due and not closed yet; how many were closed.

    Idempotent: a closed shift is skipped, and one closed at the same moment by another server
    process (a conflict) is left to it; the rest are closed on the next run."""
    from mes.oee.closing import close_shifts_due

    with app.app_context():
        try:
            closed = len(close_shifts_due(OEE_CLOSER))
        except Conflict as exc:
            logger.info("OEE shift closing met another closer", extra={"detail": str(exc)})
            db.session.rollback()
            return 0
        except Exception:  # noqa: BLE001 - a job must not die; the failure is logged and retried
            logger.exception("scheduled OEE shift closing failed")
            db.session.rollback()
            return 0
        finally:
            db.session.remove()
    if closed:
        logger.info("OEE shifts closed", extra={"closed": closed})
    return closed


def publish_checkpoint_soon(app: Flask) -> None:
    """Woken by a commit that brought the log near a checkpoint: publish it here, before a
    kiosk's request has to (:func:`mes.audit.checkpoint_guard.publish_soon`)."""
    from mes.audit.checkpoint_guard import publish_soon

    with app.app_context():
        try:
            publish_soon()
        except Exception:  # noqa: BLE001 - a job must not die; a request publishes at 1000 entries
            logger.exception("checkpoint publication failed")
            db.session.rollback()
        finally:
            db.session.remove()


def finish_pending_releases(app: Flask) -> list[str]:
    """Finish the eBR of each decided batch still without one (:func:`mes.ebr.finishing.finish_pending`):
    once every witness cosigned its release checkpoint, or after MES_EBR_WITNESS_MAX_WAIT_SECONDS,
    or after a process died between the decision and the eBR. The batches finished."""
    from mes.ebr.finishing import finish_pending

    with app.app_context():
        try:
            return finish_pending()
        except Exception:  # noqa: BLE001 - a job must not die; retried at the next poll
            logger.exception("finishing pending releases failed")
            db.session.rollback()
            return []
        finally:
            db.session.remove()


def audit_watch_loop(app: Flask, wanted: threading.Event, report: Callable[[Flask], None]) -> None:
    """The audit watch (run by :mod:`mes.audit.watcher` in a process beside each worker): verify
    the log at start-up and every ``MES_AUDIT_VERIFY_SECONDS``; publish a checkpoint when
    ``wanted`` is set; every ``CHECKPOINT_POLL_SECONDS`` verify the new entries, publish when
    entries have waited 60 s, resubmit to witnesses, finish the eBRs left pending and, every ``TABLES_COMPARE_SECONDS``,
    compare every GMP table with the log. ``report`` is called after each of them."""
    from mes.audit.checkpoint_guard import watch_log

    verify_every = app.config.get("MES_AUDIT_VERIFY_SECONDS", 24 * 3600)
    verify_now(app, "start-up")
    report(app)
    last_verify = time.monotonic()
    next_poll = time.monotonic() + CHECKPOINT_POLL_SECONDS
    last_compare = time.monotonic()  # the start-up verification reconciled every table
    while True:
        if wanted.wait(max(0.0, next_poll - time.monotonic())):
            wanted.clear()
            publish_checkpoint_soon(app)
            report(app)
            if time.monotonic() < next_poll:
                continue
        next_poll = time.monotonic() + CHECKPOINT_POLL_SECONDS
        compare = time.monotonic() - last_compare >= TABLES_COMPARE_SECONDS
        if compare:
            last_compare = time.monotonic()
        with app.app_context():
            try:
                # new entries verified, checkpoint when due, tables compared when due;
                # tamper: /readyz red + alarm
                watch_log(compare_tables=compare)
            except Exception:  # noqa: BLE001 - the watch must not die; the failure is logged and retried
                logger.exception("scheduled checkpoint failed")
                db.session.rollback()
            finally:
                db.session.remove()
        report(app)
        finish_pending_releases(app)  # the eBRs whose witnesses were awaited (or whose process died)
        if time.monotonic() - last_verify >= verify_every:
            verify_now(app, "schedule")
            report(app)
            last_verify = time.monotonic()


def start_background_jobs(app: Flask) -> threading.Thread:
    """Start the audit watch process (:mod:`mes.audit.watcher`) and the daemon thread that
    wakes it and runs the light jobs (idempotent per app)."""
    existing = app.extensions.get("mes_jobs")
    if existing is not None:
        return existing
    from mes.audit.log import checkpoint_wanted
    from mes.audit.watcher import AuditWatch

    close_every = app.config.get("MES_OEE_CLOSE_SECONDS", 300)
    watch = AuditWatch(app)
    app.extensions["mes_audit_watch"] = watch
    watch.start()
    wanted = checkpoint_wanted(app)

    def loop() -> None:
        from mes.system.storage import watch_free_space

        close_oee_shifts(app)
        last_close = time.monotonic()
        next_poll = time.monotonic() + CHECKPOINT_POLL_SECONDS
        while True:
            if wanted.wait(max(0.0, next_poll - time.monotonic())):
                wanted.clear()
                watch.wake()  # the watch process publishes the checkpoint, not this one
                if time.monotonic() < next_poll:
                    continue
            next_poll = time.monotonic() + CHECKPOINT_POLL_SECONDS
            with app.app_context():
                try:
                    watch_free_space()  # the alarm before the database disk is full
                finally:
                    db.session.remove()
            if time.monotonic() - last_close >= close_every:
                close_oee_shifts(app)
                last_close = time.monotonic()
            watch_integration(app)

    thread = threading.Thread(target=loop, name="mes-jobs", daemon=True)
    app.extensions["mes_jobs"] = thread
    thread.start()
    return thread
