"""Database: the declarative base, the Flask-SQLAlchemy extension and engine tuning.

SQLite is the embedded default and PostgreSQL production; both get the same schema from
Alembic. On SQLite we switch on WAL, foreign keys, ``synchronous=FULL`` and a busy
timeout, and begin every transaction with ``BEGIN IMMEDIATE`` so that two writers queue
on the database lock instead of failing half-way through (the audit log serialises
appends anyway).
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Connection, DateTime, Engine, MetaData, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, registry, scoped_session
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 30_000


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC-aware in Python, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value)


class Base(DeclarativeBase):
    """Declarative base with a naming convention so Alembic constraint names are stable."""

    registry = registry(
        metadata=MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime()},
    )


db = SQLAlchemy(model_class=Base)


def utcnow() -> datetime:
    """Server time, UTC-aware: the only clock records are stamped with."""
    return datetime.now(UTC)


def create_private_file(path: str | None) -> None:
    """Create a SQLite database file readable by its owner only (0600) before SQLite creates
    it with the umask's mode; its WAL and SHM files take the same mode (issue 17)."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except (FileExistsError, FileNotFoundError, PermissionError):
        pass  # there already (its mode is `mes check`'s business), or a folder still to be made


def tune_sqlite_engine(engine: Engine) -> None:
    """Set the SQLite pragmas and transaction mode on every new connection."""
    if engine.dialect.name != "sqlite":
        return
    create_private_file(engine.url.database)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("mes_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def wrapped_errors(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (SQLAlchemy's ``orig``, then cause or context), once each."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


#: SQLSTATEs of a connection the server ended or that broke: connection exceptions (class
#: 08) and operator intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
#: connect now).
_LOST_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03")
_LOST_PHRASES = ("connection is closed", "server closed the connection", "terminating connection",
                 "consuming input failed", "connection to server", "connection already closed")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or one it wraps) is psycopg saying the connection is gone: the
    server ended it or it broke. Not a bug of the request: the caller may retry. SQLAlchemy's
    own test misses the server's "terminating connection" (57P01) until psycopg has marked
    the connection broken, and errors raised outside its statement handling entirely."""
    try:
        import psycopg
    except ImportError:  # SQLite only: no server connection to lose
        return False
    for current in wrapped_errors(exc):
        # by class, not name: psycopg raises a subclass per SQLSTATE (57P01 is AdminShutdown,
        # what pg_terminate_backend and a server shutdown send)
        if isinstance(current, (psycopg.OperationalError, psycopg.InterfaceError)):
            state = getattr(current, "sqlstate", None) or ""
            text = str(current).lower()
            if state.startswith(_LOST_SQLSTATE_PREFIXES) or any(p in text for p in _LOST_PHRASES):
                return True
    return False


@contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """Send the statements executed inside in one round trip where the driver can
    (psycopg's pipeline mode on PostgreSQL); elsewhere they run one by one as usual.

    Inside, run only statements whose results are not read through SQLAlchemy (writes);
    a query whose rows are needed goes through a driver cursor, fetched after the block.
    A database error surfaces when the block ends, as SQLAlchemy's exception class for it
    (an ``IntegrityError`` stays an ``IntegrityError``)."""
    if conn.dialect.driver != "psycopg":
        yield
        return
    import psycopg

    try:
        with conn.connection.driver_connection.pipeline():
            yield
    except psycopg.Error as exc:
        raise _as_sqlalchemy_error(conn, exc) from exc


def driver_queries(conn: Connection, queries: Sequence[tuple[str, tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
    """Run read queries (SQL with ``?`` placeholders) through the driver and return their
    rows, as the driver gives them (no SQLAlchemy type processing: timestamps may be
    SQLite text, booleans SQLite integers).

    On PostgreSQL they go in one round trip, with the transaction's ``BEGIN`` if it is
    still to be sent; each runs after the one before it finished, so a ``FOR UPDATE``
    first makes the later reads see everything committed before its lock was granted.
    For the few queries on every request, where SQLAlchemy's result machinery costs more
    than the query."""
    driver = conn.connection.driver_connection
    if conn.dialect.driver != "psycopg":
        cursor = driver.cursor()
        return [cursor.execute(sql, params).fetchall() for sql, params in queries]
    cursors = [driver.cursor() for _ in queries]
    with pipelined(conn):
        send_deferred(conn)  # writes held back for the commit come first: the reads see them
        for cursor, (sql, params) in zip(cursors, queries, strict=True):
            cursor.execute(sql.replace("?", "%s"), params)
    return [cursor.fetchall() for cursor in cursors]


def as_utc(value: datetime | str | None) -> datetime | None:
    """A timestamp read through the driver, as :class:`UTCDateTime` returns it."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite's stored text (naive UTC)
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def in_read_transaction(session: Session | scoped_session) -> bool:
    """Whether the session is inside a SQLite read transaction (see :func:`begin_writing`)."""
    if isinstance(session, scoped_session):
        session = session()
    if not session.in_transaction() or session.get_bind().dialect.name != "sqlite":
        return False
    return bool(session.connection().get_execution_options().get("mes_read_only", False))


def begin_writing(session: Session | None = None) -> None:
    """Make sure the session's next statements run in a writing transaction.

    On SQLite a GET request reads in a plain ``BEGIN`` (reads never queue behind writers),
    and such a transaction cannot safely become a writer: once another connection has
    committed since it began, its first write fails at once with "database is locked"
    (SQLITE_BUSY_SNAPSHOT; no busy timeout helps). A read transaction with nothing pending
    is therefore ended here, so the write begins with ``BEGIN IMMEDIATE`` and queues for the
    lock. Objects read before are expired and reload in the new transaction. Called before
    the few writes a read can lead to (a session that expired while a page was read)."""
    session = session or db.session()
    if not in_read_transaction(session):
        return
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("begin_writing() after changes were made in a read transaction")
    session.rollback()


@contextmanager
def read_only_session() -> Iterator[Session]:
    """A session for long reads (verification, exports) that never takes the SQLite
    write lock, so writers are not held up while it runs."""
    with db.engine.connect() as conn:
        conn = conn.execution_options(mes_read_only=True)
        with Session(bind=conn) as session:
            yield session
            session.rollback()


def engine_options(url: str) -> dict[str, Any]:
    """Engine keyword arguments per backend (a server database's pooled connections are
    checked after they sat idle, see :func:`ping_idle_connections`)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}}
    return {"pool_size": 10, "max_overflow": 20}


#: A pooled connection idle longer than this is pinged before use.
PING_AFTER_IDLE_S = 5


def ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled server connection before use only when it sat idle for
    :data:`PING_AFTER_IDLE_S` (SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one
    extra round trip per request). A connection dropped while idle (database restart,
    firewall) is replaced before the request uses it; one in constant use proves itself
    with every statement, and a failure mid-request is an error the caller sees."""
    if engine.dialect.name == "sqlite":
        return

    @event.listens_for(engine, "handle_error")
    def _lost(context: Any) -> None:
        # A connection the server terminated counts as a disconnect: SQLAlchemy invalidates
        # it and the pool (every connection of a restarted server is dead), and says
        # connection_invalidated, which the API answers with 503 (retry).
        if not context.is_disconnect and connection_lost(context.original_exception):
            context.is_disconnect = True

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["mes_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("mes_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure: the pool reconnects
            raise DisconnectionError("an idle pooled connection failed its ping") from exc


def install_refusal_triggers(op: Any, table: str, *, immutable: bool) -> None:
    """For migrations: make the database itself refuse DELETE (and TRUNCATE) on ``table``,
    and UPDATE too when ``immutable``. No role or setting switches this off."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE OR REPLACE FUNCTION mes_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION 'mes: % on % is refused: records are never changed or removed', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
            END $$;
            """
        )
        events = "UPDATE OR DELETE" if immutable else "DELETE"
        suffix = "immutable" if immutable else "no_delete"
        op.execute(f"CREATE TRIGGER {table}_{suffix} BEFORE {events} ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION mes_refuse_change()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION mes_refuse_change()")
        return
    for action in ("UPDATE", "DELETE") if immutable else ("DELETE",):
        op.execute(f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} BEGIN "
                   f"SELECT RAISE(ABORT, 'mes: {action} on {table} is refused: records are never changed or removed'); END")


