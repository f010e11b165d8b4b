"""mes/db.py: the connection pool replaces a connection that died while idle, without
pinging the ones in constant use; pipelined statements and driver-level reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from mes import db as mes_db
from mes.db import db


def _backend_pid(conn) -> int | None:
    if conn.dialect.name != "postgresql":
        return None
    return conn.execute(text("SELECT pg_backend_pid()")).scalar()


def test_a_connection_killed_while_idle_is_replaced_before_use(app: Flask, monkeypatch) -> None:
    with app.app_context():
        engine = db.engine
        engine.dispose()  # the pool holds exactly the one connection below
        with engine.connect() as conn:
            pid = _backend_pid(conn)
            assert conn.execute(text("SELECT 1")).scalar() == 1
        if pid is not None:
            # the database ends the pooled connection (a restart or a firewall would, too)
            admin = create_engine(engine.url, poolclass=NullPool)
            with admin.connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            admin.dispose()
        monkeypatch.setattr(mes_db, "PING_AFTER_IDLE_S", 0)  # it has sat idle long enough
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            assert pid is None or _backend_pid(conn) != pid


def test_a_connection_the_server_terminates_mid_transaction_is_a_disconnect(app: Flask) -> None:
    """pg_terminate_backend (and a server shutdown) sends 57P01 before it closes: SQLAlchemy
    alone calls that an ordinary error, so the request answered 500 and the pool kept the
    dead connection. It is a disconnect: invalidated, and a 503 (retry) to the caller."""
    from sqlalchemy.exc import DBAPIError

    from mes.system.storage import DatabaseUnavailable, database_problem

    with app.app_context():
        engine = db.engine
        with engine.connect() as conn:
            pid = _backend_pid(conn)
            if pid is None:  # SQLite: no server to end a connection
                assert database_problem(IntegrityError("x", {}, Exception("not a lost connection"))) is None
                return
            conn.execute(text("SELECT 1"))
            admin = create_engine(engine.url, poolclass=NullPool)
            with admin.connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            admin.dispose()
            with pytest.raises(DBAPIError) as lost:
                conn.execute(text("SELECT 1"))
            assert lost.value.connection_invalidated
            assert isinstance(database_problem(lost.value), DatabaseUnavailable)
        with engine.connect() as conn:  # the pool hands out a live one
            assert conn.execute(text("SELECT 1")).scalar() == 1 and _backend_pid(conn) != pid


def test_a_connection_in_constant_use_is_not_pinged(app: Flask, monkeypatch) -> None:
    with app.app_context():
        engine = db.engine
        pings: list[object] = []
        real = engine.dialect.do_ping
        monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(c) or real(c))
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pings == []
        monkeypatch.setattr(mes_db, "PING_AFTER_IDLE_S", 0)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert len(pings) == (1 if engine.dialect.name == "postgresql" else 0)


def test_statements_in_a_pipeline_run_in_order_and_fail_as_sqlalchemy_errors(app: Flask) -> None:
    with app.app_context():
        conn = db.session.connection()
        conn.execute(text("CREATE TEMP TABLE pipeline_probe (id INTEGER PRIMARY KEY, lot TEXT)"))
        with mes_db.pipelined(conn):
            conn.execute(text("INSERT INTO pipeline_probe VALUES (1, 'L-1')"))
            conn.execute(text("UPDATE pipeline_probe SET lot = 'L-2' WHERE id = 1"))
        first, second = mes_db.driver_queries(conn, [
            ("SELECT lot FROM pipeline_probe WHERE id = ?", (1,)),
            ("SELECT count(*) FROM pipeline_probe WHERE lot = ?", ("L-1",))])
        assert first == [("L-2",)] and second == [(0,)]
        with pytest.raises(IntegrityError):
            with mes_db.pipelined(conn):
                conn.execute(text("INSERT INTO pipeline_probe VALUES (2, 'L-3')"))
                conn.execute(text("INSERT INTO pipeline_probe VALUES (2, 'L-4')"))
        db.session.rollback()


def test_timestamps_read_through_the_driver_come_back_utc() -> None:
    aware = datetime(2026, 11, 23, 18, 0, tzinfo=timezone(timedelta(hours=1)))
    assert mes_db.as_utc(aware) == datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    assert mes_db.as_utc("2026-11-23 17:00:00.000001") == datetime(2026, 11, 23, 17, 0, 0, 1, tzinfo=UTC)
    assert mes_db.as_utc(datetime(2026, 11, 23, 17, 0)).tzinfo is UTC
    assert mes_db.as_utc(None) is None
