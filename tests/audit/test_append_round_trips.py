"""The audit append lock is held for as few round trips as the database allows (issue 21).

Every terminal's append waits while another holds the log's lock, and under load a holder
that waits for an answer from PostgreSQL may then wait for its process's turn at the CPU:
at 30 kiosks the lock was held 40-100 ms when an append took five round trips under it
(head, Merkle frontier, entry, event sequence, event) before the commit. Now the change's
own statements, the lock, the log end, the frontier and the event's sequence go in one
round trip, and the entry, its nodes and its event in the message that carries the commit.

PostgreSQL only: on SQLite there are no round trips (one process, one write lock)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit.database_check import verify_database
from mes.audit.log import ADVISORY_LOCK_KEY, Actor, Event, record
from mes.audit.models import AuditEntry
from mes.db import db
from mes.integration.models import OutboxEvent


class RoundTrips:
    """Counts the answers a connection waits for (a statement outside a pipeline, a pipeline,
    a commit) from the one that grants the append lock until the commit."""

    def __init__(self) -> None:
        self.piping = 0
        self.locked = False
        self.pipeline_takes_lock = False
        self.under_lock: list[str] = []

    def statement(self, sql: str) -> None:
        if f"pg_advisory_xact_lock({int(ADVISORY_LOCK_KEY)})" in sql:
            assert self.piping, "the lock is taken in the pipeline with the reads after it"
            self.pipeline_takes_lock = True
        elif self.locked and not self.piping and sql.rstrip().endswith("; COMMIT"):
            # the writes held back, sent in one message with the COMMIT (mes.db.send_writes_with_commit)
            self.under_lock.append(" ".join(sql.split()[:3]) + " ...; COMMIT")
            self.locked = False
        elif self.locked and not self.piping:
            self.under_lock.append(" ".join(sql.split()[:4]))

    def pipeline_ended(self) -> None:
        if self.locked:
            self.under_lock.append("pipeline")
        if self.pipeline_takes_lock:
            self.pipeline_takes_lock, self.locked = False, True

    def committed(self) -> None:
        if self.locked:
            self.under_lock.append("COMMIT")
        self.locked = False


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    seen = RoundTrips()
    execute, pipeline, commit = psycopg.Cursor.execute, psycopg.Connection.pipeline, psycopg.Connection.commit

    def counted_execute(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        seen.statement(query if isinstance(query, str) else str(query))
        return execute(self, query, *args, **kw)

    @contextlib.contextmanager
    def counted_pipeline(self: Any, *args: Any, **kw: Any) -> Iterator[Any]:
        seen.piping += 1
        try:
            with pipeline(self, *args, **kw) as p:
                yield p
        finally:
            seen.piping -= 1
            if not seen.piping:
                seen.pipeline_ended()

    def counted_commit(self: Any) -> None:
        seen.committed()
        commit(self)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
    monkeypatch.setattr(psycopg.Connection, "pipeline", counted_pipeline)
    monkeypatch.setattr(psycopg.Connection, "commit", counted_commit)
    yield seen


def _calendar(n: int) -> Event:
    return Event("mes.oee.line_calendar_set.v1", "line", "RT-1",
                 {"line": "RT-1", "effective_from": f"2026-12-0{n + 1}T00:00:00Z", "shifts": {}, "holidays": [],
                  "maintenance": []})


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_append_with_its_event_holds_the_log_lock_for_one_round_trip_after_the_lock(
        app: Flask, round_trips: RoundTrips) -> None:
    actor = Actor.system("round-trips")
    with app.app_context():
        for n in range(3):  # the log grows: each append reads the frontier another may have extended
            record(actor, "test.fact", ("line", "RT-1"), after={"n": n}, event=_calendar(n))
            db.session.commit()
            # the entry, its tree nodes and its event ride in the COMMIT's message
            assert round_trips.under_lock == ["INSERT INTO audit_entries ...; COMMIT"], round_trips.under_lock
            round_trips.under_lock.clear()
        # two entries in one transaction: the second reads its event's sequence under the lock held
        record(actor, "test.fact", ("line", "RT-1"), after={"n": 3}, event=_calendar(3))
        record(actor, "test.fact", ("line", "RT-1"), after={"n": 4}, event=_calendar(4))
        db.session.commit()
        sequences = db.session.execute(select(OutboxEvent.sequence).where(OutboxEvent.subject == "line/RT-1")
                                       .order_by(OutboxEvent.position)).scalars().all()
        assert sequences == [1, 2, 3, 4, 5]
        db.session.rollback()
        assert verify_database().ok


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_writes_held_back_for_the_commit_go_before_a_later_statement_and_never_outlive_a_rollback(
        app: Flask) -> None:
    actor = Actor.system("held-back")
    with app.app_context():
        appended = record(actor, "test.fact", ("line", "RT-2"), after={"n": 0})
        # a read later in the same transaction sees the entry
        assert db.session.execute(select(AuditEntry.seq).where(AuditEntry.seq == appended.seq)).scalar() == appended.seq
        record(actor, "test.fact", ("line", "RT-2"), after={"n": 1})
        db.session.rollback()  # nothing of either entry is sent or kept for the next transaction
        assert db.session.execute(select(AuditEntry.seq).where(AuditEntry.seq >= appended.seq)).all() == []
        record(actor, "test.fact", ("line", "RT-2"), after={"n": 2})
        db.session.commit()
        assert verify_database().ok


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_held_back_write_that_fails_at_the_commit_rolls_back_the_whole_change(app: Flask) -> None:
    from sqlalchemy.exc import IntegrityError

    from mes.db import defer_writes

    actor = Actor.system("held-back")
    with app.app_context():
        record(actor, "test.fact", ("line", "RT-3"), after={"n": 0})
        db.session.commit()
        last = db.session.execute(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1)).scalar()
        record(actor, "test.fact", ("line", "RT-3"), after={"n": 1})
        # a row that collides with a stored tree node: the COMMIT's message fails as a whole
        defer_writes(db.session.connection(), [("INSERT INTO audit_tree_nodes (level, idx, hash) VALUES (%s, %s, %s)",
                                                (0, 0, b"x" * 32))])
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
        assert db.session.execute(select(AuditEntry.seq).where(AuditEntry.seq > last)).all() == []
        record(actor, "test.fact", ("line", "RT-3"), after={"n": 2})
        db.session.commit()
        assert verify_database().ok