# ------------------------------------------------------------------ writes sent with the COMMIT

_DEFERRED = "mes_deferred_writes"
#: the engines with the hooks (weakly: an engine's id may be reused by a later one without them)
_DEFERRING_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def send_writes_with_commit(engine: Engine) -> None:
    """PostgreSQL: let :func:`defer_writes` hold a transaction's last writes back and send
    them in the one message that carries its ``COMMIT`` (or before the next statement, when
    one comes first). An audit append's entry, tree nodes and event were a round trip of
    their own, followed by the commit's: under the log's append lock, which every terminal
    queues for. Nothing held back outlives its transaction: a rollback drops it, and a
    connection goes back to the pool without it."""
    if engine.dialect.name != "postgresql" or engine in _DEFERRING_ENGINES:
        return
    _DEFERRING_ENGINES.add(engine)

    @event.listens_for(engine, "before_cursor_execute")
    def _deferred_first(conn: Connection, *_: Any) -> None:
        if conn.info.get(_DEFERRED):
            send_deferred(conn)

    @event.listens_for(engine, "commit")
    def _with_the_commit(conn: Connection) -> None:
        pending = conn.info.pop(_DEFERRED, None)
        if not pending:
            return
        import psycopg

        driver = conn.connection.driver_connection
        sql = "; ".join([statement for statement, _ in pending] + ["COMMIT"])
        params = tuple(value for _, values in pending for value in values)
        try:
            # client-side binding: several statements in one simple-protocol message; the
            # driver's own commit that follows finds the transaction ended and sends nothing
            psycopg.ClientCursor(driver).execute(sql, params)
        except psycopg.Error as exc:
            raise _as_sqlalchemy_error(conn, exc) from exc

    @event.listens_for(engine, "rollback")
    def _dropped(conn: Connection) -> None:
        if not conn.invalidated:  # (an invalidated one's pool record is cleared at check-in)
            conn.info.pop(_DEFERRED, None)

    @event.listens_for(engine, "checkin")
    def _never_carried_over(_dbapi_connection: Any, record: Any) -> None:
        record.info.pop(_DEFERRED, None)


