"""Scheduled work: the start-up / scheduled audit verification and the 60 s checkpoint."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from sqlalchemy import select, text

from mes.audit import log
from mes.db import db
from mes.jobs import verify_now
from mes.users.models import Alarm

ACTOR = log.Actor("u-1", "Una User", "operator", "K-1")


def _append(n: int) -> None:
    for i in range(n):
        log.record(ACTOR, "batch.step.completed", ("batch_step", f"B/{i}"), batch="B", after={"value": f"{i}.0"})
        db.session.commit()


def test_verification_failure_turns_readyz_red_and_raises_one_alarm(app: Flask, client, backend: str) -> None:
    _append(5)
    verify_now(app, "start-up")
    assert client.get("/readyz").status_code == 200
    db.session.rollback()
    with db.engine.begin() as conn:
        if backend == "postgresql":
            conn.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
        data = bytes(conn.execute(text("SELECT entry_bytes FROM audit_entries WHERE seq = 2")).scalar_one())
        conn.execute(text("UPDATE audit_entries SET entry_bytes = :b WHERE seq = 2"), {"b": data.replace(b"2.0", b"9.0")})
    verify_now(app, "schedule")
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_json() == {"status": "not ready"}  # details need system.monitor
    verify_now(app, "schedule")
    alarms = db.session.execute(select(Alarm).where(Alarm.kind == "audit")).scalars().all()
    assert len(alarms) == 1 and "first bad seq 2" in alarms[0].message


def test_checkpoint_when_entries_waited_60_seconds(app: Flask) -> None:
    _append(3)
    assert log.checkpoint_if_due() is None  # too early
    db.session.rollback()
    real = log.CHECKPOINT_EVERY
    log.CHECKPOINT_EVERY = timedelta(0)
    try:
        cp = log.checkpoint_if_due()
        db.session.commit()
    finally:
        log.CHECKPOINT_EVERY = real
    assert cp is not None and cp.size == 3


def test_the_scheduled_job_closes_a_due_shift_once(app: Flask) -> None:
    """Nobody calls the endpoint: the background job closes each due shift, and a second run
    closes nothing again (one mes.oee.shift_closed.v1 event per line and shift)."""
    import json
    from datetime import UTC, datetime

    from mes.audit.canonical import format_at
    from mes.audit.models import AuditEntry
    from mes.integration.models import OutboxEvent
    from mes.jobs import OEE_CLOSER, close_oee_shifts
    from mes.oee import operations as oee
    from mes.plant_time import shifts_between
    from tests.test_oee import GATEWAY, plant, sample

    plant(app)
    now = datetime.now(UTC)
    # the last shift that ended at least an hour ago, with the line running through it
    shift = [s for s in shifts_between(now - timedelta(days=1), now) if s.end <= now - timedelta(hours=1)][-1]
    oee.set_ideal_rate(GATEWAY, "LINE-1", "10", effective_from=shift.start - timedelta(days=1))
    sample(shift.start, "Execute", 0, 0)
    sample(shift.end - timedelta(minutes=30), "Execute", 3000, 30)
    db.session.remove()

    def closed_events() -> list[dict]:
        rows = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == "mes.oee.shift_closed.v1")).scalars()
        events = [json.loads(r.body) for r in rows]
        db.session.remove()
        return events

    first = close_oee_shifts(app)
    events = closed_events()
    assert first >= 1 and len(events) == first
    mine = [e for e in events if e["data"]["shift_start"] == format_at(shift.start)]
    assert len(mine) == 1 and mine[0]["data"]["line"] == "LINE-1" and mine[0]["data"]["total_count"] == 3000
    assert close_oee_shifts(app) == 0
    assert closed_events() == events
    closers = db.session.execute(select(AuditEntry.actor_id).where(AuditEntry.action == "oee.shift_closed")).scalars()
    assert set(closers) == {OEE_CLOSER.id}