def defers_writes(conn: Connection) -> bool:
    """Whether :func:`defer_writes` may hold writes back on ``conn`` (PostgreSQL, with
    :func:`send_writes_with_commit` installed on its engine)."""
    return conn.engine in _DEFERRING_ENGINES


def defer_writes(conn: Connection, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """Hold ``statements`` (driver SQL with ``%s`` placeholders, whose results nobody reads)
    back until the transaction's commit or its next statement (see
    :func:`send_writes_with_commit`). An error in them surfaces there, as SQLAlchemy's
    exception class for it, and rolls the whole transaction back."""
    if not defers_writes(conn):
        raise RuntimeError("writes are held back only on a PostgreSQL engine set up with send_writes_with_commit()")
    conn.info.setdefault(_DEFERRED, []).extend(statements)


def send_deferred(conn: Connection) -> None:
    """Send the writes held back on ``conn`` now (inside :func:`pipelined`: with its round trip)."""
    pending = conn.info.pop(_DEFERRED, None)
    if not pending:
        return
    import psycopg

    driver = conn.connection.driver_connection
    cursor = driver.cursor()
    piping = driver.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF  # then they join its round trip
    with nullcontext() if piping else pipelined(conn):
        for statement, values in pending:
            cursor.execute(statement, values)


def _as_sqlalchemy_error(conn: Connection, exc: Exception) -> DBAPIError:
    """``exc`` as SQLAlchemy raises a driver error of a statement it ran itself: a lost
    connection is invalidated (the pool replaces it; the rollback after it does not fail
    again) and said so."""
    import psycopg

    lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None) or connection_lost(exc)
    if lost:
        conn.invalidate(exc)
    return DBAPIError.instance(None, None, exc, psycopg.Error, connection_invalidated=lost)
